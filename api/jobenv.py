"""The environment contract between the operator, which renders a run's pods, and the jobs that
run inside them. Each name is defined once here; the operator sets it, the jobs read it.

The spec travels whole (JSON in camelCase as the API server stores it) and the job validates it
with the same models the CRD is generated from, so a pod can never run a configuration the API
server would have rejected. The operator delivers it as a file (``RUN_SPEC_FILE``, from a ConfigMap
mounted read-only), never in the environment: Linux refuses to start a process with any one
environment string above 128 KiB, and a spec within its fields' limits can be larger.

A pod's variables are built in one place, :func:`pod_environment` from a :class:`JobEnvironment`:
the operator's renderer turns them into the Job's ``env`` (Secrets by reference), and runs outside
Kubernetes (the tests and benchmarks: ``sampleforge.testbed.localrun``) into a process
environment (the same variables, credentials given literally).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, TypeAlias

from .constants import Kind, Reason, Step

_P: Final = "SAMPLEFORGE_"

RUN_KIND: Final = _P + "RUN_KIND"
RUN_NAME: Final = _P + "RUN_NAME"
RUN_NAMESPACE: Final = _P + "RUN_NAMESPACE"
RUN_UID: Final = _P + "RUN_UID"
#: The run's spec as JSON (camelCase), validated by the job with the shared schema. For runs by
#: hand (a laptop, a benchmark); the operator sets RUN_SPEC_FILE instead, which wins when both are set.
RUN_SPEC: Final = _P + "RUN_SPEC"
#: Path of a file holding the run's spec as JSON (camelCase): how the operator delivers it.
RUN_SPEC_FILE: Final = _P + "RUN_SPEC_FILE"
#: For a FineTuneRun fed by an AugmentationRun: the upstream run's committed output prefix.
INPUT_URI: Final = _P + "INPUT_URI"

#: MinIO connection; the keys come from the Secret named in spec.storage.credentialsSecret (absent
#: with webIdentity or the pods' own credential chain: see sampleforge.api.s3auth).
S3_ENDPOINT: Final = _P + "S3_ENDPOINT"
S3_SECURE: Final = _P + "S3_SECURE"
S3_REGION: Final = _P + "S3_REGION"
S3_ACCESS_KEY: Final = _P + "S3_ACCESS_KEY"
S3_SECRET_KEY: Final = _P + "S3_SECRET_KEY"
#: PEM certificates to trust for https to the endpoint and STS (spec.storage.caBundle, mounted).
S3_CA_FILE: Final = _P + "S3_CA_FILE"
#: spec.storage.webIdentity, under the names the AWS SDKs (and minio's IAM provider) read, which an
#: IRSA or Pod Identity webhook also injects: the projected token, the role, the session name and,
#: outside AWS, the STS endpoint.
AWS_WEB_IDENTITY_TOKEN_FILE: Final = "AWS_WEB_IDENTITY_TOKEN_FILE"
AWS_ROLE_ARN: Final = "AWS_ROLE_ARN"
AWS_ROLE_SESSION_NAME: Final = "AWS_ROLE_SESSION_NAME"
AWS_ENDPOINT_URL_STS: Final = "AWS_ENDPOINT_URL_STS"
AWS_REGION: Final = "AWS_REGION"
#: Keys the standard AWS chain may find in a process's environment: masked in logs like our own.
AWS_SECRET_ENV: Final = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
#: Model hub token (spec.hubToken), read by transformers under this standard name.
HUB_TOKEN: Final = "HF_TOKEN"
#: API key of a generation augmenter's openai engine (spec.augmenters[i].openai.apiKeySecret), from
#: its Secret like the storage keys. One variable per augmenter, named by its position: each may call
#: a different endpoint with a different key.
LLM_API_KEY_PREFIX: Final = _P + "LLM_API_KEY_"


def llm_api_key_env(index: int) -> str:
    """The variable holding the API key of ``spec.augmenters[index]``."""
    return f"{LLM_API_KEY_PREFIX}{index}"


#: Where the pods send progress heartbeats, and the audience-bound token they authenticate with.
HEARTBEAT_URL: Final = _P + "HEARTBEAT_URL"
HEARTBEAT_TOKEN_FILE: Final = _P + "HEARTBEAT_TOKEN_FILE"
HEARTBEAT_INTERVAL_SECONDS: Final = _P + "HEARTBEAT_INTERVAL_SECONDS"
#: Audience of the projected ServiceAccount token the heartbeat endpoint accepts.
HEARTBEAT_AUDIENCE: Final = "sampleforge.io/heartbeat"

#: Sharding of an AugmentationRun's Indexed Job: this pod's shard and the shard count.
#: (The index itself comes from Kubernetes' JOB_COMPLETION_INDEX.)
SHARD_COUNT: Final = _P + "SHARD_COUNT"
JOB_COMPLETION_INDEX: Final = "JOB_COMPLETION_INDEX"
#: Which step of a sharded AugmentationRun this pod runs: a :class:`~sampleforge.api.constants.Step`
#: value (``analysis``, ``shards``, ``reduce``). Unset: the pod does all of them in-process
#: (parallelism 1, and runs outside Kubernetes). SHARD_COUNT is set in every step's pods.
STEP: Final = _P + "STEP"

#: torch.distributed rendezvous for multi-node FineTuneRuns (node rank = completion index).
MASTER_ADDR: Final = "MASTER_ADDR"
MASTER_PORT: Final = "MASTER_PORT"
NUM_NODES: Final = _P + "NUM_NODES"
GPUS_PER_NODE: Final = _P + "GPUS_PER_NODE"

#: Where a job keeps downloads (models, shards) between restarts of the same pod.
CACHE_DIR: Final = _P + "CACHE_DIR"
#: The pods' root filesystem is read-only, so everything that writes outside the job's own cache
#: is pointed at writable volumes: temporary files (torchrun, jieba, PyTorch's compile caches), the
#: home directory (libraries that cache under ~), and Hugging Face's cache for hub models.
TMPDIR: Final = "TMPDIR"
HOME: Final = "HOME"
HF_HOME: Final = "HF_HOME"
#: Compute threads per process, from spec.resources.cpu (shared among a pod's training processes):
#: read by PyTorch, OpenMP and BLAS, which would otherwise start one thread per core of the node.
THREADS: Final = "OMP_NUM_THREADS"

#: The job image's single entry point; it dispatches on RUN_KIND. The operator runs it as the
#: container command, so the image's ENTRYPOINT/CMD do not matter.
ENTRYPOINT: Final = "sampleforge-job"

# --- exit codes: the operator's Job podFailurePolicy acts on these ---------------------------

#: The run's configuration is unusable (RUN_SPEC invalid, a required variable missing): retrying
#: cannot help, so the Job's podFailurePolicy fails the whole Job at once (action FailJob) instead
#: of burning through backoffLimit. 2 is also what argparse exits with on bad arguments.
EXIT_INVALID_CONFIG: Final = 2
#: The pod got SIGTERM (preemption, eviction, node drain, deletion), saved a checkpoint and
#: stopped: 128 + SIGTERM. It is an ordinary retryable failure; when Kubernetes marks the pod with
#: the DisruptionTarget condition it does not count against backoffLimit at all (action Ignore).
EXIT_TERMINATED: Final = 143
#: A fine-tune's base model (spec.model) cannot be downloaded or loaded: not found, not a model
#: directory, access denied. A retry would find the same object, so the Job fails at once.
EXIT_MODEL_UNAVAILABLE: Final = 3
#: A fine-tune's data (spec.data, or the upstream run's committed output) is missing, unreadable or
#: holds no usable rows; like EXIT_MODEL_UNAVAILABLE, not retried. Transient storage trouble (MinIO
#: unreachable or answering 5xx) exits 1 instead, which the Job retries.
EXIT_DATA_UNREADABLE: Final = 4
#: Anything else (MinIO unreachable, a node problem, a bug): an ordinary failure the Job retries.
EXIT_FAILED: Final = 1
#: Exit codes that mean "a retry cannot help": the Job's podFailurePolicy fails the Job on them.
EXIT_NOT_RETRYABLE: Final = (EXIT_INVALID_CONFIG, EXIT_MODEL_UNAVAILABLE, EXIT_DATA_UNREADABLE)


class ExitCode(IntEnum):
    """The exit statuses of both jobs (augmentation and fine-tune): one set, because the operator
    reads them back the same way for either kind (podFailurePolicy, and the condition reason a
    failed pod's code stands for)."""

    SUCCESS = 0
    #: Worth a retry (EXIT_FAILED).
    UNEXPECTED = EXIT_FAILED
    #: The spec or environment is unusable (EXIT_INVALID_CONFIG): reason InvalidSpec.
    CONFIGURATION = EXIT_INVALID_CONFIG
    #: A model named in the spec cannot be downloaded or loaded: reason ModelUnavailable.
    MODEL_UNAVAILABLE = EXIT_MODEL_UNAVAILABLE
    #: A dataset named in the spec is missing, unreadable or holds no usable rows: DatasetUnreadable.
    DATASET_UNREADABLE = EXIT_DATA_UNREADABLE
    #: SIGTERM: a checkpoint or the committed shards survive, the pod is retried (EXIT_TERMINATED).
    PREEMPTED = EXIT_TERMINATED

    @classmethod
    def for_reason(cls, reason: str) -> ExitCode:
        """The do-not-retry code for a failure of condition ``reason``: a model or data problem gets
        its own code (so the run's condition says which), anything else the configuration one."""
        codes: dict[str, ExitCode] = {Reason.MODEL_UNAVAILABLE.value: cls.MODEL_UNAVAILABLE,
                                      Reason.DATASET_UNREADABLE.value: cls.DATASET_UNREADABLE}
        return codes.get(str(reason), cls.CONFIGURATION)


# --- a pod's environment, built once -----------------------------------------------------------


@dataclass(frozen=True)
class SecretRef:
    """A value the pod reads from a Secret (``valueFrom.secretKeyRef``): the operator names the key
    and never sees the value, so no credential ends up in the Job, its events or the operator's logs."""

    name: str
    key: str


#: What a variable is set to: a literal, or (in the operator's pods) a Secret's key. Runs outside
#: Kubernetes give even credentials literally.
EnvValue: TypeAlias = str | SecretRef


@dataclass(frozen=True)
class StorageKeys:
    """S3 keys: both or neither, so the type holds the pair."""

    access_key: EnvValue
    secret_key: EnvValue


@dataclass(frozen=True)
class WebIdentitySignIn:
    """spec.storage.webIdentity as the pod's AWS SDK reads it: the projected token's file, the role to
    assume, the session name and, outside AWS, the STS endpoint."""

    token_file: str
    role_arn: str
    session_name: str
    sts_endpoint: str | None = None


@dataclass(frozen=True)
class StorageAccess:
    """Where the run's storage is and how its pods sign in (sampleforge.api.s3auth): with ``keys``,
    with ``web_identity``, or with neither (the pods' own credential chain); ``ca_file`` holds the
    certificates to trust for https."""

    endpoint: str
    secure: bool = False
    region: str | None = None
    keys: StorageKeys | None = None
    web_identity: WebIdentitySignIn | None = None
    ca_file: str | None = None


@dataclass(frozen=True)
class JobEnvironment:
    """What a run's pod is told through its environment, field by field (each field's variable is
    named above). The operator fills it from the run and its settings, with paths inside the pod and
    Secrets by reference; a run outside Kubernetes with its own paths and literal keys. An unset
    field sets no variable, and the job's default applies."""

    kind: Kind
    name: str
    namespace: str
    uid: str
    storage: StorageAccess
    #: The spec as a file (how the operator delivers it) or as a document (runs by hand): one of them.
    spec_file: str | None = None
    spec: Mapping[str, Any] | None = None
    input_uri: str | None = None
    hub_token: EnvValue | None = None
    #: API keys of openai generation engines, by the augmenter's position in spec.augmenters.
    llm_api_keys: Mapping[int, EnvValue] = field(default_factory=dict)
    heartbeat_url: str | None = None
    heartbeat_interval_seconds: float | None = None
    heartbeat_token_file: str | None = None
    cache_dir: str | None = None
    tmp_dir: str | None = None
    home_dir: str | None = None
    hf_home: str | None = None
    #: An AugmentationRun's shards, and this pod's one: Kubernetes sets the index in an Indexed Job's
    #: pods itself, so only runs outside Kubernetes give it.
    shard_count: int | None = None
    completion_index: int | None = None
    #: The step of a sharded AugmentationRun this pod runs (a :class:`Step` value); None: all of them.
    step: str | None = None
    #: A FineTuneRun's nodes, GPUs per node and, with more than one node, rank 0's rendezvous.
    num_nodes: int | None = None
    gpus_per_node: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    threads: int | None = None
    #: Variables outside the contract (the operator's Settings.extra_job_env: proxies, NCCL tuning).
    #: They never shadow a variable set from the fields above, nor JOB_COMPLETION_INDEX: a duplicate
    #: name would silently win in the container. THREADS is the exception: set here, it wins over
    #: ``threads``.
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.spec_file is None) == (self.spec is None):
            raise ValueError("a job environment gives the spec as a file or as a document: exactly one of them")
        if self.step is not None and self.step not in set(Step):
            raise ValueError(f"step {self.step!r} is not one of {', '.join(Step)} (sampleforge.api.constants.Step)")


def _text(value: float | None) -> str | None:
    return None if value is None else str(value)


def _sign_in(storage: StorageAccess) -> list[tuple[str, EnvValue | None]]:
    env: list[tuple[str, EnvValue | None]] = []
    if storage.keys is not None:
        env += [(S3_ACCESS_KEY, storage.keys.access_key), (S3_SECRET_KEY, storage.keys.secret_key)]
    identity = storage.web_identity
    if identity is not None:
        env += [(AWS_WEB_IDENTITY_TOKEN_FILE, identity.token_file), (AWS_ROLE_ARN, identity.role_arn),
                (AWS_ROLE_SESSION_NAME, identity.session_name), (AWS_ENDPOINT_URL_STS, identity.sts_endpoint),
                # The SDKs' STS client reads the region under its own name.
                (AWS_REGION, storage.region)]
    env.append((S3_CA_FILE, storage.ca_file))
    return env


def pod_environment(job: JobEnvironment) -> list[tuple[str, EnvValue]]:
    """The variables of ``job``, in the order the pod lists them (the order is part of the rendered
    Job: reordering it would change every run's Job)."""
    storage = job.storage
    env: list[tuple[str, EnvValue | None]] = [
        (RUN_KIND, job.kind.value), (RUN_NAME, job.name), (RUN_NAMESPACE, job.namespace), (RUN_UID, job.uid),
        (RUN_SPEC_FILE, job.spec_file), (RUN_SPEC, None if job.spec is None else json.dumps(dict(job.spec))),
        (INPUT_URI, job.input_uri),
        (S3_ENDPOINT, storage.endpoint), (S3_SECURE, "true" if storage.secure else "false"), (S3_REGION, storage.region),
        *_sign_in(storage),
        (HUB_TOKEN, job.hub_token),
        *((llm_api_key_env(i), key) for i, key in sorted(job.llm_api_keys.items())),
        (HEARTBEAT_URL, job.heartbeat_url), (HEARTBEAT_INTERVAL_SECONDS, _text(job.heartbeat_interval_seconds)),
        (HEARTBEAT_TOKEN_FILE, job.heartbeat_token_file),
        (CACHE_DIR, job.cache_dir), (TMPDIR, job.tmp_dir), (HOME, job.home_dir), (HF_HOME, job.hf_home),
        (SHARD_COUNT, _text(job.shard_count)), (JOB_COMPLETION_INDEX, _text(job.completion_index)),
        (STEP, job.step),
        (NUM_NODES, _text(job.num_nodes)), (GPUS_PER_NODE, _text(job.gpus_per_node)),
        (MASTER_ADDR, job.master_addr), (MASTER_PORT, _text(job.master_port)),
    ]
    contract = [(name, value) for name, value in env if value is not None]
    taken = {name for name, _ in contract} | {JOB_COMPLETION_INDEX}
    extras: list[tuple[str, EnvValue]] = [(k, v) for k, v in sorted(job.extra.items()) if k not in taken]
    threads: list[tuple[str, EnvValue]] = [] if job.threads is None or THREADS in job.extra else [
        (THREADS, str(job.threads))]
    return [*contract, *extras, *threads]
