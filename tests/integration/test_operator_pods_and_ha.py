"""Pod-level trouble surfaces as conditions and Events (a Job whose pods a ResourceQuota refuses
included); every example manifest applies with kubectl and becomes the Job it describes; two
operator replicas share one Lease, both report ready, and only the leader's Pod carries the label
the heartbeat Service selects."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from operator_helpers import (
    EXAMPLES,
    FAST,
    commit_output,
    condition,
    create_credentials,
    create_run,
    ensure_operator_namespace,
    example,
    get_run,
    jobs_of,
    pods_of,
    stored_example,
    wait_for,
    wait_phase,
)

from sampleforge.api.constants import GPU_RESOURCE, LABEL_LEADER, LABEL_MANAGED_BY, LEADER_VALUE, Kind
from sampleforge.testbed import HOLD_KEY, IMAGE_PULL_ERROR_LABEL, Testbed
from sampleforge.testbed._operator import OPERATOR_NAMESPACE, OperatorProcess

pytestmark = pytest.mark.integration
AR = Kind.AUGMENTATION_RUN


REPLICAS = ("replica-a", "replica-b")
#: Selects this module's stand-ins for the operator's Pods.
REPLICA_LABEL = "sampleforge.io/ha-test"


def _replica_pod(name: str) -> dict:
    """The Pod object a replica would run in. The testbed runs the operator as a local process
    (no kubelet runs it), so the Pod stands in for it: the replica's POD_NAME names it, and it is
    never scheduled (no node matches), so nothing else happens to it."""
    return {"metadata": {"name": name, "labels": {REPLICA_LABEL: "true"}},
            "spec": {"nodeSelector": {"sampleforge.io/no-such-node": "true"},
                     "containers": [{"name": "operator", "image": "sampleforge-operator:test"}]}}


@pytest.fixture(scope="module")
def operators(testbed: Testbed) -> Iterator[list[OperatorProcess]]:
    """Two replicas with one Lease (a lease name of this module's own), each with its Pod object."""
    with testbed.api_client() as api:
        ensure_operator_namespace(api)
        core = client.CoreV1Api(api)
        for name in REPLICAS:
            core.create_namespaced_pod(OPERATOR_NAMESPACE, _replica_pod(name))
    settings = FAST | {"SAMPLEFORGE_OPERATOR_LEASE_DURATION_SECONDS": "6",
                       "SAMPLEFORGE_OPERATOR_LEASE_NAME": "sampleforge-ha-test"}
    first = OperatorProcess(testbed.kubeconfig, testbed.logs / "operator-a.log", REPLICAS[0], settings).start()
    first.wait_leading()
    second = OperatorProcess(testbed.kubeconfig, testbed.logs / "operator-b.log", REPLICAS[1], settings)
    second.start(wait_ready=False)
    yield [first, second]
    for proc in (first, second):
        proc.stop()
    with testbed.api_client() as api:
        for name in REPLICAS:
            client.CoreV1Api(api).delete_namespaced_pod(name, OPERATOR_NAMESPACE, grace_period_seconds=0)


@pytest.fixture
def ns(operators: list[OperatorProcess], kube_api: client.ApiClient, namespace: str) -> str:
    create_credentials(kube_api, namespace)
    return namespace


class TestPodTrouble:
    def test_image_pull_error_is_a_stalled_condition_and_an_event(self, kube_api: client.ApiClient, ns: str) -> None:
        run = create_run(kube_api, ns, example("augmentationrun.yaml", parallelism=1),
                         labels={IMAGE_PULL_ERROR_LABEL: "true"})
        name = run["metadata"]["name"]

        def stalled() -> dict | None:
            current = get_run(kube_api, AR, ns, name)
            cond = condition(current, "Stalled")
            return current if cond and cond["reason"] == "ImagePullError" and cond["status"] == "True" else None

        current = wait_for(stalled, timeout=60, what="ImagePullError")
        assert current["status"]["phase"] == "Pending"
        assert "ImagePullBackOff" in condition(current, "Stalled")["message"]

    def test_a_quota_that_refuses_the_pods_is_explained_until_it_is_lifted(self, kube_api: client.ApiClient,
                                                                            ns: str) -> None:
        """The Job controller only records FailedCreate Events on the Job; the run must say why it
        has no pods, and move on by itself once the quota is gone (the Job controller retries)."""
        core = client.CoreV1Api(kube_api)
        core.create_namespaced_resource_quota(ns, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})
        # Admission checks against the quota's status, which the quota controller fills in.
        wait_for(lambda: (core.read_namespaced_resource_quota("no-pods", ns).status.hard or {}).get("pods") == "0",
                 timeout=30, what="the ResourceQuota's status")
        run = create_run(kube_api, ns, example("augmentationrun.yaml", parallelism=1), labels={HOLD_KEY: "true"})
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        created = time.monotonic()

        def explained() -> dict | None:
            current = get_run(kube_api, AR, ns, name)
            cond = condition(current, "Stalled")
            return current if cond and cond["reason"] == "PodCreateFailed" and cond["status"] == "True" else None

        current = wait_for(explained, timeout=30, what="PodCreateFailed within 30 s")
        explained_after = time.monotonic() - created
        job_name = jobs_of(kube_api, ns, uid)[0].metadata.name
        assert current["status"]["phase"] == "Pending"
        for type_ in ("Stalled", "Ready"):
            message = condition(current, type_)["message"]
            assert "exceeded quota: no-pods" in message and f"Job {job_name}" in message, message
            assert f"namespace {ns}" in message and "ResourceQuota" in message
        assert not pods_of(kube_api, ns, uid)
        wait_for(lambda: [e for e in core.list_namespaced_event(ns, field_selector=f"involvedObject.uid={uid}").items
                          if e.reason == "PodCreateFailed" and e.type == "Warning" and "no-pods" in e.message],
                 timeout=30, what="a Warning Event PodCreateFailed on the run")

        core.delete_namespaced_resource_quota("no-pods", ns)
        lifted = time.monotonic()
        # The Job controller retries with exponential backoff (1 s doubling, at most 60 s).
        running = wait_phase(kube_api, AR, ns, name, "Running", timeout=90)
        print(f"\nPodCreateFailed in status {explained_after:.1f}s after the run was created; "
              f"Running {time.monotonic() - lifted:.1f}s after the quota was deleted")
        assert condition(running, "Stalled")["status"] == "False"
        assert condition(running, "Reconciling")["reason"] == "JobRunning"
        assert pods_of(kube_api, ns, uid)

    def test_unschedulable_gpu_request_is_explained(self, kube_api: client.ApiClient, ns: str) -> None:
        doc = example("augmentationrun.yaml", parallelism=1)
        doc["spec"]["resources"] = {"gpus": 16}  # more than any node has
        run = create_run(kube_api, ns, doc)

        def explained() -> dict | None:
            cond = condition(get_run(kube_api, AR, ns, run["metadata"]["name"]), "Reconciling")
            return cond if cond and cond["reason"] == "Unschedulable" else None

        cond = wait_for(explained, timeout=60, what="Unschedulable")
        assert GPU_RESOURCE in cond["message"]


def _create_secrets_for(api: client.ApiClient, namespace: str, docs: list[dict]) -> None:
    """The Secrets an example names, with the key names it expects (values are placeholders)."""
    wanted: dict[str, set[str]] = {}
    for doc in docs:
        storage = doc["spec"]["storage"]
        if storage.get("credentialsSecret"):  # not with webIdentity (finetunerun-complete.yaml)
            keys = storage.get("credentialsKeys") or {}
            wanted.setdefault(storage["credentialsSecret"], set()).update(
                {keys.get("accessKey", "accessKey"), keys.get("secretKey", "secretKey")})
        hub = doc["spec"].get("hubToken")
        if hub:
            wanted.setdefault(hub["name"], set()).add(hub.get("key", "token"))
        for augmenter in doc["spec"].get("augmenters") or []:
            key = (augmenter.get("openai") or {}).get("apiKeySecret")
            if key:
                wanted.setdefault(key["name"], set()).add(key.get("key", "apiKey"))
    core = client.CoreV1Api(api)
    for name, keys in wanted.items():
        body = {"metadata": {"name": name}, "stringData": {k: "placeholder" for k in sorted(keys)}}
        try:
            core.create_namespaced_secret(namespace, body)
        except client.ApiException as err:
            if err.status != 409:
                raise
            core.replace_namespaced_secret(name, namespace, body)


class TestExamples:
    @pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
    def test_kubectl_apply_creates_the_job_it_describes(self, testbed: Testbed, kube_api: client.ApiClient, ns: str,
                                                        path: Path) -> None:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        _create_secrets_for(kube_api, ns, docs)
        # Runs that train on an AugmentationRun need it to succeed first; apply that one too.
        for doc in docs:
            upstream = (doc["spec"].get("data") or {}).get("fromAugmentationRun")
            if upstream:
                # It succeeds once the operator reads its committed output from the testbed's MinIO,
                # with credentials of its own (the example's Secret holds placeholders).
                aug = stored_example(testbed.minio, "augmentationrun.yaml", parallelism=1)
                aug["metadata"]["name"] = upstream
                aug["spec"]["storage"]["credentialsSecret"] = "upstream-minio"
                client.CoreV1Api(kube_api).create_namespaced_secret(ns, {"metadata": {"name": "upstream-minio"},
                    "stringData": {"accessKey": testbed.minio.access_key, "secretKey": testbed.minio.secret_key}})
                commit_output(testbed.minio.client(), {**aug, "metadata": {**aug["metadata"], "uid": ""}})
                create_run(kube_api, ns, aug)
        testbed.kubectl("apply", "-n", ns, "-f", str(path))
        for doc in docs:
            kind, name = Kind(doc["kind"]), doc["metadata"]["name"]
            uid = get_run(kube_api, kind, ns, name)["metadata"]["uid"]
            jobs = wait_for(lambda uid=uid: jobs_of(kube_api, ns, uid), timeout=90, what=f"{name}'s Job")
            job = jobs[0]
            assert job.metadata.labels[LABEL_MANAGED_BY] == "sampleforge-operator"
            assert job.metadata.owner_references[0].name == name
            resources = doc["spec"].get("resources") or {}
            gpus = (doc["spec"].get("distribution") or {}).get("gpusPerNode") or resources.get("gpus")
            limits = job.spec.template.spec.containers[0].resources.limits or {}
            if gpus:
                assert limits[GPU_RESOURCE] == str(gpus)
            else:
                assert GPU_RESOURCE not in limits or kind is Kind.FINE_TUNE_RUN


def _labelled(api: client.ApiClient) -> list[str]:
    """The replica Pods that carry the leader label (what the heartbeat Service selects)."""
    pods = client.CoreV1Api(api).list_namespaced_pod(
        OPERATOR_NAMESPACE, label_selector=f"{REPLICA_LABEL}=true,{LABEL_LEADER}={LEADER_VALUE}").items
    return sorted(p.metadata.name for p in pods)


def _lease_holder(api: client.ApiClient) -> str:
    lease = client.CoordinationV1Api(api).read_namespaced_lease("sampleforge-ha-test", OPERATOR_NAMESPACE)
    return str(lease.spec.holder_identity)


class TestHighAvailability:
    def test_both_replicas_are_ready_and_only_the_leaders_pod_is_labelled(
            self, kube_api: client.ApiClient, operators: list[OperatorProcess]) -> None:
        first, second = operators
        second.wait_ready()
        assert first.readiness() == (True, "ok: leader, handling runs")
        assert second.readiness() == (True, "ok: standby, following the leader Lease")
        wait_for(lambda: _labelled(kube_api) == ["replica-a"], timeout=30, what="only the leader's Pod labelled")
        assert _lease_holder(kube_api) == "replica-a"

    def test_the_label_follows_the_lease_through_a_crash_a_restart_and_a_clean_stop(
            self, kube_api: client.ApiClient, ns: str, operators: list[OperatorProcess]) -> None:
        first, second = operators
        wait_for(lambda: _labelled(kube_api) == ["replica-a"], timeout=30, what="replica-a labelled as leader")
        # A crash: the dead leader cannot unlabel itself; the new leader takes the label over.
        first.kill()
        second.wait_leading(timeout=60)
        wait_for(lambda: _labelled(kube_api) == ["replica-b"], timeout=30, what="the label to move to replica-b")
        run = create_run(kube_api, ns, example("augmentationrun.yaml", parallelism=1))
        wait_for(lambda: jobs_of(kube_api, ns, run["metadata"]["uid"]), timeout=60, what="the new leader to act")
        assert _lease_holder(kube_api) == "replica-b"
        # The crashed replica comes back as a ready standby, without the label.
        first.start()
        assert first.readiness() == (True, "ok: standby, following the leader Lease")
        assert _labelled(kube_api) == ["replica-b"] and second.readiness()[0]
        # A clean stop takes the label off and releases the Lease: the standby leads at once.
        stopping = time.monotonic()
        second.stop(grace=15)
        exited = time.monotonic()
        assert "replica-b" not in _labelled(kube_api), "the stopping leader takes its own label off"
        first.wait_leading(timeout=15)
        wait_for(lambda: _labelled(kube_api) == ["replica-a"], timeout=15, what="the label back on replica-a")
        print(f"\nclean handover: the leader exited {exited - stopping:.1f}s after SIGTERM; replica-a led and "
              f"was labelled {time.monotonic() - exited:.1f}s after that")
        assert "released the leader Lease" in second.process.log_tail(400)
        assert _lease_holder(kube_api) == "replica-a"
