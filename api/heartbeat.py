"""The progress heartbeat a run's pods send to the operator.

Pods do not write the run's status themselves: they POST this message to the operator's heartbeat
endpoint, authenticated with an audience-bound ServiceAccount token. The operator aggregates the
shards (or ranks) of a run in memory and writes ``status.progress`` and ``status.results`` at a
bounded rate, so one thousand shards never mean one thousand status writes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from ._base import ApiModel
from .constants import Kind
from .fields import ObjectName
from .status import AugmentationResults, FineTuneResults

Count = Annotated[int, Field(ge=0)]


class PodIdentity(ApiModel):
    """Who reports: the run a pod works for, and which of its shards (or nodes) the pod is."""

    kind: Kind = Field(description="Kind of the run the pod works for.")
    namespace: ObjectName = Field(description="Namespace of the run.")
    name: ObjectName = Field(description="Name of the run.")
    uid: str = Field(min_length=1, max_length=64, description="uid of the run, so a recreated run ignores old pods.")
    shard: Count = Field(default=0, description="This pod's shard (AugmentationRun) or node rank (FineTuneRun).")
    shards: int = Field(default=1, ge=1, le=1000, description="How many shards or nodes report for the run.")


class ProgressReport(ApiModel):
    """What a pod reports: how far it is, and what it has produced so far. The jobs build it with
    the status models the operator writes, so a field means the same on both ends."""

    done: Count = Field(description="Units this shard has finished: rows, or optimizer steps.")
    total: Count | None = Field(default=None, description="Units this shard has in all, when known.")
    rate: float | None = Field(default=None, ge=0.0, description="This shard's units per second, recently.")
    augmentation: AugmentationResults | None = Field(
        default=None, description="AugmentationRun: this shard's counts so far."
    )
    finetune: FineTuneResults | None = Field(default=None, description="FineTuneRun: training state (rank 0 only).")
    message: str | None = Field(default=None, max_length=1024, description="What the pod is doing, for people.")


class Heartbeat(PodIdentity, ProgressReport):
    """One pod's report as sent: its identity, its progress, and when it sent it."""

    sent_at: datetime = Field(description="When the pod sent the heartbeat (its clock).")
