"""The fault suite: the operator, MinIO, etcd and the Job controller misbehave for real, and every
run still ends with the status its committed outputs say, one Job, and no credential anywhere.

Each fault is done to the real process (the operator SIGKILLed, MinIO stopped and restarted on
its port and data, etcd frozen with SIGSTOP, kube-apiserver SIGKILLed and restarted on its port) or
through the real controller (a Job deleted by hand, pods that exit with
the jobs' do-not-retry codes, an active deadline). What is already covered elsewhere is not
repeated here: a forged heartbeat from a pod the run's Job did not create is
``test_operator.py::TestWhatStatusMayClaim``.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from minio import Minio
from operator_helpers import (
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
    on_minio,
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

from sampleforge.api import GROUP, VERSION
from sampleforge.api.constants import LABEL_RUN_UID, PLURALS, Kind
from sampleforge.testbed import EXIT_CODE_ANNOTATION, Testbed
from sampleforge.testbed._operator import OPERATOR_NAMESPACE, OperatorProcess

pytestmark = pytest.mark.integration
AR, FT = Kind.AUGMENTATION_RUN, Kind.FINE_TUNE_RUN
#: Short, so a leader that cannot renew steps down within seconds; not shorter, or a leader on a
#: 2-core machine loaded by 100 runs (and other work) misses its 2/3-lease renew deadline.
LEASE_SECONDS = 9
LEASE_NAME = "sampleforge-faults"
SETTINGS = FAST | LEADER_ELECTION | {"SAMPLEFORGE_OPERATOR_LEASE_DURATION_SECONDS": str(LEASE_SECONDS),
                                     "SAMPLEFORGE_OPERATOR_LEASE_NAME": LEASE_NAME}


@pytest.fixture(scope="module")
def operator_proc(testbed: Testbed) -> Iterator[OperatorProcess]:
    with running_operator(testbed, "operator-faults.log", SETTINGS, identity="faults-operator") as proc:
        yield proc


@pytest.fixture
def operator(operator_proc: OperatorProcess) -> OperatorProcess:
    """The module's operator, leading: a test that killed it and failed before restarting it must
    not take the next tests down with it."""
    if not operator_proc.process.alive():
        operator_proc.start(wait_ready=False)
    operator_proc.wait_leading(timeout=60)
    return operator_proc


@pytest.fixture
def ns(operator: OperatorProcess, kube_api: client.ApiClient, namespace: str, testbed: Testbed) -> str:
    create_credentials(kube_api, namespace, testbed.minio)
    return namespace


@pytest.fixture
def stored(testbed: Testbed, bucket: str) -> Callable[..., dict[str, Any]]:
    """An example run whose output goes to a fresh prefix of the testbed's MinIO."""
    return lambda name, **spec: on_minio(example(name, **spec), testbed.minio, bucket)



def exit_with(api: client.ApiClient, pod: client.V1Pod, code: int) -> None:
    """Make a held kwok pod terminate with ``code``, as the job's process would."""
    client.CoreV1Api(api).patch_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                               {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: str(code)}}})


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(scrape(url)) for s in family.samples}


def run_series(url: str, namespace: str) -> list[str]:
    """The operator's per-run series of runs in ``namespace``."""
    return sorted(f"{name}{dict(labels)}" for name, labels in samples(url) if ("namespace", namespace) in labels)


def events_of(api: client.ApiClient, namespace: str, uid: str) -> list[client.CoreV1Event]:
    return list(client.CoreV1Api(api).list_namespaced_event(namespace,
                                                            field_selector=f"involvedObject.uid={uid}").items)


def assert_no_credential_leaked(api: client.ApiClient, testbed: Testbed, operator: OperatorProcess,
                                namespace: str, runs: list[dict[str, Any]]) -> None:
    """The storage secret key is nowhere in the runs' status, their Events or the operator's log."""
    secret = testbed.minio.secret_key
    for run in runs:
        assert secret not in json.dumps(run), f"credential in {run['metadata']['name']}"
        for event in events_of(api, namespace, run["metadata"]["uid"]):
            assert secret not in (event.message or ""), f"credential in Event {event.reason}"
    assert secret not in operator.process.log_path.read_text(errors="replace"), "credential in the operator's log"


def job_completed(api: client.ApiClient, namespace: str, uid: str) -> bool:
    jobs = jobs_of(api, namespace, uid)
    return bool(jobs) and any(c.type == "Complete" and c.status == "True" for c in jobs[0].status.conditions or [])


def deliver(operator: OperatorProcess, token: str, body: dict[str, Any], timeout: float = 30) -> None:
    """Post a heartbeat as the pods' sender does: again on the next beat until it is taken. A
    restarted operator refuses a run's own pods until its watches have listed them."""
    deadline = time.monotonic() + timeout
    while (code := post_heartbeat(operator.url, token, body)) != 202:
        assert code in (403, 503), f"heartbeat answered {code}"
        assert time.monotonic() < deadline, f"the operator still refused the run's own pod ({code}) after {timeout}s"
        time.sleep(1)


def job_failure(job: client.V1Job) -> str | None:
    """Why the Job controller failed the Job: the reason of its FailureTarget condition (set first,
    while the pods are ended) or of its Failed condition."""
    return next((c.reason for c in job.status.conditions or [] if c.type in ("FailureTarget", "Failed")
                 and c.status == "True"), None)


def restart_operator(operator: OperatorProcess) -> float:
    """What the kubelet does for a container that died or exited: start it again. Returns how long
    it took to lead (this replica's identity is unchanged, so it takes its own Lease back)."""
    started = time.monotonic()
    operator.start(wait_ready=False)
    operator.wait_leading(timeout=60)
    return time.monotonic() - started


class TestManyRuns:
    RUNS = 100

    def test_a_hundred_runs_applied_and_deleted_leave_nothing_behind(
            self, testbed: Testbed, kube_api: client.ApiClient, ns: str, operator: OperatorProcess,
            stored: Callable[..., Any], s3: Minio) -> None:
        """100 AugmentationRuns (parallelism 1): the even ones commit their output (Succeeded, with
        their own counts), the odd ones do not (Failed, OutputNotCommitted). Each gets exactly one
        Job. Once they are deleted, no Job, Pod, ConfigMap or per-run series is left and the operator
        is still healthy and leading."""
        custom = client.CustomObjectsApi(kube_api)
        plural = PLURALS[AR]
        created_before = samples(operator.url).get(("sampleforge_jobs_created_total",
                                                    (("kind", "AugmentationRun"),)), 0.0)
        began = time.monotonic()
        expected: dict[str, dict[str, Any] | None] = {}
        for i in range(self.RUNS):
            doc = stored("augmentationrun.yaml", parallelism=1)
            name = f"r{i:03d}"
            if i % 2 == 0:
                commit_output(s3, {**doc, "metadata": {**doc["metadata"], "name": name, "uid": ""}}, rows=10 + i,
                              generated={"typo": i})
                expected[name] = {"samplesIn": 10 + i, "samplesOut": 10 + 2 * i, "rejectedRows": 0,
                                  "perAugmenter": {"typo": i}, "filtered": {}}
            else:
                expected[name] = None
            create_run(kube_api, ns, doc, name=name)
        applied = time.monotonic() - began

        def all_finished() -> list[dict[str, Any]] | None:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]
            done = [r for r in items if (r.get("status") or {}).get("phase") in ("Succeeded", "Failed")]
            return items if len(done) == self.RUNS else None

        try:
            runs = wait_for(all_finished, timeout=240, what=f"{self.RUNS} runs to finish")
        except AssertionError:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]
            phases = [(r["metadata"]["name"], (r.get("status") or {}).get("phase")) for r in items]
            raise AssertionError(f"not all runs finished: {[p for p in phases if p[1] not in ('Succeeded', 'Failed')]}")
        finished = time.monotonic() - began
        for run in runs:
            name, status = run["metadata"]["name"], run["status"]
            if expected[name] is None:
                assert status["phase"] == "Failed", (name, status)
                assert condition(run, "Failed")["reason"] == "OutputNotCommitted"
                assert "results" not in status
            else:
                assert status["phase"] == "Succeeded", (name, status)
                assert status["results"] == expected[name], name
        jobs = client.BatchV1Api(kube_api).list_namespaced_job(ns).items
        owners = sorted(j.metadata.labels[LABEL_RUN_UID] for j in jobs)
        assert owners == sorted(r["metadata"]["uid"] for r in runs), "exactly one Job per run"
        created = samples(operator.url)[("sampleforge_jobs_created_total", (("kind", "AugmentationRun"),))]
        assert created - created_before == self.RUNS, "the operator created one Job per run, no more"
        assert_no_credential_leaked(kube_api, testbed, operator, ns, runs[:10])
        series = run_series(operator.url, ns)
        assert any(s.startswith("sampleforge_augmentation_samples_out") for s in series), \
            "the succeeded runs have per-run series (else their absence below proves nothing)"

        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, ns, plural)
        core = client.CoreV1Api(kube_api)

        def gone() -> bool:
            left = custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]
            selector = LABEL_RUN_UID
            return not left and not client.BatchV1Api(kube_api).list_namespaced_job(ns).items \
                and not core.list_namespaced_pod(ns, label_selector=selector).items \
                and not core.list_namespaced_config_map(ns, label_selector=selector).items

        wait_for(gone, timeout=120, what="the runs, their Jobs, Pods and ConfigMaps to be gone")
        deleted = time.monotonic() - began
        assert run_series(operator.url, ns) == []
        with urllib.request.urlopen(f"{operator.url}/healthz", timeout=5) as response:
            assert response.status == 200
        assert operator.readiness() == (True, "ok: leader, handling runs")
        assert operator.process.alive()
        print(f"\n{self.RUNS} runs: applied in {applied:.1f}s, all finished at {finished:.1f}s, "
              f"all deleted and collected at {deleted:.1f}s")


class TestOperatorKilled:
    def test_a_finetune_run_shows_its_metrics_json_after_the_operator_was_killed_mid_run_and_as_it_finished(
            self, testbed: Testbed, kube_api: client.ApiClient, ns: str, operator: OperatorProcess,
            stored: Callable[..., Any], s3: Minio) -> None:
        run = create_run(kube_api, ns, stored("finetunerun-baseline.yaml"), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        pod = running_pod(kube_api, ns, uid)
        job_uid = jobs_of(kube_api, ns, uid)[0].metadata.uid
        started = wait_phase(kube_api, FT, ns, name, "Running")["status"]["startTime"]
        token = pod_token(kube_api, pod)

        def beat(step: int, metrics: dict[str, float]) -> dict[str, Any]:
            return {"kind": "FineTuneRun", "namespace": ns, "name": name, "uid": uid, "shard": 0, "shards": 1,
                    "done": step, "total": 37, "sentAt": datetime.now(UTC).isoformat(),
                    "finetune": {"step": step, "loss": 2.0, "latestMetrics": metrics}}

        def reported(step: int) -> dict[str, Any] | None:
            status = get_run(kube_api, FT, ns, name)["status"]
            return status if (status.get("results") or {}).get("step") == step else None

        assert post_heartbeat(operator.url, token, beat(9, {})) == 202
        wait_for(lambda: reported(9), what="step 9 in status")

        # Killed mid-run: the run stays Running with its Job; the restarted operator adopts both.
        operator.kill()
        print(f"\nrestarted mid-run, leading after {restart_operator(operator):.1f}s")
        deliver(operator, token, beat(20, {"ndcg@10": 0.41}))
        status = wait_for(lambda: reported(20), what="the restarted operator's progress in status")
        assert status["phase"] == "Running" and status["progress"]["done"] == 20
        assert [j.metadata.uid for j in jobs_of(kube_api, ns, uid)] == [job_uid]

        # Killed again just before the run commits and finishes: the last heartbeat said step 20.
        operator.kill()
        final = {"ndcg@10": 0.734, "auc": 0.861}
        commit_output(s3, run, metrics=final, step=37, loss=0.125)
        release(kube_api, ns, uid)
        wait_for(lambda: job_completed(kube_api, ns, uid), timeout=60, what="the Job to complete")
        print(f"restarted after the run finished, leading after {restart_operator(operator):.1f}s")
        done = wait_phase(kube_api, FT, ns, name, "Succeeded", timeout=90)
        assert done["status"]["results"] == {"step": 37, "epoch": 1.0, "loss": 0.125, "latestMetrics": final,
                                             "rejectedRows": 0}
        assert (done["status"]["progress"]["done"], done["status"]["progress"]["percent"]) == (37, 100)
        assert done["status"]["startTime"] == started
        assert [j.metadata.uid for j in jobs_of(kube_api, ns, uid)] == [job_uid]
        assert_no_credential_leaked(kube_api, testbed, operator, ns, [done])


class TestMinioDown:
    def test_results_are_collected_once_minio_is_back(
            self, testbed: Testbed, kube_api: client.ApiClient, ns: str, operator: OperatorProcess,
            stored: Callable[..., Any], s3: Minio) -> None:
        run = create_run(kube_api, ns, stored("augmentationrun.yaml", parallelism=1), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        wait_phase(kube_api, AR, ns, name, "Running")
        commit_output(s3, run, rows=321, generated={"typo": 100, "synonym": 7}, filtered={"dedup": 3})
        minio = testbed.minio.process
        minio.stop()  # the real server, gone: its port refuses connections
        try:
            release(kube_api, ns, uid)
            wait_for(lambda: job_completed(kube_api, ns, uid), timeout=60, what="the Job to complete")

            def collecting() -> dict[str, Any] | None:
                current = get_run(kube_api, AR, ns, name)
                ready = condition(current, "Ready")
                return current if ready and ready["reason"] == "CollectingResults" \
                    and "cannot read" in ready["message"] else None

            current = wait_for(collecting, timeout=60, what="CollectingResults while MinIO is down")
            assert current["status"]["phase"] == "Running"
            assert testbed.minio.endpoint in condition(current, "Ready")["message"]
            assert "results" not in current["status"]
            time.sleep(5)  # retried meanwhile: still waiting, neither Failed nor Succeeded
            current = get_run(kube_api, AR, ns, name)
            assert current["status"]["phase"] == "Running"
            assert condition(current, "Ready")["reason"] == "CollectingResults"
        finally:
            testbed.restart_minio()
        back = time.monotonic()
        done = wait_phase(kube_api, AR, ns, name, "Succeeded", timeout=120)
        print(f"\nSucceeded {time.monotonic() - back:.1f}s after MinIO was back")
        assert done["status"]["results"] == {"samplesIn": 321, "samplesOut": 428, "rejectedRows": 0,
                                             "perAugmenter": {"synonym": 7, "typo": 100}, "filtered": {"dedup": 3}}
        assert len(jobs_of(kube_api, ns, uid)) == 1
        assert_no_credential_leaked(kube_api, testbed, operator, ns, [done])
        # The rest of the session has its MinIO back, with the same keys and data.
        assert s3.bucket_exists(run["spec"]["output"]["uri"].split("/")[2])


class TestControlPlaneFaults:
    @pytest.mark.parametrize("fault", ["etcd frozen", "kube-apiserver crashed and restarted"])
    def test_a_leader_that_cannot_renew_steps_down_before_its_lease_expires_and_the_run_catches_up(
            self, testbed: Testbed, kube_api: client.ApiClient, ns: str, operator: OperatorProcess,
            stored: Callable[..., Any], s3: Minio, fault: str) -> None:
        """etcd stopped with SIGSTOP (the API server answers nothing: calls hang), or the API server
        SIGKILLed and started again on its port (calls are refused): either way the leader cannot
        renew, must stop leading before its Lease expires, and exits to be restarted."""
        run = create_run(kube_api, ns, stored("augmentationrun.yaml", parallelism=1), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        pod = running_pod(kube_api, ns, uid)
        job_uid = jobs_of(kube_api, ns, uid)[0].metadata.uid
        wait_phase(kube_api, AR, ns, name, "Running")
        token = pod_token(kube_api, pod)

        def beat(done: int) -> dict[str, Any]:
            return {"kind": "AugmentationRun", "namespace": ns, "name": name, "uid": uid, "shard": 0, "shards": 1,
                    "done": done, "total": 400, "sentAt": datetime.now(UTC).isoformat(),
                    "augmentation": {"samplesIn": done, "samplesOut": 2 * done}}

        def progressed(done: int) -> dict[str, Any] | None:
            status = get_run(kube_api, AR, ns, name)["status"]
            return status if (status.get("progress") or {}).get("done") == done else None

        assert post_heartbeat(operator.url, token, beat(100)) == 202
        wait_for(lambda: progressed(100), what="progress 100 in status")

        coordination = client.CoordinationV1Api(kube_api)
        lease = coordination.read_namespaced_lease(LEASE_NAME, OPERATOR_NAMESPACE)
        assert lease.spec.holder_identity == "faults-operator"
        if fault == "etcd frozen":
            etcd = testbed.process("etcd")
            breaks, repair = etcd.pause, etcd.resume
        else:
            breaks, repair = testbed.process("kube-apiserver").kill, testbed.restart_apiserver
        # The Lease as last written before the fault: no renewal can be stored after this, so it
        # expires at renewTime + leaseDurationSeconds at the latest (a renewal between this read
        # and the fault only makes the real expiry later).
        expires = lease.spec.renew_time.timestamp() + lease.spec.lease_duration_seconds
        broken = time.time()
        breaks()
        try:
            wait_for(lambda: not operator.leading(), timeout=LEASE_SECONDS + 10,
                     what="the leader to stop saying it leads")
            stepped_down = time.time()
            try:
                refused = post_heartbeat(operator.url, token, beat(150))
            except OSError:  # already exited: nothing answers
                refused = 0
        finally:
            repair()
        print(f"\n{fault}: the leader stepped down {stepped_down - broken:.1f}s later, "
              f"{expires - stepped_down:.1f}s before its Lease would expire")
        assert stepped_down < expires, "the leader still claimed to lead after its Lease expired"
        assert refused != 202, "a replica that stepped down accepted a heartbeat"
        # A leader that lost its Lease exits (Kubernetes restarts it as a standby); here the test
        # plays the kubelet's part.
        wait_for(lambda: not operator.process.alive(), timeout=60, what="the stepped-down leader to exit")
        print(f"leading again {restart_operator(operator):.1f}s after it exited")

        deliver(operator, token, beat(300))
        status = wait_for(lambda: progressed(300), timeout=30, what="progress to catch up after the outage")
        assert status["phase"] == "Running"
        commit_output(s3, run, rows=400, generated={"typo": 400})
        release(kube_api, ns, uid)
        done = wait_phase(kube_api, AR, ns, name, "Succeeded", timeout=90)
        assert done["status"]["results"] == {"samplesIn": 400, "samplesOut": 800, "rejectedRows": 0,
                                             "perAugmenter": {"typo": 400}, "filtered": {}}
        assert (done["status"]["progress"]["done"], done["status"]["progress"]["percent"]) == (400, 100)
        assert [j.metadata.uid for j in jobs_of(kube_api, ns, uid)] == [job_uid], "no second Job"
        assert_no_credential_leaked(kube_api, testbed, operator, ns, [done])

    def test_a_job_deleted_by_hand_is_recreated_once_and_the_run_finishes_with_what_it_committed(
            self, testbed: Testbed, kube_api: client.ApiClient, ns: str, operator: OperatorProcess,
            stored: Callable[..., Any], s3: Minio) -> None:
        """Beyond ``test_operator.py``'s JobMissing check: the recreated Job runs to the end, the run's
        startTime and results are its own, and exactly one Job was made for the deleted one."""
        run = create_run(kube_api, ns, stored("augmentationrun.yaml", parallelism=1), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        started = wait_phase(kube_api, AR, ns, name, "Running")["status"]["startTime"]
        job = jobs_of(kube_api, ns, uid)[0]
        time.sleep(1.1)  # a recreated Job's own startTime would differ from the run's
        client.BatchV1Api(kube_api).delete_namespaced_job(job.metadata.name, ns, propagation_policy="Background")
        missing = wait_for(lambda: (r := get_run(kube_api, AR, ns, name)) and condition(r, "Ready")["reason"]
                           == "JobMissing" and r, timeout=60, what="JobMissing")
        assert missing["status"]["phase"] == "Running"
        recreated = wait_for(lambda: [j for j in jobs_of(kube_api, ns, uid) if j.metadata.uid != job.metadata.uid],
                             timeout=60, what="the Job to be recreated")
        running_pod(kube_api, ns, uid)
        commit_output(s3, run, rows=77, generated={"typo": 5})
        release(kube_api, ns, uid)
        done = wait_phase(kube_api, AR, ns, name, "Succeeded", timeout=90)
        assert done["status"]["results"]["samplesOut"] == 82 and done["status"]["results"]["samplesIn"] == 77
        assert done["status"]["startTime"] == started
        assert [j.metadata.uid for j in jobs_of(kube_api, ns, uid)] == [recreated[0].metadata.uid]
        reasons = [e.reason for e in events_of(kube_api, ns, uid)]
        assert reasons.count("JobCreated") == 2, reasons
        assert_no_credential_leaked(kube_api, testbed, operator, ns, [done])


class TestJobController:
    def test_do_not_retry_exit_codes_fail_at_once_and_other_failures_are_retried(
            self, kube_api: client.ApiClient, ns: str, operator: OperatorProcess) -> None:
        """podFailurePolicy against the real Job controller: exit 2/3/4 fail the Job at once
        (PodFailurePolicy) with the reason of the input at fault and no replacement pod, although
        backoffLimit allows three; exit 1 is retried until backoffLimit is spent."""
        reasons = {2: "InvalidSpec", 3: "ModelUnavailable", 4: "DatasetUnreadable"}
        runs = {code: create_run(kube_api, ns, example("augmentationrun.yaml", parallelism=1, backoffLimit=3),
                                 name=f"exit-{code}", labels=HOLD) for code in reasons}
        ordinary = create_run(kube_api, ns, example("augmentationrun.yaml", parallelism=1, backoffLimit=1),
                              name="exit-1", labels=HOLD)
        for code, run in runs.items():
            exit_with(kube_api, running_pod(kube_api, ns, run["metadata"]["uid"]), code)
        first = running_pod(kube_api, ns, ordinary["metadata"]["uid"])
        exit_with(kube_api, first, 1)

        for code, run in runs.items():
            failed = wait_phase(kube_api, AR, ns, run["metadata"]["name"], "Failed", timeout=90)
            cond = condition(failed, "Failed")
            assert cond["reason"] == reasons[code], (code, cond)
            assert f"exited with code {code}" in cond["message"]
            job = jobs_of(kube_api, ns, run["metadata"]["uid"])[0]
            assert job_failure(job) == "PodFailurePolicy"
            assert job.status.failed == 1
        # The ordinary failure got a replacement pod while the run kept running.
        second = wait_for(lambda: next((p for p in pods_of(kube_api, ns, ordinary["metadata"]["uid"])
                                        if p.metadata.uid != first.metadata.uid and p.status.phase == "Running"),
                                       None), timeout=60, what="a replacement pod after exit code 1")
        retrying = get_run(kube_api, AR, ns, "exit-1")
        assert retrying["status"]["phase"] == "Running", retrying["status"]
        # By now, a replacement for an exit 2/3/4 pod would have been made too: there is none.
        for run in runs.values():
            assert len(pods_of(kube_api, ns, run["metadata"]["uid"])) == 1, "no retry after a do-not-retry exit"
        exit_with(kube_api, second, 1)
        failed = wait_phase(kube_api, AR, ns, "exit-1", "Failed", timeout=90)
        cond = condition(failed, "Failed")
        assert cond["reason"] == "BackoffLimitExceeded" and "exited with code 1" in cond["message"]
        assert len(pods_of(kube_api, ns, ordinary["metadata"]["uid"])) == 2

    def test_active_deadline_ends_a_held_run(self, kube_api: client.ApiClient, ns: str,
                                             operator: OperatorProcess) -> None:
        run = create_run(kube_api, ns, example("augmentationrun.yaml", parallelism=1, activeDeadlineSeconds=5),
                         labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        running_pod(kube_api, ns, uid)
        failed = wait_phase(kube_api, AR, ns, name, "Failed", timeout=90)
        cond = condition(failed, "Failed")
        assert cond["reason"] == "DeadlineExceeded", cond
        assert condition(failed, "Stalled")["status"] == "True"
        job = jobs_of(kube_api, ns, uid)[0]
        assert job.spec.active_deadline_seconds == 5
        assert job_failure(job) == "DeadlineExceeded"
        assert failed["status"]["completionTime"] >= failed["status"]["startTime"]
