"""Augmenter type names (the CR schema's enum values) mapped to augmenters, built from CR options.

The job reads ``spec.augmenters[*]`` as plain mappings; this module turns one entry's options into a
configured augmenter, accepting the CR's camelCase keys ("maxEdits") as well as the dataclass field
names, and rejecting unknown keys by name so that a typo in a manifest fails the run with a clear
condition instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from sampleforge.jobs.augment.text.base import EditParams, TextAugmenter
from sampleforge.jobs.augment.text.lexicon import Lexicon
from sampleforge.jobs.augment.text.noise import CharNoise, CharNoiseParams, KeyboardTypo, TypoParams
from sampleforge.jobs.augment.text.word import (
    RandomDeletion,
    RandomInsertion,
    RandomSwap,
    SynonymParams,
    SynonymReplacement,
    WordEditParams,
)

__all__ = ["AUGMENTER_TYPES", "PARAMS_TYPES", "create_augmenter", "option_names"]

PARAMS_TYPES: Mapping[str, type[EditParams]] = MappingProxyType(
    {
        "synonym": SynonymParams,
        "randomInsert": SynonymParams,
        "randomSwap": WordEditParams,
        "randomDelete": WordEditParams,
        "typo": TypoParams,
        "charNoise": CharNoiseParams,
    }
)

_USES_LEXICON = frozenset({"synonym", "randomInsert"})

AUGMENTER_TYPES: Mapping[str, Callable[..., TextAugmenter[Any]]] = MappingProxyType(
    {
        "synonym": SynonymReplacement,
        "randomInsert": RandomInsertion,
        "randomSwap": RandomSwap,
        "randomDelete": RandomDeletion,
        "typo": KeyboardTypo,
        "charNoise": CharNoise,
    }
)

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def option_names(type_name: str) -> list[str]:
    """The camelCase option names ``type_name`` accepts (what the CR schema should offer)."""
    if type_name not in PARAMS_TYPES:
        raise ValueError(f"unknown text augmenter type {type_name!r}; known: {sorted(PARAMS_TYPES)}")
    return [_camel(f.name) for f in dataclasses.fields(PARAMS_TYPES[type_name])]


def create_augmenter(
    type_name: str, options: Mapping[str, Any] | None = None, *, lexicon: Lexicon | None = None
) -> TextAugmenter[Any]:
    """Build the augmenter ``type_name`` with ``options`` (camelCase or snake_case keys).

    ``lexicon`` (e.g. parsed from the user's TSV in MinIO) only applies to ``synonym`` and
    ``randomInsert``; without it they use the built-in English + Chinese lexicons.
    Raises ValueError naming the unknown type, the unknown option or the invalid value.
    """
    if type_name not in AUGMENTER_TYPES:
        raise ValueError(f"unknown text augmenter type {type_name!r}; known: {sorted(AUGMENTER_TYPES)}")
    params_type = PARAMS_TYPES[type_name]
    fields = {f.name for f in dataclasses.fields(params_type)}
    kwargs: dict[str, Any] = {}
    for key, value in (options or {}).items():
        field = _snake(key)
        if field not in fields:
            raise ValueError(f"{type_name}: unknown option {key!r}; allowed: {option_names(type_name)}")
        kwargs[field] = tuple(value) if field == "actions" else value
    try:
        params = params_type(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{type_name}: {exc}") from exc
    if type_name in _USES_LEXICON:
        return AUGMENTER_TYPES[type_name](params, lexicon=lexicon)
    if lexicon is not None:
        raise ValueError(f"{type_name}: a lexicon only applies to {sorted(_USES_LEXICON)}")
    return AUGMENTER_TYPES[type_name](params)
