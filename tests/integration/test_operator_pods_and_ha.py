"""Pod-level trouble surfaces as conditions and Events; every example manifest applies with kubectl
and becomes the Job it describes; two operator replicas share one Lease."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from operator_helpers import (
    EXAMPLES,
    condition,
    create_credentials,
    create_run,
    example,
    get_run,
    jobs_of,
    wait_for,
)
from sampleforge.api.constants import GPU_RESOURCE, LABEL_MANAGED_BY, Kind
from sampleforge.testbed import IMAGE_PULL_ERROR_LABEL, Testbed
from sampleforge.testbed._health import http_ok
from sampleforge.testbed._operator import OPERATOR_NAMESPACE, OperatorProcess

pytestmark = pytest.mark.integration
AR = Kind.AUGMENTATION_RUN
FAST = {"SAMPLEFORGE_OPERATOR_STATUS_MIN_INTERVAL_SECONDS": "1", "SAMPLEFORGE_OPERATOR_RESYNC_SECONDS": "2",
        "SAMPLEFORGE_OPERATOR_LEASE_DURATION_SECONDS": "6"}


def _ensure_operator_namespace(api: client.ApiClient) -> None:
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    except client.ApiException as err:
        if err.status != 409:
            raise


@pytest.fixture(scope="module")
def operators(testbed: Testbed) -> Iterator[list[OperatorProcess]]:
    """Two replicas with one Lease (a lease name of this module's own)."""
    with testbed.api_client() as api:
        _ensure_operator_namespace(api)
    settings = {**FAST, "SAMPLEFORGE_OPERATOR_LEASE_NAME": "sampleforge-ha-test"}
    first = OperatorProcess(testbed.kubeconfig, testbed.logs / "operator-a.log", "replica-a", settings).start()
    second = OperatorProcess(testbed.kubeconfig, testbed.logs / "operator-b.log", "replica-b", settings)
    second.start(wait_ready=False)
    yield [first, second]
    for proc in (first, second):
        proc.stop()


@pytest.fixture
def ns(operators: list[OperatorProcess], kube_api: client.ApiClient, namespace: str) -> str:
    create_credentials(kube_api, namespace)
    return namespace


def _ready(proc: OperatorProcess) -> bool:
    try:
        return http_ok(f"{proc.url}/readyz")
    except OSError:
        return False


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
        keys = storage.get("credentialsKeys") or {}
        wanted.setdefault(storage["credentialsSecret"], set()).update(
            {keys.get("accessKey", "accessKey"), keys.get("secretKey", "secretKey")})
        hub = doc["spec"].get("hubToken")
        if hub:
            wanted.setdefault(hub["name"], set()).add(hub.get("key", "token"))
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
                aug = example("augmentationrun.yaml", parallelism=1)
                aug["metadata"]["name"] = upstream
                create_run(kube_api, ns, aug)
        testbed.kubectl("apply", "-n", ns, "-f", str(path))
        for doc in docs:
            kind, name = Kind(doc["kind"]), doc["metadata"]["name"]
            run = get_run(kube_api, kind, ns, name)
            jobs = wait_for(lambda: jobs_of(kube_api, ns, run["metadata"]["uid"]), timeout=90, what=f"{name}'s Job")
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


class TestHighAvailability:
    def test_one_replica_leads_and_the_other_takes_over(self, kube_api: client.ApiClient, ns: str,
                                                       operators: list[OperatorProcess]) -> None:
        first, second = operators
        assert _ready(first) and not _ready(second)
        first.kill()
        wait_for(lambda: _ready(second), timeout=60, what="the standby to take the Lease")
        run = create_run(kube_api, ns, example("augmentationrun.yaml", parallelism=1))
        wait_for(lambda: jobs_of(kube_api, ns, run["metadata"]["uid"]), timeout=60, what="the new leader to act")
        lease = client.CoordinationV1Api(kube_api).read_namespaced_lease("sampleforge-ha-test", OPERATOR_NAMESPACE)
        assert lease.spec.holder_identity == "replica-b"
