"""Status conditions with apimachinery's rules (``meta.SetStatusCondition``).

``lastTransitionTime`` moves only when a condition's status changes, not when its reason or
message does, and every condition records the generation it was computed from. Tools that compute
health (kstatus, Flux, Argo CD) and people reading ``kubectl describe`` rely on exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sampleforge.api import ConditionStatus, ConditionType, Reason


@dataclass(frozen=True)
class ConditionUpdate:
    type: ConditionType
    status: ConditionStatus
    reason: Reason
    message: str


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def set_conditions(current: list[dict[str, Any]], updates: list[ConditionUpdate], generation: int,
                   now: datetime) -> list[dict[str, Any]]:
    """Merge ``updates`` into ``current`` (a status.conditions list), apimachinery-style.

    Conditions not mentioned in ``updates`` are kept as they are. The result is ordered by type
    name, so an unchanged status serialises identically and produces no write.
    """
    by_type = {c["type"]: dict(c) for c in current}
    for update in updates:
        previous = by_type.get(update.type)
        transitioned = previous is None or previous.get("status") != update.status
        by_type[update.type] = {
            "type": str(update.type),
            "status": str(update.status),
            "reason": str(update.reason),
            "message": update.message,
            "observedGeneration": generation,
            "lastTransitionTime": rfc3339(now) if transitioned or previous is None
            else previous.get("lastTransitionTime", rfc3339(now)),
        }
    return [by_type[t] for t in sorted(by_type)]


def find(conditions: list[dict[str, Any]], type_: ConditionType) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)
