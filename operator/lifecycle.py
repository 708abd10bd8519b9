"""From what the cluster shows (the Job, its Pods, the heartbeats) to what the run reports.

A pure function of its inputs, so every branch is unit-tested without a server. The Job's own
conditions decide success and failure (the Job controller already counted retries against
``backoffLimit`` and ``activeDeadlineSeconds``); the Pods explain why a run is not progressing
(unschedulable, image pull errors, OOM kills), and the Job's FailedCreate Events explain why it has
no Pods at all (a ResourceQuota, LimitRange, admission or PodSecurity denial, a missing
ServiceAccount), so nothing ever sits in a silent Pending. Those Events are passed in as data: the
caller decides when listing them is worth an API call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sampleforge.api import ConditionStatus as S
from sampleforge.api import ConditionType as C
from sampleforge.api import Phase, Reason
from sampleforge.api.jobenv import EXIT_DATA_UNREADABLE, EXIT_INVALID_CONFIG, EXIT_MODEL_UNAVAILABLE
from sampleforge.operator.conditions import ConditionUpdate

_IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
#: What the Job controller prefixes to the API server's refusal; the generated pod name differs on
#: every retry, so keeping it would make each retry a new status message (and a new write).
_CREATE_PREFIX = re.compile(r'^Error creating:\s*(?:pods? "[^"]*" is forbidden:\s*)?')
FAILED_CREATE = "FailedCreate"
_JOB_FAILURE_REASONS = {
    "BackoffLimitExceeded": Reason.BACKOFF_LIMIT_EXCEEDED,
    "DeadlineExceeded": Reason.DEADLINE_EXCEEDED,
}


#: Pending for a reason that only a person can remove: kstatus's Stalled, Argo CD's Degraded.
_STALLED_REASONS = frozenset({Reason.IMAGE_PULL_ERROR, Reason.SECRET_NOT_FOUND, Reason.POD_CREATE_FAILED,
                              Reason.UPSTREAM_NOT_FOUND})


@dataclass(frozen=True)
class RunEvent:
    """A Kubernetes Event to post on the run."""

    type: str  # Normal or Warning
    reason: Reason
    message: str


@dataclass(frozen=True)
class Observation:
    phase: Phase
    reason: Reason
    message: str
    start_time: str | None = None
    completion_time: str | None = None
    events: tuple[RunEvent, ...] = field(default=())

    def conditions(self) -> list[ConditionUpdate]:
        """The kstatus trio (Ready, Reconciling, Stalled) plus the domain conditions."""
        phase, reason, message = self.phase, self.reason, self.message
        terminal_failure = phase is Phase.FAILED
        stalled = terminal_failure or reason in _STALLED_REASONS
        in_progress = phase in (Phase.PENDING, Phase.RUNNING, Phase.WAITING) and not stalled

        def cond(type_: C, on: bool, why: Reason | None = None, text: str | None = None) -> ConditionUpdate:
            return ConditionUpdate(type_, S.TRUE if on else S.FALSE, why or reason, text if text is not None else message)

        return [
            cond(C.READY, phase is Phase.SUCCEEDED),
            cond(C.RECONCILING, in_progress),
            cond(C.STALLED, stalled),
            cond(C.WAITING, phase is Phase.WAITING),
            cond(C.SUSPENDED, phase is Phase.SUSPENDED),
            cond(C.COMPLETE, phase is Phase.SUCCEEDED),
            cond(C.FAILED, terminal_failure),
        ]


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _pod_trouble(pods: list[dict[str, Any]]) -> tuple[Reason, str] | None:
    """The most telling problem among the run's Pods, if any."""
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        for status in pod.get("status", {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _IMAGE_PULL_REASONS:
                return Reason.IMAGE_PULL_ERROR, (f"pod {name} cannot pull image {status.get('image')!r}: "
                                                 f"{waiting.get('reason')} {waiting.get('message', '')}".strip())
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        for cond in pod.get("status", {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" \
                    and cond.get("reason") == "Unschedulable":
                return Reason.UNSCHEDULABLE, (f"pod {name} cannot be scheduled: {cond.get('message', '')}; "
                                              "check spec.resources (GPUs), nodeSelector and tolerations")
    return None


#: The jobs' do-not-retry exit codes (api/jobenv), on which the podFailurePolicy fails the Job
#: (condition reason PodFailurePolicy): the run's reason says which kind of input was at fault.
_EXIT_REASONS = {
    EXIT_INVALID_CONFIG: Reason.INVALID_SPEC,
    EXIT_MODEL_UNAVAILABLE: Reason.MODEL_UNAVAILABLE,
    EXIT_DATA_UNREADABLE: Reason.DATASET_UNREADABLE,
}


def _last_failure(pods: list[dict[str, Any]]) -> tuple[Reason, str] | None:
    """Why the latest failed Pod died (OOMKilled, a do-not-retry exit code, another exit code), for
    the run's message and Events."""
    failures = []
    for pod in pods:
        for status in pod.get("status", {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated and terminated.get("exitCode", 0) != 0:
                failures.append((terminated.get("finishedAt") or "", pod["metadata"]["name"], terminated))
    if not failures:
        return None
    _, name, terminated = max(failures, key=lambda f: f[0])
    if terminated.get("reason") == "OOMKilled":
        return Reason.OOM_KILLED, (f"pod {name} was OOMKilled; raise spec.resources.memory or lower the batch "
                                   "size")
    detail = terminated.get("message") or terminated.get("reason") or "Error"
    code = terminated.get("exitCode")
    reason = _EXIT_REASONS.get(code, Reason.POD_FAILED) if isinstance(code, int) else Reason.POD_FAILED
    return reason, f"pod {name} exited with code {code}: {detail}"


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def event_time(event: dict[str, Any]) -> datetime | None:
    """When a core/v1 Event was last seen, whichever API (core or events.k8s.io) recorded it."""
    series = event.get("series") or {}
    for value in (series.get("lastObservedTime"), event.get("lastTimestamp"), event.get("eventTime"),
                  event.get("firstTimestamp"), (event.get("metadata") or {}).get("creationTimestamp")):
        if value:
            return _parse_time(str(value))
    return None


def _created_since(job: dict[str, Any], pods: list[dict[str, Any]]) -> datetime | None:
    """The last moment the Job demonstrably made progress: a pod created, a start or a resume.
    A FailedCreate Event older than that is history, not the reason for today's Pending."""
    job_status = job.get("status") or {}
    moments = [_parse_time((p.get("metadata") or {}).get("creationTimestamp")) for p in pods]
    moments.append(_parse_time(job_status.get("startTime")))
    moments += [_parse_time(c.get("lastTransitionTime")) for c in job_status.get("conditions") or []
                if c.get("type") == "Suspended"]
    known = [m for m in moments if m is not None]
    return max(known) if known else None


def _create_failure(job: dict[str, Any], pods: list[dict[str, Any]],
                    events: Sequence[dict[str, Any]]) -> tuple[Reason, str] | None:
    """The Job controller's latest refusal to create a pod, unless the Job has moved on since."""
    failures = [(when, e) for e in events if e.get("reason") == FAILED_CREATE and (when := event_time(e))]
    if not failures:
        return None
    when, latest = max(failures, key=lambda f: f[0])
    since = _created_since(job, pods)
    if since is not None and when < since:
        return None
    meta = job.get("metadata") or {}
    cause = _CREATE_PREFIX.sub("", str(latest.get("message") or "")).strip() or "no reason given"
    return Reason.POD_CREATE_FAILED, (
        f"Job {meta.get('name')} cannot create its pods: {cause}. Remove what refuses them in namespace "
        f"{meta.get('namespace')} (a ResourceQuota, LimitRange, admission webhook or PodSecurity policy, or a "
        "missing ServiceAccount); the Job controller keeps retrying and the run starts by itself")


def observe(job: dict[str, Any] | None, pods: list[dict[str, Any]], *, suspended: bool,
            last_heartbeat: datetime | None, heartbeat_timeout: float, now: datetime,
            job_events: Sequence[dict[str, Any]] = ()) -> Observation:
    """The run's phase and why, from its Job and Pods (``job`` None: not created yet).

    ``job_events``: Warning Events recorded on the Job (as the API returns them), when the caller
    listed them; a FailedCreate among them explains a Job that has no pods.
    """
    if job is None:
        return Observation(Phase.SUSPENDED if suspended else Phase.PENDING,
                           Reason.SUSPENDED if suspended else Reason.JOB_PENDING,
                           "run is suspended (spec.suspend)" if suspended else "creating the Job")
    job_name = job["metadata"]["name"]
    job_status = job.get("status") or {}
    start, completion = job_status.get("startTime"), job_status.get("completionTime")

    complete = _job_condition(job, "Complete")
    if complete:
        return Observation(Phase.SUCCEEDED, Reason.SUCCEEDED, f"Job {job_name} completed", start,
                           completion or complete.get("lastTransitionTime"))
    if _job_condition(job, "SuccessCriteriaMet"):
        # The Job controller sets this first, then ends the remaining pods and only then sets
        # Complete and completionTime: the run is done when the Job is.
        return Observation(Phase.RUNNING, Reason.JOB_RUNNING,
                           f"Job {job_name} met its success criteria; waiting for it to complete", start)

    failed = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget")
    if failed:
        reason = _JOB_FAILURE_REASONS.get(failed.get("reason", ""), Reason.JOB_FAILED)
        message = f"Job {job_name} failed: {failed.get('message') or failed.get('reason')}"
        pod_failure = _last_failure(pods)
        if pod_failure is not None:
            if pod_failure[0] is Reason.OOM_KILLED or pod_failure[0] in _EXIT_REASONS.values():
                reason = pod_failure[0]
            message = f"{message}; last failure: {pod_failure[1]}"
        return Observation(Phase.FAILED, reason, message, start, failed.get("lastTransitionTime"))

    if suspended:
        return Observation(Phase.SUSPENDED, Reason.SUSPENDED,
                           f"Job {job_name} is suspended; set spec.suspend to false to resume", start)
    if (job.get("spec") or {}).get("suspend"):
        return Observation(Phase.PENDING, Reason.QUEUED,
                           f"Job {job_name} is queued: suspended until its queue (spec.queueName) admits it", start)

    events: tuple[RunEvent, ...] = ()
    pod_failure = _last_failure(pods)
    if pod_failure is not None:
        events = (RunEvent("Warning", *pod_failure),)

    running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
    if running:
        # The Job controller records the Job's startTime in a status write of its own, which the
        # operator may see after the pods it started: a running run always has a start.
        start = start or min((str(p["status"]["startTime"]) for p in running if p["status"].get("startTime")),
                             default=None)
        started = _parse_time(start)
        reference = last_heartbeat or started
        if reference is not None and (now - reference).total_seconds() > heartbeat_timeout:
            what = "no heartbeat" if last_heartbeat is None else f"last heartbeat at {last_heartbeat:%Y-%m-%dT%H:%M:%SZ}"
            return Observation(Phase.FAILED, Reason.HEARTBEAT_TIMEOUT,
                               f"{what}; the pods sent no progress for more than {heartbeat_timeout:.0f}s "
                               "(spec.heartbeatTimeoutSeconds); the Job was suspended to free its GPUs",
                               start, None, events)
        active = job_status.get("active", 0)
        return Observation(Phase.RUNNING, Reason.JOB_RUNNING,
                           f"Job {job_name}: {active} pod(s) active, {len(running)} running", start, None, events)

    if job_status.get("succeeded") and not job_status.get("failed") and not _pod_trouble(pods):
        # Between a pod's exit and the Job's completion (or between the indexes of an Indexed
        # Job), nothing runs, yet the run has not gone back to waiting for its pods.
        return Observation(Phase.RUNNING, Reason.JOB_RUNNING,
                           f"Job {job_name}: {job_status.get('succeeded')} pod(s) finished, waiting for the rest",
                           start, None, events)
    trouble = _pod_trouble(pods) or _create_failure(job, pods, job_events)
    if trouble is not None:
        if trouble[0] is Reason.POD_CREATE_FAILED:
            events = (*events, RunEvent("Warning", *trouble))
        return Observation(Phase.PENDING, trouble[0], trouble[1], start, None, events)
    return Observation(Phase.PENDING, Reason.JOB_PENDING, f"Job {job_name} created; waiting for its pods to start",
                       start, None, events)
