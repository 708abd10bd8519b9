"""Writing a run's status: the one place that does it.

Every writer (the reconcile handlers, the monitors) describes what it saw; this module turns that
into a status patch, skips the write when nothing changed, and keeps the bookkeeping that must
follow a phase change (transition counter, run-duration histogram, a Kubernetes Event).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import kopf

from sampleforge.api import Kind, Phase
from sampleforge.api.constants import TERMINAL_PHASES
from sampleforge.operator.conditions import rfc3339, set_conditions
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.lifecycle import Observation

log = logging.getLogger(__name__)


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def compose(body: dict[str, Any], obs: Observation, now: datetime, *, job_name: str | None = None,
            progress: dict[str, Any] | None = None, results: dict[str, Any] | None = None,
            outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full status the run should have; only changed keys are ever sent."""
    current = dict(body.get("status") or {})
    generation = int(body["metadata"].get("generation") or 0)
    status: dict[str, Any] = {
        "phase": str(obs.phase),
        "observedGeneration": generation,
        "conditions": set_conditions(list(current.get("conditions") or []), obs.conditions(), generation, now),
    }
    if job_name:
        status["jobName"] = job_name
    if obs.start_time:
        status["startTime"] = obs.start_time
    if obs.phase in TERMINAL_PHASES:
        status["completionTime"] = obs.completion_time or current.get("completionTime") or rfc3339(now)
    if progress:
        merged = {**(current.get("progress") or {}), **progress}
        if obs.phase is Phase.SUCCEEDED and merged.get("total"):
            merged.update(done=merged["total"], percent=100, etaSeconds=0, eta="0s")
        status["progress"] = merged
    elif obs.phase is Phase.SUCCEEDED and current.get("progress", {}).get("total"):
        status["progress"] = {**current["progress"], "done": current["progress"]["total"], "percent": 100,
                              "etaSeconds": 0, "eta": "0s"}
    if results:
        status["results"] = {**(current.get("results") or {}), **results}
    if outputs:
        status["outputs"] = {**(current.get("outputs") or {}), **outputs}
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
    ctx.kube.patch_run_status(kind, namespace, name, delta)
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
        kopf.warn(body, reason=reason, message=message)
    else:
        kopf.info(body, reason=reason, message=message)
    if new in TERMINAL_PHASES:
        started = _parse(status.get("startTime"))
        ended = _parse(status.get("completionTime")) or datetime.now(UTC)
        if started is not None:
            ctx.metrics.run_duration.labels(kind=kind, phase=new).observe(max(0.0, (ended - started).total_seconds()))
    log.info("phase changed", extra={"kind": str(kind), "namespace": meta["namespace"], "run": meta["name"],
                                     "from": old, "to": new, "reason": reason})


def publish_phase_counts(ctx: OperatorContext) -> None:
    counts: dict[tuple[str, str], int] = {}
    for (kind, _, _), phase in ctx.phases.items():
        counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
    ctx.metrics.set_phase_counts(counts, [str(p) for p in Phase], [str(k) for k in Kind])
