"""The cluster side: which cluster and namespace, finding a run, its pods, its storage.

Everything uses the caller's own kube credentials, as kubectl would: KUBECONFIG (or
``--kubeconfig``) and ``--context`` first, then the in-cluster ServiceAccount (the plugin run
from a pod or a CI job). Failures become :class:`UserError` with a message that names the run, the
namespace or the Secret and says what to do, never a traceback from the client library.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch
from kubernetes.config.config_exception import ConfigException

from sampleforge.api import GROUP, VERSION, Kind, Storage
from sampleforge.api.constants import LABEL_RUN_UID, LABEL_STEP, PLURALS, STEPS, TERMINAL_PHASES, Step

from .refs import RunRef

_IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: What a batch/v1 Indexed Job puts on each pod (annotation and, since 1.28, label).
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


class UserError(Exception):
    """Something the user can fix; printed as is, exit code :data:`EXIT_ERROR`."""


@dataclass
class Cluster:
    """An API client and the namespace commands act in."""

    api: client.ApiClient
    namespace: str

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)


def connect(namespace: str | None, context: str | None, kubeconfig: str | None) -> Cluster:
    """The user's cluster: a kubeconfig (``--kubeconfig``, KUBECONFIG, ~/.kube/config) with
    ``--context``, else the in-cluster ServiceAccount; the namespace is ``-n``, else the context's,
    else the pod's, else ``default`` (kubectl's order)."""
    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    try:
        config.load_kube_config(config_file=path, context=context,
                                client_configuration=configuration)
        default_ns = context_namespace(path, context) or "default"
    except (ConfigException, FileNotFoundError, OSError) as kube_err:
        if context:
            raise UserError(f"cannot use context {context!r}: {kube_err}") from None
        if kubeconfig:  # asked for by name: never fall back to another identity
            raise UserError(f"cannot use --kubeconfig {kubeconfig}: {kube_err}") from None
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            raise UserError(f"no cluster to talk to: {kube_err}; set KUBECONFIG or --kubeconfig, or run inside a "
                            "pod") from None
        default_ns = _IN_CLUSTER_NAMESPACE.read_text().strip() if _IN_CLUSTER_NAMESPACE.exists() else "default"
    return Cluster(client.ApiClient(configuration), namespace or default_ns)


def context_namespace(path: str | None, context: str | None) -> str | None:
    """The namespace of ``context`` (else of the current context) in a kubeconfig, merged over the
    files of a KUBECONFIG list as kubectl merges them: the first file that sets a name wins. Read
    here rather than through the client, whose listing refuses a file with any broken context."""
    files = [Path(p).expanduser() for p in (path or "~/.kube/config").split(os.pathsep) if p]
    documents = []
    for file in files:
        try:
            documents.append(yaml.safe_load(file.read_text()) or {})
        except (OSError, yaml.YAMLError):
            continue
    name = context or next((d.get("current-context") for d in documents if d.get("current-context")), None)
    for document in documents:
        for entry in document.get("contexts") or []:
            if entry.get("name") == name:
                return (entry.get("context") or {}).get("namespace") or None
    return None


def _api_error(err: client.ApiException, what: str) -> UserError:
    if err.status == 403:
        return UserError(f"not allowed to {what}: {err.reason}; ask for read access (get/list/watch) to it")
    if err.status == 401:
        return UserError(f"the cluster refused your credentials while trying to {what}; log in again")
    return UserError(f"could not {what}: {err.status} {err.reason}")


def _not_served(err: client.ApiException) -> bool:
    """A 404 on a kind means the CRD is not installed (no sampleforge on this cluster)."""
    return err.status == 404 and "page not found" in str(err.body or "").lower()


def get_run(cluster: Cluster, ref: RunRef) -> tuple[Kind, dict[str, Any]]:
    """The run and its kind; looks at both kinds when the user did not say which."""
    kinds = [ref.kind] if ref.kind else list(Kind)
    found: list[tuple[Kind, dict[str, Any]]] = []
    for kind in kinds:
        try:
            obj = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURALS[kind],
                                                              ref.name)
            if isinstance(obj, dict):  # the client types a custom object's answer as a bare ``object``
                found.append((kind, obj))
        except client.ApiException as err:
            if err.status == 404 and not _not_served(err):
                continue
            if _not_served(err):
                raise UserError(f"the cluster does not serve {PLURALS[kind]}.{GROUP}: the sampleforge CRDs are not "
                                "installed (see docs/install.md)") from None
            raise _api_error(err, f"read {kind.value} {ref.name} in namespace {cluster.namespace}") from None
    if not found:
        what = ref.kind.value if ref.kind else "AugmentationRun or FineTuneRun"
        raise UserError(f"no {what} named {ref.name!r} in namespace {cluster.namespace!r}; list them with "
                        f"`kubectl get sampleforge -n {cluster.namespace}` or pass -n NAMESPACE")
    if len(found) > 1:
        raise UserError(f"both an AugmentationRun and a FineTuneRun are named {ref.name!r} in namespace "
                        f"{cluster.namespace!r}; say which: augmentationrun/{ref.name} or finetunerun/{ref.name}")
    return found[0]


def phase_of(run: dict[str, Any]) -> str | None:
    phase = (run.get("status") or {}).get("phase")
    return str(phase) if phase else None


def is_terminal(run: dict[str, Any]) -> bool:
    return phase_of(run) in TERMINAL_PHASES


def watch_run(cluster: Cluster, kind: Kind, name: str, timeout: float) -> Iterator[dict[str, Any] | None]:
    """The run each time it changes, until ``timeout`` seconds pass (a watch, so a phase change is
    seen at once); ``None`` when the run is deleted. Restarts the watch when the server ends it."""
    deadline = time.monotonic() + timeout
    version: str | None = None
    while (left := deadline - time.monotonic()) > 0:
        w = watch.Watch()
        try:
            events = w.stream(
                cluster.custom.list_namespaced_custom_object, GROUP, VERSION, cluster.namespace, PLURALS[kind],
                field_selector=f"metadata.name={name}", resource_version=version, timeout_seconds=max(1, int(left)))
            for event in events:
                obj = event["object"]
                if event["type"] == "ERROR":
                    version = None
                    break
                version = obj["metadata"]["resourceVersion"]
                yield None if event["type"] == "DELETED" else dict(obj)
                if time.monotonic() >= deadline:
                    return
        except client.ApiException as err:
            if err.status == 410:  # the resourceVersion is too old: list again
                version = None
                continue
            raise _api_error(err, f"watch {kind.value} {name}") from None
        finally:
            w.stop()


# --- pods -----------------------------------------------------------------------------------------


def run_pods(cluster: Cluster, run: dict[str, Any]) -> list[client.V1Pod]:
    """The pods of every Job the run ever had (retries included): step by step in the order the steps
    run, then by index, oldest first."""
    uid = run["metadata"]["uid"]
    try:
        pods = cluster.core.list_namespaced_pod(cluster.namespace, label_selector=f"{LABEL_RUN_UID}={uid}").items
    except client.ApiException as err:
        raise _api_error(err, f"list the pods of {run['metadata']['name']} in namespace {cluster.namespace}") from None
    return sorted(pods, key=pod_order)


def pod_order(pod: client.V1Pod) -> tuple[int, int, Any, str]:
    """Analysis before shards before reduce (a pod of a one-step run sorts with the shards), then
    index, creation time and name."""
    step = pod_step(pod)
    rank = STEPS.index(step) if step is not None else STEPS.index(Step.SHARDS)
    return rank, _index_key(pod), pod_meta(pod).creation_timestamp, pod_name(pod)


def pod_meta(pod: client.V1Pod) -> client.V1ObjectMeta:
    assert pod.metadata is not None, "the API server always returns a pod's metadata"
    return pod.metadata


def pod_name(pod: client.V1Pod) -> str:
    return str(pod_meta(pod).name)


def pod_phase(pod: client.V1Pod) -> str:
    return str(pod.status.phase or "") if pod.status else ""


def pod_node(pod: client.V1Pod) -> str | None:
    return pod.spec.node_name if pod.spec else None


def completion_index(pod: client.V1Pod) -> str | None:
    meta = pod_meta(pod)
    index = (meta.annotations or {}).get(COMPLETION_INDEX) or (meta.labels or {}).get(COMPLETION_INDEX)
    return str(index) if index is not None else None


def _index_key(pod: client.V1Pod) -> int:
    index = completion_index(pod)
    return int(index) if index and index.isdigit() else 1 << 30


def pod_step(pod: client.V1Pod) -> Step | None:
    """The step of a multi-step AugmentationRun the pod runs (its ``LABEL_STEP``), else None."""
    value = (pod_meta(pod).labels or {}).get(LABEL_STEP)
    return Step(value) if value in STEPS else None


def pod_prefix(kind: Kind, pod: client.V1Pod) -> str:
    """``shard 2/x7k2p`` for an AugmentationRun's pod, ``rank 0/q9z1m`` for a FineTuneRun's: the
    index says which part of the work, the pod's own suffix tells retries of that index apart. The
    one-pod steps of a multi-step run show as ``analysis/k3m8q`` and ``reduce/p2x9w``."""
    index = completion_index(pod)
    name = pod_name(pod)
    suffix = name.rsplit("-", 1)[-1]
    step = pod_step(pod)
    if step is not None and step != Step.SHARDS:
        return f"{step.value}/{suffix}"
    if index is None:
        return name
    role = "shard" if kind == Kind.AUGMENTATION_RUN else "rank"
    return f"{role} {index}/{suffix}"


# --- storage --------------------------------------------------------------------------------------


def storage_client(cluster: Cluster, kind: Kind, run: dict[str, Any], endpoint: str | None = None) -> Any:
    """A MinIO client for the run's storage (``spec.storage``, else the operator's default it recorded
    in ``status.storage``), read with the user's own credentials (so the
    plugin shows only what the user may read): the keys of the Secret the run names, else the
    user's own AWS chain (AWS_* variables, a web identity); trusting the run's CA bundle.
    ``endpoint`` overrides the spec's (an in-cluster name) for a port-forward from a laptop."""
    from sampleforge.api import s3auth

    name = run["metadata"]["name"]
    found = (run.get("spec") or {}).get("storage") or (run.get("status") or {}).get("storage")
    if not found:
        raise UserError(f"{kind.value} {name} sets no spec.storage and the operator has not yet recorded the default "
                        "it uses (status.storage); wait until the run has started")
    storage = Storage.model_validate(found)
    keys: list[str | None] = [None, None]
    if storage.credentials_secret is not None:
        data = _secret_data(cluster, kind, name, storage.credentials_secret)
        for i, key in enumerate((storage.access_key_key(), storage.secret_key_key())):
            if key not in data:
                raise UserError(f"Secret {storage.credentials_secret!r} in namespace {cluster.namespace!r} has no key "
                                f"{key!r}, which {kind.value} {name} reads its S3 credentials from; add it")
            keys[i] = base64.b64decode(data[key]).decode()
    ca_pem = None
    if storage.ca_bundle is not None:
        ref = storage.ca_bundle
        try:
            config_map = cluster.core.read_namespaced_config_map(ref.name, cluster.namespace)
        except client.ApiException as err:
            raise _api_error(err, f"read ConfigMap {ref.name} (spec.storage.caBundle of {name})") from None
        ca_pem = (config_map.data or {}).get(ref.key)
        if ca_pem is None:
            raise UserError(f"ConfigMap {ref.name!r} (spec.storage.caBundle of {kind.value} {name}) has no key "
                            f"{ref.key!r}; add the PEM certificates under it")
    return s3auth.client(storage, keys[0], keys[1], http=s3auth.http_client(ca_pem), endpoint=endpoint)


def _secret_data(cluster: Cluster, kind: Kind, name: str, secret_name: str) -> dict[str, str | bytes]:
    try:
        secret = cluster.core.read_namespaced_secret(secret_name, cluster.namespace)
    except client.ApiException as err:
        if err.status == 404:
            raise UserError(f"the credentials Secret {secret_name!r} that {kind.value} {name} names in "
                            f"spec.storage.credentialsSecret is missing from namespace {cluster.namespace!r}; "
                            "create it with keys accessKey and secretKey") from None
        raise _api_error(err, f"read Secret {secret_name} (spec.storage.credentialsSecret of {name})") from None
    return dict(secret.data or {})
