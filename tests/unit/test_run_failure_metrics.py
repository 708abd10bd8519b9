"""The per-run failure series behind SampleforgeRunFailed, without a server.

The alert used to be computed from a counter without run labels, so it could not say which run
failed nor in which namespace. The series that replaces it carries the run's labels, so its count
must stay bounded: one per recently failed run, gone after the window or with the run. The real
operator and Prometheus are exercised in tests/integration/test_monitoring.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
import yaml
from kopf._core.engines import posting

from sampleforge.api import Kind, Phase
from sampleforge.api.status import AugmentationRunStatus
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.handlers._common import seen_handler
from sampleforge.operator.metrics import FAILED_RUN_WINDOW_SECONDS, OperatorMetrics
from sampleforge.operator.settings import Settings
from sampleforge.operator.status import _on_transition

RULES = Path(__file__).resolve().parents[2] / "charts" / "sampleforge" / "alerts" / "sampleforge-rules.yaml"
SERIES = "sampleforge_run_failed_timestamp_seconds"
AR, FT = str(Kind.AUGMENTATION_RUN), str(Kind.FINE_TUNE_RUN)


def failures(metrics: OperatorMetrics) -> dict[tuple[str, str, str, str], float]:
    """(kind, namespace, name, reason) -> value of every failure series on the registry."""
    return {(s.labels["kind"], s.labels["namespace"], s.labels["name"], s.labels["reason"]): s.value
            for family in metrics.registry.collect() if family.name == SERIES for s in family.samples}


def test_a_failure_is_a_series_with_the_runs_labels_and_time() -> None:
    metrics = OperatorMetrics()
    metrics.record_failure(Kind.AUGMENTATION_RUN, "search-ml", "broken", "BackoffLimitExceeded", at=1_800_000_000.0)
    assert failures(metrics) == {(AR, "search-ml", "broken", "BackoffLimitExceeded"): 1_800_000_000.0}
    before = time.time()
    metrics.record_failure(Kind.FINE_TUNE_RUN, "recsys", "ranker", "OOMKilled")
    assert before <= failures(metrics)[(FT, "recsys", "ranker", "OOMKilled")] <= time.time()


def test_a_run_has_one_failure_series() -> None:
    metrics = OperatorMetrics()
    metrics.record_failure(AR, "ns", "r", "PodFailed", at=100.0)
    metrics.record_failure(AR, "ns", "r", "BackoffLimitExceeded", at=200.0)
    assert failures(metrics) == {(AR, "ns", "r", "BackoffLimitExceeded"): 200.0}


def test_publishing_phase_counts_drops_failures_older_than_the_window() -> None:
    metrics = OperatorMetrics()
    now = time.time()
    metrics.record_failure(AR, "ns", "old", "JobFailed", at=now - FAILED_RUN_WINDOW_SECONDS - 60)
    metrics.record_failure(AR, "ns", "recent", "JobFailed", at=now - FAILED_RUN_WINDOW_SECONDS + 60)
    metrics.set_phase_counts({(AR, "Failed"): 2}, [str(p) for p in Phase], [str(k) for k in Kind])
    assert set(failures(metrics)) == {(AR, "ns", "recent", "JobFailed")}
    metrics.prune_failed_runs(now=now + 120)
    assert failures(metrics) == {}


def test_a_deleted_run_takes_its_failure_series_along() -> None:
    metrics = OperatorMetrics()
    metrics.record_failure(AR, "ns", "gone", "HeartbeatTimeout")
    metrics.record_failure(AR, "ns", "kept", "HeartbeatTimeout")
    metrics.record_failure(FT, "ns", "gone", "HeartbeatTimeout")
    metrics.forget_run(AR, "ns", "gone")
    assert set(failures(metrics)) == {(AR, "ns", "kept", "HeartbeatTimeout"), (FT, "ns", "gone", "HeartbeatTimeout")}


def run_body(name: str) -> dict[str, Any]:
    return {"apiVersion": "sampleforge.io/v1alpha1", "kind": AR,
            "metadata": {"name": name, "namespace": "search-ml", "uid": f"uid-{name}"}, "status": {"phase": "Running"}}


def transition(ctx: OperatorContext, body: dict[str, Any], new: Phase, reason: str) -> list[Any]:
    """_on_transition as the monitor calls it; returns the Events it queued for kopf to post."""
    loop = asyncio.new_event_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def call() -> None:
        posting.settings_var.set(kopf.OperatorSettings())
        posting.event_queue_loop_var.set(loop)
        posting.event_queue_var.set(queue)
        ready = {"type": "Ready", "status": "False", "reason": reason, "message": "it broke",
                 "lastTransitionTime": "2026-12-03T12:00:00Z"}
        status = AugmentationRunStatus.model_validate({"phase": str(new), "conditions": [ready]})
        _on_transition(ctx, Kind.AUGMENTATION_RUN, body, "Running", status)

    try:
        contextvars.copy_context().run(call)
        loop.run_until_complete(asyncio.sleep(0))  # the events are handed over with call_soon_threadsafe
        events = []
        while not queue.empty():
            events.append(queue.get_nowait())
        return events
    finally:
        loop.close()


def test_a_run_that_becomes_failed_gets_its_failure_series_with_the_ready_reason() -> None:
    ctx = OperatorContext(settings=Settings(leader_election=False), kube=None, metrics=OperatorMetrics())
    events = transition(ctx, run_body("broken"), Phase.FAILED, "BackoffLimitExceeded")
    assert set(failures(ctx.metrics)) == {(AR, "search-ml", "broken", "BackoffLimitExceeded")}
    assert [(e.type, e.reason) for e in events] == [("Warning", "BackoffLimitExceeded")]
    transition(ctx, run_body("fine"), Phase.SUCCEEDED, "Succeeded")
    assert set(failures(ctx.metrics)) == {(AR, "search-ml", "broken", "BackoffLimitExceeded")}


def test_the_alert_ends_with_the_window_the_operator_keeps_failures_for() -> None:
    """The rule repeats the window so the alert ends on time even before the operator prunes."""
    rule = next(r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
                if r["alert"] == "SampleforgeRunFailed")
    assert SERIES in rule["expr"]
    assert re.search(r"by \(kind, namespace, name, reason\)", rule["expr"]), rule["expr"]
    assert re.search(r"<\s*(\d+)\s*$", rule["expr"].strip()).group(1) == str(FAILED_RUN_WINDOW_SECONDS)  # type: ignore[union-attr]


def test_a_replica_that_starts_after_a_failure_keeps_the_runs_alert() -> None:
    """After a restart or a change of leader the failure is known only from the run's status: the
    watch's first event of a recently failed run restores its series (a long-past one does not)."""
    ctx = OperatorContext(settings=Settings(leader_election=False), kube=None, metrics=OperatorMetrics())

    def failed_run(name: str, ended: datetime) -> dict[str, Any]:
        return {"type": "ADDED", "object": {
            "metadata": {"name": name, "namespace": "search-ml", "uid": name, "resourceVersion": "1"},
            "status": {"phase": "Failed", "completionTime": ended.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "conditions": [{"type": "Ready", "status": "False", "reason": "OOMKilled", "message": "",
                                       "lastTransitionTime": ended.strftime("%Y-%m-%dT%H:%M:%SZ")}]}}}

    recent = datetime.now(UTC) - timedelta(minutes=10)
    seen_handler(Kind.AUGMENTATION_RUN, failed_run("recent", recent), kopf.Memo(ctx=ctx))
    seen_handler(Kind.AUGMENTATION_RUN, failed_run("old", recent - timedelta(seconds=FAILED_RUN_WINDOW_SECONDS)),
                 kopf.Memo(ctx=ctx))
    found = failures(ctx.metrics)
    assert list(found) == [(AR, "search-ml", "recent", "OOMKilled")]
    assert abs(found[(AR, "search-ml", "recent", "OOMKilled")] - recent.replace(microsecond=0).timestamp()) < 1
