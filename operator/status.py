"""Composing and writing a run's status: the one place that does it.

While a run is live only its monitor (:mod:`.monitor`) calls :func:`write`; reconcile hands it what
it found before a Job exists (``OperatorContext.preflight``) and wakes it. Once the run has
finished and its monitor has ended, an edit of its spec is recorded by :func:`record_finished_edit`. This module turns an observation into
the status the run should have, checks it against the typed status models of ``api/status.py`` (so
a malformed value fails here, naming the field, rather than as a 422 from the API server), skips the
write when nothing changed, and keeps the bookkeeping that must follow a phase change (transition
counter, run-duration histogram, one Kubernetes Event).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from pydantic import BaseModel

from sampleforge.api import ConditionStatus, ConditionType, Kind, Phase, Reason
from sampleforge.api.constants import TERMINAL_PHASES
from sampleforge.api.status import AugmentationRunStatus, FineTuneRunStatus
from sampleforge.operator.conditions import ConditionUpdate, find, rfc3339, set_conditions
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.lifecycle import Observation

log = logging.getLogger(__name__)
#: The API server refuses Events whose message is longer than this.
EVENT_MESSAGE_LIMIT = 1024
_STATUS_MODELS: dict[Kind, type[BaseModel]] = {
    Kind.AUGMENTATION_RUN: AugmentationRunStatus, Kind.FINE_TUNE_RUN: FineTuneRunStatus}


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def spec_change_condition(ignored: list[str], terminal: bool) -> ConditionUpdate:
    """SpecChangeIgnored: True, naming the fields, while the spec differs from what the Job runs."""
    if not ignored:
        return ConditionUpdate(ConditionType.SPEC_CHANGE_IGNORED, ConditionStatus.FALSE, Reason.SPEC_APPLIED,
                               "the Job runs the current spec")
    when = "the run has finished" if terminal else "the Job is already running"
    return ConditionUpdate(ConditionType.SPEC_CHANGE_IGNORED, ConditionStatus.TRUE, Reason.SPEC_CHANGE_IGNORED,
                           f"{', '.join(ignored)} changed but {when}: only spec.suspend applies to a started run; "
                           "create a new run to use the change, or revert it")


def compose(body: dict[str, Any], obs: Observation, now: datetime, *, job_name: str | None = None,
            progress: dict[str, Any] | None = None, results: dict[str, Any] | None = None,
            committed: bool = False, outputs: dict[str, Any] | None = None, storage: dict[str, Any] | None = None,
            extra_conditions: list[ConditionUpdate] | None = None) -> dict[str, Any]:
    """The full status the run should have; only changed keys are ever sent.

    ``committed``: ``results`` were read from the run's committed output and replace whatever the
    heartbeats said; otherwise they are merged over the current ones (progress so far).
    """
    current = dict(body.get("status") or {})
    generation = int(body["metadata"].get("generation") or 0)
    updates = [*obs.conditions(), *(extra_conditions or [])]
    status: dict[str, Any] = {
        "phase": str(obs.phase),
        "observedGeneration": generation,
        "conditions": set_conditions(list(current.get("conditions") or []), updates, generation, now),
    }
    if job_name:
        status["jobName"] = job_name
    # The run started once: a Job recreated after a deletion, or resumed after a suspend, has a
    # later startTime of its own, but the run's does not move.
    start = current.get("startTime") or obs.start_time
    if start:
        status["startTime"] = start
    if obs.phase in TERMINAL_PHASES:
        status["completionTime"] = current.get("completionTime") or obs.completion_time or rfc3339(now)
    merged = {**(current.get("progress") or {}), **(progress or {})}
    if obs.phase is Phase.SUCCEEDED and merged.get("total"):
        merged.update(done=merged["total"], percent=100, etaSeconds=0, eta="0s")
    if obs.phase in TERMINAL_PHASES:
        merged.pop("stage", None)
    if merged:
        status["progress"] = merged
    if results is not None:
        status["results"] = results if committed else {**(current.get("results") or {}), **results}
    if outputs:
        status["outputs"] = {**(current.get("outputs") or {}), **outputs}
    if storage:
        status["storage"] = storage
    return status


def record_finished_edit(ctx: OperatorContext, kind: Kind, body: dict[str, Any], ignored: list[str]) -> None:
    """A finished run whose spec was edited: record that this generation was seen and what was not
    applied, so that GitOps tools stop waiting for a reconcile that will never come.

    The run's monitor has ended with the run, so this is written from the update handler; the two
    never write the same run at the same time."""
    status = body.get("status") or {}
    generation = int(body["metadata"].get("generation") or 0)
    update = spec_change_condition(ignored or ["spec"], terminal=True)
    previous = find(status.get("conditions") or [], ConditionType.SPEC_CHANGE_IGNORED)
    conditions = set_conditions(list(status.get("conditions") or []), [update], generation, datetime.now(UTC))
    write(ctx, kind, body, {"observedGeneration": generation,
                            "conditions": [{**c, "observedGeneration": generation} for c in conditions]})
    if not previous or previous.get("message") != update.message:
        post_event(body, "Warning", Reason.SPEC_CHANGE_IGNORED, update.message)


def checked(kind: Kind, status: dict[str, Any]) -> dict[str, Any]:
    """``status`` validated by the kind's status model: what the CRD's schema will accept."""
    _STATUS_MODELS[kind].model_validate(status)
    return status


def changed_fields(body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    current = body.get("status") or {}
    return {k: v for k, v in status.items() if current.get(k) != v}


def write(ctx: OperatorContext, kind: Kind, body: dict[str, Any], status: dict[str, Any]) -> bool:
    """Patch what differs from the current status; True when something was written."""
    delta = changed_fields(body, status)
    if not delta:
        return False
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    ctx.kube.patch_run_status(kind, namespace, name, checked(kind, delta))
    ctx.metrics.status_writes.labels(kind=kind).inc()
    old_phase = (body.get("status") or {}).get("phase")
    new_phase = status.get("phase")
    if new_phase and new_phase != old_phase:
        _on_transition(ctx, kind, body, old_phase, new_phase, status)
    return True


def _on_transition(ctx: OperatorContext, kind: Kind, body: dict[str, Any], old: str | None, new: str,
                   status: dict[str, Any]) -> None:
    meta = body["metadata"]
    ctx.metrics.phase_transitions.labels(kind=kind, from_phase=old or "None", to_phase=new).inc()
    ctx.phases[(str(kind), meta["namespace"], meta["name"])] = new
    publish_phase_counts(ctx)
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
    reason = ready["reason"] if ready else new
    message = f"{kind} {meta['name']}: {old or 'new'} → {new}" + (f" ({ready['message']})" if ready else "")
    if new == Phase.FAILED:
        ctx.metrics.job_failures.labels(kind=kind, reason=reason).inc()
        ctx.metrics.record_failure(kind, meta["namespace"], meta["name"], reason)
        post_event(body, "Warning", reason, message)
    else:
        if new == Phase.SUCCEEDED:
            message = f"{message}: {success_summary(kind, status)}"
        post_event(body, "Normal", reason, message)
    if new in TERMINAL_PHASES:
        started = _parse(status.get("startTime"))
        ended = _parse(status.get("completionTime")) or datetime.now(UTC)
        if started is not None:
            ctx.metrics.run_duration.labels(kind=kind, phase=new).observe(max(0.0, (ended - started).total_seconds()))
    log.info("phase changed", extra={"kind": str(kind), "namespace": meta["namespace"], "run": meta["name"],
                                     "from": old, "to": new, "reason": reason})


def success_summary(kind: Kind, status: dict[str, Any]) -> str:
    """What a finished run produced and where, for the success Event: a reader of
    ``kubectl get events`` learns the outcome without opening the status."""
    results, outputs = status.get("results") or {}, status.get("outputs") or {}
    if kind is Kind.AUGMENTATION_RUN:
        parts = [f"{results.get('samplesIn', '?')} rows in, {results.get('samplesOut', '?')} out"]
        where = outputs.get("uri")
    else:
        best = results.get("bestMetric") or {}
        parts = ([f"best {best['name']} {best['value']:.4g} at step {best['step']}"] if best
                 else [f"{results.get('step', '?')} steps"])
        where = outputs.get("modelUri") or outputs.get("uri")
    if where:
        parts.append(f"outputs at {where}")
    if outputs.get("reportUri"):
        parts.append(f"report {outputs['reportUri']}")
    return "; ".join(parts)


def event_message(message: str) -> str:
    """``message`` cut to what the API server accepts in an Event: a long termination message would
    otherwise get the whole Event refused, and lost."""
    return message if len(message) <= EVENT_MESSAGE_LIMIT else message[:EVENT_MESSAGE_LIMIT - 1] + "…"


def post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """A Kubernetes Event on the run."""
    kopf.event(kopf_body(body), type=type_, reason=reason, message=event_message(message))


def kopf_body(body: dict[str, Any]) -> kopf.Body:
    """A run's body (as the API server sent it) as the ``kopf.Body`` that kopf's event functions take."""
    return kopf.Body(cast(kopf.RawBody, body))


def publish_phase_counts(ctx: OperatorContext) -> None:
    counts: dict[tuple[str, str], int] = {}
    for (kind, _, _), phase in ctx.phases.items():
        counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
    ctx.metrics.set_phase_counts(counts, [str(p) for p in Phase], [str(k) for k in Kind])
