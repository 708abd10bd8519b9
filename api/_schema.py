"""Turn a pydantic model's JSON Schema into a structural OpenAPI v3 schema for a CRD.

The API server only accepts *structural* schemas: every node states its type, there are no
``$ref``s, ``anyOf``/``oneOf`` may not introduce types (except the int-or-string form), and
``nullable`` unions are not how optional fields are spelt. pydantic emits JSON Schema 2020-12, so
this module rewrites it:

* ``$ref`` -> the referenced definition, inlined; the field's own description wins over the class
  docstring (docstrings are written for maintainers, descriptions for ``kubectl explain``);
* ``Optional[X]`` (``anyOf [X, null]``) -> ``X``; the field is already absent from ``required``;
* ``int | str`` -> ``x-kubernetes-int-or-string``;
* ``dict[str, Any]`` -> ``x-kubernetes-preserve-unknown-fields`` (free-form, e.g. affinity);
* discriminated unions -> one flat object plus generated CEL rules (see ``_unions``);
* numeric ``exclusiveMinimum`` -> OpenAPI v3.0's ``minimum`` + ``exclusiveMinimum: true``.

Anything else it does not know is an error rather than a silent pass-through, so a new pydantic
feature can never produce a CRD the API server rejects (or worse, accepts with different meaning).
Output is deterministic: properties and ``required`` sorted, keys in a fixed order.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from ._base import VALIDATIONS_KEY
from ._unions import forbidden_message, or_list, required_message

Schema = dict[str, Any]

#: Keys a node of the output may have, in the order they are written.
KEY_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "anyOf",
    "items",
    "properties",
    "additionalProperties",
    "required",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    VALIDATIONS_KEY,
)
_IGNORED = frozenset({"title"})
_NUMBERS = frozenset({"integer", "number"})
#: Keywords that only mean something for some types; elsewhere they are a modelling mistake.
_KEYS_FOR: dict[str, frozenset[str]] = {
    **{k: _NUMBERS for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")},
    **{k: frozenset({"string"}) for k in ("minLength", "maxLength", "pattern", "format")},
    **{k: frozenset({"array"}) for k in ("minItems", "maxItems", "items", "x-kubernetes-list-type")},
    **{k: frozenset({"object"}) for k in ("minProperties", "maxProperties", "properties", "additionalProperties")},
}
_MISSING = object()


class SchemaError(ValueError):
    """The model uses a schema construct that cannot become a structural CRD schema."""


def structural_schema(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI schema of ``model``, as CRDs need it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _Converter(defs).convert(raw, model.__name__)


def ordered(node: Schema) -> Schema:
    """``node`` with its keys in :data:`KEY_ORDER`; unknown keys are an error."""
    unknown = set(node) - set(KEY_ORDER)
    if unknown:
        raise SchemaError(f"unsupported schema keywords {sorted(unknown)}")
    out = {k: node[k] for k in KEY_ORDER if k in node}
    if VALIDATIONS_KEY in out:
        out[VALIDATIONS_KEY] = [_ordered_rule(r) for r in out[VALIDATIONS_KEY]]
    return out


_RULE_KEYS = ("rule", "messageExpression", "message", "fieldPath", "reason", "optionalOldSelf")


def _ordered_rule(rule: dict[str, Any]) -> dict[str, Any]:
    unknown = set(rule) - set(_RULE_KEYS)
    if unknown or "rule" not in rule or not ({"message", "messageExpression"} & set(rule)):
        raise SchemaError(f"a CEL rule needs rule and message, and nothing unknown: {rule}")
    return {k: rule[k] for k in _RULE_KEYS if k in rule}


def _merge(inner: Schema, outer: Schema) -> Schema:
    """``inner`` with ``outer``'s keys on top; CEL rules of both are kept (inner's first)."""
    merged = {**inner, **outer}
    rules = list(inner.get(VALIDATIONS_KEY, [])) + list(outer.get(VALIDATIONS_KEY, []))
    if rules:
        merged[VALIDATIONS_KEY] = rules
    return merged


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].strip() if text and text.strip() else ""


class _Converter:
    def __init__(self, defs: dict[str, Schema]) -> None:
        self.defs = defs

    def deref(self, ref: str) -> Schema:
        prefix = "#/$defs/"
        if not ref.startswith(prefix) or ref[len(prefix) :] not in self.defs:
            raise SchemaError(f"unresolvable $ref {ref!r}")
        return copy.deepcopy(self.defs[ref[len(prefix) :]])

    def convert(self, node: Schema, path: str) -> Schema:
        node = {k: v for k, v in node.items() if k not in _IGNORED}
        if "$ref" in node:
            target = self.deref(node.pop("$ref"))
            # The field's own description is what users read; pydantic leaves it out only when it
            # repeats the class docstring, and then the docstring says the same thing.
            if "description" in node:
                target.pop("description", None)
            return self.convert(_merge(target, node), path)
        if node.get("default", _MISSING) is None:
            del node["default"]
        if "anyOf" in node:
            return self._any_of(node, path)
        if "oneOf" in node:
            return self._flat_union(node, path)
        if "const" in node:
            node["enum"] = [node.pop("const")]
        return self._typed(node, path)

    def _any_of(self, node: Schema, path: str) -> Schema:
        branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
        if len(branches) == 1:
            return self.convert(_merge(branches[0], node), path)
        converted = [self.convert(b, path) for b in branches]
        if sorted(b.get("type", "") for b in converted) != ["integer", "string"]:
            raise SchemaError(f"{path}: only Optional[X] and int | str unions are supported, got {branches}")
        out: Schema = {k: v for k, v in node.items()}
        for branch in converted:
            for key, value in branch.items():
                if key in ("type", "description"):
                    continue
                if key in out and out[key] != value:
                    raise SchemaError(f"{path}: int | str branches disagree on {key}")
                out[key] = value
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        out["x-kubernetes-int-or-string"] = True
        return ordered(out)

    def _typed(self, node: Schema, path: str) -> Schema:
        kind = node.get("type")
        if kind not in ("object", "array", "string", "integer", "number", "boolean"):
            raise SchemaError(f"{path}: node without a supported type: {node}")
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            value = node.get(bound)
            if isinstance(value, int | float) and not isinstance(value, bool):
                node["minimum" if bound == "exclusiveMinimum" else "maximum"] = value
                node[bound] = True
        if node.get("uniqueItems"):
            raise SchemaError(f"{path}: uniqueItems is not allowed in CRDs; use x-kubernetes-list-type: set")
        if kind == "array":
            node["items"] = self.convert(node["items"], f"{path}[]")
        if kind == "object":
            props = node.pop("properties", None)
            extra = node.pop("additionalProperties", _MISSING)
            patterned = node.pop("patternProperties", None)
            if patterned is not None:  # pydantic's spelling of dict[PatternedKey, V]
                if len(patterned) != 1 or extra is not _MISSING:
                    raise SchemaError(f"{path}: only one key pattern per map is supported")
                ((key_pattern, extra),) = patterned.items()
                node["propertyNames"] = {**node.get("propertyNames", {}), "pattern": key_pattern}
            if props is not None:
                node["properties"] = {k: self.convert(props[k], f"{path}.{k}") for k in sorted(props)}
            if extra is True:
                node["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(extra, dict):
                node["additionalProperties"] = self.convert(extra, f"{path}{{}}")
            # additionalProperties: false is what pruning does anyway, and CRDs may not say it.
            keys = node.pop("propertyNames", None)
            if keys is not None:
                node[VALIDATIONS_KEY] = [*node.get(VALIDATIONS_KEY, []), _key_rule(keys, path)]
            if node.get("required"):
                node["required"] = sorted(node["required"])
            else:
                node.pop("required", None)
        misplaced = {k for k in node if k in _KEYS_FOR and kind not in _KEYS_FOR[k]}
        if misplaced:
            raise SchemaError(f"{path}: keywords {sorted(misplaced)} do not apply to type {kind}")
        try:
            return ordered(node)
        except SchemaError as err:
            raise SchemaError(f"{path}: {err}") from None

    def _flat_union(self, node: Schema, path: str) -> Schema:
        """A discriminated union as one object with every variant's properties and CEL rules."""
        disc = node.pop("discriminator", None)
        if not disc:
            raise SchemaError(f"{path}: oneOf without a discriminator cannot be made structural")
        tag_key: str = disc["propertyName"]
        variants: list[tuple[str, str, Schema]] = []
        for ref in node.pop("oneOf"):
            target = self.deref(ref["$ref"])
            doc = _first_line(target.pop("description", None))
            conv = self.convert(target, path)
            tag = conv["properties"][tag_key]["enum"][0]
            if not doc:
                raise SchemaError(f"{path}: variant {tag} needs a docstring; its first line documents the tag")
            variants.append((tag, doc, conv))
        tags = [t for t, _, _ in variants]

        props: dict[str, Schema] = {}
        owners: dict[str, list[str]] = {}
        defaults: dict[str, dict[str, list[str]]] = {}
        for tag, _, conv in variants:
            for name, prop in conv["properties"].items():
                owners.setdefault(name, []).append(tag)
                if "default" in prop:
                    defaults.setdefault(name, {}).setdefault(_show(prop["default"]), []).append(tag)
                shape = {k: v for k, v in prop.items() if k != "default"}
                if name != tag_key and name in props and props[name] != shape:
                    raise SchemaError(
                        f"{path}: property {name} differs between variants ({props[name]} vs {shape}); "
                        "declare it once and share it"
                    )
                props[name] = shape

        universal = [n for n, o in owners.items() if len(o) == len(tags)]
        restricted = {n: o for n, o in owners.items() if len(o) < len(tags)}
        for name, prop in props.items():
            notes = []
            if name in restricted:
                notes.append(f"Applies when {tag_key} is {or_list(restricted[name])}.")
            by_value = defaults.get(name, {})
            same_everywhere = (
                name in universal and len(by_value) == 1 and len(next(iter(by_value.values()))) == len(tags)
            )
            if same_everywhere:
                prop["default"] = _unshow(variants, name)
            elif len(by_value) == 1 and next(iter(by_value)) != "[]":
                notes.append(f"Default: {next(iter(by_value))}.")
            elif len(by_value) > 1:
                parts = [f"{value} for {or_list(ts)}" for value, ts in by_value.items() if value != "[]"]
                notes.append("Default: " + "; ".join(parts) + ".")
            if notes and name != tag_key:
                prop["description"] = " ".join([prop["description"], *notes])
        props[tag_key] = ordered(
            {
                **props[tag_key],
                "description": " ".join([props[tag_key]["description"], *(doc for _, doc, _ in variants)]),
                "enum": tags,
            }
        )

        rules = list(node.pop(VALIDATIONS_KEY, []))
        for name in sorted(restricted):
            allowed = restricted[name]
            cond = f"self.{tag_key} == '{allowed[0]}'" if len(allowed) == 1 else f"self.{tag_key} in {allowed!r}"
            rules.append(
                {
                    "rule": f"!has(self.{name}) || {cond}",
                    "message": forbidden_message(name, tag_key, allowed),
                    "fieldPath": f".{name}",
                    "reason": "FieldValueForbidden",
                }
            )
        everywhere_required = set.intersection(*(set(conv.get("required", [])) for _, _, conv in variants))
        for tag, _, conv in variants:
            for name in conv.get("required", []):
                if name not in everywhere_required:
                    rules.append(
                        {
                            "rule": f"self.{tag_key} != '{tag}' || has(self.{name})",
                            "message": required_message(name, tag_key, tag),
                            "fieldPath": f".{name}",
                            "reason": "FieldValueRequired",
                        }
                    )
        for tag, _, conv in variants:
            for rule in conv.get(VALIDATIONS_KEY, []):
                rules.append({**rule, "rule": f"self.{tag_key} != '{tag}' || ({rule['rule']})"})

        out: Schema = {
            **node,
            "type": "object",
            "properties": {k: props[k] for k in sorted(props)},
            "required": sorted(everywhere_required),
        }
        if rules:
            out[VALIDATIONS_KEY] = rules
        return ordered(out)


def _key_rule(keys: Schema, path: str) -> dict[str, str]:
    """CRDs have no propertyNames; constraints on map keys become one CEL rule instead."""
    if set(keys) - {"type", "minLength", "maxLength", "pattern"}:
        raise SchemaError(f"{path}: map keys may only be limited in length and pattern, got {keys}")
    checks, words = [], []
    if "minLength" in keys:
        checks.append(f"size(k) >= {keys['minLength']}")
        words.append(f"at least {keys['minLength']}")
    if "maxLength" in keys:
        checks.append(f"size(k) <= {keys['maxLength']}")
        words.append(f"at most {keys['maxLength']}")
    if "pattern" in keys:
        if "'" in keys["pattern"] or "\\" in keys["pattern"]:
            raise SchemaError(f"{path}: key pattern must not contain quotes or backslashes")
        checks.append(f"k.matches('{keys['pattern']}')")
    message = "keys must be " + " and ".join(words) + " characters long" if words else "keys are invalid"
    if "pattern" in keys:
        message += f" and match {keys['pattern']}"
    return {"rule": f"self.all(k, {' && '.join(checks)})", "message": message}


def _show(value: Any) -> str:
    """A default as users would write it in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _unshow(variants: list[tuple[str, str, Schema]], name: str) -> Any:
    return variants[0][2]["properties"][name]["default"]
