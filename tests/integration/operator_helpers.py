"""Shared steps of the operator's integration tests: manifests, waits, heartbeats."""

from __future__ import annotations

import copy
import io
import json
import secrets
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from minio import Minio

from sampleforge.api import GROUP, VERSION, jobenv
from sampleforge.api.constants import LABEL_RUN_UID, PLURALS, Kind
from sampleforge.testbed import HOLD_KEY, Testbed
from sampleforge.testbed._minio import MinioServer
from sampleforge.testbed._operator import OPERATOR_NAMESPACE, OperatorProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
CREDENTIALS_SECRET = "minio-search-ml"
#: Label that keeps a kwok pod Running until it is removed (``release``).
HOLD = {HOLD_KEY: "true"}
#: Bucket of the testbed's MinIO that runs of the operator tests write their outputs to.
RUNS_BUCKET = "runs"
#: A test operator's settings: status writes and resyncs fast enough for a test to watch them.
FAST = {"SAMPLEFORGE_OPERATOR_STATUS_MIN_INTERVAL_SECONDS": "1", "SAMPLEFORGE_OPERATOR_RESYNC_SECONDS": "2"}
#: Leader election on, with a lease short enough that a test sees a new leader within seconds.
LEADER_ELECTION = {"SAMPLEFORGE_OPERATOR_LEADER_ELECTION": "true", "SAMPLEFORGE_OPERATOR_LEASE_DURATION_SECONDS": "6"}
#: The examples' buckets and the tests' own (runs); anything else is refused.
EXAMPLE_BUCKETS = {"SAMPLEFORGE_OPERATOR_STORAGE_ALLOW_LIST": json.dumps(
    {"*": ["s3://datasets/", "s3://models/", f"s3://{RUNS_BUCKET}/"]})}


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


def create_credentials(api: client.ApiClient, namespace: str, minio: MinioServer | None = None) -> None:
    """The runs' storage Secret: the testbed MinIO's keys when given (runs that must succeed read
    their committed output with them), else keys that reach nothing."""
    keys = {"accessKey": minio.access_key, "secretKey": minio.secret_key} if minio is not None \
        else {"accessKey": "AKIAEXAMPLE", "secretKey": "do-not-leak-this-secret"}
    client.CoreV1Api(api).create_namespaced_secret(namespace, {
        "metadata": {"name": CREDENTIALS_SECRET}, "stringData": keys})


def stored_example(minio: MinioServer, name: str, **spec_overrides: Any) -> dict[str, Any]:
    """An example run writing to the testbed's MinIO (bucket ``runs``, made on first use)."""
    s3 = minio.client()
    if not s3.bucket_exists(RUNS_BUCKET):
        s3.make_bucket(RUNS_BUCKET)
    return on_minio(example(name, **spec_overrides), minio, RUNS_BUCKET)


def on_minio(doc: dict[str, Any], minio: MinioServer, bucket: str) -> dict[str, Any]:
    """``doc`` storing its output in ``bucket`` of the testbed's MinIO, under a prefix of its own."""
    doc = copy.deepcopy(doc)
    doc["spec"]["storage"]["endpoint"] = minio.endpoint
    doc["spec"]["output"]["uri"] = f"s3://{bucket}/out-{secrets.token_hex(4)}/"
    return doc


def commit_output(s3: Minio, run: dict[str, Any], *, rows: int = 100, generated: dict[str, int] | None = None,
                  filtered: dict[str, int] | None = None, metrics: dict[str, float] | None = None,
                  step: int = 30, loss: float = 0.3) -> dict[str, Any]:
    """What the run's job commits, written as the job would: metrics.json (FineTuneRun), then
    ``manifest.json`` last. The kwok pods run nothing, so a test plays the job's part."""
    bucket, _, prefix = run["spec"]["output"]["uri"][len("s3://"):].partition("/")
    meta = run["metadata"]

    def put(key: str, document: dict[str, Any]) -> None:
        data = json.dumps(document).encode()
        s3.put_object(bucket, prefix + key, io.BytesIO(data), len(data), content_type="application/json")

    if run["kind"] == Kind.AUGMENTATION_RUN:
        generated = generated if generated is not None else {"typo": rows}
        manifest = {"kind": "AugmentationOutput", "rowsRead": rows, "rowsIn": rows,
                    "rowsOut": rows + sum(generated.values()), "rejectedRows": 0,
                    "augmenters": {name: {"produced": kept, "kept": kept} for name, kept in generated.items()},
                    "filters": filtered or {}}
    else:
        final = metrics if metrics is not None else {"ndcg@10": 0.6, "auc": 0.75}
        put("metrics.json", {"final": final, "step": step, "totalSteps": step, "epochs": 1.0, "loss": loss,
                             "best": None, "rejectedRows": 0})
        manifest = {"kind": "model", "run": {"kind": run["kind"], "name": meta["name"], "namespace": meta["namespace"],
                                             "uid": meta["uid"]}, "step": step, "metrics": final}
    put("manifest.json", manifest)
    return manifest


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


def release(api: client.ApiClient, namespace: str, uid: str) -> None:
    """Let the run's held kwok pods finish successfully."""
    for pod in pods_of(api, namespace, uid):
        client.CoreV1Api(api).patch_namespaced_pod(pod.metadata.name, namespace,
                                                   {"metadata": {"labels": {HOLD_KEY: None}}})


@contextmanager
def running_operator(testbed: Testbed, log_name: str, settings: dict[str, str],
                     identity: str = "operator-0") -> Iterator[OperatorProcess]:
    """An operator process against ``testbed``, ready, logging to ``testbed.logs / log_name``;
    stopped when the block ends."""
    with testbed.api_client() as api:
        ensure_operator_namespace(api)
    proc = OperatorProcess(testbed.kubeconfig, testbed.logs / log_name, identity=identity, settings=settings).start()
    try:
        yield proc
    finally:
        proc.stop()


def ensure_operator_namespace(api: client.ApiClient) -> None:
    """The namespace an operator process's Lease lives in, made once per testbed."""
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    except client.ApiException as err:
        if err.status != 409:
            raise
