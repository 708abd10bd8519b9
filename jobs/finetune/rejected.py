"""Rows set aside, with why (see :mod:`.data` for the rules of what is set aside)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sampleforge.jobs.common.records import BadRecord

__all__ = ["Rejected"]


@dataclass
class Rejected:
    """Rows set aside, with why; written next to the model so nobody has to guess what was dropped.

    ``reasons`` counts by reason class ("invalid JSON"), so the counts stay a short table however
    many lines are bad; each row's own entry keeps the full message ("invalid JSON (line 7): ...").
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, source: str, reason: str, row: Any, message: str | None = None) -> None:
        self.reasons[reason] += 1
        self.rows.append({"source": source, "reason": message or reason, "row": row})

    def add_bad(self, source: str, bad: BadRecord) -> None:
        """A record the parser refused."""
        self.add(source, bad.reason, bad.text, bad.message)

    def extend(self, other: Rejected) -> None:
        self.rows.extend(other.rows)
        self.reasons.update(other.reasons)

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "reasons": dict(self.reasons)}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Rejected:
        return cls(list(document["rows"]), Counter(document["reasons"]))
