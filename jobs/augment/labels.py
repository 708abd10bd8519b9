"""The source's labels, as the augmenters that set a label need them: one type for the whole source,
and labels named in the spec converted to it.

A spec names labels in YAML (``label: 0``, ``targetDistribution: {"2": 0.5}``) while the source may
hold integers, floats or strings; a generated row must carry its label in the source's own type, or
the written column would mix types. Deciding that in one place keeps every augmenter's labels
comparable with the source's and with each other's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LabelError", "Labels"]


class LabelError(ValueError):
    """A declared label cannot be expressed in the source's label type; the message names the field."""


@dataclass(frozen=True)
class Labels:
    """The source's labels: their type (decided once over the whole source) and their counts.

    Labels are compared by their string form (``targetDistribution`` keys are strings, and a CSV
    source has only strings), and written in the source's own type.
    """

    kind: str  # "int", "float" or "string"
    counts: Mapping[str, int] = field(default_factory=dict)

    def key(self, value: Any) -> str:
        """The string form a label is counted and matched by (``1.0`` and ``1`` differ only for floats)."""
        if isinstance(value, float) and value.is_integer() and self.kind != "float":
            return str(int(value))
        return str(value)

    def coerce(self, value: Any, field_path: str) -> Any:
        """``value`` (from the spec) in the source's label type."""
        if self.kind == "string":
            return str(value)
        try:
            number = float(value)
        except (TypeError, ValueError) as err:
            raise LabelError(f"{field_path} is {value!r} but the source labels are numbers ({self.kind}); "
                             "give a numeric label") from err
        if self.kind == "int":
            if not number.is_integer():
                raise LabelError(f"{field_path} is {value!r} but the source labels are integers")
            return int(number)
        return number

    def lowest(self, field_path: str) -> Any:
        """The lowest label seen in the source (the default label of hard negatives)."""
        if not self.counts:
            raise LabelError(f"{field_path} is unset and the source has no labelled rows to take the lowest from")
        try:
            values = sorted(self.counts, key=float)
        except ValueError as err:
            raise LabelError(f"{field_path} is unset and the source labels ({', '.join(sorted(self.counts)[:5])}) are "
                             "not numbers, so there is no lowest label; set the label explicitly") from err
        return self.coerce(values[0], field_path)
