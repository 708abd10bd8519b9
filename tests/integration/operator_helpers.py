"""Shared steps of the operator's integration tests: manifests, waits, heartbeats."""

from __future__ import annotations

import copy
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from sampleforge.api import GROUP, VERSION, jobenv
from sampleforge.api.constants import LABEL_RUN_UID, PLURALS, Kind

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
CREDENTIALS_SECRET = "minio-search-ml"


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)


def example(name: str, **spec_overrides: Any) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    doc = copy.deepcopy(doc)
    doc["spec"].update(spec_overrides)
    return doc


def create_credentials(api: client.ApiClient, namespace: str) -> None:
    client.CoreV1Api(api).create_namespaced_secret(namespace, {
        "metadata": {"name": CREDENTIALS_SECRET},
        "stringData": {"accessKey": "AKIAEXAMPLE", "secretKey": "do-not-leak-this-secret"},
    })


def create_run(api: client.ApiClient, namespace: str, doc: dict[str, Any], name: str | None = None,
               labels: dict[str, str] | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    if name:
        doc["metadata"]["name"] = name
    if labels:
        doc["metadata"].setdefault("labels", {}).update(labels)
    kind = Kind(doc["kind"])
    return dict(client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                             PLURALS[kind], doc))


def get_run(api: client.ApiClient, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
    return dict(client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind],
                                                                          name))


def patch_run(api: client.ApiClient, kind: Kind, namespace: str, name: str, patch: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], name,
                                                                patch)


def wait_phase(api: client.ApiClient, kind: Kind, namespace: str, name: str, phase: str,
               timeout: float = 60) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        run = get_run(api, kind, namespace, name)
        return run if (run.get("status") or {}).get("phase") == phase else None

    try:
        return wait_for(reached, timeout, f"{kind} {name} to reach {phase}")  # type: ignore[no-any-return]
    except AssertionError as err:
        status = get_run(api, kind, namespace, name).get("status")
        raise AssertionError(f"{err}; status is {json.dumps(status, indent=1)}") from None


def condition(run: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (run.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def jobs_of(api: client.ApiClient, namespace: str, uid: str) -> list[client.V1Job]:
    return list(client.BatchV1Api(api).list_namespaced_job(namespace, label_selector=f"{LABEL_RUN_UID}={uid}").items)


def pods_of(api: client.ApiClient, namespace: str, uid: str) -> list[client.V1Pod]:
    return list(client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"{LABEL_RUN_UID}={uid}").items)


def running_pod(api: client.ApiClient, namespace: str, uid: str, timeout: float = 60) -> client.V1Pod:
    return wait_for(lambda: next((p for p in pods_of(api, namespace, uid) if p.status.phase == "Running"), None),
                    timeout, "a running pod")


def pod_token(api: client.ApiClient, pod: client.V1Pod, audience: str = jobenv.HEARTBEAT_AUDIENCE) -> str:
    """What the kubelet projects into the pod: a token for its ServiceAccount, bound to the pod."""
    request = {"spec": {"audiences": [audience], "expirationSeconds": 600,
                        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.metadata.name,
                                           "uid": pod.metadata.uid}}}
    sa = pod.spec.service_account_name or "default"
    return str(client.CoreV1Api(api).create_namespaced_service_account_token(sa, pod.metadata.namespace,
                                                                             request).status.token)


def post_heartbeat(url: str, token: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(f"{url}/v1alpha1/heartbeats", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return str(response.read().decode())
