"""Runs with ``spec.queueName`` under the real Kueue: quota holds a run's Job suspended until an
earlier run finishes, then Kueue admits it and it runs.

A testbed of its own (``kueue_testbed``: Kueue's manager built from the pinned release beside the
controllers and the kwok GPU nodes), the operator as its own process, and a ClusterQueue whose GPU
quota fits one run but not two.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from operator_helpers import (
    EXAMPLE_BUCKETS,
    FAST,
    HOLD,
    commit_output,
    condition,
    create_credentials,
    create_run,
    get_run,
    jobs_of,
    pods_of,
    release,
    running_operator,
    stored_example,
    wait_for,
    wait_phase,
)

from sampleforge.api import KUEUE_QUEUE_LABEL
from sampleforge.api.constants import GPU_RESOURCE, Kind
from sampleforge.testbed import KUEUE_GROUP, KUEUE_VERSION, Testbed
from sampleforge.testbed._operator import OperatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.controllers]
AR = Kind.AUGMENTATION_RUN
SETTINGS = FAST | EXAMPLE_BUCKETS
#: Each run here is one pod of 4 GPUs (parallelism 1: one Job, no steps): one run fits the quota,
#: two do not. (A run of several shards is three Jobs, each admitted by Kueue on its own.)
GPUS_PER_RUN = 4
GPU_QUOTA = 6
RUN = {"parallelism": 1, "resources": {"gpus": GPUS_PER_RUN}}


@pytest.fixture(scope="module")
def api(kueue_testbed: Testbed) -> Iterator[client.ApiClient]:
    with kueue_testbed.api_client() as api:
        yield api


@pytest.fixture(scope="module")
def operator_proc(kueue_testbed: Testbed) -> Iterator[OperatorProcess]:
    with running_operator(kueue_testbed, "operator.log", SETTINGS) as proc:
        yield proc


@pytest.fixture
def ns(kueue_testbed: Testbed, api: client.ApiClient, operator_proc: OperatorProcess) -> Iterator[str]:
    name = f"t-{secrets.token_hex(4)}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    kueue_testbed.wait_for_default_service_account(name)
    create_credentials(api, name, kueue_testbed.minio)
    yield name
    client.CoreV1Api(api).delete_namespace(name)


def kueue_object(api: client.ApiClient, plural: str, body: dict[str, Any], namespace: str | None = None) -> None:
    custom = client.CustomObjectsApi(api)
    body = {"apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}", **body}
    if namespace is None:
        custom.create_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, plural, body)
    else:
        custom.create_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, namespace, plural, body)


def gpu_queue(api: client.ApiClient, namespace: str) -> str:
    """A ResourceFlavor, a ClusterQueue with ``GPU_QUOTA`` GPUs and a LocalQueue in ``namespace``;
    returns the LocalQueue's name once Kueue reports the ClusterQueue Active."""
    suffix = secrets.token_hex(3)
    flavor, cluster_queue, local_queue = f"gpu-{suffix}", f"gpus-{suffix}", "gpus"
    kueue_object(api, "resourceflavors", {"kind": "ResourceFlavor", "metadata": {"name": flavor}, "spec": {}})
    kueue_object(api, "clusterqueues", {
        "kind": "ClusterQueue", "metadata": {"name": cluster_queue},
        "spec": {
            "namespaceSelector": {},
            "resourceGroups": [{
                "coveredResources": ["cpu", "memory", GPU_RESOURCE],
                "flavors": [{"name": flavor, "resources": [
                    {"name": "cpu", "nominalQuota": "100"},
                    {"name": "memory", "nominalQuota": "1Ti"},
                    {"name": GPU_RESOURCE, "nominalQuota": str(GPU_QUOTA)},
                ]}],
            }],
        },
    })
    kueue_object(api, "localqueues", {"kind": "LocalQueue", "metadata": {"name": local_queue},
                                      "spec": {"clusterQueue": cluster_queue}}, namespace)

    def active() -> bool:
        cq = client.CustomObjectsApi(api).get_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues",
                                                                    cluster_queue)
        return any(c["type"] == "Active" and c["status"] == "True" for c in (cq.get("status") or {}).get("conditions", []))

    wait_for(active, 60, f"ClusterQueue {cluster_queue} to be Active")
    return local_queue


def the_job(api: client.ApiClient, namespace: str, uid: str) -> client.V1Job:
    jobs = wait_for(lambda: jobs_of(api, namespace, uid), 60, "the run's Job")
    assert len(jobs) == 1
    return jobs[0]


def workload_of(api: client.ApiClient, namespace: str, job: client.V1Job) -> dict[str, Any] | None:
    workloads = client.CustomObjectsApi(api).list_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, namespace,
                                                                           "workloads")["items"]
    return next((w for w in workloads
                 if any(o["uid"] == job.metadata.uid for o in w["metadata"].get("ownerReferences", []))), None)


def has_condition(obj: dict[str, Any] | None, type_: str, status: str = "True") -> bool:
    return obj is not None and any(c["type"] == type_ and c["status"] == status
                                   for c in (obj.get("status") or {}).get("conditions", []))



def test_quota_holds_the_second_run_suspended_until_the_first_finishes(kueue_testbed: Testbed,
                                                                       api: client.ApiClient, ns: str) -> None:
    queue = gpu_queue(api, ns)
    batch = client.BatchV1Api(api)
    s3 = kueue_testbed.minio_client()

    first = create_run(api, ns, stored_example(kueue_testbed.minio, "augmentationrun.yaml", queueName=queue, **RUN),
                       name="first", labels=HOLD)
    first_job = the_job(api, ns, first["metadata"]["uid"])
    assert first_job.metadata.labels[KUEUE_QUEUE_LABEL] == queue
    assert first_job.spec.template.spec.containers[0].resources.requests[GPU_RESOURCE] == str(GPUS_PER_RUN)
    assert first_job.spec.parallelism == 1
    # Kueue admits it (its Workload reserves the quota) and unsuspends the Job; the run then runs.
    wait_for(lambda: has_condition(workload_of(api, ns, first_job), "Admitted"), 60, "the first run admitted")
    wait_for(lambda: batch.read_namespaced_job(first_job.metadata.name, ns).spec.suspend is False, 60,
             "Kueue to unsuspend the first Job")
    wait_phase(api, AR, ns, "first", "Running", timeout=90)

    second = create_run(api, ns, stored_example(kueue_testbed.minio, "augmentationrun.yaml", queueName=queue, **RUN),
                        name="second", labels=HOLD)
    second_job = the_job(api, ns, second["metadata"]["uid"])
    # Kueue has seen it, found no quota left, and keeps it waiting: Workload pending, Job suspended.
    wait_for(lambda: has_condition(workload_of(api, ns, second_job), "QuotaReserved", "False"), 60,
             "the second run's Workload to be evaluated and left pending")
    pending = wait_phase(api, AR, ns, "second", "Pending", timeout=60)
    assert condition(pending, "Ready")["reason"] == "Queued"
    workload = workload_of(api, ns, second_job)
    assert not has_condition(workload, "Admitted"), workload
    reserved = next(c for c in workload["status"]["conditions"] if c["type"] == "QuotaReserved")
    assert "insufficient" in reserved["message"].lower() or GPU_RESOURCE in reserved["message"], reserved
    time.sleep(5)  # a while later it is still held: nothing but Kueue may resume it
    assert batch.read_namespaced_job(second_job.metadata.name, ns).spec.suspend is True
    assert pods_of(api, ns, second["metadata"]["uid"]) == []
    still = get_run(api, AR, ns, "second")
    assert still["status"]["phase"] == "Pending" and condition(still, "Ready")["reason"] == "Queued"

    # The first run finishes: its quota is released and Kueue admits the second.
    commit_output(s3, get_run(api, AR, ns, "first"), rows=50)
    wait_for(lambda: len(pods_of(api, ns, first["metadata"]["uid"])) == 1, 60, "the first run's pods")
    release(api, ns, first["metadata"]["uid"])
    wait_phase(api, AR, ns, "first", "Succeeded", timeout=120)
    wait_for(lambda: has_condition(workload_of(api, ns, second_job), "Admitted"), 90, "the second run admitted")
    wait_for(lambda: batch.read_namespaced_job(second_job.metadata.name, ns).spec.suspend is False, 60,
             "Kueue to unsuspend the second Job")
    wait_phase(api, AR, ns, "second", "Running", timeout=90)
    commit_output(s3, get_run(api, AR, ns, "second"), rows=50)
    wait_for(lambda: len(pods_of(api, ns, second["metadata"]["uid"])) == 1, 60, "the second run's pods")
    release(api, ns, second["metadata"]["uid"])
    done = wait_phase(api, AR, ns, "second", "Succeeded", timeout=120)
    assert done["status"]["results"]["samplesOut"] == 100
