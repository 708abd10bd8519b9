"""The status both kinds report: a shared shape plus per-kind results.

The operator writes status only through these models (``to_kube()``), and the CRD schema is
generated from them, so nothing the operator writes can be pruned by the API server. The shape
follows Kubernetes conventions that tools rely on: metav1.Condition entries keyed by type,
``observedGeneration`` at top level and per condition (kstatus, Flux, Argo CD), RFC 3339 times.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, TypeAlias

from pydantic import Field

from ._base import ApiModel
from .common import Storage
from .constants import ConditionStatus, Kind, Phase, Step
from .fields import MAX_URI_LENGTH, Metric

Uri = Annotated[str, Field(max_length=MAX_URI_LENGTH)]
Count = Annotated[int, Field(ge=0)]
CONDITION_TYPE_PATTERN = (
    "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
REASON_PATTERN = "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(ApiModel):
    """One condition, in the metav1.Condition shape."""

    type: str = Field(
        max_length=316,
        pattern=CONDITION_TYPE_PATTERN,
        description="Condition type: Ready, Reconciling, Stalled, Waiting, Suspended, Complete or Failed.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation of the spec this condition was computed from."
    )
    last_transition_time: datetime = Field(description="When status last changed.")
    reason: str = Field(
        min_length=1, max_length=1024, pattern=REASON_PATTERN, description="CamelCase reason for the status."
    )
    message: str = Field(max_length=32768, description="Human-readable detail.")


class Progress(ApiModel):
    """How far the run is, from the pods' heartbeats."""

    done: Count | None = Field(
        default=None, description="Units finished: rows for augmentation, optimizer steps for training."
    )
    total: Count | None = Field(default=None, description="Units in all, when known.")
    percent: int | None = Field(default=None, ge=0, le=100, description="done / total as a whole percentage.")
    rate: float | None = Field(default=None, ge=0.0, description="Units per second, averaged recently.")
    eta_seconds: Count | None = Field(default=None, description="Estimated seconds until done.")
    eta: str | None = Field(
        default=None, max_length=32, description="The same estimate for people, e.g. 51m or 2h10m (printer column)."
    )
    last_heartbeat_time: datetime | None = Field(default=None, description="When the pods last reported progress.")
    stage: str | None = Field(
        default=None, max_length=1024,
        description="What the pods say they are doing (e.g. loading the model, first pass, training).",
    )


def format_eta(seconds: float | None) -> str:
    """status.progress.eta's form (51m, 2h10m, 45s: short enough for a printer column), also what the
    jobs log; ``?`` when there is no estimate yet."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    hours, rest = divmod(max(0, round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m" if minutes else f"{secs}s"


class RunOutputs(ApiModel):
    """Where the run's results are, once committed."""

    uri: Uri | None = Field(default=None, description="Prefix the run wrote under (spec.output.uri).")
    manifest_uri: Uri | None = Field(
        default=None, description="The committed manifest; readers trust the output only if it exists."
    )
    model_uri: Uri | None = Field(default=None, description="FineTuneRun: the final model directory.")
    rejected_rows_uri: Uri | None = Field(
        default=None, description="Where rows set aside as unreadable or invalid were written (set when there are any)."
    )
    report_uri: Uri | None = Field(
        default=None, description="The committed human-readable report (report.html, else report.md)."
    )
    metrics_uri: Uri | None = Field(default=None, description="FineTuneRun: the committed metrics.json.")
    model_card_uri: Uri | None = Field(default=None, description="FineTuneRun: the published model's card (README.md).")


class BestMetric(ApiModel):
    """The best evaluation result so far."""

    name: Metric = Field(description="Metric name, e.g. ndcg@10.")
    value: float = Field(description="Its best value.")
    step: Count = Field(description="Optimizer step at which it was reached.")


class AugmentationResults(ApiModel):
    """Counts of what an AugmentationRun read, generated and kept."""

    samples_in: Count | None = Field(default=None, description="Source rows read.")
    samples_out: Count | None = Field(default=None, description="Rows written (source plus kept generated rows).")
    per_augmenter: dict[Annotated[str, Field(max_length=63)], Count] = Field(
        default_factory=dict, max_length=32, description="Rows kept per augmenter name."
    )
    filtered: dict[Annotated[str, Field(max_length=63)], Count] = Field(
        default_factory=dict, max_length=32, description="Generated rows dropped per filter name."
    )
    rejected_rows: Count | None = Field(default=None, description="Source rows set aside as unreadable or invalid.")


class FineTuneResults(ApiModel):
    """Training state and evaluation results of a FineTuneRun."""

    step: Count | None = Field(default=None, description="Optimizer steps done.")
    epoch: float | None = Field(default=None, ge=0.0, description="Epochs done, fractional.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    latest_metrics: dict[Annotated[str, Field(max_length=32)], float] = Field(
        default_factory=dict, max_length=32, description="Latest evaluation result per metric."
    )
    best_metric: BestMetric | None = Field(
        default=None, description="Best value of the early-stopping (or first) metric."
    )
    checkpoint_uri: Uri | None = Field(default=None, description="Latest committed checkpoint.")
    rejected_rows: Count | None = Field(
        default=None, description="Training and evaluation rows set aside as unreadable or invalid (committed run)."
    )


class _RunStatus(ApiModel):
    """Fields both kinds report."""

    phase: Phase | None = Field(default=None, description="Pending, Waiting, Running, Suspended, Succeeded or Failed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the operator last acted on."
    )
    conditions: Annotated[
        list[Condition],
        Field(
            max_length=16,
            json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        ),
    ] = Field(default_factory=list, description="Current conditions, one per type.")
    start_time: datetime | None = Field(default=None, description="When the Job started.")
    completion_time: datetime | None = Field(default=None, description="When the run succeeded or failed.")
    job_name: str | None = Field(default=None, max_length=63, description="Name of the run's Job.")
    progress: Progress | None = Field(default=None, description="How far the run is.")
    outputs: RunOutputs | None = Field(default=None, description="Where the results are.")
    storage: Storage | None = Field(
        default=None,
        description="The storage the run uses: spec.storage, or the operator's default when the spec sets none. "
        "Names only (a Secret's, a role's, a ConfigMap's), never a secret value.",
    )


class AugmentationRunStatus(_RunStatus):
    """Status of an AugmentationRun."""

    results: AugmentationResults | None = Field(default=None, description="Counts of rows read, generated and kept.")
    stage: Step | None = Field(
        default=None,
        description="The step a run with spec.parallelism > 1 is at, each a Job of its own, run in this order: "
        "analysis (one pod makes a first pass over the whole source and commits what it learnt under the "
        "output), shards (one pod per shard, each generating from its own rows), reduce (one pod removes "
        "duplicates across shards and commits manifest.json). Kept once the run has finished: the step it "
        "ended in. Unset for a run with parallelism 1, whose one Job does all three.",
    )


class FineTuneRunStatus(_RunStatus):
    """Status of a FineTuneRun."""

    results: FineTuneResults | None = Field(default=None, description="Training state and evaluation results.")


#: Either kind's status, and either kind's results: what the operator composes and writes.
RunStatus: TypeAlias = AugmentationRunStatus | FineTuneRunStatus
RunResults: TypeAlias = AugmentationResults | FineTuneResults
#: The status model of each kind.
STATUS_MODELS: dict[Kind, type[RunStatus]] = {
    Kind.AUGMENTATION_RUN: AugmentationRunStatus, Kind.FINE_TUNE_RUN: FineTuneRunStatus}
