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
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import kopf
from pydantic import BaseModel, ValidationError

from sampleforge.api import ConditionStatus, ConditionType, Kind, Phase, Reason
from sampleforge.api.common import Storage
from sampleforge.api.constants import TERMINAL_PHASES, Step
from sampleforge.api.manifest import describe
from sampleforge.api.status import (
    STATUS_MODELS,
    AugmentationResults,
    AugmentationRunStatus,
    FineTuneResults,
    Progress,
    RunOutputs,
    RunResults,
    RunStatus,
)
from sampleforge.operator.conditions import ConditionUpdate, find, set_conditions
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.lifecycle import Observation

log = logging.getLogger(__name__)
#: The API server refuses Events whose message is longer than this many bytes.
EVENT_MESSAGE_LIMIT = 1024
_ELLIPSIS = "…"
M = TypeVar("M", bound=BaseModel)


def spec_change_condition(ignored: list[str], terminal: bool) -> ConditionUpdate:
    """SpecChangeIgnored: True, naming the fields, while the spec differs from what the Job runs."""
    if not ignored:
        return ConditionUpdate(ConditionType.SPEC_CHANGE_IGNORED, ConditionStatus.FALSE, Reason.SPEC_APPLIED,
                               "the Job runs the current spec")
    when = "the run has finished" if terminal else "the Job is already running"
    return ConditionUpdate(ConditionType.SPEC_CHANGE_IGNORED, ConditionStatus.TRUE, Reason.SPEC_CHANGE_IGNORED,
                           f"{', '.join(ignored)} changed but {when}: only spec.suspend applies to a started run; "
                           "create a new run to use the change, or revert it")


def current_status(kind: Kind, body: Mapping[str, Any]) -> RunStatus:
    """The run's status as the API server holds it, typed. A status someone wrote by hand that the
    model refuses keeps the fields that do validate: the rest is recomposed, never trusted."""
    model = STATUS_MODELS[kind]
    raw = dict(body.get("status") or {})
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        log.warning("ignoring the parts of the run's status that do not validate",
                    extra={"kind": str(kind), "run": body["metadata"].get("name"), "error": describe(err)})
    kept: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            model.model_validate({key: value})
        except ValidationError:
            continue
        kept[key] = value
    return model.model_validate(kept)


def _overlay(base: M | None, new: M | None) -> M | None:
    """``new``'s set fields over ``base``'s: heartbeats and notes report what they know, the rest stays."""
    if base is None or new is None:
        return new if base is None else base
    return type(base).model_validate({**base.model_dump(exclude_none=True), **new.model_dump(exclude_none=True)})


def _time(value: datetime | str | None) -> datetime | None:
    if isinstance(value, str):
        return datetime.fromisoformat(value).astimezone(UTC)
    return value


def compose(kind: Kind, body: Mapping[str, Any], obs: Observation, now: datetime, *, job_name: str | None = None,
            progress: Progress | None = None, results: RunResults | None = None, committed: bool = False,
            outputs: RunOutputs | None = None, storage: Storage | None = None,
            extra_conditions: Sequence[ConditionUpdate] = (), stage: Step | None = None) -> RunStatus:
    """The full status the run should have, built from the typed models; only what changed is sent.

    ``committed``: ``results`` were read from the run's committed output and replace whatever the
    heartbeats said; otherwise they are merged over the current ones (progress so far).
    ``stage``: the step a sharded AugmentationRun is at (kept when None: a run never goes back).
    """
    now = now.astimezone(UTC).replace(microsecond=0)  # RFC 3339 to the second, as the API server keeps it
    current = current_status(kind, body)
    generation = int(body["metadata"].get("generation") or 0)
    terminal = obs.phase in TERMINAL_PHASES
    merged = _overlay(current.progress, progress)
    if merged is not None and obs.phase is Phase.SUCCEEDED and merged.total:
        merged = _overlay(merged, Progress(done=merged.total, percent=100, eta_seconds=0, eta="0s"))
    if merged is not None and terminal:
        merged = merged.model_copy(update={"stage": None})
    completion = None
    if terminal:
        completion = current.completion_time or _time(obs.completion_time) or now
    stages = {"stage": stage or current.stage} if isinstance(current, AugmentationRunStatus) else {}
    return type(current).model_validate({
        **stages,
        "phase": obs.phase,
        "observed_generation": generation,
        "conditions": set_conditions(current.conditions, [*obs.conditions(), *extra_conditions], generation, now),
        "job_name": job_name or current.job_name,
        # The run started once: a Job recreated after a deletion, or resumed after a suspend, has a
        # later startTime of its own, but the run's does not move.
        "start_time": current.start_time or _time(obs.start_time),
        "completion_time": completion,
        "progress": merged,
        "results": results if committed else _overlay(current.results, results),
        "outputs": _overlay(current.outputs, outputs),
        "storage": storage or current.storage,
    })


def record_finished_edit(ctx: OperatorContext, kind: Kind, body: dict[str, Any], ignored: list[str]) -> None:
    """A finished run whose spec was edited: record that this generation was seen and what was not
    applied, so that GitOps tools stop waiting for a reconcile that will never come.

    The run's monitor has ended with the run, so this is written from the update handler; the two
    never write the same run at the same time."""
    current = current_status(kind, body)
    generation = int(body["metadata"].get("generation") or 0)
    update = spec_change_condition(ignored or ["spec"], terminal=True)
    previous = find(current.conditions, ConditionType.SPEC_CHANGE_IGNORED)
    conditions = set_conditions(current.conditions, [update], generation, datetime.now(UTC).replace(microsecond=0))
    write(ctx, kind, body, current.model_copy(update={
        "observed_generation": generation,
        "conditions": [c.model_copy(update={"observed_generation": generation}) for c in conditions]}))
    if previous is None or previous.message != update.message:
        post_event(body, "Warning", Reason.SPEC_CHANGE_IGNORED, update.message)


def changed_fields(body: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status fields whose wire form differs from the run's current status."""
    current = body.get("status") or {}
    return {k: v for k, v in desired.items() if current.get(k) != v}


def _merge_patch(current: Any, desired: Any) -> Any:
    """``desired`` as a JSON merge patch (RFC 7386) over ``current``: a key the status no longer
    has (a finished run's ``progress.stage``) is sent as null, or the API server would keep it."""
    if not isinstance(current, dict) or not isinstance(desired, dict):
        return desired
    patch: dict[str, Any] = {k: None for k in current if k not in desired}
    patch.update({k: _merge_patch(current.get(k), v) for k, v in desired.items()})
    return patch


def status_patch(body: Mapping[str, Any], status: RunStatus) -> dict[str, Any]:
    """The merge patch that turns the run's current status into ``status``; empty when they agree."""
    current = body.get("status") or {}
    return {k: _merge_patch(current.get(k), v) for k, v in changed_fields(body, status.to_kube()).items()}


def write(ctx: OperatorContext, kind: Kind, body: Mapping[str, Any], status: RunStatus) -> bool:
    """Patch what differs from the current status; True when something was written."""
    patch = status_patch(body, status)
    if not patch:
        return False
    meta = body["metadata"]
    ctx.kube.patch_run_status(kind, meta["namespace"], meta["name"], patch)
    ctx.metrics.status_writes.labels(kind=kind).inc()
    old_phase = (body.get("status") or {}).get("phase")
    if status.phase is not None and status.phase != old_phase:
        _on_transition(ctx, kind, body, old_phase, status)
    return True


def _on_transition(ctx: OperatorContext, kind: Kind, body: Mapping[str, Any], old: str | None,
                   status: RunStatus) -> None:
    meta, new = body["metadata"], status.phase
    if new is None:
        return
    ctx.metrics.phase_transitions.labels(kind=kind, from_phase=old or "None", to_phase=new).inc()
    ctx.phases[(str(kind), meta["namespace"], meta["name"])] = new
    publish_phase_counts(ctx)
    ready = find(status.conditions, ConditionType.READY)
    reason = ready.reason if ready else str(new)
    message = f"{kind} {meta['name']}: {old or 'new'} → {new}" + (f" ({ready.message})" if ready else "")
    if new is Phase.FAILED:
        ctx.metrics.job_failures.labels(kind=kind, reason=reason).inc()
        ctx.metrics.record_failure(kind, meta["namespace"], meta["name"], reason)
        post_event(body, "Warning", reason, message)
    else:
        if new is Phase.SUCCEEDED:
            message = f"{message}: {success_summary(status)}"
        post_event(body, "Normal", reason, message)
    if new in TERMINAL_PHASES and status.start_time is not None:
        ended = status.completion_time or datetime.now(UTC)
        ctx.metrics.run_duration.labels(kind=kind, phase=new).observe(
            max(0.0, (ended - status.start_time).total_seconds()))
    log.info("phase changed", extra={"kind": str(kind), "namespace": meta["namespace"], "run": meta["name"],
                                     "from": old, "to": str(new), "reason": reason})


def success_summary(status: RunStatus) -> str:
    """What a finished run produced and where, for the success Event: a reader of
    ``kubectl get events`` learns the outcome without opening the status."""
    results, outputs = status.results, status.outputs or RunOutputs()
    if isinstance(status, AugmentationRunStatus):
        counts = status.results or AugmentationResults()
        shown = ["?" if n is None else str(n) for n in (counts.samples_in, counts.samples_out)]
        parts = [f"{shown[0]} rows in, {shown[1]} out"]
        where = outputs.uri
    else:
        training = results if isinstance(results, FineTuneResults) else FineTuneResults()
        best = training.best_metric
        parts = ([f"best {best.name} {best.value:.4g} at step {best.step}"] if best
                 else [f"{'?' if training.step is None else training.step} steps"])
        where = outputs.model_uri or outputs.uri
    if where:
        parts.append(f"outputs at {where}")
    if outputs.report_uri:
        parts.append(f"report {outputs.report_uri}")
    return "; ".join(parts)


def event_message(message: str) -> str:
    """``message`` cut to what the API server accepts in an Event: at most 1024 *bytes* of UTF-8
    (kopf cuts at 1024 characters, which a message with "→" or non-Latin text exceeds), or the
    whole Event is refused, and lost. The cut never splits a character."""
    encoded = message.encode("utf-8")
    if len(encoded) <= EVENT_MESSAGE_LIMIT:
        return message
    room = EVENT_MESSAGE_LIMIT - len(_ELLIPSIS.encode("utf-8"))
    return encoded[:room].decode("utf-8", errors="ignore") + _ELLIPSIS


def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """A Kubernetes Event on the run."""
    kopf.event(kopf_body(body), type=type_, reason=reason, message=event_message(message))


def kopf_body(body: Mapping[str, Any]) -> kopf.Body:
    """A run's body (as the API server sent it) as the ``kopf.Body`` that kopf's event functions take."""
    return kopf.Body(cast(kopf.RawBody, body))


def publish_phase_counts(ctx: OperatorContext) -> None:
    counts: dict[tuple[str, str], int] = {}
    # A copy taken in one step: a transition is recorded from a monitor's write thread while the
    # watch handlers change the dict ("dictionary changed size during iteration" otherwise).
    for (kind, _, _), phase in list(ctx.phases.items()):
        counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
    ctx.metrics.set_phase_counts(counts, [str(p) for p in Phase], [str(k) for k in Kind])
