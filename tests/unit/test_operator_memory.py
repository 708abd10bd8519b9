"""What the operator keeps per run while thousands of runs sit idle: a sleeping monitor holds no
status it composed, the copy of its last write goes once the watch has delivered it, and the run
bodies kopf keeps have no managedFields."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import kopf
import pytest

from sampleforge.api import Kind, Phase
from sampleforge.api.status import AugmentationRunStatus
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.handlers._common import seen_handler
from sampleforge.operator.metrics import OperatorMetrics
from sampleforge.operator.monitor import _Monitor, monitor_run
from sampleforge.operator.settings import Settings

AR = Kind.AUGMENTATION_RUN


class RecordingKube:
    """Takes every status write, as a healthy API server does."""

    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []

    def patch_run_status(self, kind: Kind, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.writes.append(status)


def context() -> OperatorContext:
    return OperatorContext(settings=Settings(leader_election=False), kube=RecordingKube(),  # type: ignore[arg-type]
                           metrics=OperatorMetrics(), serving=True)


def suspended_run() -> tuple[dict[str, Any], dict[str, Any]]:
    """A suspended run and its suspended Job, as the watches deliver them."""
    job = {"metadata": {"name": "r-aug", "namespace": "ns", "uid": "job-uid", "resourceVersion": "7",
                        "labels": {"sampleforge.io/run-uid": "u"}}, "spec": {"suspend": True}, "status": {}}
    body = {"metadata": {"name": "r", "namespace": "ns", "uid": "u", "generation": 1, "resourceVersion": "9"},
            "spec": {"suspend": True}, "status": {"jobName": "r-aug"}}
    return body, job


class NeverStopped:
    """kopf's stop flag of a daemon that is never stopped (what the monitor reads of it)."""

    def __bool__(self) -> bool:
        return False

    async def wait(self) -> None:
        await asyncio.Event().wait()


def live_statuses() -> int:
    gc.collect()
    # type(), not isinstance(): isinstance reads __class__, which some objects of other tests warn on.
    return sum(1 for o in gc.get_objects() if type(o) is AugmentationRunStatus)


def test_a_sleeping_monitor_holds_no_status_it_composed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)  # no event loop of kopf's here
    ctx = context()
    body, job = suspended_run()
    ctx.children.on_job_event("ADDED", job)

    async def scenario() -> tuple[int, int]:
        stopped = NeverStopped()
        before = live_statuses()
        task = asyncio.create_task(monitor_run(ctx, AR, kopf.Body(body), stopped))  # type: ignore[arg-type]
        for _ in range(200):  # until the first pass has written the phase and the monitor sleeps
            await asyncio.sleep(0.01)
            if ctx.kube.writes:  # type: ignore[attr-defined]
                break
        await asyncio.sleep(0.05)
        during = live_statuses()
        task.cancel()
        return before, during

    before, during = asyncio.run(scenario())
    assert ctx.kube.writes and ctx.kube.writes[0]["phase"] == Phase.SUSPENDED  # type: ignore[attr-defined]
    assert during == before, "the status the pass composed stays alive while the monitor sleeps"


def test_the_copy_of_the_last_write_goes_once_the_watch_has_delivered_it() -> None:
    ctx = context()
    body, _ = suspended_run()
    monitor = _Monitor(ctx, AR, kopf.Body(body))  # type: ignore[arg-type]
    monitor.written = {"phase": "Suspended", "stage": None}
    assert monitor.snapshot()["status"]["phase"] == "Suspended", "not delivered yet: the write still counts"
    assert monitor.written
    body["status"] = {**body["status"], "phase": "Suspended", "stage": None}
    assert monitor.snapshot()["status"]["phase"] == "Suspended"
    assert monitor.written == {}


def test_the_copy_of_the_last_write_stays_while_the_watch_shows_an_older_status() -> None:
    ctx = context()
    body, _ = suspended_run()
    body["status"]["phase"] = "Pending"
    monitor = _Monitor(ctx, AR, kopf.Body(body))  # type: ignore[arg-type]
    monitor.written = {"phase": "Suspended"}
    assert monitor.snapshot()["status"]["phase"] == "Suspended"
    assert monitor.written == {"phase": "Suspended"}


def test_the_run_bodies_kopf_keeps_lose_their_managed_fields() -> None:
    """kopf's live body of a run is the dict the watch delivered; the event handler sees it first."""
    ctx = context()
    raw = {"metadata": {"name": "r", "namespace": "ns", "uid": "u", "resourceVersion": "3",
                        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
           "spec": {}, "status": {"phase": "Pending"}}
    kept = kopf.Body(raw)  # type: ignore[arg-type]
    seen_handler(AR, {"type": "ADDED", "object": raw}, kopf.Memo(ctx=ctx))
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["name"] == "r" and ctx.watch_seen["u"] == "3"
