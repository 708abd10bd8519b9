"""Names that the operator, the jobs, the CRDs and the dashboards must agree on.

Every string here ends up somewhere a user or another tool reads it (API paths, label selectors,
condition reasons in `kubectl describe`, Prometheus label values), so each one is defined exactly
once and imported everywhere else. Renaming one is an API change.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

GROUP: Final = "sampleforge.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

#: The category both kinds join, so `kubectl get sampleforge` lists every run.
CATEGORY: Final = "sampleforge"


class Kind(StrEnum):
    """The custom resource kinds this project serves."""

    AUGMENTATION_RUN = "AugmentationRun"
    FINE_TUNE_RUN = "FineTuneRun"


#: Plural resource names, as they appear in API paths and CRD names.
PLURALS: Final[dict[Kind, str]] = {
    Kind.AUGMENTATION_RUN: "augmentationruns",
    Kind.FINE_TUNE_RUN: "finetuneruns",
}

#: Short names for `kubectl get`; keep them free of clashes with built-in resources.
SHORT_NAMES: Final[dict[Kind, tuple[str, ...]]] = {
    Kind.AUGMENTATION_RUN: ("augrun", "ar"),
    Kind.FINE_TUNE_RUN: ("ftrun", "ftr"),
}


def crd_name(kind: Kind) -> str:
    """The CustomResourceDefinition's metadata.name: `<plural>.<group>`."""
    return f"{PLURALS[kind]}.{GROUP}"


# --- labels and annotations ------------------------------------------------------------------

#: Prefix of every annotation the operator (and kopf's bookkeeping) writes. kopf must be told to
#: keep its progress and diff-base state in annotations under this prefix
#: (``AnnotationsProgressStorage`` / ``AnnotationsDiffBaseStorage``): the status schema is
#: structural, so anything kopf would write under ``status.kopf`` would be pruned by the API server.
ANNOTATION_PREFIX: Final = GROUP

#: Label on every child object (Job, Pods, ConfigMap) naming the run that owns it.
LABEL_RUN_NAME: Final = f"{GROUP}/run"
#: Label on every child object naming the kind of the owning run ("AugmentationRun"/"FineTuneRun").
LABEL_RUN_KIND: Final = f"{GROUP}/kind"
#: Label carrying the owning run's uid, so a recreated run never adopts its predecessor's Job.
LABEL_RUN_UID: Final = f"{GROUP}/run-uid"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "sampleforge-operator"
#: Label the leading operator replica puts on its own Pod (value ``LEADER_VALUE``) and takes off
#: when it stops leading; the chart's heartbeat Service selects it, so heartbeats reach the one
#: replica that keeps the runs' progress while every healthy replica reports ready.
LABEL_LEADER: Final = f"{GROUP}/leader"
LEADER_VALUE: Final = "true"

#: Label that hands a Job to Kueue; its value is ``spec.queueName``.
KUEUE_QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"

#: Finalizer the operator puts on runs whose cleanup must happen before deletion.
FINALIZER: Final = f"{GROUP}/finalizer"

#: Extended resource the GPU count is requested as.
GPU_RESOURCE: Final = "nvidia.com/gpu"
#: Default node label that ``spec.resources.gpuType`` is matched against (NVIDIA GPU feature discovery).
GPU_TYPE_NODE_LABEL: Final = "nvidia.com/gpu.product"


# --- status vocabulary -----------------------------------------------------------------------


class Phase(StrEnum):
    """The one-word summary in ``status.phase``; conditions carry the detail."""

    PENDING = "Pending"
    WAITING = "Waiting"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


#: Phases a run never leaves.
TERMINAL_PHASES: Final = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class ConditionType(StrEnum):
    """Condition types in ``status.conditions``.

    ``Ready``, ``Reconciling`` and ``Stalled`` follow kstatus, so Flux and Argo CD compute health
    without custom health checks.
    """

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    WAITING = "Waiting"
    SUSPENDED = "Suspended"
    COMPLETE = "Complete"
    FAILED = "Failed"


class ConditionStatus(StrEnum):
    """metav1.ConditionStatus values."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(StrEnum):
    """Machine-readable reasons for conditions (CamelCase, as metav1.Condition requires)."""

    # lifecycle
    JOB_CREATED = "JobCreated"
    JOB_PENDING = "JobPending"
    JOB_RUNNING = "JobRunning"
    JOB_SUCCEEDED = "JobSucceeded"
    JOB_FAILED = "JobFailed"
    JOB_MISSING = "JobMissing"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    QUEUED = "Queued"
    # waiting on another run (FineTuneRun.spec.data.fromAugmentationRun)
    WAITING_FOR_UPSTREAM = "WaitingForUpstream"
    UPSTREAM_NOT_FOUND = "UpstreamNotFound"
    UPSTREAM_FAILED = "UpstreamFailed"
    # input that can only be checked at run time
    INVALID_SPEC = "InvalidSpec"
    SECRET_NOT_FOUND = "SecretNotFound"
    BUCKET_NOT_FOUND = "BucketNotFound"
    DATASET_UNREADABLE = "DatasetUnreadable"
    MODEL_UNAVAILABLE = "ModelUnavailable"
    # pod-level trouble, surfaced instead of a silent Pending
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_ERROR = "ImagePullError"
    #: The Job controller cannot create the Job's pods (ResourceQuota, LimitRange, admission
    #: webhook or PodSecurity denial, missing ServiceAccount): a FailedCreate Event on the Job.
    POD_CREATE_FAILED = "PodCreateFailed"
    OOM_KILLED = "OOMKilled"
    POD_FAILED = "PodFailed"
    # failures detected while running
    HEARTBEAT_TIMEOUT = "HeartbeatTimeout"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    # terminal
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
