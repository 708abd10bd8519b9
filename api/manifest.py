"""The augmentation manifest: ``manifest.json``, the commit of an AugmentationRun's output.

One process writes it (the augmentation job, ``jobs/augment/commit.py``) and two read it (the
fine-tune job, ``jobs/finetune/data.py``, and the operator, ``operator/committed.py``). The writer
builds :class:`AugmentationManifest`, every field required, so it cannot commit a manifest that lacks
one. Each reader validates only the part it relies on, its *view*: :class:`CommittedData` (what a
reader of the rows needs) and :class:`CommittedCounts` (the counts status.results shows). A view
ignores the rest of the document, so a reader accepts an older or a hand-written manifest as long as
what it reads is there and well-formed; a test keeps every view's fields a subset of the full model's.

Keys are camelCase, as in the CRDs. :meth:`AugmentationManifest.document` dumps exactly the keys that
were given (``exclude_unset``), so validating a manifest and dumping it changes no byte of it.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import ConfigDict, Field, ValidationError

from ._base import ApiModel
from .augmentation import Columns, DataFormat

__all__ = ["MANIFEST_KIND", "AugmentationManifest", "AugmenterCounts", "CommittedCounts", "CommittedData", "CrossShardDedup",
           "LabelDistribution", "OutputFile", "Rejects", "RunRef", "describe"]

MANIFEST_KIND: Final = "AugmentationOutput"

Count = Annotated[int, Field(ge=0)]
#: Counts per reason (``{"duplicates a source row": 3}``).
ReasonCounts = dict[str, Count]


class OutputFile(ApiModel):
    """One object the manifest vouches for, relative to the output prefix."""

    path: str = Field(min_length=1, description="Key relative to spec.output.uri, e.g. data/part-00000-00000.parquet.")
    size: Count = Field(description="Bytes.")
    sha256: str = Field(min_length=1, description="Hex sha256 of the bytes.")
    rows: Count | None = Field(default=None, description="Rows (data parts and rejects files; not artifacts).")


class RunRef(ApiModel):
    kind: str
    name: str
    namespace: str | None = None
    uid: str | None = None


class Rejects(ApiModel):
    """Source records set aside while reading, in ``rejects/shard-<i>.jsonl``."""

    rows: Count
    reasons: ReasonCounts
    files: list[OutputFile]


class AugmenterCounts(ApiModel):
    """One augmenter's line: what it is and what became of the rows it produced."""

    type: str
    label_rule: str | None
    produced: Count
    kept: Count
    dropped: dict[str, ReasonCounts] = Field(description="Rows a filter dropped, per filter and reason.")
    source_rows_removed: Count
    # Free-form on purpose: each model-based augmenter reports its own engine figures (load time,
    # rates, cache, fidelity...), combined over shards by output.combine_engine_summaries; the report
    # prints them as they are and no program reads a particular key.
    summary: dict[str, Any] | None = None
    # An llmJudge's counts with its agreement rate and kappa (jobs/augment/grading.judge_rates), shown
    # in the report only.
    judge: dict[str, Any] | None = None


class LabelDistribution(ApiModel):
    """Rows per label (as text, in numeric order where labels are numbers)."""

    before: dict[str, Count]
    after: dict[str, Count]


class CrossShardDedup(ApiModel):
    """What the reduce step of a run of several shards did: exact duplicates that different shards
    generated, found from the shards' dedup keys (hash-partitioned), keeping the first in row order,
    which is the row one shard over the whole source keeps. Already in the counts above (the dedup
    filter's and each augmenter's)."""

    removed: Count = Field(description="Generated rows removed as duplicates of a row an earlier shard generated.")
    keys: Count = Field(description="Dedup keys read: one per generated row the shards kept.")
    partitions: Count = Field(description="Hash partitions the keys were spread over (one in memory at a time).")
    parts_rewritten: Count = Field(description="Data parts written again without the removed rows.")
    bytes_read: Count = Field(description="Bytes the reduce step read: the keys, and the parts it rewrote.")
    seconds: float = Field(ge=0.0)


class AugmentationManifest(ApiModel):
    """Everything ``manifest.json`` holds, as the augmentation job writes it."""

    api_version: Literal["sampleforge.io/v1alpha1"]
    kind: Literal["AugmentationOutput"]
    run: RunRef
    committed_at: str = Field(description="When the manifest was assembled, ISO 8601 with offset.")
    format: DataFormat
    columns: Columns = Field(description="spec.source.columns: the columns' roles, as in the spec.")
    provenance_columns: dict[str, str] = Field(description="Provenance column name -> what it holds.")
    files: list[OutputFile] = Field(description="The data parts, and nothing else: what readers train on.")
    rows_read: Count
    rows_in: Count
    rows_out: Count
    generated_rows: Count
    rejected_rows: Count
    rejects: Rejects
    augmenters: dict[str, AugmenterCounts]
    filters: dict[str, ReasonCounts] = Field(description="Rows each filter dropped, per reason.")
    filter_notes: dict[str, str]
    redactions: dict[str, Any]
    label_distribution: LabelDistribution
    # Histograms for the report (bins, units): shown, not read by a program.
    text_lengths: dict[str, Any]
    eval_split: dict[str, Any] | None
    # Provenance for people (source objects and etags, first-pass statistics, the spec as applied,
    # package versions, per-shard timings, example rows): recorded as the job saw them.
    source: dict[str, Any]
    first_pass: dict[str, Any]
    preprocess: dict[str, Any] | None = Field(
        description="Fitted dense-feature statistics (preprocess.json's content plus statsFile), or null.")
    config: dict[str, Any]
    seed: int | None
    shards: int = Field(ge=1)
    sharding: str
    fingerprint: str
    config_fingerprint: str
    code_version: dict[str, Any]
    timings: dict[str, Any]
    #: Set by the reduce step of a run of several shards (absent when one pod did everything).
    cross_shard_dedup: CrossShardDedup | None = None
    examples: list[dict[str, Any]]
    artifacts: list[OutputFile] = Field(description="Everything else the manifest vouches for: reports, statistics.")

    def document(self) -> dict[str, Any]:
        """The camelCase document, with exactly the keys that were given (nulls included)."""
        return self.model_dump(by_alias=True, exclude_unset=True)


class _View(ApiModel):
    """A reader's part of the manifest: keys it does not read are ignored, not refused."""

    model_config = ConfigDict(extra="ignore")


class CommittedData(_View):
    """What a reader of a committed output's rows relies on (the fine-tune job)."""

    files: list[OutputFile] = Field(min_length=1)
    format: DataFormat | None = None
    columns: Columns | None = None
    provenance_columns: dict[str, str] | None = None
    preprocess: dict[str, Any] | None = None


class _AugmenterKept(_View):
    kept: Count = 0


class _RejectedTotal(_View):
    rows: Count = 0


class _Listed(_View):
    path: str


class CommittedCounts(_View):
    """What status.results of an AugmentationRun is made of (the operator)."""

    rows_read: Count | None = None
    rows_in: Count | None = None
    rows_out: Count | None = None
    rejected_rows: Count | None = None
    augmenters: dict[str, _AugmenterKept] = Field(default_factory=dict)
    # A filter's drops per reason; a bare count is accepted from hand-written manifests.
    filters: dict[str, Count | ReasonCounts] = Field(default_factory=dict)
    rejects: _RejectedTotal | None = None
    artifacts: list[_Listed] = Field(default_factory=list)


def describe(err: ValidationError) -> str:
    """A validation error as one line that names each offending key: ``files.0.sha256: Field required``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}" for e in err.errors())
