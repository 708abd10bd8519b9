"""The environment contract between the operator, which renders a run's pods, and the jobs that
run inside them. Each name is defined once here; the operator sets it, the jobs read it.

The spec travels whole (JSON in camelCase as the API server stores it) and the job validates it
with the same models the CRD is generated from, so a pod can never run a configuration the API
server would have rejected. The operator delivers it as a file (``RUN_SPEC_FILE``, from a ConfigMap
mounted read-only), never in the environment: Linux refuses to start a process with any one
environment string above 128 KiB, and a spec within its fields' limits can be larger.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from .constants import Reason

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
