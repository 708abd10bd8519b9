"""One monitor per run: the one writer of its status.

It sleeps until something about the run changes (a Job or Pod event, a heartbeat, a note from
reconcile) or its resync interval passes, then composes the status the run should have from what
it sees: reconcile's note while there is no Job, the Job and its Pods, the heartbeats while the
work goes on, and the run's committed output once the Job has completed. A Succeeded run's results
are read from that output (:mod:`.committed`), never from the last heartbeat, so an operator that
was down while a run finished still reports exactly what the run committed.

Status is written at most once per ``status_min_interval_seconds`` for progress (phase changes go
out at once), so a run costs a bounded number of writes however chatty its pods are. A write the
API server could not take is retried within seconds. A Job that stays without pods gets its
FailedCreate Events listed on the schedule of :mod:`podcreate`. The monitor ends when the run is
finished and its status says so for the current generation.

A run in steps (:mod:`.steps`: an AugmentationRun with parallelism > 1) is followed through the Job
of the step it is at; when that Job has succeeded and a later step remains, the monitor makes the
next step's Job (the run stays Running) from the spec the earlier Jobs were made from, and only the
last step's success leads to reading the committed output.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from sampleforge.api import ConditionStatus, Kind, Phase, Reason
from sampleforge.api.constants import TERMINAL_PHASES, Step
from sampleforge.api.status import Progress, RunOutputs, RunStatus
from sampleforge.operator import committed as committed_output
from sampleforge.operator import status as run_status
from sampleforge.operator._render_pod import SPEC_VOLUME
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.kube import Forbidden, Invalid, KubeError, Transient
from sampleforge.operator.lifecycle import FAILED_CREATE, Observation, RunEvent, observe
from sampleforge.operator.podcreate import FailedCreateProbe, waiting_for_pods
from sampleforge.operator.progress import run_key
from sampleforge.operator.reconcile import ensure_job, outputs_for, reconcile, refused_message
from sampleforge.operator.render import POD_ONLY_FIELDS, SPEC_KEY, RunObject, StorageUnset, shard_count
from sampleforge.operator.specdrift import LIVE_FIELDS, ignored_fields
from sampleforge.operator.steps import describe, next_step, step_of

log = logging.getLogger(__name__)
#: A run whose Job is missing this long (deleted by hand) gets it recreated.
MISSING_JOB_GRACE_SECONDS = 15.0
#: Retrying a status write the API server could not take: first wait, and the most.
WRITE_RETRY_SECONDS = (1.0, 10.0)
#: Retrying the read of a completed run's committed results: first wait, and the most.
COLLECT_RETRY_SECONDS = (2.0, 60.0)
#: Retrying the creation of a step's Job the API server could not take: first wait, and the most.
ADVANCE_RETRY_SECONDS = (2.0, 60.0)


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


async def _list_namespace_failed_creates(ctx: OperatorContext, namespace: str) -> list[dict[str, Any]]:
    async with ctx.event_listings:
        return await asyncio.to_thread(ctx.kube.list_job_events, namespace, FAILED_CREATE)


async def _list_failed_creates(ctx: OperatorContext, probe: FailedCreateProbe, job: dict[str, Any],
                               now: float) -> None:
    """One listing of the Job's FailedCreate Events; a refusal or an outage is logged, never fatal."""
    meta = job["metadata"]
    try:
        events = await ctx.failed_creates.for_job(meta["namespace"], meta["uid"],
                                                  lambda namespace: _list_namespace_failed_creates(ctx, namespace))
    except Forbidden as err:
        log.warning("may not list Events, so a Job that cannot create its pods goes unexplained; grant list on "
                    "events (the chart does)", extra={"job": f"{meta['namespace']}/{meta['name']}", "error": str(err)})
        probe.every = float("inf")  # asking again would be refused again
        events = None
    except (KubeError, HTTPError, OSError) as err:
        log.info("could not list the Job's Events; retrying later", extra={"job": meta["name"], "error": str(err)})
        events = None
    probe.record(events, now)


def _backoff(previous: float, bounds: tuple[float, float]) -> float:
    first, most = bounds
    return first if previous <= 0 else min(most, previous * 2)


@dataclass
class _Monitor:
    """What one run's monitor remembers between passes."""

    ctx: OperatorContext
    kind: Kind
    body: kopf.Body
    #: What this monitor wrote last: the watch may not have delivered it back into ``body`` yet, and
    #: comparing against a stale status would write (and announce) the same change twice.
    written: dict[str, Any] = field(default_factory=dict)
    posted: set[tuple[str, str]] = field(default_factory=set)
    last_write: float = 0.0
    write_retry: float = 0.0
    missing_since: float | None = None
    collect_retry: float = 0.0
    collect_due: float = 0.0
    #: The committed results once read: a Succeeded run is written from them alone.
    committed: committed_output.Committed | None = None
    #: Why the last read of the committed results failed, repeated until the next attempt.
    collect_error: str | None = None
    #: The next step's Job once made, until the watch delivers it: made again (idempotent) only
    #: after ``advance_due``, so a Job deleted by hand meanwhile is made again too.
    next_job: dict[str, Any] | None = None
    advance_due: float = 0.0
    advance_retry: float = 0.0
    #: Why the last attempt to make the next step's Job failed, repeated until the next attempt.
    advance_error: str | None = None
    #: Status writes made: part of what a pass saw (``written`` changes with each).
    writes: int = 0
    #: What this pass composed from (see :meth:`_inputs`), and what the last pass that found the
    #: status already right composed from: while they are equal, composing again would give the
    #: same status, so it is skipped (thousands of idle runs each resync every 30 s).
    inputs: tuple[Any, ...] | None = None
    settled: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        settings = self.ctx.settings
        self.probe = FailedCreateProbe(after=settings.pod_create_check_seconds, every=settings.pod_create_check_seconds)
        meta = self.body["metadata"]
        self.uid, self.namespace, self.name = meta["uid"], meta["namespace"], meta["name"]
        self.key = run_key(self.kind, self.namespace, self.name)

    def _inputs(self, snapshot: dict[str, Any], job: dict[str, Any] | None, pods: list[dict[str, Any]],
                note: Observation) -> tuple[Any, ...]:
        """Everything a status composed without heartbeats depends on, but the clock: the run's and
        its children's resourceVersions, this monitor's own writes, and the observation (which
        carries the FailedCreate Events found). The clock only matters with running pods, whose
        heartbeat timeout the observation itself reports."""
        return (snapshot["metadata"].get("resourceVersion"), self.writes,
                job["metadata"].get("resourceVersion") if job else None,
                tuple((p["metadata"].get("name"), p["metadata"].get("resourceVersion")) for p in pods), note)

    def unchanged(self, inputs: tuple[Any, ...]) -> bool:
        """Record this pass's inputs; True when the status composed from them is already written."""
        self.inputs = inputs
        return inputs == self.settled

    def snapshot(self) -> dict[str, Any]:
        snapshot = dict(self.body)
        status = snapshot.get("status") or {}
        if self.written and all(status.get(k) == v for k, v in self.written.items()):
            # The watch has delivered what was written: the run's body says it now, and keeping a
            # copy of each idle run's last write (its conditions above all) cost memory per run.
            self.written.clear()
        snapshot["status"] = {**status, **self.written}
        return snapshot

    # -- what the status should be ----------------------------------------------------------------

    async def desired(self, snapshot: dict[str, Any], now_loop: float) -> tuple[RunStatus, Observation] | None:
        """The status to write now and the observation behind it, or None to write nothing yet."""
        ctx, kind = self.ctx, self.kind
        status = snapshot.get("status") or {}
        phase = status.get("phase")
        job = ctx.children.job(self.uid)
        now = datetime.now(UTC)
        if job is None:
            note = ctx.preflight.get(self.uid)
            if status.get("jobName"):
                return await self._job_missing(snapshot, now_loop, now)
            if note is None:
                return None  # reconcile has not said anything yet: it will wake us
            if self.unchanged(self._inputs(snapshot, None, [], note)):
                return None
            return run_status.compose(kind, snapshot, note, now), note
        self.missing_since = None
        spec = snapshot.get("spec") or {}
        entry = ctx.progress.get(self.key, self.uid)
        pods = ctx.children.pods(self.uid)
        self.probe.track(job["metadata"]["uid"], waiting_for_pods(job, pods), now_loop)
        if self.probe.due_in(now_loop) == 0:
            await _list_failed_creates(ctx, self.probe, job, now_loop)
        obs = observe(job, pods, suspended=bool(spec.get("suspend")),
                      last_heartbeat=_last_heartbeat(ctx, snapshot, entry.received_at if entry else None),
                      heartbeat_timeout=float(spec.get("heartbeatTimeoutSeconds", 600)), now=now,
                      job_events=self.probe.events)
        if phase == Phase.RUNNING and obs.phase is Phase.PENDING and obs.reason is Reason.JOB_PENDING:
            # A pod replaced after a failure, or a cache not yet filled after a restart: the run has
            # not gone back to waiting for its first pod.
            obs = Observation(Phase.RUNNING, Reason.JOB_RUNNING, obs.message, obs.start_time, None, obs.events)
        # Heartbeats are not among the inputs, nor is a completed run's committed output.
        if entry is None and obs.phase is not Phase.SUCCEEDED and self.unchanged(self._inputs(snapshot, job, pods,
                                                                                                obs)):
            return None  # nothing has changed since the status was last found right
        step = step_of(job)
        if step is not None and obs.phase is Phase.SUCCEEDED and step is not Step.REDUCE:
            obs, job, step = await self._advance(snapshot, job, step, obs, now_loop)
            entry = None  # the step before reported; the next one's pods report afresh
        results = entry.results(kind) if entry else None
        progress = entry.progress(kind) if entry else None
        committed = False
        run = self._run(snapshot)
        outputs = outputs_for(kind, run) if run is not None else None
        if obs.phase is Phase.SUCCEEDED:
            obs, found = await self._collect(snapshot, obs, now_loop)
            if found is not None:
                results, committed = found.results, True
                if found.rows:
                    progress = (progress or Progress()).model_copy(update={"done": found.rows, "total": found.rows})
                outputs = (outputs or RunOutputs()).model_copy(update=found.outputs.model_dump(exclude_none=True))
        drift = run_status.spec_change_condition(ignored_fields(job, spec), terminal=False)
        if drift.status is ConditionStatus.TRUE:
            # Said once per distinct message (``posted``), as for a finished run's ignored edit.
            obs = replace(obs, events=(*obs.events, RunEvent("Warning", drift.reason, drift.message)))
        if step is not None and obs.phase is not Phase.SUCCEEDED:
            shards = int((job.get("spec") or {}).get("completions") or 1)
            obs = replace(obs, message=f"{describe(step, shards, job['metadata']['name'])}: {obs.message}")
        desired = run_status.compose(kind, snapshot, obs, now, job_name=job["metadata"]["name"], progress=progress,
                                     results=results, committed=committed, outputs=outputs,
                                     storage=run.storage if run is not None else None, extra_conditions=[drift],
                                     stage=step)
        heartbeat_age = (now - entry.received_at).total_seconds() if entry and entry.received_at else None
        ctx.metrics.observe_run(str(kind), self.namespace, self.name, desired, heartbeat_age)
        if obs.reason is Reason.HEARTBEAT_TIMEOUT and not (job.get("spec") or {}).get("suspend"):
            # Before the terminal status: a suspend still to come would be lost with the Job
            # holding its GPUs once this monitor ends.
            await asyncio.to_thread(ctx.kube.set_job_suspend, self.namespace, job["metadata"]["name"], True)
        return desired, obs

    async def _advance(self, snapshot: dict[str, Any], job: dict[str, Any], step: Step, obs: Observation,
                       now_loop: float) -> tuple[Observation, dict[str, Any], Step | None]:
        """``job``, the Job of ``step``, has succeeded: make the next step's Job. Returns the
        observation to report, and the Job and step the run is at now (the next ones once made).
        The run stays Running throughout; a refusal the API server would repeat fails it."""
        waiting = Observation(Phase.RUNNING, Reason.JOB_RUNNING, "", obs.start_time)
        made = self.next_job
        if made is not None and step_of(made) is not step and now_loop < self.advance_due:
            return replace(waiting, message="Job created; waiting for its pods to start"), made, step_of(made)
        if self.advance_error is not None and now_loop < self.advance_due:
            return replace(waiting, message=self.advance_error), job, step
        run = await self._run_for_next_step(snapshot, job)
        following = next_step(self.kind, shard_count(run), step, True) if run is not None else None
        if run is None or following is None:
            return replace(waiting, message=f"Job {job['metadata']['name']} completed, but the next step's Job "
                                            "cannot be made from the run's spec; revert its last edit"), job, step
        try:
            made = await asyncio.to_thread(ensure_job, self.ctx, self.kind, snapshot, run, following)
        except Invalid as err:
            return Observation(Phase.FAILED, Reason.INVALID_SPEC, f"step {following}: {refused_message(err)}",
                               obs.start_time), job, step
        except (KubeError, HTTPError, OSError) as err:
            self.advance_retry = _backoff(self.advance_retry, ADVANCE_RETRY_SECONDS)
            self.advance_due = now_loop + self.advance_retry
            self.advance_error = (f"Job {job['metadata']['name']} completed; cannot create the Job for step "
                                  f"{following} yet ({err}); retrying")
            log.info("could not create the next step's Job yet", extra={"run": self.name, "step": str(following),
                                                                         "error": str(err)})
            return replace(waiting, message=self.advance_error), job, step
        if self.next_job is None or step_of(self.next_job) is not following:
            self.ctx.progress.forget(self.key)  # a new step's pods count their own progress
        self.next_job, self.advance_error, self.advance_retry = made, None, 0.0
        self.advance_due = now_loop + MISSING_JOB_GRACE_SECONDS
        return replace(waiting, message="Job created; waiting for its pods to start"), made, following

    async def _run_for_next_step(self, snapshot: dict[str, Any], job: dict[str, Any]) -> RunObject | None:
        """The run as its earlier steps' Jobs were made: its spec, or, where the spec was edited
        since (which a started run does not apply, but for spec.suspend), the spec those Jobs' pods
        read from their ConfigMap, so all steps work on one spec (parallelism above all)."""
        spec = snapshot.get("spec") or {}
        if not ignored_fields(job, spec):
            return self._run(snapshot)
        try:
            made_from = await asyncio.to_thread(self._spec_job_read, job)
        except (KubeError, HTTPError, OSError, ValueError) as err:
            log.warning("cannot read the spec the run's Job was made from; the next step uses today's spec",
                        extra={"run": self.name, "job": job["metadata"]["name"], "error": str(err)})
            return self._run(snapshot)
        if made_from is None:
            return self._run(snapshot)
        raw = {k: v for k, v in made_from.items() if k not in LIVE_FIELDS}
        raw.update({k: v for k, v in spec.items() if k in LIVE_FIELDS or k in POD_ONLY_FIELDS})
        return self._run({**snapshot, "spec": raw})

    def _spec_job_read(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """The spec ``job``'s pods read (its spec ConfigMap); None when the Job or the map is gone."""
        meta = job["metadata"]
        full = self.ctx.kube.get_job(meta["namespace"], meta["name"])
        volumes = ((((full or {}).get("spec") or {}).get("template") or {}).get("spec") or {}).get("volumes") or []
        config_map = next((v.get("configMap", {}).get("name") for v in volumes if v.get("name") == SPEC_VOLUME),
                          None)
        if not config_map:
            return None
        text = self.ctx.kube.read_config_map_value(meta["namespace"], str(config_map), SPEC_KEY)
        spec = json.loads(text) if text else None
        return spec if isinstance(spec, dict) else None

    def _run(self, snapshot: dict[str, Any]) -> RunObject | None:
        """The run's typed view; None if its spec no longer validates (reconcile reports that)."""
        try:
            return RunObject.from_body({**snapshot, "kind": str(self.kind)}, self.ctx.settings.default_storage)
        except (ValidationError, StorageUnset):
            return None

    async def _job_missing(self, snapshot: dict[str, Any], now_loop: float,
                           now: datetime) -> tuple[RunStatus, Observation] | None:
        """The run had a Job and it is gone (deleted by hand, or not yet in a fresh cache): after a
        grace period, say so and recreate it; the pods resume from what was committed."""
        status = snapshot.get("status") or {}
        self.missing_since = self.missing_since or now_loop
        if now_loop - self.missing_since <= MISSING_JOB_GRACE_SECONDS or not self.ctx.serving:
            return None
        job_name = status["jobName"]
        log.warning("job missing; recreating", extra={"kind": str(self.kind), "namespace": self.namespace,
                                                      "run": self.name, "job": job_name})
        obs = Observation(Phase(status.get("phase") or Phase.PENDING), Reason.JOB_MISSING,
                          f"Job {job_name} was deleted before the run finished; recreating it (its pods resume from "
                          "what the run committed, and the run keeps its startTime)")
        try:
            await asyncio.to_thread(reconcile, self.ctx, self.kind, snapshot)
        except (kopf.TemporaryError, kopf.PermanentError, KubeError) as err:
            log.info("could not recreate the Job yet", extra={"run": self.name, "error": str(err)})
        self.missing_since = now_loop
        return run_status.compose(self.kind, snapshot, obs, now, job_name=job_name), obs

    async def _collect(self, snapshot: dict[str, Any], obs: Observation,
                       now_loop: float) -> tuple[Observation, committed_output.Committed | None]:
        """The Job completed: read what the run committed. Until that read succeeds the run is not
        Succeeded; if the output was never committed, it Failed."""
        if self.committed is not None:
            return obs, self.committed
        job_name = (snapshot.get("status") or {}).get("jobName") or "?"
        waiting = Observation(Phase.RUNNING, Reason.COLLECTING_RESULTS,
                              f"Job {job_name} completed; reading the results it committed", obs.start_time)
        if now_loop < self.collect_due:
            return Observation(Phase.RUNNING, Reason.COLLECTING_RESULTS, self.collect_error or waiting.message,
                               obs.start_time), None
        run = self._run(snapshot)
        if run is None:
            return Observation(Phase.RUNNING, Reason.COLLECTING_RESULTS,
                               f"Job {job_name} completed, but the run's spec no longer validates, so its output "
                               "cannot be located; revert the last edit", obs.start_time), None
        output = str(run.spec.output.uri)
        try:
            found = await asyncio.to_thread(read_run_output, self.ctx, self.kind, run)
        except committed_output.NotCommitted as err:
            return Observation(Phase.FAILED, Reason.OUTPUT_NOT_COMMITTED,
                               f"Job {job_name} completed but its output was not committed: {err}. Nothing under "
                               f"{output} can be trusted; check the pods' logs and rerun under a new name",
                               obs.start_time, obs.completion_time), None
        except (committed_output.Unreachable, KubeError) as err:
            self.collect_retry = _backoff(self.collect_retry, COLLECT_RETRY_SECONDS)
            self.collect_due = now_loop + self.collect_retry
            self.collect_error = (f"Job {job_name} completed; cannot read its committed results yet ({err}); "
                                  f"retrying. Check that the operator can reach {run.storage.endpoint} with the "
                                  "run's credentials")
            return Observation(Phase.RUNNING, Reason.COLLECTING_RESULTS, self.collect_error, obs.start_time), None
        self.committed = found
        return obs, found

    # -- writing ------------------------------------------------------------------------------------

    async def write(self, snapshot: dict[str, Any], desired: RunStatus, events: tuple[RunEvent, ...],
                    now_loop: float) -> bool:
        """Write what changed; False when the API server could not take it (retried soon)."""
        if not self.ctx.serving:
            return True  # a leader that lost its Lease stops writing at once; the next one takes over
        for event in events:
            if (event.reason, event.message) not in self.posted:
                self.posted.add((event.reason, event.message))
                run_status.post_event(snapshot, event.type, event.reason, event.message)
        try:
            await asyncio.to_thread(run_status.write, self.ctx, self.kind, snapshot, desired)
        except (Transient, HTTPError, OSError) as err:
            self.write_retry = _backoff(self.write_retry, WRITE_RETRY_SECONDS)
            log.warning("status write failed; retrying", extra={"run": self.name, "namespace": self.namespace,
                                                                "retry_in": self.write_retry, "error": str(err)})
            return False
        self.write_retry = 0.0
        self.writes += 1
        self.written.update(run_status.changed_fields(snapshot, desired.to_kube()))
        self.last_write = now_loop
        return True


def read_run_output(ctx: OperatorContext, kind: Kind, run: RunObject) -> committed_output.Committed:
    """The run's committed results, read with the run's own storage credentials Secret when it
    names one, else with the operator's own AWS chain (its ServiceAccount's web identity, ...),
    trusting the run's CA bundle."""
    storage = run.storage
    ca_pem = None
    if storage.ca_bundle is not None:
        ca_pem = ctx.kube.read_config_map_value(run.namespace, storage.ca_bundle.name, storage.ca_bundle.key)
        if ca_pem is None:
            raise committed_output.Unreachable(
                f"ConfigMap {storage.ca_bundle.name} (spec.storage.caBundle) or its key {storage.ca_bundle.key} is "
                "missing")
    keys: tuple[str | None, str | None] = (None, None)
    if storage.credentials_secret is not None:
        names = (storage.access_key_key(), storage.secret_key_key())
        values = ctx.kube.read_secret_values(run.namespace, storage.credentials_secret, names)
        if values is None or any(k not in values for k in names):
            raise committed_output.Unreachable(f"Secret {storage.credentials_secret} or its keys are missing")
        keys = (values[names[0]], values[names[1]])
        del values
    s3 = committed_output.storage_client(storage, *keys, ca_pem=ca_pem)
    return committed_output.read_committed(kind, run.uid, str(run.spec.output.uri), s3)


async def monitor_run(ctx: OperatorContext, kind: Kind, body: kopf.Body, stopped: kopf.DaemonStopped) -> None:
    monitor = _Monitor(ctx, kind, body)
    wake = ctx.children.wake_event(monitor.uid)
    loop = asyncio.get_running_loop()
    while not stopped:
        pause = await _one_pass(monitor, loop)
        if pause is None:
            break
        await _sleep(wake, stopped, pause)
    ctx.progress.forget(monitor.key)
    ctx.preflight.pop(monitor.uid, None)


async def _one_pass(monitor: _Monitor, loop: asyncio.AbstractEventLoop) -> float | None:
    """Look at the run once and write what changed. Returns how long to sleep before the next look,
    or None once the run is finished. A function of its own so that what a pass composes (the
    run's snapshot, the status and its conditions) is freed when it returns: held in the loop's
    frame, it stayed alive while the monitor slept, about 12 KiB for each of thousands of idle runs."""
    settings = monitor.ctx.settings
    snapshot = monitor.snapshot()
    status = snapshot.get("status") or {}
    if status.get("phase") in TERMINAL_PHASES:
        return None
    now_loop = loop.time()
    monitor.inputs = None
    found = await monitor.desired(snapshot, now_loop)
    if found is not None:
        desired, obs = found
        delta = run_status.changed_fields(snapshot, desired.to_kube())
        wait = settings.status_min_interval_seconds - (now_loop - monitor.last_write)
        # Phase and step changes go out at once; progress-only changes respect the write budget.
        if delta and ("phase" in delta or "stage" in delta or wait <= 0):
            if not await monitor.write(snapshot, desired, obs.events, now_loop):
                return monitor.write_retry
        elif delta:
            return wait
        else:
            monitor.settled = monitor.inputs
        if obs.phase in TERMINAL_PHASES:
            return None
    due = [d for d in (monitor.probe.due_in(loop.time()),
                       (monitor.collect_due - loop.time()) if monitor.collect_due else None,
                       (monitor.advance_due - loop.time()) if monitor.advance_error else None) if d is not None]
    return min([settings.resync_seconds, *[max(0.0, d) for d in due]])


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

