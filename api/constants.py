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

#: Label on a step's Job and its pods naming the step (a :class:`Step` value); absent on the Job of a
#: run that does all its work in one Job.
LABEL_STEP: Final = f"{GROUP}/step"

#: Label that hands a Job to Kueue; its value is ``spec.queueName``.
KUEUE_QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"

#: Finalizer kopf keeps on a run while the operator watches it (its monitor must stop before the run
#: goes). Runs must therefore be deleted while the operator is still installed (docs/quickstart.md).
FINALIZER: Final = f"{ANNOTATION_PREFIX}/kopf-finalizer"

#: Extended resource the GPU count is requested as.
GPU_RESOURCE: Final = "nvidia.com/gpu"
#: Default node label that ``spec.resources.gpuType`` is matched against (NVIDIA GPU feature discovery).
GPU_TYPE_NODE_LABEL: Final = "nvidia.com/gpu.product"


# --- the steps of a sharded run -------------------------------------------------------------


class Step(StrEnum):
    """The steps of an AugmentationRun with ``spec.parallelism`` > 1, in the order they run, each a Job
    of its own: the one definition the operator (Job names, ``LABEL_STEP``, ``status.stage``) and the
    job (``SAMPLEFORGE_STEP``, :data:`sampleforge.api.jobenv.STEP`) share.

    A run with parallelism 1 (and a run outside Kubernetes) has no step: its one pod does all three
    in-process, and ``SAMPLEFORGE_STEP`` is unset.
    """

    #: One pod: a first pass over the whole source (label distribution, column statistics, item
    #: pool and retrieval index, the GAN), committed as an artifact under the run's output.
    ANALYSIS = "analysis"
    #: The Indexed Job, one pod per shard: each reads the analysis artifact and only its own rows.
    SHARDS = "shards"
    #: One pod: removes duplicates across shards and commits manifest.json.
    REDUCE = "reduce"


#: The steps in the order they run (a run never goes back to an earlier one).
STEPS: Final[tuple[Step, ...]] = tuple(Step)


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
    #: True while the spec holds changes that the running or finished run does not apply.
    SPEC_CHANGE_IGNORED = "SpecChangeIgnored"


class ConditionStatus(StrEnum):
    """metav1.ConditionStatus values."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(StrEnum):
    """Machine-readable reasons for conditions (CamelCase, as metav1.Condition requires).

    The ``#:`` comment of each is its entry in docs/reference.md: what it means and what to do.
    """

    # lifecycle
    #: The operator created the run's Job (an Event only).
    JOB_CREATED = "JobCreated"
    #: The Job exists and waits for its pods to be scheduled and started; nothing to do.
    JOB_PENDING = "JobPending"
    #: The Job's pods run; progress and stage come from their heartbeats.
    JOB_RUNNING = "JobRunning"
    #: The Job completed (an Event only; the run's own reason is Succeeded once results are read).
    JOB_SUCCEEDED = "JobSucceeded"
    #: The Job failed for a reason the other reasons do not name; the message quotes the Job controller.
    JOB_FAILED = "JobFailed"
    #: The run's Job was deleted while the run was not finished; the operator recreates it (the pods resume from what was committed) and the run keeps its original startTime.
    JOB_MISSING = "JobMissing"
    #: spec.suspend is true: the Job is suspended and its pods deleted; set it to false to resume.
    SUSPENDED = "Suspended"
    #: spec.suspend went back to false and the Job was resumed (an Event only).
    RESUMED = "Resumed"
    #: The Job waits for its Kueue queue (spec.queueName) to admit it; Kueue resumes it when quota frees.
    QUEUED = "Queued"
    #: The Job completed and the operator is reading the results it committed (manifest.json, metrics.json) from MinIO; if this lasts, MinIO or the run's credentials Secret is not reachable from the operator (the message says which).
    COLLECTING_RESULTS = "CollectingResults"
    #: The Job completed but its output has no manifest.json committed by this run: nothing under spec.output.uri can be trusted. Check the pod logs; rerun with a new name.
    OUTPUT_NOT_COMMITTED = "OutputNotCommitted"
    #: The spec changed after the Job was made, and the fields named in the message cannot change a running or finished run (only spec.suspend applies live). Create a new run to use them, or revert the change.
    SPEC_CHANGE_IGNORED = "SpecChangeIgnored"
    #: The spec matches what the Job was made from (the SpecChangeIgnored condition is False).
    SPEC_APPLIED = "SpecApplied"
    # waiting on another run (FineTuneRun.spec.data.fromAugmentationRun)
    #: The AugmentationRun named in spec.data.fromAugmentationRun has not succeeded yet; the run starts by itself when it does.
    WAITING_FOR_UPSTREAM = "WaitingForUpstream"
    #: No AugmentationRun of the name in spec.data.fromAugmentationRun exists in the run's namespace (Stalled): fix the name or create that run; the operator keeps checking.
    UPSTREAM_NOT_FOUND = "UpstreamNotFound"
    #: The AugmentationRun in spec.data.fromAugmentationRun failed: fix and rerun it, then create a new FineTuneRun.
    UPSTREAM_FAILED = "UpstreamFailed"
    # input that can only be checked at run time
    #: The spec was refused at run time (a field the API server cannot check, or a Job the API server refused); the message names the field.
    INVALID_SPEC = "InvalidSpec"
    #: The Secret in spec.storage.credentialsSecret (or spec.hubToken) or one of its keys is missing (Stalled); create it and the run starts by itself.
    SECRET_NOT_FOUND = "SecretNotFound"
    #: A bucket named by the spec does not exist in MinIO; create it or fix the URI.
    BUCKET_NOT_FOUND = "BucketNotFound"
    #: The source or training data could not be read or held no usable row; the message names the spec field and object.
    DATASET_UNREADABLE = "DatasetUnreadable"
    #: The model (hub id or s3:// directory) could not be loaded; check the URI, spec.hubToken, and that the cluster can reach the hub.
    MODEL_UNAVAILABLE = "ModelUnavailable"
    # pod-level trouble, surfaced instead of a silent Pending
    #: A pod cannot be scheduled (no node with the GPUs, memory, selector or tolerations asked for); check spec.resources, nodeSelector and tolerations.
    UNSCHEDULABLE = "Unschedulable"
    #: A pod cannot pull the job image (Stalled); check the image name, registry access and imagePullSecrets.
    IMAGE_PULL_ERROR = "ImagePullError"
    #: The Job controller cannot create the Job's pods (ResourceQuota, LimitRange, admission
    #: webhook or PodSecurity denial, missing ServiceAccount): a FailedCreate Event on the Job.
    POD_CREATE_FAILED = "PodCreateFailed"
    #: A pod ran out of memory; raise spec.resources.memory or lower the batch size.
    OOM_KILLED = "OOMKilled"
    #: A pod exited with an error; the Job retries it up to spec.backoffLimit. The message quotes the pod's exit code and last words.
    POD_FAILED = "PodFailed"
    # failures detected while running
    #: The pods sent no heartbeat (not even a keep-alive) for spec.heartbeatTimeoutSeconds; the Job was suspended to free its GPUs. Check the pods' logs and the network path to the operator.
    HEARTBEAT_TIMEOUT = "HeartbeatTimeout"
    #: The Job ran longer than spec.activeDeadlineSeconds.
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    #: The pods failed more often than spec.backoffLimit allows; the message quotes the last failure.
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    # terminal
    #: The Job completed and the run's committed results are in status.results.
    SUCCEEDED = "Succeeded"
    #: The run failed; the message says why.
    FAILED = "Failed"
