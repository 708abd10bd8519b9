"""Tagged unions that are typed in Python and flat in the CRD.

Augmenters, fine-tuning methods, dedup and outlier clipping each come in several kinds with their
own parameters. In Python they are pydantic discriminated unions: a job gets a ``TypoAugmenter``
with exactly the fields a typo augmenter has. A structural CRD schema cannot express such a union
(``oneOf`` may not declare types or properties), so the CRD gets ONE object holding the union of all
variants' properties, plus generated CEL rules:

* a property that only some variants have is Forbidden for the others;
* a property a variant requires is Required when the tag names that variant;
* a variant's own rules only apply when the tag names that variant.

Both sides are computed here from the same variant models, with the same message text, so
``kubectl apply`` and pydantic reject the same documents with the same words. Defaults of
variant-specific properties are left out of the CRD (the API server would otherwise inject them for
every variant and then fail the Forbidden rule); pydantic still applies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel


def or_list(words: Sequence[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def forbidden_message(prop: str, tag_key: str, tags: Sequence[str]) -> str:
    """Why ``prop`` may not be set for the chosen variant, and what to do about it."""
    return f"{prop} applies only when {tag_key} is {or_list(list(tags))}; remove {prop} or change {tag_key}"


def required_message(prop: str, tag_key: str, tag: str) -> str:
    """Why ``prop`` must be set for the chosen variant."""
    return f"{prop} is required when {tag_key} is {tag}; set {prop}"


def _tag_of(model: type[BaseModel], tag_field: str) -> str:
    annotation = model.model_fields[tag_field].annotation
    args: tuple[Any, ...] = getattr(annotation, "__args__", ())
    if len(args) != 1 or not isinstance(args[0], str):
        raise TypeError(f"{model.__name__}.{tag_field} must be a Literal of one string")
    return args[0]


class FlatUnion:
    """The facts about one tagged union that both validators need."""

    def __init__(self, variants: Sequence[type[BaseModel]], tag_field: str = "type") -> None:
        self.variants = tuple(variants)
        self.tag_field = tag_field
        self.tag_key = variants[0].model_fields[tag_field].alias or tag_field
        self.by_tag: dict[str, type[BaseModel]] = {_tag_of(v, tag_field): v for v in variants}
        # alias -> tags (in declaration order) of the variants that have that property
        self.owners: dict[str, list[str]] = {}
        # python name or alias -> alias, to recognise both spellings on input
        self.spellings: dict[str, str] = {}
        for tag, model in self.by_tag.items():
            for name, info in model.model_fields.items():
                alias = info.alias or name
                self.owners.setdefault(alias, []).append(tag)
                self.spellings[name] = alias
                self.spellings[alias] = alias

    def restricted(self) -> dict[str, list[str]]:
        """Properties that only some variants have, with the tags of those variants."""
        return {alias: tags for alias, tags in self.owners.items() if len(tags) < len(self.by_tag)}

    def required_by(self, tag: str) -> list[str]:
        """Aliases the variant ``tag`` requires (the tag itself excluded)."""
        model = self.by_tag[tag]
        return [
            info.alias or name
            for name, info in model.model_fields.items()
            if info.is_required() and name != self.tag_field
        ]

    def check(self, data: Any) -> Any:
        """pydantic BeforeValidator: the friendly errors the CRD's generated rules give."""
        if not isinstance(data, dict):
            return data
        tag = data.get(self.tag_key, data.get(self.tag_field))
        if not isinstance(tag, str) or tag not in self.by_tag:
            return data  # pydantic reports the unknown or missing tag itself
        restricted = self.restricted()
        problems: list[str] = []
        given = {self.spellings[k] for k in data if k in self.spellings}
        for alias in sorted(given):
            if alias in restricted and tag not in restricted[alias]:
                problems.append(forbidden_message(alias, self.tag_key, restricted[alias]))
        for alias in self.required_by(tag):
            if alias not in given:
                problems.append(required_message(alias, self.tag_key, tag))
        if problems:
            raise ValueError("; ".join(problems))
        return data
