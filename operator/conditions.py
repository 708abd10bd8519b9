"""Status conditions with apimachinery's rules (``meta.SetStatusCondition``).

``lastTransitionTime`` moves only when a condition's status changes, not when its reason or
message does, and every condition records the generation it was computed from. Tools that compute
health (kstatus, Flux, Argo CD) and people reading ``kubectl describe`` rely on exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sampleforge.api import ConditionStatus, ConditionType, Reason
from sampleforge.api.status import Condition


@dataclass(frozen=True)
class ConditionUpdate:
    type: ConditionType
    status: ConditionStatus
    reason: Reason
    message: str


def set_conditions(current: Sequence[Condition], updates: Sequence[ConditionUpdate], generation: int,
                   now: datetime) -> list[Condition]:
    """Merge ``updates`` into ``current`` (a status.conditions list), apimachinery-style.

    Conditions not mentioned in ``updates`` are kept as they are. The result is ordered by type
    name, so an unchanged status serialises identically and produces no write.
    """
    by_type = {c.type: c for c in current}
    for update in updates:
        previous = by_type.get(update.type)
        since = now if previous is None or previous.status != update.status else previous.last_transition_time
        by_type[update.type] = Condition(type=str(update.type), status=update.status, reason=str(update.reason),
                                         message=update.message, observed_generation=generation,
                                         last_transition_time=since)
    return [by_type[t] for t in sorted(by_type)]


def find(conditions: Sequence[Condition], type_: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
