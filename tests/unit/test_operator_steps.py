"""A sharded AugmentationRun's three Jobs (analysis, shards, reduce): the one Step definition and the
environment variable the job reads, how each step's Job is rendered, what the child index calls the
run's current Job, and how reconcile and the monitor go from one step to the next and never back.
Pure logic and fakes of the API server's answers; tests/integration/test_operator_steps.py runs
the same against a real one."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from sampleforge.api import Kind, Phase, Reason, jobenv
from sampleforge.api.constants import GPU_RESOURCE, KUEUE_QUEUE_LABEL, LABEL_RUN_UID, LABEL_STEP, STEPS, Step
from sampleforge.operator import committed as committed_output
from sampleforge.operator import monitor as monitor_module
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.index import ChildIndex
from sampleforge.operator.metrics import OperatorMetrics
from sampleforge.operator.monitor import _Monitor
from sampleforge.operator.reconcile import reconcile
from sampleforge.operator.render import (
    MAX_JOB_NAME_LENGTH,
    RunObject,
    child_labels,
    job_name,
    render_job,
    spec_config_map_name,
)
from sampleforge.operator.settings import Settings
from sampleforge.operator.steps import describe, next_step, resume_step, run_steps, step_of

REPO = Path(__file__).resolve().parents[2]
UID = "0b6c2a52-1f0e-4c53-9d8e-7f0a3c1e2d44"
AR, FT = Kind.AUGMENTATION_RUN, Kind.FINE_TUNE_RUN
SETTINGS = Settings(leader_election=False)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
COMPLETE = [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-12-03T11:05:00Z"}]


def body(name: str = "shoes-2026q4", parallelism: int = 3, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / "augmentationrun.yaml").read_text())
    doc["metadata"] = {**doc["metadata"], "name": name, "namespace": "search-ml", "uid": UID, "generation": 1}
    doc["spec"].update(parallelism=parallelism, **spec)
    doc["status"] = {}
    return doc


def run_of(doc: dict[str, Any]) -> RunObject:
    return RunObject.from_body(doc)


def env(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def started() -> str:
    """Now: the heartbeat timeout counts from the start of a Job without heartbeats."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kube_job(rendered: dict[str, Any], conditions: list[dict[str, Any]] | None = None,
             uid: str | None = None, **status: Any) -> dict[str, Any]:
    """``rendered`` as the API server holds it: with a uid, and a status."""
    meta = {**rendered["metadata"], "uid": uid or f"{rendered['metadata']['name']}-uid", "resourceVersion": "1"}
    return {**rendered, "metadata": meta,
            "status": {"conditions": conditions or [], "startTime": started(), **status}}


def kube_pod(name: str, job: dict[str, Any], phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": job["metadata"]["namespace"],
                         "labels": {LABEL_RUN_UID: UID, **({LABEL_STEP: s} if (s := step_of(job)) else {})},
                         "ownerReferences": [{"kind": "Job", "uid": job["metadata"]["uid"], "controller": True}]},
            "status": {"phase": phase, "startTime": started()}}


# --- the contract with the job -----------------------------------------------------------------


class TestStepContract:
    def test_the_steps_and_their_order_are_defined_once(self) -> None:
        assert [s.value for s in STEPS] == ["analysis", "shards", "reduce"]
        assert list(Step) == list(STEPS)
        assert jobenv.STEP == "SAMPLEFORGE_STEP" and LABEL_STEP == "sampleforge.io/step"

    def test_the_step_variable_follows_the_shard_count_and_is_absent_when_unset(self) -> None:
        storage = jobenv.StorageAccess(endpoint="minio:9000")
        base = {"kind": AR, "name": "r", "namespace": "ns", "uid": "u", "storage": storage, "spec_file": "/s.json",
                "shard_count": 3}
        names = [n for n, _ in jobenv.pod_environment(jobenv.JobEnvironment(**base, step=Step.REDUCE))]
        assert names[names.index(jobenv.SHARD_COUNT) + 1] == jobenv.STEP
        assert dict(jobenv.pod_environment(jobenv.JobEnvironment(**base, step="shards")))[jobenv.STEP] == "shards"
        assert jobenv.STEP not in dict(jobenv.pod_environment(jobenv.JobEnvironment(**base)))

    def test_an_unknown_step_is_refused_naming_the_steps(self) -> None:
        with pytest.raises(ValueError, match="analysis, shards, reduce"):
            jobenv.JobEnvironment(kind=AR, name="r", namespace="ns", uid="u", spec_file="/s.json",
                                  storage=jobenv.StorageAccess(endpoint="minio:9000"), step="map")


# --- pure step logic ---------------------------------------------------------------------------


class TestStepLogic:
    def test_only_a_sharded_augmentation_run_has_steps(self) -> None:
        assert run_steps(AR, 3) == STEPS
        assert run_steps(AR, 1) == () and run_steps(FT, 4) == ()

    @pytest.mark.parametrize(("current", "succeeded", "expected"), [
        (Step.ANALYSIS, True, Step.SHARDS), (Step.SHARDS, True, Step.REDUCE), (Step.REDUCE, True, None),
        (Step.ANALYSIS, False, None), (Step.SHARDS, False, None), (None, True, None)])
    def test_next_step(self, current: Step | None, succeeded: bool, expected: Step | None) -> None:
        assert next_step(AR, 4, current, succeeded) is expected

    def test_a_one_job_run_never_has_a_next_step(self) -> None:
        assert next_step(AR, 1, Step.ANALYSIS, True) is None
        assert next_step(FT, 4, Step.ANALYSIS, True) is None

    def test_the_step_to_resume_is_the_latest_any_evidence_names(self) -> None:
        assert resume_step(AR, 3, [], None) is Step.ANALYSIS, "a new run starts with the analysis"
        assert resume_step(AR, 3, ["analysis", "shards"], None) is Step.SHARDS
        # The analysis Job deleted by its TTL, the shards Job not yet in a fresh cache: status says.
        assert resume_step(AR, 3, [], "shards") is Step.SHARDS
        assert resume_step(AR, 3, ["shards"], "analysis") is Step.SHARDS, "never back a step"
        assert resume_step(AR, 3, ["reduce"], "shards") is Step.REDUCE
        assert resume_step(AR, 3, ["bogus"], "nonsense") is Step.ANALYSIS, "hand-edited values say nothing"
        assert resume_step(AR, 1, ["shards"], "shards") is None

    def test_descriptions_name_the_step_and_the_job(self) -> None:
        assert describe(Step.ANALYSIS, 4, "x-aug-analysis") == "step 1 of 3: analysing the source (Job x-aug-analysis)"
        assert describe(Step.SHARDS, 4, "x-aug") == "step 2 of 3: 4 shards (Job x-aug)"
        assert describe(Step.REDUCE, 4, "x-aug-reduce") == (
            "step 3 of 3: removing cross-shard duplicates and committing (Job x-aug-reduce)")


# --- rendering -----------------------------------------------------------------------------------


class TestRenderSteps:
    def test_names_shape_and_environment_of_each_step(self) -> None:
        run = run_of(body(parallelism=3))
        shapes = {}
        for step in Step:
            job = render_job(run, SETTINGS, step=step)
            spec = job["spec"]
            shapes[step] = (job["metadata"]["name"], spec["completions"], spec["parallelism"], spec["completionMode"])
            assert env(job)[jobenv.STEP] == step.value
            assert env(job)[jobenv.SHARD_COUNT] == "3", "every step is told the run's shard count"
            assert job["metadata"]["labels"][LABEL_STEP] == step.value
            assert job["spec"]["template"]["metadata"]["labels"][LABEL_STEP] == step.value
            # Every label a one-Job run's Job has is still there, with the same value.
            assert child_labels(run).items() <= job["metadata"]["labels"].items()
            assert child_labels(run).items() <= job["spec"]["template"]["metadata"]["labels"].items()
        assert shapes == {Step.ANALYSIS: ("shoes-2026q4-aug-analysis", 1, 1, "NonIndexed"),
                          Step.SHARDS: ("shoes-2026q4-aug", 3, 3, "Indexed"),
                          Step.REDUCE: ("shoes-2026q4-aug-reduce", 1, 1, "NonIndexed")}

    def test_the_shards_job_keeps_the_name_of_the_run_s_job(self) -> None:
        run = run_of(body(parallelism=3))
        assert render_job(run, SETTINGS)["metadata"]["name"] == job_name(AR, run.name)
        assert json.dumps(render_job(run, SETTINGS)) == json.dumps(render_job(run, SETTINGS, step=Step.SHARDS))

    def test_the_reduce_pod_holds_no_gpu_and_asks_for_no_gpu_node(self) -> None:
        run = run_of(body(parallelism=3, resources={"gpus": 2, "gpuType": "NVIDIA-H100-80GB-HBM3", "cpu": "4"}))
        pods = {s: render_job(run, SETTINGS, step=s)["spec"]["template"]["spec"] for s in Step}
        for step in (Step.ANALYSIS, Step.SHARDS):
            assert pods[step]["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "2"
            assert SETTINGS.gpu_type_label in pods[step]["nodeSelector"]
        reduce = pods[Step.REDUCE]
        assert GPU_RESOURCE not in reduce["containers"][0]["resources"]["limits"]
        assert reduce["containers"][0]["resources"]["limits"]["cpu"] == "4"
        assert SETTINGS.gpu_type_label not in (reduce.get("nodeSelector") or {})
        assert not any(t.get("key") == GPU_RESOURCE for t in reduce.get("tolerations") or [])

    def test_every_step_is_rendered_byte_identically_again(self) -> None:
        for step in Step:
            first = json.dumps(render_job(run_of(body()), SETTINGS, step=step), sort_keys=False)
            again = json.dumps(render_job(run_of(body()), SETTINGS, step=step), sort_keys=False)
            assert first == again

    def test_the_steps_share_the_pod_spec_but_for_step_and_shape(self) -> None:
        run = run_of(body(parallelism=3))
        analysis, shards = (render_job(run, SETTINGS, step=s)["spec"]["template"] for s in (Step.ANALYSIS,
                                                                                           Step.SHARDS))
        container_a, container_s = analysis["spec"]["containers"][0], shards["spec"]["containers"][0]
        assert container_a["resources"] == container_s["resources"], "the analysis gets the pod spec too"
        strip = [e for e in container_a["env"] if e["name"] != jobenv.STEP]
        assert strip == [e for e in container_s["env"] if e["name"] != jobenv.STEP]
        assert analysis["spec"]["volumes"] == shards["spec"]["volumes"], "one spec ConfigMap for all steps"

    def test_a_one_job_run_is_rendered_as_before(self) -> None:
        run = run_of(body(parallelism=1))
        job = render_job(run, SETTINGS)
        assert job["metadata"]["name"] == "shoes-2026q4-aug" and job["spec"]["completionMode"] == "Indexed"
        assert LABEL_STEP not in job["metadata"]["labels"] and jobenv.STEP not in env(job)
        with pytest.raises(ValueError, match="parallelism > 1"):
            render_job(run, SETTINGS, step=Step.ANALYSIS)

    def test_long_names_stay_distinct_dns_labels(self) -> None:
        for name in ("x" * 100, "ranker.v1." + "y" * 240, "a" * 55):
            names = {job_name(AR, name, step) for step in Step}
            assert len(names) == 3
            for step in Step:
                derived = job_name(AR, name, step)
                assert DNS_LABEL.match(derived) and len(derived) <= 63, derived
                assert derived == job_name(AR, name, step), "stable"
            assert len(job_name(AR, name, Step.SHARDS)) <= MAX_JOB_NAME_LENGTH, "room for the -<index> hostname"
        assert job_name(AR, "a" * 55, Step.ANALYSIS) != job_name(AR, "a" * 55 + "b", Step.ANALYSIS)

    def test_every_step_s_job_goes_through_the_queue_and_suspend(self) -> None:
        run = run_of(body(queueName="search-ml-gpu", suspend=True))
        for step in Step:
            job = render_job(run, SETTINGS, step=step)
            assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "search-ml-gpu"
            assert job["spec"]["suspend"] is True


# --- the child index -----------------------------------------------------------------------------


def step_jobs(doc: dict[str, Any] | None = None) -> dict[Step, dict[str, Any]]:
    run = run_of(doc or body())
    return {step: kube_job(render_job(run, SETTINGS, step=step)) for step in Step}


class TestChildIndexSteps:
    def test_the_current_job_is_the_latest_step_s_and_its_pods_only(self) -> None:
        jobs = step_jobs()
        index = ChildIndex()
        index.on_job_event("ADDED", kube_job(jobs[Step.ANALYSIS], COMPLETE, uid=jobs[Step.ANALYSIS]["metadata"]["uid"]))
        index.on_pod_event("ADDED", kube_pod("analysis-pod", jobs[Step.ANALYSIS], phase="Succeeded"))
        current = index.job(UID)
        assert current is not None and step_of(current) is Step.ANALYSIS
        index.on_job_event("ADDED", jobs[Step.SHARDS])
        for i in range(3):
            index.on_pod_event("ADDED", kube_pod(f"shard-{i}", jobs[Step.SHARDS], phase="Pending"))
        current = index.job(UID)
        assert current is not None and step_of(current) is Step.SHARDS
        assert [p["metadata"]["name"] for p in index.pods(UID)] == ["shard-0", "shard-1", "shard-2"], \
            "a finished analysis pod must not make the shards Job look done"
        assert sorted(index.steps(UID)) == ["analysis", "shards"]

    def test_heartbeats_may_come_from_any_step_s_pods(self) -> None:
        jobs = step_jobs()
        index = ChildIndex()
        for step in (Step.ANALYSIS, Step.SHARDS):
            index.on_job_event("ADDED", jobs[step])
        index.on_pod_event("ADDED", kube_pod("analysis-pod", jobs[Step.ANALYSIS]))
        index.on_pod_event("ADDED", kube_pod("shard-0", jobs[Step.SHARDS]))
        stranger = {**jobs[Step.SHARDS], "metadata": {**jobs[Step.SHARDS]["metadata"], "uid": "someone-else"}}
        index.on_pod_event("ADDED", kube_pod("forged", stranger))
        assert index.pod_belongs_to("search-ml", "analysis-pod", UID)
        assert index.pod_belongs_to("search-ml", "shard-0", UID)
        assert not index.pod_belongs_to("search-ml", "forged", UID), "a pod of a Job not the run's"
        assert not index.pod_belongs_to("other", "shard-0", UID)
        assert index.knows(UID, "analysis-pod")

    def test_a_completed_job_deleted_by_its_ttl_still_counts_as_done(self) -> None:
        jobs = step_jobs()
        index = ChildIndex()
        done = kube_job(jobs[Step.ANALYSIS], COMPLETE)
        index.on_job_event("ADDED", done)
        index.on_job_event("DELETED", done)
        current = index.job(UID)
        assert current is not None and step_of(current) is Step.ANALYSIS, "the step is done, not missing"
        index.on_job_event("ADDED", jobs[Step.SHARDS])
        index.on_job_event("DELETED", jobs[Step.SHARDS])  # deleted by hand while running: missing
        current = index.job(UID)
        assert current is not None and step_of(current) is Step.ANALYSIS

    def test_the_index_keeps_no_pod_template(self) -> None:
        index = ChildIndex()
        index.on_job_event("ADDED", step_jobs()[Step.SHARDS])
        current = index.job(UID)
        assert current is not None and "template" not in current["spec"]


# --- reconcile and the monitor -------------------------------------------------------------------


class FakeKube:
    """The API server's answers the step logic needs: Jobs by name, the ConfigMaps, the Secret."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.config_maps: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.suspended: list[tuple[str, bool]] = []

    def ensure_job(self, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        name = job["metadata"]["name"]
        if name in self.jobs:
            return self.jobs[name], False
        self.jobs[name] = kube_job(job)
        self.created.append(name)
        return self.jobs[name], True

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.jobs.get(name)

    def ensure_config_map(self, config_map: dict[str, Any]) -> None:
        self.config_maps.setdefault(config_map["metadata"]["name"], config_map)

    def read_config_map_value(self, namespace: str, name: str, key: str) -> str | None:
        value = (self.config_maps.get(name) or {}).get("data", {}).get(key)
        return None if value is None else str(value)

    def get_secret_keys(self, namespace: str, name: str) -> set[str]:
        return {"accessKey", "secretKey"}

    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.suspended.append((name, suspend))


@pytest.fixture
def quiet_kopf(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """kopf's Events need its event loop: record their messages instead."""
    said: list[str] = []
    monkeypatch.setattr(kopf, "info", lambda *a, **kw: said.append(str(kw.get("message"))))
    monkeypatch.setattr(kopf, "event", lambda *a, **kw: said.append(str(kw.get("message"))))
    yield said


def context(kube: FakeKube) -> OperatorContext:
    return OperatorContext(settings=SETTINGS, kube=kube, metrics=OperatorMetrics(), serving=True)  # type: ignore[arg-type]


def deliver(ctx: OperatorContext, kube: FakeKube, name: str, conditions: list[dict[str, Any]] | None = None,
            **status: Any) -> dict[str, Any]:
    """The watch delivers Job ``name`` as the fake API server holds it, with ``conditions``."""
    job = kube.jobs[name] = {**kube.jobs[name], "status": {**kube.jobs[name]["status"],
                                                           "conditions": conditions or [], **status}}
    ctx.children.on_job_event("MODIFIED", job)
    return job


def desired(ctx: OperatorContext, doc: dict[str, Any], now_loop: float = 0.0,
            monitor: _Monitor | None = None) -> tuple[Any, Any]:
    monitor = monitor or _Monitor(ctx, AR, kopf.Body(doc))  # type: ignore[arg-type]
    found = asyncio.run(monitor.desired(doc, now_loop))
    assert found is not None
    return found


class TestReconcileSteps:
    def test_a_new_sharded_run_gets_the_analysis_job_only(self, quiet_kopf: list[str]) -> None:
        kube = FakeKube()
        reconcile(context(kube), AR, body())
        assert kube.created == ["shoes-2026q4-aug-analysis"]
        assert kube.jobs["shoes-2026q4-aug-analysis"]["spec"]["completions"] == 1
        assert "created Job shoes-2026q4-aug-analysis for step analysis" in quiet_kopf
        assert list(kube.config_maps) == [spec_config_map_name(run_of(body()))]

    def test_reconcile_never_goes_back_a_step(self, quiet_kopf: list[str]) -> None:
        kube, doc = FakeKube(), body()
        ctx = context(kube)
        reconcile(ctx, AR, doc)
        # The shards Job exists and the analysis Job was deleted by its TTL, before any cache had it.
        kube.ensure_job(render_job(run_of(doc), SETTINGS, step=Step.SHARDS))
        del kube.jobs["shoes-2026q4-aug-analysis"]
        kube.created.clear()
        reconcile(context(kube), AR, {**doc, "status": {"phase": "Running", "stage": "shards"}})
        assert kube.created == [], "status.stage names the step: the analysis is not made again"
        fresh = context(kube)
        fresh.children.on_job_event("ADDED", kube.jobs["shoes-2026q4-aug"])
        reconcile(fresh, AR, {**doc, "status": {"phase": "Running", "stage": "analysis"}})
        assert kube.created == [], "the Job the watch holds names a later step than the status"

    def test_suspend_applies_to_the_current_step_s_job(self, quiet_kopf: list[str]) -> None:
        kube, doc = FakeKube(), body()
        ctx = context(kube)
        reconcile(ctx, AR, doc)
        kube.ensure_job(render_job(run_of(doc), SETTINGS, step=Step.SHARDS))
        ctx.children.on_job_event("ADDED", kube.jobs["shoes-2026q4-aug-analysis"])
        ctx.children.on_job_event("ADDED", kube.jobs["shoes-2026q4-aug"])
        doc["spec"]["suspend"] = True
        reconcile(ctx, AR, doc)
        assert kube.suspended == [("shoes-2026q4-aug", True)]

    def test_a_one_job_run_keeps_its_one_job(self, quiet_kopf: list[str]) -> None:
        kube = FakeKube()
        reconcile(context(kube), AR, body(parallelism=1))
        assert kube.created == ["shoes-2026q4-aug"]
        assert LABEL_STEP not in kube.jobs["shoes-2026q4-aug"]["metadata"]["labels"]
        assert "created Job shoes-2026q4-aug" in quiet_kopf


class TestMonitorSteps:
    def test_the_run_goes_through_the_steps_in_order_and_stays_running(self, quiet_kopf: list[str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        kube, doc = FakeKube(), body(parallelism=3)
        ctx = context(kube)
        reconcile(ctx, AR, doc)
        deliver(ctx, kube, "shoes-2026q4-aug-analysis", active=1)
        ctx.children.on_pod_event("ADDED", kube_pod("analysis-pod", kube.jobs["shoes-2026q4-aug-analysis"]))
        status, obs = desired(ctx, doc)
        assert (status.phase, status.stage, status.job_name) == (Phase.RUNNING, Step.ANALYSIS,
                                                                 "shoes-2026q4-aug-analysis")
        assert obs.message.startswith("step 1 of 3: analysing the source (Job shoes-2026q4-aug-analysis)")
        doc["status"] = status.to_kube()

        # The analysis completes: the shards Job is made, the run stays Running and is not collected.
        deliver(ctx, kube, "shoes-2026q4-aug-analysis", COMPLETE, succeeded=1)
        monitor = _Monitor(ctx, AR, kopf.Body(doc))  # type: ignore[arg-type]
        status, obs = desired(ctx, doc, monitor=monitor)
        assert kube.created[-1] == "shoes-2026q4-aug"
        assert kube.jobs["shoes-2026q4-aug"]["spec"]["completions"] == 3
        assert (status.phase, status.stage, status.job_name) == (Phase.RUNNING, Step.SHARDS, "shoes-2026q4-aug")
        assert obs.message.startswith("step 2 of 3: 3 shards (Job shoes-2026q4-aug)")
        assert "created Job shoes-2026q4-aug for step shards" in quiet_kopf
        # Until the watch delivers the new Job the monitor does not ask again.
        ensure, kube.ensure_job = kube.ensure_job, lambda job: pytest.fail("made twice")  # type: ignore[method-assign]
        status, _ = desired(ctx, doc, now_loop=1.0, monitor=monitor)
        assert status.stage is Step.SHARDS
        kube.ensure_job = ensure  # type: ignore[method-assign]
        doc["status"] = status.to_kube()

        # The shards complete: the reduce Job; then its success leads to reading the output.
        deliver(ctx, kube, "shoes-2026q4-aug", active=3)
        status, _ = desired(ctx, doc, monitor=monitor)
        assert (status.phase, status.stage) == (Phase.RUNNING, Step.SHARDS)
        deliver(ctx, kube, "shoes-2026q4-aug", COMPLETE, succeeded=3)
        status, obs = desired(ctx, doc, monitor=monitor)
        assert (status.phase, status.stage, status.job_name) == (Phase.RUNNING, Step.REDUCE, "shoes-2026q4-aug-reduce")
        assert kube.jobs["shoes-2026q4-aug-reduce"]["spec"]["completionMode"] == "NonIndexed"
        doc["status"] = status.to_kube()

        read: list[str] = []

        def not_committed(ctx: OperatorContext, kind: Kind, run: RunObject) -> Any:
            read.append(run.name)
            raise committed_output.NotCommitted("no manifest.json")

        monkeypatch.setattr(monitor_module, "read_run_output", not_committed)
        deliver(ctx, kube, "shoes-2026q4-aug-reduce", COMPLETE, succeeded=1)
        status, obs = desired(ctx, doc, monitor=monitor)
        assert read == ["shoes-2026q4"], "the output is read after the reduce only"
        assert (status.phase, obs.reason, status.stage) == (Phase.FAILED, Reason.OUTPUT_NOT_COMMITTED, Step.REDUCE)
        assert obs.message.startswith("step 3 of 3: removing cross-shard duplicates and committing")
        assert kube.created == ["shoes-2026q4-aug-analysis", "shoes-2026q4-aug", "shoes-2026q4-aug-reduce"]

    def test_a_failed_step_fails_the_run_naming_the_step(self, quiet_kopf: list[str]) -> None:
        kube, doc = FakeKube(), body(parallelism=3)
        ctx = context(kube)
        reconcile(ctx, AR, doc)
        kube.ensure_job(render_job(run_of(doc), SETTINGS, step=Step.SHARDS))
        deliver(ctx, kube, "shoes-2026q4-aug-analysis", COMPLETE, succeeded=1)
        deliver(ctx, kube, "shoes-2026q4-aug", [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                 "message": "Job has reached the specified backoff limit"}])
        status, obs = desired(ctx, doc)
        assert (status.phase, obs.reason) == (Phase.FAILED, Reason.BACKOFF_LIMIT_EXCEEDED)
        assert obs.message.startswith("step 2 of 3: 3 shards (Job shoes-2026q4-aug): Job shoes-2026q4-aug failed")
        assert kube.created == ["shoes-2026q4-aug-analysis", "shoes-2026q4-aug"], "nothing made after a failure"

    def test_the_next_step_is_made_from_the_spec_the_run_started_with(self, quiet_kopf: list[str]) -> None:
        """An edit of a running run's spec is not applied (SpecChangeIgnored), and not half-applied
        either: the shards Job has the parallelism the analysis planned for."""
        kube, doc = FakeKube(), body(parallelism=3)
        ctx = context(kube)
        reconcile(ctx, AR, doc)
        deliver(ctx, kube, "shoes-2026q4-aug-analysis", COMPLETE, succeeded=1)
        edited = {**doc, "spec": {**doc["spec"], "parallelism": 5, "suspend": True}}
        status, _ = desired(ctx, edited)
        shards = kube.jobs["shoes-2026q4-aug"]
        assert shards["spec"]["completions"] == 3 and env(shards)[jobenv.SHARD_COUNT] == "3"
        assert shards["spec"]["suspend"] is True, "spec.suspend, the one live field, is today's"
        drift = next(c for c in status.conditions if c.type == "SpecChangeIgnored")
        assert drift.status == "True" and "spec.parallelism" in drift.message

    def test_a_step_job_refused_by_the_api_server_fails_the_run(self, quiet_kopf: list[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        from sampleforge.operator.kube import Invalid, Transient

        kube, doc = FakeKube(), body(parallelism=3)
        ctx = context(kube)
        reconcile(ctx, AR, doc)
        deliver(ctx, kube, "shoes-2026q4-aug-analysis", COMPLETE, succeeded=1)

        def unavailable(job: dict[str, Any]) -> Any:
            raise Transient("creating Job: 503 Service Unavailable", 503)

        monkeypatch.setattr(kube, "ensure_job", unavailable)
        monitor = _Monitor(ctx, AR, kopf.Body(doc))  # type: ignore[arg-type]
        status, obs = desired(ctx, doc, monitor=monitor)
        assert status.phase is Phase.RUNNING and "retrying" in obs.message and status.stage is Step.ANALYSIS
        assert monitor.advance_due > 0

        def refused(job: dict[str, Any]) -> Any:
            raise Invalid("Job is invalid", 422, detail="spec.template.spec.affinity: Invalid value")

        monkeypatch.setattr(kube, "ensure_job", refused)
        status, obs = desired(ctx, doc, now_loop=monitor.advance_due + 1, monitor=monitor)
        assert (status.phase, obs.reason) == (Phase.FAILED, Reason.INVALID_SPEC)
        assert "affinity" in obs.message

    def test_a_running_step_s_job_deleted_by_hand_is_made_again_not_an_earlier_one(
            self, quiet_kopf: list[str]) -> None:
        kube, doc = FakeKube(), body(parallelism=3)
        ctx = context(kube)
        reconcile(ctx, AR, doc)
        deliver(ctx, kube, "shoes-2026q4-aug-analysis", COMPLETE, succeeded=1)
        monitor = _Monitor(ctx, AR, kopf.Body(doc))  # type: ignore[arg-type]
        desired(ctx, doc, monitor=monitor)
        shards = deliver(ctx, kube, "shoes-2026q4-aug", active=3)
        del kube.jobs["shoes-2026q4-aug"]
        ctx.children.on_job_event("DELETED", shards)
        # Within the grace period the monitor waits for the watch; after it, the Job is made again.
        status, _ = desired(ctx, doc, now_loop=1.0, monitor=monitor)
        assert "shoes-2026q4-aug" not in kube.jobs and status.stage is Step.SHARDS
        status, _ = desired(ctx, doc, now_loop=60.0, monitor=monitor)
        assert kube.created == ["shoes-2026q4-aug-analysis", "shoes-2026q4-aug", "shoes-2026q4-aug"]
        assert (status.phase, status.stage, status.job_name) == (Phase.RUNNING, Step.SHARDS, "shoes-2026q4-aug")
