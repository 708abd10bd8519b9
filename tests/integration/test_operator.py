"""The operator against the real API server, controllers and kwok GPU nodes: from a created run
to a Job and back to status, with the operator running as its own process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from minio import Minio
from operator_helpers import (
    CREDENTIALS_SECRET,
    EXAMPLE_BUCKETS,
    FAST,
    HOLD,
    LEADER_ELECTION,
    commit_output,
    condition,
    create_credentials,
    create_run,
    example,
    get_run,
    jobs_of,
    patch_run,
    pod_token,
    pods_of,
    post_heartbeat,
    release,
    running_operator,
    running_pod,
    scrape,
    wait_for,
    wait_phase,
)
from prometheus_client.parser import text_string_to_metric_families

from sampleforge.api import jobenv
from sampleforge.api.constants import FINALIZER, GPU_RESOURCE, Kind
from sampleforge.testbed import EXIT_CODE_ANNOTATION, Testbed
from sampleforge.testbed._operator import OperatorProcess

pytestmark = pytest.mark.integration
AR, FT = Kind.AUGMENTATION_RUN, Kind.FINE_TUNE_RUN
SETTINGS = FAST | LEADER_ELECTION | EXAMPLE_BUCKETS


@pytest.fixture(scope="module")
def operator_proc(testbed: Testbed) -> Iterator[OperatorProcess]:
    with running_operator(testbed, "operator.log", SETTINGS) as proc:
        yield proc


class TestJobCreation:
    def test_augmentation_run_becomes_a_gpu_job_with_secret_env_and_owner(self, kube_api: client.ApiClient,
                                                                         ns: str, stored: Callable[..., Any],
                                                                         s3: Minio, testbed: Testbed) -> None:
        # One shard: one Job (a run of several is three Jobs in turn, test_operator_steps.py).
        run = create_run(kube_api, ns, stored("augmentationrun.yaml", parallelism=1),
                         labels={"team": "search", **HOLD})
        uid = run["metadata"]["uid"]
        jobs = wait_for(lambda: jobs_of(kube_api, ns, uid), what="the Job")
        assert len(jobs) == 1
        job = jobs[0]
        assert job.metadata.owner_references[0].uid == uid and job.metadata.owner_references[0].controller
        assert job.metadata.labels["team"] == "search"
        assert job.spec.completion_mode == "Indexed" and job.spec.completions == 1
        container = job.spec.template.spec.containers[0]
        assert container.resources.limits[GPU_RESOURCE] == "1"
        env = {e.name: e for e in container.env}
        assert env[jobenv.S3_SECRET_KEY].value_from.secret_key_ref.name == CREDENTIALS_SECRET
        assert env[jobenv.S3_SECRET_KEY].value is None
        assert testbed.minio.secret_key not in json.dumps(client.ApiClient().sanitize_for_serialization(job))
        # The spec reaches the pods as a file from the run's ConfigMap, never in the environment.
        assert jobenv.RUN_SPEC not in env
        spec_volume = next(v for v in job.spec.template.spec.volumes if v.name == "run-spec")
        spec_map = client.CoreV1Api(kube_api).read_namespaced_config_map(spec_volume.config_map.name, ns)
        assert spec_map.metadata.owner_references[0].uid == uid and spec_map.immutable
        assert json.loads(spec_map.data["spec.json"])["source"]["uri"] == run["spec"]["source"]["uri"]

        status = wait_phase(kube_api, AR, ns, run["metadata"]["name"], "Running")["status"]
        assert status["jobName"] == job.metadata.name
        assert condition({"status": status}, "Reconciling")["status"] == "True"
        commit_output(s3, run, rows=50, generated={"typo": 20})
        release(kube_api, ns, uid)
        done = wait_phase(kube_api, AR, ns, run["metadata"]["name"], "Succeeded", timeout=90)
        assert done["status"]["results"]["samplesOut"] == 70
        assert condition(done, "Ready")["status"] == "True"
        assert condition(done, "Complete")["status"] == "True"
        assert condition(done, "Stalled")["status"] == "False"
        assert done["status"]["outputs"]["manifestUri"].endswith("manifest.json")
        assert done["status"]["completionTime"]
        # kopf posts Events in the background: they follow the status by a moment.
        events = wait_for(lambda: (found := client.CoreV1Api(kube_api).list_namespaced_event(
            ns, field_selector=f"involvedObject.uid={uid}").items) and {"JobCreated", "JobRunning", "Succeeded"} <= {
            e.reason for e in found} and found, what="JobCreated/JobRunning/Succeeded Events")
        transitions = [e.message for e in events if "→" in (e.message or "")]
        assert len(transitions) == len(set(transitions)), f"a phase change announced twice: {transitions}"
        assert all((e.count or 1) == 1 for e in events if "→" in (e.message or "")), transitions

    def test_failed_pod_fails_the_run_with_a_reason(self, kube_api: client.ApiClient, ns: str) -> None:
        run = create_run(kube_api, ns, example("augmentationrun.yaml", backoffLimit=0, parallelism=1),
                         labels=HOLD)
        pod = running_pod(kube_api, ns, run["metadata"]["uid"])
        client.CoreV1Api(kube_api).patch_namespaced_pod(pod.metadata.name, ns,
                                                        {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "7"}}})
        failed = wait_phase(kube_api, AR, ns, run["metadata"]["name"], "Failed", timeout=90)
        cond = condition(failed, "Failed")
        assert cond["status"] == "True" and cond["reason"] == "BackoffLimitExceeded"
        assert "exited with code 7" in cond["message"]
        assert condition(failed, "Stalled")["status"] == "True"


class TestRuntimeChecks:
    def test_missing_secret_is_a_condition_not_a_crash(self, kube_api: client.ApiClient, operator_proc: OperatorProcess,
                                                       namespace: str) -> None:
        run = create_run(kube_api, namespace, example("augmentationrun.yaml"))
        name = run["metadata"]["name"]

        def stalled() -> dict | None:
            current = get_run(kube_api, AR, namespace, name)
            cond = condition(current, "Stalled")
            return current if cond and cond["status"] == "True" and cond["reason"] == "SecretNotFound" else None

        current = wait_for(stalled, what="SecretNotFound")
        assert CREDENTIALS_SECRET in condition(current, "Stalled")["message"]
        assert current["status"]["phase"] == "Pending"
        assert not jobs_of(kube_api, namespace, run["metadata"]["uid"])
        assert operator_proc.process.alive()
        create_credentials(kube_api, namespace)
        wait_for(lambda: jobs_of(kube_api, namespace, run["metadata"]["uid"]), timeout=60,
                 what="the Job once the Secret exists")

    def test_finetune_waits_for_its_augmentation_run(self, kube_api: client.ApiClient, ns: str,
                                                     stored: Callable[..., Any], s3: Minio) -> None:
        ft = create_run(kube_api, ns, example("finetunerun.yaml"), name="ranker")
        waiting = wait_phase(kube_api, FT, ns, "ranker", "Waiting")
        assert condition(waiting, "Waiting")["reason"] == "UpstreamNotFound"
        assert condition(waiting, "Stalled")["status"] == "True", "a misspelled upstream needs a person"
        aug = create_run(kube_api, ns, stored("augmentationrun.yaml", parallelism=1), labels=HOLD)
        wait_for(lambda: condition(get_run(kube_api, FT, ns, "ranker"), "Waiting")["reason"] == "WaitingForUpstream",
                 what="WaitingForUpstream")
        assert not jobs_of(kube_api, ns, ft["metadata"]["uid"])
        assert condition(get_run(kube_api, FT, ns, "ranker"), "Stalled")["status"] == "False"
        commit_output(s3, aug)
        release(kube_api, ns, aug["metadata"]["uid"])
        wait_phase(kube_api, AR, ns, aug["metadata"]["name"], "Succeeded", timeout=90)
        jobs = wait_for(lambda: jobs_of(kube_api, ns, ft["metadata"]["uid"]), timeout=60, what="the fine-tune Job")
        env = {e.name: e.value for e in jobs[0].spec.template.spec.containers[0].env}
        assert env[jobenv.INPUT_URI] == aug["spec"]["output"]["uri"]
        assert jobs[0].spec.completions == 2  # distribution.nodes: 2 → Indexed Job, one pod per node
        assert env[jobenv.MASTER_ADDR].startswith(jobs[0].metadata.name + "-0.")


class TestSuspendDeleteTtl:
    def test_suspend_and_resume(self, kube_api: client.ApiClient, ns: str) -> None:
        run = create_run(kube_api, ns, example("augmentationrun.yaml", suspend=True), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        suspended = wait_phase(kube_api, AR, ns, name, "Suspended")
        assert condition(suspended, "Suspended")["status"] == "True"
        job = wait_for(lambda: jobs_of(kube_api, ns, uid), what="the Job")[0]
        assert job.spec.suspend is True
        assert not pods_of(kube_api, ns, uid)
        patch_run(kube_api, AR, ns, name, {"spec": {"suspend": False}})
        wait_phase(kube_api, AR, ns, name, "Running")
        assert jobs_of(kube_api, ns, uid)[0].spec.suspend is False

    def test_deleting_a_run_deletes_its_job_and_pods(self, kube_api: client.ApiClient, ns: str) -> None:
        run = create_run(kube_api, ns, example("augmentationrun.yaml"), labels=HOLD)
        uid = run["metadata"]["uid"]
        running_pod(kube_api, ns, uid)
        # The finalizer the docs tell users about (uninstall: delete runs first) is the one kopf sets.
        assert FINALIZER in get_run(kube_api, AR, ns, run["metadata"]["name"])["metadata"]["finalizers"]
        client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(
            "sampleforge.io", "v1alpha1", ns, "augmentationruns", run["metadata"]["name"])
        wait_for(lambda: not jobs_of(kube_api, ns, uid) and not pods_of(kube_api, ns, uid), timeout=90,
                 what="garbage collection of the Job and its pods")

    def test_ttl_removes_the_finished_job_but_keeps_the_status(self, kube_api: client.ApiClient, ns: str,
                                                               stored: Callable[..., Any], s3: Minio) -> None:
        doc = stored("augmentationrun.yaml", ttlSecondsAfterFinished=1, parallelism=1)
        commit_output(s3, {**doc, "metadata": {**doc["metadata"], "uid": ""}})
        run = create_run(kube_api, ns, doc)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        wait_phase(kube_api, AR, ns, name, "Succeeded", timeout=90)
        wait_for(lambda: not jobs_of(kube_api, ns, uid), timeout=60, what="the TTL controller to delete the Job")
        time.sleep(2)
        assert get_run(kube_api, AR, ns, name)["status"]["phase"] == "Succeeded"


class TestHeartbeats:
    def test_heartbeats_update_progress_and_results(self, kube_api: client.ApiClient, ns: str,
                                                    operator_proc: OperatorProcess) -> None:
        run = create_run(kube_api, ns, example("augmentationrun.yaml", parallelism=1), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        pod = running_pod(kube_api, ns, uid)
        wait_phase(kube_api, AR, ns, name, "Running")
        beat = {"kind": "AugmentationRun", "namespace": ns, "name": name, "uid": uid, "shard": 0, "shards": 1,
                "done": 250, "total": 1000, "rate": 50.0, "sentAt": datetime.now(UTC).isoformat(),
                "augmentation": {"samplesIn": 250, "samplesOut": 600, "perAugmenter": {"typo": 350}}}
        assert post_heartbeat(operator_proc.url, "not-a-token", beat) == 401
        # A token for the API server's own audience must not be accepted either.
        assert post_heartbeat(operator_proc.url, pod_token(kube_api, pod, audience="https://kubernetes.default.svc"),
                              beat) == 401
        assert post_heartbeat(operator_proc.url, pod_token(kube_api, pod), beat) == 202

        def progressed() -> dict | None:
            status = get_run(kube_api, AR, ns, name).get("status") or {}
            return status if (status.get("progress") or {}).get("done") == 250 else None

        status = wait_for(progressed, what="progress in status")
        assert status["progress"]["percent"] == 25
        assert status["progress"]["etaSeconds"] == 15
        assert status["results"]["perAugmenter"] == {"typo": 350}

        metrics = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(scrape(operator_proc.url)) for s in family.samples}
        labels = (("kind", "AugmentationRun"), ("name", name), ("namespace", ns))
        assert metrics[("sampleforge_run_progress_ratio", labels)] == pytest.approx(0.25)
        with_augmenter = tuple(sorted((*labels, ("augmenter", "typo"))))
        assert metrics[("sampleforge_augmentation_augmenter_samples", with_augmenter)] == 350
        assert metrics[("sampleforge_heartbeats_total", (("kind", "AugmentationRun"), ("result", "accepted")))] >= 1

    def test_a_run_whose_heartbeats_stop_fails(self, kube_api: client.ApiClient, ns: str) -> None:
        run = create_run(kube_api, ns, example("augmentationrun.yaml", parallelism=1, heartbeatTimeoutSeconds=30),
                         labels=HOLD)
        failed = wait_phase(kube_api, AR, ns, run["metadata"]["name"], "Failed", timeout=90)
        assert condition(failed, "Failed")["reason"] == "HeartbeatTimeout"
        job = jobs_of(kube_api, ns, run["metadata"]["uid"])[0]
        assert wait_for(lambda: client.BatchV1Api(kube_api).read_namespaced_job(job.metadata.name, ns).spec.suspend,
                        what="the Job to be suspended, freeing its GPUs")


class TestRestartAndMetrics:
    def test_a_run_that_finishes_while_the_operator_is_down_shows_what_it_committed(
            self, testbed: Testbed, kube_api: client.ApiClient, ns: str, operator_proc: OperatorProcess,
            stored: Callable[..., Any], s3: Minio) -> None:
        run = create_run(kube_api, ns, stored("augmentationrun.yaml", parallelism=1), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        pod = running_pod(kube_api, ns, uid)
        wait_phase(kube_api, AR, ns, name, "Running")
        # The last heartbeat before the operator dies says a sixth of what the run will commit.
        stale = {"kind": "AugmentationRun", "namespace": ns, "name": name, "uid": uid, "shard": 0, "shards": 1,
                 "done": 100, "total": 600, "sentAt": datetime.now(UTC).isoformat(),
                 "augmentation": {"samplesIn": 100, "samplesOut": 150, "perAugmenter": {"typo": 50}}}
        assert post_heartbeat(operator_proc.url, pod_token(kube_api, pod), stale) == 202
        wait_for(lambda: (get_run(kube_api, AR, ns, name)["status"].get("results") or {}).get("samplesOut") == 150,
                 what="the heartbeat's counts in status")
        operator_proc.kill()
        commit_output(s3, run, rows=600, generated={"typo": 300, "synonym": 10}, filtered={"dedup": 4})
        release(kube_api, ns, uid)  # the pod finishes while no operator runs
        wait_for(lambda: (jobs_of(kube_api, ns, uid)[0].status.succeeded or 0) >= 1, timeout=60,
                 what="the Job to finish")
        operator_proc.start(wait_ready=False)
        operator_proc.wait_ready(timeout=60)  # after the old Lease expires
        done = wait_phase(kube_api, AR, ns, name, "Succeeded", timeout=90)
        assert done["status"]["results"] == {"samplesIn": 600, "samplesOut": 910, "rejectedRows": 0,
                                             "perAugmenter": {"synonym": 10, "typo": 300}, "filtered": {"dedup": 4}}
        assert (done["status"]["progress"]["done"], done["status"]["progress"]["percent"]) == (600, 100)
        job = jobs_of(kube_api, ns, uid)
        assert len(job) == 1
        assert done["status"]["completionTime"] == job[0].status.completion_time.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert done["status"]["completionTime"] > done["status"]["startTime"]

    def test_metrics_expose_runs_by_phase_and_controller_series(self, kube_api: client.ApiClient, ns: str,
                                                               operator_proc: OperatorProcess,
                                                               stored: Callable[..., Any], s3: Minio) -> None:
        doc = stored("augmentationrun.yaml", parallelism=1)
        commit_output(s3, {**doc, "metadata": {**doc["metadata"], "uid": ""}})
        run = create_run(kube_api, ns, doc)
        wait_phase(kube_api, AR, ns, run["metadata"]["name"], "Succeeded", timeout=90)
        families = {f.name: f for f in text_string_to_metric_families(scrape(operator_proc.url))}
        succeeded = [s for s in families["sampleforge_runs"].samples
                     if s.labels == {"kind": "AugmentationRun", "phase": "Succeeded"}]
        assert succeeded and succeeded[0].value >= 1
        for name in ("sampleforge_reconcile_duration_seconds", "sampleforge_run_phase_transitions",
                     "sampleforge_jobs_created", "sampleforge_run_duration_seconds", "sampleforge_operator_leader",
                     "sampleforge_status_writes"):
            assert name in families, f"{name} missing from /metrics"
        assert families["sampleforge_operator_leader"].samples[0].value == 1


class TestWhatStatusMayClaim:
    def test_a_pod_the_runs_job_did_not_create_cannot_report_for_it(self, kube_api: client.ApiClient, ns: str,
                                                                    operator_proc: OperatorProcess) -> None:
        run = create_run(kube_api, ns, example("augmentationrun.yaml", parallelism=1), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        own = running_pod(kube_api, ns, uid)
        wait_phase(kube_api, AR, ns, name, "Running")
        # The operator's labels of the Job's pods, same ServiceAccount, a token for the heartbeat
        # audience. (Not the Job controller's selector labels: the Job would adopt such a pod as its
        # own, and delete it as one too many.)
        labels = {k: v for k, v in own.metadata.labels.items() if k.startswith("sampleforge.io/")
                  or k == "app.kubernetes.io/managed-by"}
        forged = client.CoreV1Api(kube_api).create_namespaced_pod(ns, {
            "metadata": {"name": "forger", "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], "nodeName": own.spec.node_name,
                     "tolerations": [{"operator": "Exists"}],
                     "serviceAccountName": own.spec.service_account_name or "default"}})
        beat = {"kind": "AugmentationRun", "namespace": ns, "name": name, "uid": uid, "shard": 0, "shards": 1,
                "done": 999, "total": 1000, "sentAt": datetime.now(UTC).isoformat(),
                "augmentation": {"samplesIn": 1, "samplesOut": 999999}}
        assert post_heartbeat(operator_proc.url, pod_token(kube_api, forged), beat) == 403
        honest = {**beat, "done": 10, "augmentation": {"samplesIn": 10, "samplesOut": 12}}
        assert post_heartbeat(operator_proc.url, pod_token(kube_api, own), honest) == 202
        status = wait_for(lambda: (s := get_run(kube_api, AR, ns, name)["status"]).get("progress", {}).get("done") == 10
                          and s, what="the own pod's progress")
        assert status["results"]["samplesOut"] == 12
        client.CoreV1Api(kube_api).delete_namespaced_pod("forger", ns, grace_period_seconds=0)

    def test_a_job_that_completes_without_committing_fails_the_run(self, kube_api: client.ApiClient, ns: str,
                                                                   stored: Callable[..., Any]) -> None:
        run = create_run(kube_api, ns, stored("augmentationrun.yaml", parallelism=1))
        failed = wait_phase(kube_api, AR, ns, run["metadata"]["name"], "Failed", timeout=90)
        cond = condition(failed, "Failed")
        assert cond["reason"] == "OutputNotCommitted" and "manifest.json" in cond["message"]
        assert "results" not in failed["status"]

    def test_results_wait_while_minio_cannot_be_read(self, kube_api: client.ApiClient, ns: str,
                                                     stored: Callable[..., Any], s3: Minio) -> None:
        doc = stored("augmentationrun.yaml", parallelism=1)
        doc["spec"]["storage"]["endpoint"] = "127.0.0.1:9"  # nothing listens: MinIO "down"
        run = create_run(kube_api, ns, doc)
        name = run["metadata"]["name"]

        def collecting() -> dict[str, Any] | None:
            current = get_run(kube_api, AR, ns, name)
            cond = condition(current, "Ready")
            return current if cond and cond["reason"] == "CollectingResults" else None

        current = wait_for(collecting, timeout=60, what="CollectingResults")
        assert current["status"]["phase"] == "Running" and "127.0.0.1:9" in condition(current, "Ready")["message"]
        # MinIO is back (the run is pointed at it): the committed results are read and the run succeeds.
        commit_output(s3, run, rows=10)
        patch_run(kube_api, AR, ns, name, {"spec": {"storage": {"endpoint": stored("augmentationrun.yaml")["spec"][
            "storage"]["endpoint"]}}})
        done = wait_phase(kube_api, AR, ns, name, "Succeeded", timeout=120)
        assert done["status"]["results"]["samplesIn"] == 10

    def test_spec_changes_that_are_not_applied_are_said(self, kube_api: client.ApiClient, ns: str,
                                                       stored: Callable[..., Any], s3: Minio) -> None:
        run = create_run(kube_api, ns, stored("augmentationrun.yaml", parallelism=1), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        wait_phase(kube_api, AR, ns, name, "Running")
        patch_run(kube_api, AR, ns, name, {"spec": {"resources": {"gpus": 2}}})

        def said(phase: str) -> dict[str, Any] | None:
            current = get_run(kube_api, AR, ns, name)
            cond = condition(current, "SpecChangeIgnored")
            fresh = current["status"].get("observedGeneration") == current["metadata"]["generation"]
            ok = fresh and cond and cond["status"] == "True" and current["status"]["phase"] == phase
            return current if ok else None

        running = wait_for(lambda: said("Running"), what="SpecChangeIgnored on the running run")
        assert "spec.resources" in condition(running, "SpecChangeIgnored")["message"]

        def warnings() -> list[str]:
            return [e.message for e in client.CoreV1Api(kube_api).list_namespaced_event(
                ns, field_selector=f"involvedObject.uid={uid}").items
                if e.reason == "SpecChangeIgnored" and e.type == "Warning"]

        live = wait_for(lambda: [m for m in warnings() if "spec.resources" in m], what="the running run's Warning")
        assert len(live) == 1, "said once, not on every pass of the monitor"
        commit_output(s3, run)
        release(kube_api, ns, uid)
        wait_phase(kube_api, AR, ns, name, "Succeeded", timeout=90)
        patch_run(kube_api, AR, ns, name, {"spec": {"parallelism": 3}})
        finished = wait_for(lambda: said("Succeeded"), what="the finished run to record the new generation")
        assert "spec.parallelism" in condition(finished, "SpecChangeIgnored")["message"]
        wait_for(lambda: any("spec.parallelism" in m for m in warnings()), what="the finished run's Warning")

    def test_a_deleted_job_is_reported_and_recreated_with_the_runs_start_time(
            self, kube_api: client.ApiClient, ns: str) -> None:
        run = create_run(kube_api, ns, example("augmentationrun.yaml", parallelism=1), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        started = wait_phase(kube_api, AR, ns, name, "Running")["status"]["startTime"]
        job = jobs_of(kube_api, ns, uid)[0]
        time.sleep(1.1)
        client.BatchV1Api(kube_api).delete_namespaced_job(job.metadata.name, ns, propagation_policy="Background")
        wait_for(lambda: condition(get_run(kube_api, AR, ns, name), "Ready")["reason"] == "JobMissing", timeout=60,
                 what="JobMissing")
        recreated = wait_for(lambda: [j for j in jobs_of(kube_api, ns, uid) if j.metadata.uid != job.metadata.uid],
                             timeout=60, what="the Job to be recreated")
        assert len(recreated) == 1
        wait_for(lambda: condition(get_run(kube_api, AR, ns, name), "Ready")["reason"] == "JobRunning", timeout=60,
                 what="the run running again")
        assert get_run(kube_api, AR, ns, name)["status"]["startTime"] == started

    def test_a_job_the_api_server_refuses_fails_the_run_naming_the_field(self, kube_api: client.ApiClient,
                                                                         ns: str, operator_proc: OperatorProcess) -> None:
        """Once, and for good: the run is Failed with one Warning Event that names the field, and
        the operator does not try the Job again (the issue saw a traceback every 60 s for ever)."""
        bad_affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gpu", "operator": "NotAnOperator", "values": ["a100"]}]}]}}}
        run = create_run(kube_api, ns, example("augmentationrun.yaml", parallelism=1, affinity=bad_affinity))
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        failed = wait_phase(kube_api, AR, ns, name, "Failed", timeout=60)
        cond = condition(failed, "Failed")
        assert cond["reason"] == "InvalidSpec" and "affinity" in cond["message"]
        assert not jobs_of(kube_api, ns, uid)

        def events() -> list[Any]:
            return list(client.CoreV1Api(kube_api).list_namespaced_event(
                ns, field_selector=f"involvedObject.uid={uid}").items)

        def refused_jobs() -> float:
            return sum(s.value for family in text_string_to_metric_families(scrape(operator_proc.url))
                       for s in family.samples if s.name == "sampleforge_job_create_errors_total"
                       and s.labels.get("kind") == "AugmentationRun")

        warned = wait_for(lambda: [e for e in events() if e.type == "Warning" and e.reason == "InvalidSpec"],
                          what="the run's InvalidSpec Warning Event")
        assert len(warned) == 1 and (warned[0].count or 1) == 1
        assert "affinity" in warned[0].message and "NotAnOperator" in warned[0].message, warned[0].message
        time.sleep(2)  # kopf posts Events in the background: let those of the failure land
        before = ({(e.metadata.name, e.count or 1) for e in events()}, refused_jobs(),
                  get_run(kube_api, AR, ns, name)["metadata"]["resourceVersion"])
        assert before[1] >= 1
        # Three resync periods (FAST: 2 s): a retry would refuse the Job again and say so again.
        time.sleep(3 * float(FAST["SAMPLEFORGE_OPERATOR_RESYNC_SECONDS"]) + 1)
        after = ({(e.metadata.name, e.count or 1) for e in events()}, refused_jobs(),
                 get_run(kube_api, AR, ns, name)["metadata"]["resourceVersion"])
        assert after[0] == before[0], f"new Events after the run failed: {after[0] - before[0]}"
        assert after[1] == before[1], "the operator tried to create the Job again"
        assert after[2] == before[2], "the run was written again after it failed"
        assert not jobs_of(kube_api, ns, uid)

    def test_a_uri_outside_the_namespaces_storage_prefixes_fails_the_run(self, kube_api: client.ApiClient,
                                                                         ns: str) -> None:
        run = create_run(kube_api, ns, example("augmentationrun.yaml", parallelism=1,
                                               output={"uri": "s3://other-team/stolen/"}))
        failed = wait_phase(kube_api, AR, ns, run["metadata"]["name"], "Failed", timeout=60)
        cond = condition(failed, "Failed")
        assert cond["reason"] == "InvalidSpec"
        assert "spec.output.uri s3://other-team/stolen/" in cond["message"] and "s3://datasets/" in cond["message"]
        assert not jobs_of(kube_api, ns, run["metadata"]["uid"])
