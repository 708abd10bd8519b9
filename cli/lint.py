"""``lint``: a manifest checked offline with the schema the API server enforces.

The pydantic models in ``api/`` carry every CEL rule with the same message (``api._base.Rule``),
so what fails here fails at ``kubectl apply``. Errors are printed the way the API server prints
them (``spec.augmenters[0].fraction: Invalid value: 1.5: ...``), with the field path a CEL rule
points at (its ``fieldPath``) when the rule has one, so the fix is found where the server would
point.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sampleforge.api import API_VERSION, AugmentationRun, FineTuneRun, Kind
from sampleforge.api._base import ApiModel, Rule

#: A flat union's messages (``api._unions``): the API server's CEL rule for each points at the property.
_UNION_MESSAGE = re.compile(r"(?P<prop>\w+) applies only when (?P<tag>\w+) is .+?; remove (?P=prop) or change (?P=tag)"
                            r"|(?P<req>\w+) is required when \w+ is \w+; set (?P=req)")
MODELS: dict[str, type[BaseModel]] = {Kind.AUGMENTATION_RUN.value: AugmentationRun,
                                      Kind.FINE_TUNE_RUN.value: FineTuneRun}


@dataclass(frozen=True)
class LintError:
    """One problem: where (document, field path) and what the API server would say."""

    document: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.document}: {self.path}: {self.message}" if self.path else f"{self.document}: {self.message}"


def _all_rules() -> list[Rule]:
    rules: list[Rule] = []
    pending: list[type[Any]] = [ApiModel]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        rules.extend(r for r in getattr(cls, "kube_rules", ()) if r not in rules)
    return rules


def _path(loc: tuple[int | str, ...], document: Any) -> tuple[str, Any]:
    """``('spec', 'augmenters', 0, 'typo', 'fraction')`` → ``spec.augmenters[0].fraction`` and the
    value found there. pydantic puts a tagged union's tag in the location (``'typo'``); the API
    server does not, so a segment that is not a key of the object but one of its values is dropped."""
    out = ""
    node: Any = document
    for segment in loc:
        if isinstance(segment, int):
            out += f"[{segment}]"
            node = node[segment] if isinstance(node, list) and segment < len(node) else None
            continue
        if isinstance(node, dict) and segment not in node and segment in node.values():
            continue
        out += f".{segment}" if out else segment
        node = node.get(segment) if isinstance(node, dict) else None
    return out, node


def _value(value: Any) -> str:
    return json.dumps(value, default=str) if not isinstance(value, dict | list) else "..."


def _describe(error: Any, path: str, value: Any, rules: list[Rule]) -> Iterator[tuple[str, str]]:
    kind, msg = error["type"], error["msg"]
    if kind == "missing":
        yield path, "Required value"
    elif kind == "extra_forbidden":
        yield path, "Forbidden: unknown field (the API server would silently drop it); check its spelling"
    elif kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag")
        expected = error.get("ctx", {}).get("expected_tags", "")
        yield f"{path}.{error.get('ctx', {}).get('discriminator', 'type').strip(chr(39))}", \
            f"Unsupported value: {json.dumps(tag)}: supported values: {expected}"
    elif kind == "value_error":
        text = msg.removeprefix("Value error, ")
        matched = [r for r in rules if r.message in text]
        unions = list(_UNION_MESSAGE.finditer(text)) if isinstance(value, dict) else []
        if unions and not matched:
            for union in unions:
                yield f"{path}.{union.group('prop') or union.group('req')}", union.group(0)
            return
        if not matched:
            scalar = value is not None and not isinstance(value, dict | list)
            yield path, f"Invalid value: {_value(value)}: {text}" if scalar else text
            return
        for rule in matched:
            field = path + (rule.field_path or "")
            yield field, rule.message
    else:
        yield path, f"Invalid value: {_value(value)}: {msg}"


def lint_document(document: Any, name: str) -> list[LintError]:
    """The problems of one YAML document; an empty list when the API server would accept it."""
    if not isinstance(document, dict):
        return [LintError(name, "", "not a Kubernetes object (a mapping with apiVersion and kind)")]
    kind = document.get("kind")
    if document.get("apiVersion") != API_VERSION or kind not in MODELS:
        return [LintError(name, "", f"not a sampleforge run (apiVersion {API_VERSION}, kind AugmentationRun or "
                                    f"FineTuneRun); got apiVersion {document.get('apiVersion')!r}, kind {kind!r}")]
    if not (document.get("metadata") or {}).get("name") and not (document.get("metadata") or {}).get("generateName"):
        return [LintError(name, "metadata.name", "Required value: name the run")]
    try:
        MODELS[kind].model_validate(document)
    except ValidationError as err:
        rules = _all_rules()
        found: list[LintError] = []
        for error in err.errors():
            path, value = _path(tuple(error["loc"]), document)
            for field, message in _describe(error, path, value, rules):
                item = LintError(name, field, message)
                if item not in found:
                    found.append(item)
        return found
    return []


def lint_text(text: str, source: str) -> tuple[int, list[LintError]]:
    """Every document of a (multi-document) manifest; the number of runs checked and their errors.
    Other objects (a Secret, a Namespace) are skipped: a manifest of a whole setup lints too."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        return 0, [LintError(source, "", f"not valid YAML: {err}")]
    checked, errors = 0, []
    for index, document in enumerate(documents):
        if isinstance(document, dict) and document.get("apiVersion") != API_VERSION \
                and document.get("kind") not in MODELS:
            continue
        meta = document.get("metadata") if isinstance(document, dict) else None
        label = f"{document.get('kind')}/{meta.get('name')}" if isinstance(meta, dict) and meta.get("name") \
            else f"document {index + 1}"
        checked += 1
        errors.extend(lint_document(document, f"{source} ({label})"))
    return checked, errors
