"""A sharded AugmentationRun through the operator against the real API server, controllers and kwok
GPU nodes: the analysis Job alone first, then the shards Job, then the reduce Job, each made only
once the one before has succeeded; status.stage and status.jobName follow, the run is Succeeded
only after the reduce Job, and an operator restarted mid-step never makes an earlier step's Job
again. The pods are kwok's (held Running until released), so the committed output is written by
the test as the job would write it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from minio import Minio
from operator_helpers import (
    EXAMPLE_BUCKETS,
    FAST,
    HOLD,
    LEADER_ELECTION,
    commit_output,
    condition,
    create_run,
    get_run,
    jobs_of,
    pods_of,
    release,
    running_operator,
    wait_for,
    wait_phase,
)

from sampleforge.api import jobenv
from sampleforge.api.constants import LABEL_STEP, Kind, Step
from sampleforge.testbed import Testbed
from sampleforge.testbed._operator import OperatorProcess

pytestmark = pytest.mark.integration
AR = Kind.AUGMENTATION_RUN
SETTINGS = FAST | LEADER_ELECTION | EXAMPLE_BUCKETS


@pytest.fixture(scope="module")
def operator_proc(testbed: Testbed) -> Iterator[OperatorProcess]:
    with running_operator(testbed, "operator-steps.log", SETTINGS) as proc:
        yield proc


def job_names(api: client.ApiClient, ns: str, uid: str) -> list[str]:
    return sorted(j.metadata.name for j in jobs_of(api, ns, uid))


def step_pods(api: client.ApiClient, ns: str, uid: str, step: Step, phase: str = "Running") -> list[client.V1Pod]:
    return [p for p in pods_of(api, ns, uid)
            if (p.metadata.labels or {}).get(LABEL_STEP) == step.value and p.status.phase == phase]


def at_stage(api: client.ApiClient, ns: str, name: str, stage: Step, job: str) -> dict[str, Any]:
    """The run once its status says it is Running ``stage`` in Job ``job``."""
    def reached() -> dict[str, Any] | None:
        status = get_run(api, AR, ns, name).get("status") or {}
        return status if (status.get("phase"), status.get("stage"), status.get("jobName")) == (
            "Running", stage.value, job) else None

    try:
        return wait_for(reached, 60, f"{name} to be Running step {stage} (Job {job})")  # type: ignore[no-any-return]
    except AssertionError as err:
        raise AssertionError(f"{err}; status is {json.dumps(get_run(api, AR, ns, name).get('status'))}") from None


def env_of(job: client.V1Job) -> dict[str, str]:
    return {e.name: e.value for e in job.spec.template.spec.containers[0].env}


class TestSteps:
    def test_a_sharded_run_runs_analysis_shards_and_reduce_in_order(
            self, kube_api: client.ApiClient, ns: str, operator_proc: OperatorProcess, stored: Callable[..., Any],
            s3: Minio) -> None:
        run = create_run(kube_api, ns, stored("augmentationrun.yaml", parallelism=3), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        analysis, shards, reduce = f"{name}-aug-analysis", f"{name}-aug", f"{name}-aug-reduce"
        # Committed from the start: a run that read its output before the reduce Job would succeed early.
        commit_output(s3, run, rows=90, generated={"typo": 30})

        # 1. The analysis Job, alone.
        wait_for(lambda: step_pods(kube_api, ns, uid, Step.ANALYSIS), what="the analysis pod running")
        assert job_names(kube_api, ns, uid) == [analysis]
        job = jobs_of(kube_api, ns, uid)[0]
        assert (job.spec.completions, job.spec.completion_mode) == (1, "NonIndexed")
        assert job.metadata.labels[LABEL_STEP] == "analysis"
        assert env_of(job)[jobenv.STEP] == "analysis" and env_of(job)[jobenv.SHARD_COUNT] == "3"
        status = at_stage(kube_api, ns, name, Step.ANALYSIS, analysis)
        assert condition({"status": status}, "Reconciling")["message"].startswith(
            f"step 1 of 3: analysing the source (Job {analysis})")
        time.sleep(3)  # a few resyncs: still nothing else
        assert job_names(kube_api, ns, uid) == [analysis]

        # 2. The analysis pod finishes: the shards Job, three pods.
        release(kube_api, ns, uid)
        wait_for(lambda: len(step_pods(kube_api, ns, uid, Step.SHARDS)) == 3, timeout=90,
                 what="three shard pods running")
        assert job_names(kube_api, ns, uid) == sorted([analysis, shards])
        job = next(j for j in jobs_of(kube_api, ns, uid) if j.metadata.name == shards)
        assert (job.spec.completions, job.spec.parallelism, job.spec.completion_mode) == (3, 3, "Indexed")
        assert env_of(job)[jobenv.STEP] == "shards"
        status = at_stage(kube_api, ns, name, Step.SHARDS, shards)
        assert condition({"status": status}, "Reconciling")["message"].startswith(
            f"step 2 of 3: 3 shards (Job {shards})")

        # 3. The operator restarts mid-step, and the analysis Job is gone meanwhile (as its TTL would
        # remove it): the run goes on with the shards and makes no analysis Job again.
        operator_proc.kill()
        client.BatchV1Api(kube_api).delete_namespaced_job(analysis, ns, propagation_policy="Background")
        wait_for(lambda: analysis not in job_names(kube_api, ns, uid), what="the analysis Job deleted")
        operator_proc.start(wait_ready=False)
        operator_proc.wait_ready(timeout=60)  # after the old Lease expires
        time.sleep(6)  # reconcile of every run on start, and a few resyncs
        assert job_names(kube_api, ns, uid) == [shards], "an earlier step's Job was made again"
        at_stage(kube_api, ns, name, Step.SHARDS, shards)

        # 4. The shards finish: the reduce Job; the run is still Running, not Succeeded.
        release(kube_api, ns, uid)
        wait_for(lambda: step_pods(kube_api, ns, uid, Step.REDUCE), timeout=90, what="the reduce pod running")
        job = next(j for j in jobs_of(kube_api, ns, uid) if j.metadata.name == reduce)
        assert (job.spec.completions, job.spec.completion_mode) == (1, "NonIndexed")
        assert env_of(job)[jobenv.STEP] == "reduce" and env_of(job)[jobenv.SHARD_COUNT] == "3"
        status = at_stage(kube_api, ns, name, Step.REDUCE, reduce)
        assert "Succeeded" != status["phase"]

        # 5. The reduce finishes: the committed output is read, the run Succeeded in its last step.
        release(kube_api, ns, uid)
        done = wait_phase(kube_api, AR, ns, name, "Succeeded", timeout=90)
        assert (done["status"]["stage"], done["status"]["jobName"]) == ("reduce", reduce)
        assert done["status"]["results"]["samplesOut"] == 120
        assert condition(done, "Ready")["status"] == "True"
        events = wait_for(lambda: (found := [e.message for e in client.CoreV1Api(kube_api).list_namespaced_event(
            ns, field_selector=f"involvedObject.uid={uid}").items if e.reason == "JobCreated"]) and len(found) >= 3
            and found, what="a JobCreated Event per step")
        assert {f"created Job {analysis} for step analysis", f"created Job {shards} for step shards",
                f"created Job {reduce} for step reduce"} <= set(events)

    def test_a_failed_shard_job_fails_the_run_naming_the_step(self, kube_api: client.ApiClient, ns: str,
                                                              stored: Callable[..., Any]) -> None:
        from sampleforge.testbed import EXIT_CODE_ANNOTATION

        run = create_run(kube_api, ns, stored("augmentationrun.yaml", parallelism=2, backoffLimit=0), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        wait_for(lambda: step_pods(kube_api, ns, uid, Step.ANALYSIS), what="the analysis pod running")
        release(kube_api, ns, uid)
        pods = wait_for(lambda: len(found := step_pods(kube_api, ns, uid, Step.SHARDS)) == 2 and found, timeout=90,
                        what="two shard pods running")
        client.CoreV1Api(kube_api).patch_namespaced_pod(pods[0].metadata.name, ns,
                                                        {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "7"}}})
        failed = wait_phase(kube_api, AR, ns, name, "Failed", timeout=90)
        assert failed["status"]["stage"] == "shards"
        message = condition(failed, "Failed")["message"]
        assert message.startswith(f"step 2 of 3: 2 shards (Job {name}-aug)") and "exited with code 7" in message
        assert f"{name}-aug-reduce" not in job_names(kube_api, ns, uid)
        assert len([j for j in job_names(kube_api, ns, uid) if j.endswith("-analysis")]) == 1, "analysis ran once"
