"""The pod template of a run's Job: environment, resources, volumes, scheduling and security.

Split from :mod:`.render` (which names things and builds the Job around this) to keep both short;
pure functions like everything there. Rules this module keeps:

* **Secrets by reference only.** MinIO keys and the hub token reach the container through
  ``valueFrom.secretKeyRef``; the operator never reads a Secret, so no credential can end up in
  the Job, its events or the operator's logs.
* **The environment is** :func:`sampleforge.api.jobenv.pod_environment`'s, the contract the job code
  reads, filled in here with the pod's paths and Secrets; no name is invented here. Operator-wide
  extras (``Settings.extra_job_env``) go through it too, so they can never shadow a contract variable.
* **Least privilege**: non-root, no privilege escalation, no capabilities, the runtime's seccomp
  profile, a read-only root filesystem (writes go to emptyDirs: the cache, ``/tmp``, which is also
  ``HOME``, and ``/dev/shm``), no Kubernetes API token (pods authenticate heartbeats with an
  audience-bound projected token that the API server cannot be called with).
* **The spec as a file**: the run's spec reaches the job from a ConfigMap mounted read-only
  (``RUN_SPEC_FILE``), never as an environment variable, which Linux limits to 128 KiB.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Final

from sampleforge.api import Kind, jobenv
from sampleforge.api.constants import GPU_RESOURCE

if TYPE_CHECKING:
    from sampleforge.api.common import CommonRunSpec, SecretKeySelector, Storage, Toleration
    from sampleforge.api.constants import Step

    from .runobject import RunObject, RunSpec, Topology
    from .settings import Settings

#: The run container's name (podFailurePolicy's exit-code rule names it).
CONTAINER_NAME: Final = "job"
#: Name of the rendezvous port on the Service and the container.
RENDEZVOUS_PORT_NAME: Final = "rendezvous"

#: Scratch space for downloads (models, shards); survives container restarts, not pod replacement.
CACHE_PATH: Final = "/var/cache/sampleforge"
#: Temporary files, and the home directory: the only other writable place on a read-only root.
TMP_PATH: Final = "/tmp"
#: Hugging Face's cache (hub models and their modules): with the other downloads.
HF_HOME_PATH: Final = f"{CACHE_PATH}/huggingface"
#: The pod volume that holds the run's spec ConfigMap.
SPEC_VOLUME: Final = "run-spec"
#: Where the run's spec ConfigMap is mounted, and the file in it.
SPEC_DIR: Final = "/etc/sampleforge/run"
SPEC_FILENAME: Final = "spec.json"
#: Where the heartbeat token is projected; the kubelet rotates it before it expires.
HEARTBEAT_TOKEN_DIR: Final = "/var/run/secrets/sampleforge.io/heartbeat"
HEARTBEAT_TOKEN_FILENAME: Final = "token"
HEARTBEAT_TOKEN_EXPIRATION_SECONDS: Final = 3600
#: spec.storage.webIdentity's projected token (EKS's IRSA webhook mounts its own at the same kind of
#: path), and spec.storage.caBundle's certificates.
WEB_IDENTITY_TOKEN_DIR: Final = "/var/run/secrets/sampleforge.io/s3-web-identity"
WEB_IDENTITY_TOKEN_FILENAME: Final = "token"
WEB_IDENTITY_TOKEN_EXPIRATION_SECONDS: Final = 3600
S3_CA_DIR: Final = "/etc/sampleforge/s3-ca"
S3_CA_FILENAME: Final = "ca.crt"
#: /dev/shm size for GPU pods that set no resources.sharedMemory: the container runtime's 64Mi
#: default makes PyTorch data loader workers and NCCL fail.
DEFAULT_GPU_SHARED_MEMORY: Final = "1Gi"
#: Time between SIGTERM and SIGKILL: a fine-tune saves a checkpoint to MinIO on SIGTERM (model,
#: optimizer, scheduler state: minutes for large models); an augmentation shard only flushes its
#: current part file.
TERMINATION_GRACE_SECONDS: Final[dict[Kind, int]] = {Kind.AUGMENTATION_RUN: 30, Kind.FINE_TUNE_RUN: 120}


def _secret(selector: SecretKeySelector | None) -> jobenv.SecretRef | None:
    return None if selector is None else jobenv.SecretRef(selector.name, selector.key)


def _kube_env(name: str, value: jobenv.EnvValue) -> dict[str, Any]:
    if isinstance(value, jobenv.SecretRef):
        return {"name": name, "valueFrom": {"secretKeyRef": {"name": value.name, "key": value.key}}}
    return {"name": name, "value": value}


def _llm_api_keys(spec: RunSpec) -> dict[int, jobenv.EnvValue]:
    """The openai engines' API keys, by augmenter position (an AugmentationRun's only)."""
    keys = (getattr(getattr(a, "openai", None), "api_key_secret", None) for a in getattr(spec, "augmenters", ()))
    return {i: ref for i, key in enumerate(keys) if (ref := _secret(key)) is not None}


def _env(run: RunObject, settings: Settings, job: str, topo: Topology, input_uri: str | None,
         step: Step | None) -> list[dict[str, Any]]:
    """The container's ``env``: the contract's variables (:func:`jobenv.pod_environment`) with this
    pod's paths, Secrets by reference, and the operator's extras. Every step of a sharded run is
    told the run's shard count (the analysis plans the shards, the reduce merges them), not its own
    Job's pod count."""
    spec = run.spec
    fine_tune = run.kind is Kind.FINE_TUNE_RUN
    shards: int = getattr(spec, "parallelism", 1)
    # A fine-tune pod runs one training process per GPU; an augmentation shard is one process.
    processes = topo.gpus_per_pod if fine_tune else 1
    environment = jobenv.JobEnvironment(
        kind=run.kind, name=run.name, namespace=run.namespace, uid=run.uid, storage=_storage_access(run.storage, run.name),
        spec_file=f"{SPEC_DIR}/{SPEC_FILENAME}", input_uri=input_uri, hub_token=_secret(spec.hub_token),
        llm_api_keys=_llm_api_keys(spec),
        heartbeat_url=settings.heartbeat_url or None, heartbeat_interval_seconds=settings.heartbeat_interval_seconds,
        heartbeat_token_file=f"{HEARTBEAT_TOKEN_DIR}/{HEARTBEAT_TOKEN_FILENAME}",
        cache_dir=CACHE_PATH, tmp_dir=TMP_PATH, home_dir=TMP_PATH, hf_home=HF_HOME_PATH,
        shard_count=None if fine_tune else shards, step=None if step is None else step.value,
        num_nodes=topo.pods if fine_tune else None, gpus_per_node=topo.gpus_per_pod if fine_tune else None,
        # Rank 0's stable DNS name; "<ns>.svc" resolves through the pod's search domains whatever the
        # cluster domain is.
        master_addr=None if topo.service is None else f"{job}-0.{topo.service}.{run.namespace}.svc",
        master_port=None if topo.service is None else settings.rendezvous_port,
        threads=threads_per_process(spec.resources.cpu, processes), extra=settings.extra_job_env)
    return [_kube_env(name, value) for name, value in jobenv.pod_environment(environment)]


def cpu_cores(quantity: int | str) -> float:
    """A CPU quantity (``2``, ``0.5``, ``7500m``) in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def threads_per_process(cpu: int | str | None, processes: int) -> int | None:
    """Compute threads for each training process of a pod with ``cpu`` cores (None: unset).

    A container sees every core of its node, and PyTorch starts one thread per core: with a CPU
    limit of 4 on a 96-core node that is 96 threads throttled into 4 cores' quota, which is slower
    than 4 threads. The cores are shared out among the pod's ``processes``.
    """
    if cpu is None:
        return None
    return max(1, int(cpu_cores(cpu) // max(1, processes)))


def _resources(spec: CommonRunSpec, gpus: int) -> dict[str, Any]:
    """Requests equal limits: a GPU pod sharing a node should be neither throttled below its
    request nor evicted first (Guaranteed QoS when cpu and memory are both set)."""
    amounts: dict[str, str] = {}
    if spec.resources.cpu is not None:
        amounts["cpu"] = str(spec.resources.cpu)
    if spec.resources.memory is not None:
        amounts["memory"] = str(spec.resources.memory)
    if gpus > 0:
        amounts[GPU_RESOURCE] = str(gpus)
    if not amounts:
        return {}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _storage_access(storage: Storage, run_name: str) -> jobenv.StorageAccess:
    """How the pods sign in to storage (sampleforge.api.s3auth): keys from the Secret, or web
    identity's token, role and STS, or nothing (the pod's own chain); and the CA bundle to trust."""
    secret, identity = storage.credentials_secret, storage.web_identity
    return jobenv.StorageAccess(
        endpoint=storage.endpoint, secure=storage.secure, region=storage.region,
        keys=None if secret is None else jobenv.StorageKeys(jobenv.SecretRef(secret, storage.access_key_key()),
                                                            jobenv.SecretRef(secret, storage.secret_key_key())),
        web_identity=None if identity is None else jobenv.WebIdentitySignIn(
            token_file=f"{WEB_IDENTITY_TOKEN_DIR}/{WEB_IDENTITY_TOKEN_FILENAME}", role_arn=identity.role_arn,
            session_name=f"sampleforge-{run_name}"[:64], sts_endpoint=identity.sts_endpoint),
        ca_file=None if storage.ca_bundle is None else f"{S3_CA_DIR}/{S3_CA_FILENAME}")


def _storage_volumes(storage: Storage) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The web identity token and the CA bundle, when spec.storage asks for them."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if storage.web_identity is not None:
        volumes.append({"name": "s3-web-identity", "projected": {"sources": [{"serviceAccountToken": {
            "audience": storage.web_identity.audience,
            "expirationSeconds": WEB_IDENTITY_TOKEN_EXPIRATION_SECONDS,
            "path": WEB_IDENTITY_TOKEN_FILENAME}}]}})
        mounts.append({"name": "s3-web-identity", "mountPath": WEB_IDENTITY_TOKEN_DIR, "readOnly": True})
    if storage.ca_bundle is not None:
        volumes.append({"name": "s3-ca", "configMap": {
            "name": storage.ca_bundle.name, "defaultMode": 0o444,
            "items": [{"key": storage.ca_bundle.key, "path": S3_CA_FILENAME}]}})
        mounts.append({"name": "s3-ca", "mountPath": S3_CA_DIR, "readOnly": True})
    return volumes, mounts


def _volumes(spec: CommonRunSpec, storage: Storage, gpus: int,
             spec_config_map: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts): the run's spec, the writable cache and /tmp (the root filesystem is
    read-only), the heartbeat token and, where needed, /dev/shm."""
    volumes: list[dict[str, Any]] = [
        {"name": SPEC_VOLUME, "configMap": {"name": spec_config_map, "defaultMode": 0o444}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {
            "name": "heartbeat-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": jobenv.HEARTBEAT_AUDIENCE,
                            "expirationSeconds": HEARTBEAT_TOKEN_EXPIRATION_SECONDS,
                            "path": HEARTBEAT_TOKEN_FILENAME,
                        }
                    }
                ]
            },
        },
    ]
    mounts: list[dict[str, Any]] = [
        {"name": SPEC_VOLUME, "mountPath": SPEC_DIR, "readOnly": True},
        {"name": "cache", "mountPath": CACHE_PATH},
        {"name": "tmp", "mountPath": TMP_PATH},
        {"name": "heartbeat-token", "mountPath": HEARTBEAT_TOKEN_DIR, "readOnly": True},
    ]
    storage_volumes, storage_mounts = _storage_volumes(storage)
    volumes += storage_volumes
    mounts += storage_mounts
    shm = spec.resources.shared_memory
    if shm is None and gpus > 0:
        shm = DEFAULT_GPU_SHARED_MEMORY
    if shm is not None:
        # Memory-backed: what is written here counts against the container's memory limit.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(shm)}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return volumes, mounts


def _tolerates_gpu_taint(t: Toleration) -> bool:
    return t.operator == "Exists" and t.key in (None, GPU_RESOURCE) and t.effect in (None, "NoSchedule")


def _tolerations(spec: CommonRunSpec, settings: Settings, gpus: int) -> list[dict[str, Any]]:
    """The spec's tolerations, plus the usual ``nvidia.com/gpu:NoSchedule`` taint of GPU node pools
    for GPU pods (unless the operator is configured not to, or the spec already tolerates it)."""
    tolerations = [t.to_kube() for t in spec.tolerations]
    if gpus > 0 and settings.tolerate_gpu_taint and not any(_tolerates_gpu_taint(t) for t in spec.tolerations):
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def _node_selector(spec: CommonRunSpec, settings: Settings, gpus: int) -> dict[str, str]:
    """The spec's node selector, plus its GPU type for a pod that has GPUs."""
    selector = dict(spec.node_selector)
    if spec.resources.gpu_type is not None and gpus > 0:
        selector[settings.gpu_type_label] = spec.resources.gpu_type
    return dict(sorted(selector.items()))


def pod_template(
    run: RunObject,
    settings: Settings,
    *,
    job: str,
    topo: Topology,
    labels: dict[str, str],
    spec_config_map: str,
    input_uri: str | None,
    step: Step | None = None,
) -> dict[str, Any]:
    """The Job's ``spec.template``; ``spec_config_map`` names the ConfigMap holding the run's spec,
    ``step`` the step of a sharded run this Job carries out (None: the whole run)."""
    spec = run.spec
    volumes, mounts = _volumes(spec, run.storage, topo.gpus_per_pod, spec_config_map)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or settings.job_image,
        "command": [jobenv.ENTRYPOINT],
        "env": _env(run, settings, job, topo, input_uri, step),
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": True},
        # The last log lines become the termination message of a crashed pod, which the operator
        # can quote in the run's Failed condition.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    resources = _resources(spec, topo.gpus_per_pod)
    if resources:
        container["resources"] = resources
    if topo.service is not None:
        container["ports"] = [{"name": RENDEZVOUS_PORT_NAME, "containerPort": settings.rendezvous_port}]

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the Job retries whole pods; also required by podFailurePolicy
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS[run.kind],
        # No API token: the pods talk to MinIO and to the heartbeat endpoint only.
        "automountServiceAccountToken": False,
        # No <SERVICE>_PORT variables: a Service called "master" would otherwise inject a
        # MASTER_PORT=tcp://... that breaks torch.distributed.
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    if topo.service is not None:
        pod_spec["subdomain"] = topo.service
    node_selector = _node_selector(spec, settings, topo.gpus_per_pod)
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    tolerations = _tolerations(spec, settings, topo.gpus_per_pod)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.affinity is not None:
        pod_spec["affinity"] = copy.deepcopy(spec.affinity)  # never alias the spec's own dict
    if spec.priority_class_name is not None:
        pod_spec["priorityClassName"] = spec.priority_class_name
    # Always explicit: the projected heartbeat token needs a named ServiceAccount, and clusters
    # without the ServiceAccount admission plugin would not fill in "default" themselves.
    pod_spec["serviceAccountName"] = spec.service_account_name or "default"
    return {
        "metadata": {
            "labels": dict(labels),
            "annotations": {"kubectl.kubernetes.io/default-container": CONTAINER_NAME},
        },
        "spec": pod_spec,
    }
