"""What a run's status may claim, as pure logic: results from the committed output, heartbeats only
from the run's own Job's pods, multi-node progress counted once, timestamps from the Job, spec
changes that were not applied named, and Events the API server accepts. No servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from kubernetes.client.exceptions import ApiException

from sampleforge.api import ConditionStatus, ConditionType, Kind, Phase, Reason
from sampleforge.api.heartbeat import Heartbeat
from sampleforge.api.status import AugmentationRunStatus, FineTuneResults, FineTuneRunStatus, Progress
from sampleforge.operator.committed import (
    NotCommitted,
    augmentation_outputs,
    augmentation_results,
    finetune_outputs,
    finetune_results,
)
from sampleforge.operator.conditions import find
from sampleforge.operator.index import ChildIndex
from sampleforge.operator.kube import Invalid, _translate
from sampleforge.operator.lifecycle import Observation, observe
from sampleforge.operator.progress import ProgressStore, run_key
from sampleforge.operator.specdrift import ANNOTATION_APPLIED_SPEC, applied_spec_annotation, ignored_fields
from sampleforge.operator.status import (
    EVENT_MESSAGE_LIMIT,
    compose,
    event_message,
    spec_change_condition,
    success_summary,
)

NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
START = "2026-12-03T11:00:00Z"


def job(conditions: list[dict[str, Any]] | None = None, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "r-aug", "uid": "job-uid", "namespace": "ns",
                         "ownerReferences": [{"kind": "AugmentationRun", "uid": "run-uid", "controller": True}]},
            "spec": {}, "status": {"conditions": conditions or [], "startTime": START, **status}}


def pod(name: str, owner_uid: str | None, phase: str = "Running") -> dict[str, Any]:
    refs = [{"kind": "Job", "uid": owner_uid, "controller": True}] if owner_uid else []
    return {"metadata": {"name": name, "namespace": "ns", "labels": {"sampleforge.io/run-uid": "run-uid"},
                         "ownerReferences": refs}, "status": {"phase": phase}}


def see(j: dict[str, Any], pods: list[dict[str, Any]], **kw: Any) -> Observation:
    return observe(j, pods, suspended=False, last_heartbeat=None, heartbeat_timeout=600.0, now=NOW, **kw)


class TestCommittedResults:
    MANIFEST: ClassVar[dict[str, Any]] = {"rowsRead": 1000, "rowsIn": 990, "rowsOut": 5400, "rejectedRows": 10,
                "augmenters": {"typo": {"kept": 3000, "produced": 3300}, "synonym": {"kept": 1410}},
                "filters": {"dedup": {"exact": 120, "near": 30}, "similarity": 7}}

    def test_augmentation_results_are_the_manifests_counts(self) -> None:
        found = augmentation_results(self.MANIFEST)
        assert found.results.to_kube() == {"samplesIn": 990, "samplesOut": 5400, "rejectedRows": 10,
                                 "perAugmenter": {"typo": 3000, "synonym": 1410},
                                 "filtered": {"dedup": 150, "similarity": 7}}
        assert found.rows == 1000

    def test_finetune_results_are_the_published_models_metrics(self) -> None:
        metrics = {"final": {"ndcg@10": 0.61, "auc": 0.8, "bad": float("nan")}, "step": 37, "totalSteps": 37,
                   "epochs": 3.0, "loss": 0.21, "best": {"name": "ndcg@10", "value": 0.63, "step": 30},
                   "rejectedRows": {"emptyQuery": 2, "badLabel": 1}}
        found = finetune_results({"run": {"uid": "u"}}, metrics)
        assert found.results.to_kube() == {"step": 37, "epoch": 3.0, "loss": 0.21, "latestMetrics": {"ndcg@10": 0.61, "auc": 0.8},
                                 "bestMetric": {"name": "ndcg@10", "value": 0.63, "step": 30}, "rejectedRows": 3}
        assert found.rows == 37

    def test_a_malformed_augmentation_manifest_is_not_a_commit(self) -> None:
        with pytest.raises(NotCommitted, match=r"manifest.json is not an augmentation manifest: rowsIn: Input "
                                               r"should be a valid integer.*augmenters.typo.kept: Input should be"):
            augmentation_results({**self.MANIFEST, "rowsIn": "many", "augmenters": {"typo": {"kept": -1}}})

    def test_output_uris_point_only_at_what_the_manifest_vouches_for(self) -> None:
        prefix = "s3://b/out/"
        aug = {"artifacts": [{"path": "report.md"}, {"path": "report.html"}], "rejects": {"rows": 3}}
        assert augmentation_outputs(prefix, aug).to_kube() == {"reportUri": prefix + "report.html",
                                                     "rejectedRowsUri": prefix + "rejects/"}
        assert augmentation_outputs(prefix, {"artifacts": [{"path": "report.md"}], "rejects": {"rows": 0}}).to_kube() == {
            "reportUri": prefix + "report.md"}
        files = [{"path": p} for p in ("metrics.json", "model/README.md", "model/config.json")]
        assert finetune_outputs(prefix, {"files": files}).to_kube() == {"metricsUri": prefix + "metrics.json",
                                                              "modelCardUri": prefix + "model/README.md"}
        with_rejects = finetune_outputs(prefix, {"files": [*files, {"path": "rejected_rows.jsonl"}]})
        assert with_rejects.rejected_rows_uri == prefix + "rejected_rows.jsonl"

    def test_the_success_event_says_what_was_produced_and_where(self) -> None:
        aug = success_summary(AugmentationRunStatus.model_validate({
            "results": {"samplesIn": 990, "samplesOut": 5400},
            "outputs": {"uri": "s3://b/out/", "reportUri": "s3://b/out/report.html"}}))
        assert aug == "990 rows in, 5400 out; outputs at s3://b/out/; report s3://b/out/report.html"
        ft = success_summary(FineTuneRunStatus.model_validate({
            "results": {"bestMetric": {"name": "ndcg@10", "value": 0.6312345, "step": 30}},
            "outputs": {"uri": "s3://b/ft/", "modelUri": "s3://b/ft/model/"}}))
        assert ft == "best ndcg@10 0.6312 at step 30; outputs at s3://b/ft/model/"

    def test_committed_results_replace_what_heartbeats_said(self) -> None:
        body = {"metadata": {"generation": 1},
                "status": {"results": {"step": 9, "latestMetrics": {}, "checkpointUri": "s3://b/c/"}}}
        obs = see(job([{"type": "Complete", "status": "True"}], completionTime="2026-12-03T11:30:00Z"), [])
        committed = FineTuneResults(step=37, latest_metrics={"ndcg@10": 0.6})
        status = compose(Kind.FINE_TUNE_RUN, body, obs, NOW, results=committed, committed=True)
        assert status.to_kube()["results"] == {"step": 37, "latestMetrics": {"ndcg@10": 0.6}}
        merged = compose(Kind.FINE_TUNE_RUN, body, obs, NOW, results=FineTuneResults(step=10))
        assert merged.to_kube()["results"]["checkpointUri"] == "s3://b/c/", "heartbeats merge over the progress so far"


class TestHeartbeatSenders:
    def index_with(self, *pods: dict[str, Any]) -> ChildIndex:
        index = ChildIndex()
        index.on_job_event("ADDED", {**job(), "metadata": {**job()["metadata"],
                                                           "labels": {"sampleforge.io/run-uid": "run-uid"}}})
        for p in pods:
            index.on_pod_event("ADDED", p)
        return index

    def test_only_pods_of_the_runs_own_job_may_report(self) -> None:
        index = self.index_with(pod("own", "job-uid"), pod("forged", None), pod("other-job", "another-job"))
        assert index.pod_belongs_to("ns", "own", "run-uid")
        assert not index.pod_belongs_to("ns", "forged", "run-uid"), "labels alone must not make a pod the run's"
        assert not index.pod_belongs_to("ns", "other-job", "run-uid")
        assert not index.pod_belongs_to("other-ns", "own", "run-uid")

    def test_a_job_not_owned_by_the_run_vouches_for_nobody(self) -> None:
        index = ChildIndex()
        stray = job()
        stray["metadata"]["ownerReferences"] = [{"kind": "AugmentationRun", "uid": "someone-else", "controller": True}]
        stray["metadata"]["labels"] = {"sampleforge.io/run-uid": "run-uid"}
        index.on_job_event("ADDED", stray)
        index.on_pod_event("ADDED", pod("p", "job-uid"))
        assert not index.pod_belongs_to("ns", "p", "run-uid")


class TestMultiNodeProgress:
    def beat(self, node: int, step: int, message: str | None = None) -> Heartbeat:
        return Heartbeat.model_validate({"kind": "FineTuneRun", "namespace": "ns", "name": "r", "uid": "u",
                                         "shard": node, "shards": 2, "done": step, "total": 100, "rate": 2.0,
                                         "sentAt": NOW, "message": message})

    def test_every_node_counts_the_same_steps_so_they_are_not_summed(self) -> None:
        store = ProgressStore()
        store.record(self.beat(0, 40, "training"), NOW)
        store.record(self.beat(1, 40), NOW)
        entry = store.get(run_key(Kind.FINE_TUNE_RUN, "ns", "r"), "u")
        assert entry is not None
        progress = entry.progress(Kind.FINE_TUNE_RUN)
        assert (progress.done, progress.total, progress.percent, progress.rate) == (40, 100, 40, 2.0)
        assert progress.stage == "training"


class TestTimesAndPhases:
    def test_success_criteria_met_is_not_yet_success(self) -> None:
        obs = see(job([{"type": "SuccessCriteriaMet", "status": "True"}]), [])
        assert obs.phase is Phase.RUNNING

    def test_completion_time_is_the_jobs(self) -> None:
        done = job([{"type": "SuccessCriteriaMet", "status": "True"},
                    {"type": "Complete", "status": "True", "lastTransitionTime": "2026-12-03T11:42:00Z"}],
                   completionTime="2026-12-03T11:41:59Z")
        obs = see(done, [])
        assert obs.phase is Phase.SUCCEEDED and obs.completion_time == "2026-12-03T11:41:59Z"
        status = compose(Kind.AUGMENTATION_RUN, {"metadata": {"generation": 1}}, obs, NOW).to_kube()
        assert (status["startTime"], status["completionTime"]) == (START, "2026-12-03T11:41:59Z")

    def test_between_a_pods_exit_and_the_jobs_completion_the_run_stays_running(self) -> None:
        obs = see(job(succeeded=1, active=0), [pod("p", "job-uid", phase="Succeeded")])
        assert obs.phase is Phase.RUNNING

    def test_the_run_keeps_its_first_start_time_when_the_job_is_recreated(self) -> None:
        body = {"metadata": {"generation": 1}, "status": {"startTime": "2026-12-03T10:00:00Z"}}
        status = compose(Kind.AUGMENTATION_RUN, body, see(job(), [pod("p", "job-uid")]), NOW).to_kube()
        assert status["startTime"] == "2026-12-03T10:00:00Z"

    def test_a_missing_upstream_run_is_stalled(self) -> None:
        obs = Observation(Phase.WAITING, Reason.UPSTREAM_NOT_FOUND, "no such run")
        stalled = {c.type: c.status for c in obs.conditions()}[ConditionType.STALLED]
        assert stalled == ConditionStatus.TRUE

    def test_long_event_messages_are_cut_to_what_the_api_server_accepts(self) -> None:
        for long in ("x" * 5000, "Job r-aug: Running → Failed (" + "→" * 2000 + ")", "训练失败" * 400):
            message = event_message(long)
            size = len(message.encode("utf-8"))
            assert EVENT_MESSAGE_LIMIT - 3 <= size <= EVENT_MESSAGE_LIMIT, "the API server counts bytes"
            assert message.endswith("…") and long.startswith(message[:-1])
        assert event_message("short → fine") == "short → fine"


class TestSpecChanges:
    SPEC: ClassVar[dict[str, Any]] = {"parallelism": 2, "resources": {"gpus": 1}, "suspend": False, "filters": {"dedup": "exact"}}

    def rendered(self) -> dict[str, Any]:
        return {"metadata": {"annotations": {ANNOTATION_APPLIED_SPEC: applied_spec_annotation(self.SPEC)}}}

    def test_changed_fields_are_named_and_suspend_is_not_among_them(self) -> None:
        edited = {**self.SPEC, "parallelism": 4, "suspend": True, "tolerations": [{"key": "x"}]}
        assert ignored_fields(self.rendered(), edited) == ["spec.parallelism", "spec.tolerations"]
        assert ignored_fields(self.rendered(), dict(self.SPEC)) == []

    def test_a_job_without_the_annotation_reports_nothing(self) -> None:
        assert ignored_fields({"metadata": {}}, self.SPEC) == []

    def test_the_condition_says_what_was_ignored_and_observed_generation_advances(self) -> None:
        body = {"metadata": {"generation": 5}, "status": {"observedGeneration": 4}}
        update = spec_change_condition(["spec.parallelism"], terminal=False)
        status = compose(Kind.AUGMENTATION_RUN, body, see(job(), [pod("p", "job-uid")]), NOW,
                         extra_conditions=[update])
        condition = find(status.conditions, ConditionType.SPEC_CHANGE_IGNORED)
        assert condition is not None and condition.status == ConditionStatus.TRUE
        assert "spec.parallelism" in condition.message and condition.observed_generation == 5
        assert status.observed_generation == 5


class TestWhatTheApiServerAccepts:
    def test_a_refused_job_is_invalid_with_the_servers_message(self) -> None:
        err = ApiException(status=422, reason="Unprocessable Entity")
        err.body = json.dumps({"message": 'Job.batch "r" is invalid: spec.template.spec.affinity.nodeAffinity: '
                                          "Invalid value"})
        translated = _translate(err, "creating Job ns/r")
        assert isinstance(translated, Invalid)
        assert "spec.template.spec.affinity.nodeAffinity" in translated.detail

    def test_status_is_built_from_the_typed_models(self) -> None:
        status = compose(Kind.FINE_TUNE_RUN, {"metadata": {"generation": 1}}, see(job(), [pod("p", "job-uid")]), NOW,
                         progress=Progress(done=3, stage="loading model"))
        assert FineTuneRunStatus.model_validate(status.to_kube()) == status


class TestChildIndexLifecycle:
    def test_a_pod_not_yet_watched_is_unknown_rather_than_foreign(self) -> None:
        index = ChildIndex()
        assert not index.knows("run-uid", "p")  # the heartbeat endpoint answers 503 (retry), not 403
        index.on_job_event("ADDED", {**job(), "metadata": {**job()["metadata"],
                                                           "labels": {"sampleforge.io/run-uid": "run-uid"}}})
        index.on_pod_event("ADDED", pod("p", "job-uid"))
        assert index.knows("run-uid", "p")

    def test_the_index_keeps_what_the_monitors_read_and_not_the_pod_template(self) -> None:
        """Thousands of runs' Jobs are held here: their pod templates and managedFields, most of
        each object and read by nothing, are left out."""
        index = ChildIndex()
        meta = {**job()["metadata"], "labels": {"sampleforge.io/run-uid": "run-uid"},
                "managedFields": [{"manager": "sampleforge-operator"}], "annotations": {ANNOTATION_APPLIED_SPEC: "{}"}}
        full = {**job(), "metadata": meta, "spec": {"suspend": True, "parallelism": 2,
                                                    "template": {"spec": {"containers": [{"name": "main"}]}}}}
        index.on_job_event("ADDED", full)
        kept = index.job("run-uid")
        assert kept is not None
        assert kept["spec"] == {"suspend": True, "parallelism": 2}
        assert "managedFields" not in kept["metadata"]
        assert kept["metadata"]["annotations"] == meta["annotations"] and kept["status"] == full["status"]
        assert "template" in full["spec"] and "managedFields" in full["metadata"], "the event itself is not changed"
        index.on_pod_event("ADDED", {**pod("p", "job-uid"), "metadata": {**pod("p", "job-uid")["metadata"],
                                                                        "managedFields": [{}]}})
        assert index.pod_belongs_to("ns", "p", "run-uid")
        assert "managedFields" not in index.pods("run-uid")[0]["metadata"]

    def test_deletions_after_a_run_is_forgotten_leave_nothing_behind(self) -> None:
        index = ChildIndex()
        labelled = {**job(), "metadata": {**job()["metadata"], "labels": {"sampleforge.io/run-uid": "gone"}}}
        index.on_job_event("DELETED", labelled)
        index.on_pod_event("DELETED", {**pod("p", "job-uid"), "metadata": {
            **pod("p", "job-uid")["metadata"], "labels": {"sampleforge.io/run-uid": "gone"}}})
        assert len(index) == 0
