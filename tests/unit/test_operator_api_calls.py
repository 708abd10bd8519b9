"""The operator's calls to the API server: every one is bounded in time, and a write the server could
not take (a 504 while it restarts, a 429) is retried within seconds, backing off, rather than on
the next resync. Pure logic and source inspection; no servers."""

from __future__ import annotations

import ast
import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sampleforge.api import Kind, Phase, Reason
from sampleforge.operator import kube as kube_module
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.kube import REQUEST_TIMEOUT, Kube, Transient, _translate
from sampleforge.operator.lifecycle import Observation
from sampleforge.operator.metrics import OperatorMetrics
from sampleforge.operator.monitor import WRITE_RETRY_SECONDS, _Monitor
from sampleforge.operator.settings import Settings
from sampleforge.operator.status import compose

OPERATOR = Path(kube_module.__file__).parent
#: The attributes the operator keeps its kubernetes-client API objects under.
API_OBJECTS = {"core", "batch", "custom", "auth", "coordination"}


def direct_client_calls(tree: ast.AST) -> list[ast.Call]:
    """Calls like ``self.core.read_namespaced_pod(...)``: a method of a client API object, called
    directly instead of being handed to ``Kube._call`` (which adds the timeout itself)."""
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Attribute) and node.func.value.attr in API_OBJECTS]


@pytest.mark.parametrize("module", sorted(OPERATOR.rglob("*.py")), ids=lambda p: str(p.relative_to(OPERATOR)))
def test_every_direct_api_call_has_a_request_timeout(module: Path) -> None:
    """Without ``_request_timeout`` a call waits for ever on a server that accepted the connection
    and went silent (etcd stopped): the leader's Lease renewal hung exactly like that."""
    missing = [f"{module.name}:{call.lineno}" for call in direct_client_calls(ast.parse(module.read_text()))
               if not any(k.arg == "_request_timeout" for k in call.keywords)]
    assert not missing, f"API calls without _request_timeout: {missing}"


def test_the_inspection_finds_the_direct_calls_it_checks() -> None:
    """The test above must not pass because it finds nothing."""
    source = (OPERATOR / "leader.py").read_text()
    assert len(direct_client_calls(ast.parse(source))) >= 3


def test_calls_through_kube_get_the_default_timeout() -> None:
    seen: dict[str, Any] = {}

    def fake(*args: Any, **kwargs: Any) -> str:
        seen.update(kwargs)
        return "ok"

    assert Kube(client.ApiClient())._call("reading something", fake) == "ok"
    assert seen["_request_timeout"] == REQUEST_TIMEOUT


@pytest.mark.parametrize("code", [0, 429, 500, 503, 504])
def test_server_trouble_is_transient(code: int) -> None:
    assert isinstance(_translate(ApiException(status=code, reason="Gateway Timeout"), "writing status"), Transient)


class FlakyKube:
    """Refuses the first ``failures`` status writes as a restarting API server does."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.writes: list[dict[str, Any]] = []

    def patch_run_status(self, kind: Kind, namespace: str, name: str, status: dict[str, Any]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise Transient(f"writing the status of {kind} {namespace}/{name}: 504 Gateway Timeout", 504)
        self.writes.append(status)


def test_a_status_write_refused_with_504_is_retried_within_seconds_backing_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)  # no event loop of kopf's here
    flaky = FlakyKube(failures=3)
    ctx = OperatorContext(settings=Settings(leader_election=False), kube=flaky,  # type: ignore[arg-type]
                          metrics=OperatorMetrics(), serving=True)
    body = {"metadata": {"name": "r", "namespace": "ns", "uid": "u", "generation": 1}, "spec": {}, "status": {}}
    monitor = _Monitor(ctx, Kind.AUGMENTATION_RUN, kopf.Body(body))  # type: ignore[arg-type]
    desired = compose(Kind.AUGMENTATION_RUN, body, Observation(Phase.PENDING, Reason.JOB_PENDING, "waiting"),
                      datetime.now(UTC))
    waits = []
    for _ in range(3):
        assert not asyncio.run(monitor.write(body, desired, (), now_loop=0.0))
        waits.append(monitor.write_retry)
    assert waits == [WRITE_RETRY_SECONDS[0], 2 * WRITE_RETRY_SECONDS[0], 4 * WRITE_RETRY_SECONDS[0]]
    assert max(waits) <= WRITE_RETRY_SECONDS[1] <= 10.0, "a refused write is retried in seconds, not on the next resync"
    assert asyncio.run(monitor.write(body, desired, (), now_loop=1.0))
    assert monitor.write_retry == 0.0 and flaky.writes and flaky.writes[0]["phase"] == "Pending"


def test_a_running_run_whose_pod_is_replaced_stays_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor's guard: a pod replaced after a failure (or a cache not yet filled after a
    restart) leaves the Job without a running pod for a moment; the run has not gone back to
    Pending (the flicker Running -> Pending -> Running the issue saw)."""
    ctx = OperatorContext(settings=Settings(leader_election=False), kube=FlakyKube(0),  # type: ignore[arg-type]
                          metrics=OperatorMetrics(), serving=True)
    job = {"metadata": {"name": "r-aug", "namespace": "ns", "uid": "job-uid",
                        "labels": {"sampleforge.io/run-uid": "u"}},
           "spec": {}, "status": {"active": 1, "startTime": "2026-12-03T11:00:00Z"}}
    ctx.children.on_job_event("ADDED", job)
    ctx.children.on_pod_event("ADDED", {"metadata": {"name": "r-aug-0-new", "namespace": "ns",
                                                     "labels": {"sampleforge.io/run-uid": "u"}},
                                        "status": {"phase": "Pending"}})
    body = {"metadata": {"name": "r", "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {}, "status": {"phase": "Running", "jobName": "r-aug"}}
    monitor = _Monitor(ctx, Kind.AUGMENTATION_RUN, kopf.Body(body))  # type: ignore[arg-type]
    found = asyncio.run(monitor.desired(body, now_loop=0.0))
    assert found is not None
    status, obs = found
    assert (status.phase, obs.reason) == (Phase.RUNNING, Reason.JOB_RUNNING)
    fresh = {**body, "status": {}}
    found = asyncio.run(_Monitor(ctx, Kind.AUGMENTATION_RUN, kopf.Body(fresh)).desired(fresh, now_loop=0.0))  # type: ignore[arg-type]
    assert found is not None and found[0].phase is Phase.PENDING, "a run that never ran is still Pending"


def test_an_idle_run_is_composed_again_only_when_something_it_reads_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of suspended or waiting runs each wake every resync: once a pass has found the
    status right, the next pass over the same run, Job and Pods composes nothing (no pydantic
    work), and any new resourceVersion makes it compose again."""
    ctx = OperatorContext(settings=Settings(leader_election=False), kube=FlakyKube(0),  # type: ignore[arg-type]
                          metrics=OperatorMetrics(), serving=True)
    job = {"metadata": {"name": "r-aug", "namespace": "ns", "uid": "job-uid", "resourceVersion": "7",
                        "labels": {"sampleforge.io/run-uid": "u"}},
           "spec": {"suspend": True}, "status": {}}
    ctx.children.on_job_event("ADDED", job)
    body = {"metadata": {"name": "r", "namespace": "ns", "uid": "u", "generation": 1, "resourceVersion": "9"},
            "spec": {"suspend": True}, "status": {"phase": "Suspended", "jobName": "r-aug"}}
    monitor = _Monitor(ctx, Kind.AUGMENTATION_RUN, kopf.Body(body))  # type: ignore[arg-type]
    found = asyncio.run(monitor.desired(body, now_loop=0.0))
    assert found is not None and found[0].phase is Phase.SUSPENDED
    monitor.settled = monitor.inputs  # what monitor_run records when the pass found nothing to write

    composed: list[object] = []
    real_compose = compose

    def counting(*args: Any, **kwargs: Any) -> Any:
        composed.append(args)
        return real_compose(*args, **kwargs)

    monkeypatch.setattr("sampleforge.operator.status.compose", counting)
    assert asyncio.run(monitor.desired(body, now_loop=30.0)) is None
    assert composed == []
    ctx.children.on_job_event("MODIFIED", {**job, "metadata": {**job["metadata"], "resourceVersion": "8"}})
    assert asyncio.run(monitor.desired(body, now_loop=60.0)) is not None
    assert len(composed) == 1
