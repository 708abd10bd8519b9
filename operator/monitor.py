"""One monitor per live run: follow its Job, Pods and heartbeats and keep its status current.

It sleeps until something about the run changes (a Job or Pod event, a heartbeat) or its resync
interval passes, and writes status at most once per ``status_min_interval_seconds``: however
chatty the pods are, a run costs a bounded number of status writes. A Job that stays without pods
gets its FailedCreate Events listed on the schedule of :mod:`podcreate`, the only API read a
monitor makes. It ends when the run reaches a terminal phase.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import kopf
from urllib3.exceptions import HTTPError

from sampleforge.api import Kind, Reason
from sampleforge.api.constants import TERMINAL_PHASES
from sampleforge.operator import status as run_status
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.kube import Forbidden, KubeError
from sampleforge.operator.lifecycle import FAILED_CREATE, RunEvent, observe
from sampleforge.operator.podcreate import FailedCreateProbe, waiting_for_pods
from sampleforge.operator.progress import run_key
from sampleforge.operator.reconcile import outputs_for, reconcile
from sampleforge.operator.render import RunObject

log = logging.getLogger(__name__)
#: A run whose Job is missing this long (deleted by hand) gets it recreated.
MISSING_JOB_GRACE_SECONDS = 15.0


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _last_heartbeat(ctx: OperatorContext, body: dict[str, Any], received: datetime | None) -> datetime | None:
    """The newest of: this operator's last heartbeat, the one recorded in status, and the
    operator's own start (pods get a full timeout window after an operator restart)."""
    recorded = _parse(((body.get("status") or {}).get("progress") or {}).get("lastHeartbeatTime"))
    candidates = [t for t in (received, recorded) if t is not None]
    if not candidates:
        return None
    return max([*candidates, ctx.started_at])


async def _list_failed_creates(ctx: OperatorContext, probe: FailedCreateProbe, job: dict[str, Any],
                                now: float) -> None:
    """One listing of the Job's FailedCreate Events; a refusal or an outage is logged, never fatal."""
    meta = job["metadata"]
    try:
        events = await asyncio.to_thread(ctx.kube.list_job_events, meta["namespace"], meta["uid"], FAILED_CREATE)
    except Forbidden as err:
        log.warning("may not list Events, so a Job that cannot create its pods goes unexplained; grant list on "
                    "events (the chart does)", extra={"job": f"{meta['namespace']}/{meta['name']}", "error": str(err)})
        probe.every = float("inf")  # asking again would be refused again
        events = None
    except (KubeError, HTTPError, OSError) as err:
        log.info("could not list the Job's Events; retrying later", extra={"job": meta["name"], "error": str(err)})
        events = None
    probe.record(events, now)


def _post_new(snapshot: dict[str, Any], events: tuple[RunEvent, ...], posted: set[tuple[str, str]]) -> None:
    """Post each Event once per monitor: the same pod failure seen on every write is one Event."""
    for event in events:
        if (event.reason, event.message) not in posted:
            posted.add((event.reason, event.message))
            kopf.event(snapshot, type=event.type, reason=event.reason, message=event.message)


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
    posted: set[tuple[str, str]] = set()
    probe = FailedCreateProbe(after=settings.pod_create_check_seconds, every=settings.pod_create_check_seconds)
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
            pods = ctx.children.pods(uid)
            probe.track(job["metadata"]["uid"], waiting_for_pods(job, pods), loop.time())
            if probe.due_in(loop.time()) == 0:
                await _list_failed_creates(ctx, probe, job, loop.time())
            now = datetime.now(UTC)
            obs = observe(job, pods, suspended=bool(spec.get("suspend")),
                          last_heartbeat=_last_heartbeat(ctx, snapshot, entry.received_at if entry else None),
                          heartbeat_timeout=float(spec.get("heartbeatTimeoutSeconds", 600)), now=now,
                          job_events=probe.events)
            progress = entry.progress() if entry else None
            results = entry.results(kind) if entry else None
            desired = run_status.compose(snapshot, obs, now, job_name=job["metadata"]["name"], progress=progress,
                                         results=results, outputs=outputs_for(kind, RunObject.from_body({**snapshot, "kind": str(kind)})))
            delta = run_status.changed_fields(snapshot, desired)
            heartbeat_age = (now - entry.received_at).total_seconds() if entry and entry.received_at else None
            # Recorded before the status write: a terminal phase ends this daemon (kopf stops it
            # once the run no longer matches its filter), and what comes after the write may not run.
            ctx.metrics.observe_run(str(kind), namespace, name, desired, heartbeat_age)
            wait = settings.status_min_interval_seconds - (loop.time() - last_write)
            # Phase changes go out at once; progress-only changes respect the write budget.
            if delta and ("phase" in delta or wait <= 0):
                if obs.reason is Reason.HEARTBEAT_TIMEOUT and not (job.get("spec") or {}).get("suspend"):
                    # Before the terminal status, for the same reason: a suspend still to come
                    # would be lost with the Job holding its GPUs.
                    await asyncio.to_thread(ctx.kube.set_job_suspend, namespace, job["metadata"]["name"], True)
                _post_new(snapshot, obs.events, posted)
                await asyncio.to_thread(run_status.write, ctx, kind, snapshot, desired)
                written.update(delta)
                last_write = loop.time()
            elif delta:
                await _sleep(wake, stopped, wait)
                continue
            if obs.phase in TERMINAL_PHASES:
                break
        due = probe.due_in(loop.time())
        await _sleep(wake, stopped, settings.resync_seconds if due is None else min(settings.resync_seconds, due))
    ctx.progress.forget(key)


async def _sleep(wake: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float) -> None:
    """Until something about the run changes, the timeout passes, or kopf stops the daemon: a
    monitor that slept through the stop would hold the shutdown (and a leader handover) up for
    the daemon's whole cancellation timeout."""

    async def until_stopped() -> None:
        await stopped.wait()

    waiters = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(until_stopped())}
    try:
        await asyncio.wait(waiters, timeout=max(0.05, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    wake.clear()
