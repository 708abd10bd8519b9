"""The control plane is the real thing: pinned version, real Jobs on fake GPU nodes, real garbage
collection, real RBAC. If any of these fails, every later integration test would prove nothing."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client
from operator_helpers import wait_for

from sampleforge.testbed import (
    EXIT_CODE_ANNOTATION,
    GPU_RESOURCE,
    GPU_TAINT,
    HOLD_KEY,
    Testbed,
    kubernetes_version,
)

pytestmark = pytest.mark.integration


def gpu_job(name: str, gpus: int = 1, pod_labels: dict[str, str] | None = None,
            backoff_limit: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "metadata": {"labels": pod_labels or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{
                        "name": "main", "image": "registry.invalid/sampleforge-job:test",
                        "command": ["sampleforge-job"],
                        "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
                    }],
                },
            },
        },
    }


class TestApiServer:
    def test_reports_the_pinned_release(self, testbed: Testbed, kube_api: client.ApiClient) -> None:
        info = client.VersionApi(kube_api).get_code()
        assert info.git_version == kubernetes_version()
        assert info.git_tree_state == "clean"
        kubectl = testbed.kubectl("version", "--client", "--output=json").stdout
        assert f'"gitVersion": "{kubernetes_version()}"' in kubectl

    def test_namespaces_secrets_and_jobs_can_be_created(self, kube_api: client.ApiClient, namespace: str) -> None:
        core, batch = client.CoreV1Api(kube_api), client.BatchV1Api(kube_api)
        core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"},
                                                  "stringData": {"accessKey": "a", "secretKey": "b"}})
        secret = core.read_namespaced_secret("creds", namespace)
        assert set(secret.data) == {"accessKey", "secretKey"}
        batch.create_namespaced_job(namespace, gpu_job("created"))
        assert batch.read_namespaced_job("created", namespace).spec.backoff_limit == 0

    def test_server_side_validation_is_real(self, kube_api: client.ApiClient, namespace: str) -> None:
        bad = gpu_job("bad")
        bad["spec"]["template"]["spec"]["restartPolicy"] = "Always"  # not allowed for Jobs
        with pytest.raises(client.ApiException) as err:
            client.BatchV1Api(kube_api).create_namespaced_job(namespace, bad)
        assert err.value.status == 422
        assert "restartPolicy" in err.value.body


class TestJobsOnFakeGpuNodes:
    def test_gpu_nodes_advertise_gpus(self, testbed: Testbed, kube_api: client.ApiClient) -> None:
        nodes = client.CoreV1Api(kube_api).list_node().items
        gpu_nodes = [n for n in nodes if n.metadata.name in testbed.gpu_node_names]
        assert len(gpu_nodes) == 2
        for node in gpu_nodes:
            assert node.status.allocatable[GPU_RESOURCE] == "8"
            assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)

    def test_gpu_job_runs_to_succeeded_and_gc_deletes_its_pods(
        self, testbed: Testbed, kube_api: client.ApiClient, namespace: str
    ) -> None:
        core, batch = client.CoreV1Api(kube_api), client.BatchV1Api(kube_api)
        batch.create_namespaced_job(namespace, gpu_job("train"))

        # Complete follows the success count by a moment (SuccessCriteriaMet first): wait for the condition.
        job = wait_for(lambda: (j := batch.read_namespaced_job_status("train", namespace)).status.conditions
                       and any(c.type == "Complete" and c.status == "True" for c in j.status.conditions) and j,
                       what="Job train to complete")
        assert job.status.succeeded == 1
        pods = core.list_namespaced_pod(namespace, label_selector="job-name=train").items
        assert len(pods) == 1
        assert pods[0].spec.node_name in testbed.gpu_node_names
        assert pods[0].status.phase == "Succeeded"

        batch.delete_namespaced_job("train", namespace, propagation_policy="Background")
        wait_for(lambda: not core.list_namespaced_pod(namespace, label_selector="job-name=train").items,
                 what="the garbage collector to delete the Job's pods")

    def test_held_pod_stays_running_then_failing_exit_code_fails_the_job(
        self, kube_api: client.ApiClient, namespace: str
    ) -> None:
        core, batch = client.CoreV1Api(kube_api), client.BatchV1Api(kube_api)
        batch.create_namespaced_job(namespace, gpu_job("held", pod_labels={HOLD_KEY: "true"}))
        pod = wait_for(lambda: next((p for p in core.list_namespaced_pod(namespace, label_selector="job-name=held").items
                                     if p.status.phase == "Running"), None), what="the held pod to run")
        time.sleep(2)  # longer than the 1 s completion delay: a held pod must not complete
        assert core.read_namespaced_pod(pod.metadata.name, namespace).status.phase == "Running"
        assert batch.read_namespaced_job_status("held", namespace).status.active == 1

        core.patch_namespaced_pod(pod.metadata.name, namespace,
                                  {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "3"}}})
        job = wait_for(lambda: (j := batch.read_namespaced_job_status("held", namespace)).status.failed and j,
                       what="Job held to fail")
        failed = [c for c in job.status.conditions if c.type == "Failed" and c.status == "True"]
        assert failed and failed[0].reason == "BackoffLimitExceeded"
        terminated = core.read_namespaced_pod(pod.metadata.name, namespace).status.container_statuses[0].state
        assert terminated.terminated.exit_code == 3

    def test_job_asking_for_more_gpus_than_any_node_has_stays_unschedulable(
        self, kube_api: client.ApiClient, namespace: str
    ) -> None:
        core, batch = client.CoreV1Api(kube_api), client.BatchV1Api(kube_api)
        batch.create_namespaced_job(namespace, gpu_job("too-big", gpus=16))

        def unschedulable() -> bool:
            for pod in core.list_namespaced_pod(namespace, label_selector="job-name=too-big").items:
                for cond in pod.status.conditions or []:
                    if cond.type == "PodScheduled" and cond.reason == "Unschedulable":
                        return GPU_RESOURCE in (cond.message or "")
            return False

        wait_for(unschedulable, what="the scheduler to report Insufficient nvidia.com/gpu")


class TestRbac:
    def test_service_account_is_forbidden_until_bound(self, testbed: Testbed, kube_api: client.ApiClient,
                                                      namespace: str) -> None:
        core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "runner"}})
        token = core.create_namespaced_service_account_token(
            "runner", namespace, {"spec": {"expirationSeconds": 600}}).status.token

        def as_runner() -> client.BatchV1Api:
            configuration = client.Configuration()
            configuration.host = testbed.api.url
            configuration.ssl_ca_cert = str(testbed.pki.serving_ca) if testbed.pki else None
            configuration.api_key = {"authorization": f"Bearer {token}"}
            return client.BatchV1Api(client.ApiClient(configuration))

        with pytest.raises(client.ApiException) as err:
            as_runner().create_namespaced_job(namespace, gpu_job("denied"))
        assert err.value.status == 403
        assert f"system:serviceaccount:{namespace}:runner" in err.value.body

        rbac.create_namespaced_role(namespace, {
            "metadata": {"name": "job-creator"},
            "rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]}],
        })
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": "runner-creates-jobs"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "job-creator"},
            "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": namespace}],
        })
        # RBAC authorizer caches are informer-fed: allow the binding a moment to arrive.
        created = wait_for(lambda: _try_create(as_runner(), namespace), timeout=30, what="the RoleBinding to apply")
        assert created.metadata.name == "allowed"


def _try_create(batch: client.BatchV1Api, namespace: str) -> client.V1Job | None:
    try:
        return batch.create_namespaced_job(namespace, gpu_job("allowed"))
    except client.ApiException as err:
        if err.status == 403:
            return None
        raise
