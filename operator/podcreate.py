"""When to ask the API server why a run's Job has no pods, with the fewest calls that still answer.

When the Job controller cannot create a Job's pods (a ResourceQuota, a LimitRange, an admission
webhook or PodSecurity denial, a missing ServiceAccount) the only trace is a Warning Event
``FailedCreate`` on the Job: the Job's status does not change. Watching every Event in the cluster
would cost far more than the answer is worth, so each run's monitor reads its Job's FailedCreate
Events (from one listing of its namespace's, :mod:`.eventcache`) only once the Job has had no live pods
for ``after`` seconds, and then at most every ``every`` seconds until it gets pods, doubling the
interval (up to ``longest``) while the listings find nothing: a Job without pods for a reason that
leaves no Event (a slow Job controller) must not cost a call every few seconds for ever. A Job
whose pods come up within ``after`` seconds, which is nearly all of them, costs no call at all.

Pure bookkeeping on a clock the caller passes in; the monitor does the listing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_LIVE_POD_PHASES = frozenset({"Pending", "Running"})
_FINISHED_JOB_CONDITIONS = frozenset({"Complete", "Failed", "SuccessCriteriaMet", "FailureTarget"})


def waiting_for_pods(job: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """True while the Job should have pods but has none alive: not suspended, not finished, and
    none of its pods Pending or Running."""
    if (job.get("spec") or {}).get("suspend"):
        return False
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in _FINISHED_JOB_CONDITIONS and cond.get("status") == "True":
            return False
    return not any((p.get("status") or {}).get("phase") in _LIVE_POD_PHASES for p in pods)


@dataclass
class FailedCreateProbe:
    """One run's schedule for listing its Job's FailedCreate Events, and the latest answer."""

    #: Seconds a Job must have been without live pods before its Events are first listed.
    after: float
    #: Seconds between two listings while it stays without pods and a listing found Events.
    every: float
    #: Longest interval between listings that found nothing (the interval doubles up to it).
    longest: float = 300.0
    #: The FailedCreate Events of the last listing (empty once the Job has live pods again).
    events: list[dict[str, Any]] = field(default_factory=list)
    _job_uid: str | None = None
    _podless_since: float | None = None
    _checked_at: float | None = None
    _interval: float | None = None

    def track(self, job_uid: str, waiting: bool, now: float) -> None:
        """Record what the monitor sees now: which Job, and whether it is waiting for pods."""
        if job_uid != self._job_uid:  # a recreated Job has Events of its own
            self._job_uid, self._podless_since, self._checked_at, self.events = job_uid, None, None, []
            self._interval = None
        if not waiting:
            self._podless_since, self._checked_at, self.events, self._interval = None, None, [], None
        elif self._podless_since is None:
            self._podless_since = now

    def due_in(self, now: float) -> float | None:
        """Seconds until the next listing is due (0: now), or None while none is needed."""
        if self._podless_since is None:
            return None
        first = self._podless_since + self.after
        due = first if self._checked_at is None else max(first, self._checked_at + (self._interval or self.every))
        return max(0.0, due - now)

    def record(self, events: list[dict[str, Any]] | None, now: float) -> None:
        """The result of a listing (None: it failed; keep the previous answer, retry on schedule)."""
        self._checked_at = now
        if events is not None:
            self.events = events
            # Nothing to show: ask less and less often; something to show: keep it current.
            self._interval = self.every if events else min(self.longest, 2 * (self._interval or self.every / 2))
