"""One monitor per live run: follow its Job, Pods and heartbeats and keep its status current.

It sleeps until something about the run changes (a Job or Pod event, a heartbeat) or its resync
interval passes, and writes status at most once per ``status_min_interval_seconds``: however
chatty the pods are, a run costs a bounded number of status writes. It ends when the run reaches a
terminal phase.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import kopf

from sampleforge.api import Kind, Reason
from sampleforge.api.constants import TERMINAL_PHASES
from sampleforge.operator import status as run_status
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.lifecycle import observe
from sampleforge.operator.progress import run_key
from sampleforge.operator.reconcile import outputs_for, reconcile
from sampleforge.operator.render import RunObject

log = logging.getLogger(__name__)
#: A run whose Job is missing this long (deleted by hand) gets it recreated.
MISSING_JOB_GRACE_SECONDS = 15.0


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _last_heartbeat(ctx: OperatorContext, body: dict[str, Any], received: datetime | None) -> datetime | None:
    """The newest of: this operator's last heartbeat, the one recorded in status, and the
    operator's own start (pods get a full timeout window after an operator restart)."""
    recorded = _parse(((body.get("status") or {}).get("progress") or {}).get("lastHeartbeatTime"))
    candidates = [t for t in (received, recorded) if t is not None]
    if not candidates:
        return None
    return max([*candidates, ctx.started_at])


async def monitor_run(ctx: OperatorContext, kind: Kind, body: kopf.Body, stopped: kopf.DaemonStopped) -> None:
    meta = body["metadata"]
    uid, namespace, name = meta["uid"], meta["namespace"], meta["name"]
    key = run_key(kind, namespace, name)
    wake = ctx.children.wake_event(uid)
    settings = ctx.settings
    loop = asyncio.get_running_loop()
    last_write = 0.0
    missing_since: float | None = None
    # What this monitor wrote last: the watch may not have delivered it back into `body` yet, and
    # comparing against a stale status would write (and announce) the same change twice.
    written: dict[str, Any] = {}
    while not stopped:
        snapshot = dict(body)
        snapshot["status"] = {**(snapshot.get("status") or {}), **written}
        phase = (snapshot.get("status") or {}).get("phase")
        if phase in TERMINAL_PHASES:
            break
        spec = snapshot.get("spec") or {}
        job = ctx.children.job(uid)
        if job is None:
            # Reconcile creates the Job; if it stays gone (deleted by hand), create it again.
            missing_since = missing_since or loop.time()
            had_job = bool((snapshot.get("status") or {}).get("jobName"))
            if had_job and loop.time() - missing_since > MISSING_JOB_GRACE_SECONDS and ctx.serving:
                log.warning("job missing; recreating", extra={"kind": str(kind), "namespace": namespace, "run": name})
                try:
                    await asyncio.to_thread(reconcile, ctx, kind, snapshot)
                except (kopf.TemporaryError, kopf.PermanentError):
                    pass
                missing_since = None
        else:
            missing_since = None
            entry = ctx.progress.get(key, uid)
            now = datetime.now(UTC)
            obs = observe(job, ctx.children.pods(uid), suspended=bool(spec.get("suspend")),
                          last_heartbeat=_last_heartbeat(ctx, snapshot, entry.received_at if entry else None),
                          heartbeat_timeout=float(spec.get("heartbeatTimeoutSeconds", 600)), now=now)
            progress = entry.progress() if entry else None
            results = entry.results(kind) if entry else None
            desired = run_status.compose(snapshot, obs, now, job_name=job["metadata"]["name"], progress=progress,
                                         results=results, outputs=outputs_for(kind, RunObject.from_body({**snapshot, "kind": str(kind)})))
            delta = run_status.changed_fields(snapshot, desired)
            wait = settings.status_min_interval_seconds - (loop.time() - last_write)
            # Phase changes go out at once; progress-only changes respect the write budget.
            if delta and ("phase" in delta or wait <= 0):
                await asyncio.to_thread(run_status.write, ctx, kind, snapshot, desired)
                written.update(delta)
                last_write = loop.time()
                for event in obs.events:
                    kopf.event(snapshot, type=event.type, reason=event.reason, message=event.message)
                if obs.reason is Reason.HEARTBEAT_TIMEOUT and not (job.get("spec") or {}).get("suspend"):
                    await asyncio.to_thread(ctx.kube.set_job_suspend, namespace, job["metadata"]["name"], True)
            elif delta:
                await _sleep(wake, stopped, wait)
                continue
            heartbeat_age = (now - entry.received_at).total_seconds() if entry and entry.received_at else None
            ctx.metrics.observe_run(str(kind), namespace, name, desired, heartbeat_age)
            if obs.phase in TERMINAL_PHASES:
                break
        await _sleep(wake, stopped, settings.resync_seconds)
    ctx.progress.forget(key)


async def _sleep(wake: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float) -> None:
    try:
        await asyncio.wait_for(wake.wait(), timeout=max(0.05, timeout))
    except TimeoutError:
        pass
    wake.clear()
