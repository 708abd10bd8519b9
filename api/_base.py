"""The base model and the rule type that keep Python validation and CRD validation in step.

A spec is validated twice: by the API server when a user applies it (OpenAPI schema + CEL rules in
the generated CRD) and by pydantic when the operator or a job reads it. Both must accept and reject
the same documents, with messages that name the field. So every cross-field rule is written once,
as a :class:`Rule` that carries both its CEL expression (for the CRD) and a Python predicate (for
pydantic), next to each other where a reviewer sees both.

A :class:`Rule` can sit in two places:

* in ``Annotated[...]`` metadata of a field type: it then validates that value (``self`` in CEL is
  the value) and lands in that property's ``x-kubernetes-validations``;
* in a model's ``kube_rules`` class variable: it then validates the whole object (``self`` in CEL is
  the object, the predicate receives the model instance).

Transition rules (``oldSelf``) have no Python predicate: only the API server sees the old object.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

#: Reasons the API server understands for a CEL rule (apiextensions ``ValidationRule.reason``).
RuleReason = Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"]

#: The key under which rules live in an OpenAPI schema node.
VALIDATIONS_KEY = "x-kubernetes-validations"


@dataclass(frozen=True)
class Rule:
    """One validation rule, expressed for both the API server (CEL) and Python.

    ``message`` is shown verbatim by both: it must name the field and say what to do.
    ``field_path`` (e.g. ``".rank"``) points the API server's error at the offending child field.
    ``check`` returns True when the value is valid; ``None`` means "API server only".
    """

    cel: str
    message: str
    check: Callable[[Any], bool] | None = None
    field_path: str | None = None
    reason: RuleReason | None = None

    def to_crd(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry, keys in a stable order."""
        out = {"rule": self.cel, "message": self.message}
        if self.field_path is not None:
            out["fieldPath"] = self.field_path
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    # --- pydantic hooks, used when the rule sits in Annotated[...] metadata ---------------------

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        inner = handler(source)
        if self.check is None:
            return inner
        return core_schema.no_info_after_validator_function(self._validate_value, inner)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        # A field-level rule belongs to this use of the type, not to the referenced definition:
        # never resolve $ref here, add the rule beside it (the CRD generator merges the two).
        return with_rules(handler(schema), [self])

    def _validate_value(self, value: Any) -> Any:
        assert self.check is not None
        if not self.check(value):
            raise ValueError(self.message)
        return value


def with_rules(node: JsonSchemaValue, rules: list[Rule]) -> JsonSchemaValue:
    """A copy of ``node`` with ``rules`` appended to its CEL validations."""
    if not rules:
        return node
    existing = list(node.get(VALIDATIONS_KEY, []))
    return {**node, VALIDATIONS_KEY: existing + [r.to_crd() for r in rules]}


def regex_check(pattern: str) -> Callable[[Any], bool]:
    """A predicate with the semantics of CEL's ``matches``: RE2 search, anchored only by ^/$ in the
    pattern. Python's ``$`` would also accept a trailing newline, which RE2 does not, so values with
    a newline are rejected outright (none of the patterns here allows one)."""
    compiled = re.compile(pattern)
    return lambda value: isinstance(value, str) and "\n" not in value and compiled.search(value) is not None


def _model_rules_to_schema(schema: dict[str, Any], cls: type[Any]) -> None:
    """pydantic ``json_schema_extra`` hook: a model's ``kube_rules`` become its CEL validations."""
    rules = [r.to_crd() for r in getattr(cls, "kube_rules", ())]
    if rules:
        schema[VALIDATIONS_KEY] = list(schema.get(VALIDATIONS_KEY, [])) + rules


class ApiModel(BaseModel):
    """Base of every spec and status model.

    * YAML/JSON keys are camelCase (what the API server stores), Python attributes snake_case;
      both spellings are accepted on input so Python code can build models by attribute name.
    * Unknown keys are errors: the API server prunes unknown fields silently, so Python is the only
      place a typo in a hand-written spec can be caught before it is applied.
    * ``kube_rules`` are object-level rules, checked here and emitted into the CRD.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        protected_namespaces=(),
        use_enum_values=False,
        validate_default=False,
        json_schema_extra=_model_rules_to_schema,
    )

    kube_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_kube_rules(self) -> Self:
        failed = [r.message for r in type(self).kube_rules if r.check is not None and not r.check(self)]
        if failed:
            raise ValueError("; ".join(failed))
        return self

    def to_kube(self) -> dict[str, Any]:
        """The camelCase dict to send to the API server: unset optional fields are left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
