"""AugmentationRun: read a training set from MinIO, expand it, filter it, write it back.

The stages run in the order the spec lists them: ``preprocess`` cleans the source, ``augmenters``
run one after another (in list order) and each adds rows, ``filters`` decide which generated rows
are kept, ``output`` says where the result and its manifest go.

Kept in one module although it is long: it is the kind's schema (the augmenter types have their
own module, :mod:`.augmenters`), read top to bottom in the order the CRD lists its fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field

from ._base import ApiModel, Rule
from ._unions import FlatUnion
from .augmenters import GPU_ENGINES, JUDGE_TYPES, NEEDS_ATTRIBUTES, NEEDS_DENSE_FEATURES, NEEDS_IMAGE, Augmenter
from .common import CommonRunSpec
from .fields import (
    ColumnName,
    ColumnNames,
    DenseFeatureNames,
    ModelRef,
    S3Prefix,
    S3Uri,
    s3_locations_overlap,
    s3_overlap_cel,
    unique_names,
)
from .status import AugmentationRunStatus

DataFormat = Literal["jsonl", "csv", "parquet"]


def _immutable(field: str) -> Rule:
    return Rule(cel="self == oldSelf", message=f"{field} is immutable once created; create a new run")


class Columns(ApiModel):
    """Which dataset columns play which role."""

    query: ColumnName = Field(default="query", description="Column with the search query (or user context) text.")
    item: ColumnName = Field(default="item", description="Column with the item text, e.g. the product title.")
    label: ColumnName = Field(default="label", description="Column with the relevance grade or click label.")
    attributes: ColumnNames = Field(
        default_factory=list, description="Columns with structured item attributes, e.g. brand, color, size."
    )
    dense_features: DenseFeatureNames = Field(
        default_factory=list, description="Numeric feature columns (user and item features)."
    )
    image: ColumnName | None = Field(default=None, description="Column with the item image (s3:// URI or bytes).")
    id: ColumnName | None = Field(default=None, description="Column with a stable row id, carried into the output.")


class Source(ApiModel):
    """The training set to augment."""

    kube_rules = (
        Rule(
            cel="has(self.format) || self.uri.endsWith('/') || self.uri.matches('[.](jsonl|csv|parquet)$')",
            message="format is required when uri does not end in .jsonl, .csv, .parquet or '/'; set format",
            check=lambda s: s.format is not None or s.uri.endswith(("/", ".jsonl", ".csv", ".parquet")),
            field_path=".format",
            reason="FieldValueRequired",
        ),
    )

    uri: S3Uri = Field(description="s3:// URI of one file, or of a prefix ending in '/' to read every file under it.")
    format: DataFormat | None = Field(
        default=None, description="File format; inferred from the file extension when unset."
    )
    columns: Columns = Field(default_factory=Columns, description="Which columns play which role.")


class ZScoreClip(ApiModel):
    """zscore: clip values further than z standard deviations from the mean."""

    method: Literal["zscore"] = Field(description="Outlier rule.")
    z: float = Field(default=4.0, gt=0.0, le=100.0, description="Clip beyond this many standard deviations.")


class QuantileClip(ApiModel):
    """quantile: clip values outside the [lower, upper] quantiles."""

    method: Literal["quantile"] = Field(description="Outlier rule.")
    lower: float = Field(default=0.001, ge=0.0, lt=0.5, description="Lower quantile, below 0.5.")
    upper: float = Field(default=0.999, gt=0.5, le=1.0, description="Upper quantile, above 0.5.")


CLIP_UNION = FlatUnion([ZScoreClip, QuantileClip], tag_field="method")
ClipOutliers = Annotated[
    Union[ZScoreClip, QuantileClip],  # noqa: UP007
    Field(discriminator="method"),
    BeforeValidator(CLIP_UNION.check),
]


class Preprocess(ApiModel):
    """Cleaning applied to the source rows before any augmenter sees them."""

    drop_empty: bool = Field(default=True, description="Set aside rows whose query or item text is empty.")
    normalize_unicode: bool = Field(
        default=True, description="Apply Unicode NFKC normalisation (full-width forms, etc.)."
    )
    normalize_whitespace: bool = Field(default=True, description="Collapse runs of whitespace and trim the ends.")
    clip_outliers: ClipOutliers | None = Field(
        default=None, description="Clip outliers in dense features; off when unset."
    )
    dense_normalization: Literal["none", "standard", "minmax"] = Field(
        default="none", description="Scale dense features: none, standard (zero mean, unit variance) or minmax (0..1)."
    )


class NoDedup(ApiModel):
    """none: keep duplicates."""

    method: Literal["none"] = Field(description="Deduplication method.")


class ExactDedup(ApiModel):
    """exact: drop rows whose normalised (query, item) text repeats."""

    method: Literal["exact"] = Field(description="Deduplication method.")


class MinHashDedup(ApiModel):
    """minhash: drop near-duplicates by MinHash Jaccard similarity."""

    method: Literal["minhash"] = Field(description="Deduplication method.")
    threshold: float = Field(
        default=0.85, gt=0.0, le=1.0, description="Jaccard similarity above which rows are duplicates."
    )
    num_permutations: int = Field(
        default=128, ge=16, le=1024, description="MinHash permutations; more is exacter and slower."
    )


DEDUP_UNION = FlatUnion([NoDedup, ExactDedup, MinHashDedup], tag_field="method")
Dedup = Annotated[
    Union[NoDedup, ExactDedup, MinHashDedup],  # noqa: UP007
    Field(discriminator="method"),
    BeforeValidator(DEDUP_UNION.check),
]


class SimilarityFilter(ApiModel):
    """Keep generated rows whose similarity to their source row lies in [min, max]."""

    kube_rules = (
        Rule(
            cel="self.min <= self.max",
            message="similarity.min must not exceed similarity.max; lower min or raise max",
            check=lambda s: s.min <= s.max,
            field_path=".min",
        ),
    )

    min: float = Field(default=0.0, ge=0.0, le=1.0, description="Drop rows less similar than this (meaning drifted).")
    max: float = Field(default=1.0, ge=0.0, le=1.0, description="Drop rows more similar than this (near copies).")
    model: ModelRef | None = Field(
        default=None, description="Embedding model for cosine similarity; character n-gram similarity when unset."
    )


class LengthFilter(ApiModel):
    """Keep generated rows whose text length, in characters, lies in [min, max]."""

    kube_rules = (
        Rule(
            cel="!has(self.max) || self.min <= self.max",
            message="length.min must not exceed length.max; lower min or raise max",
            check=lambda s: s.max is None or s.min <= s.max,
            field_path=".min",
        ),
    )

    min: int = Field(default=1, ge=0, le=100_000, description="Shortest text kept, in characters.")
    max: int | None = Field(
        default=None, ge=1, le=100_000, description="Longest text kept, in characters; no limit when unset."
    )


Script = Literal[
    "latin", "han", "hiragana", "katakana", "hangul", "cyrillic", "arabic", "digit", "punctuation", "symbol"
]


class CharsetFilter(ApiModel):
    """Drop generated rows with characters outside the allowed scripts (whitespace is always allowed)."""

    scripts: Annotated[list[Script], Field(min_length=1, max_length=10)] = Field(
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Allowed scripts and character classes.",
    )
    max_other_fraction: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of other characters tolerated before a row is dropped."
    )


class LabelConsistencyFilter(ApiModel):
    """Drop generated rows whose label a classifier disagrees with."""

    model: ModelRef | None = Field(
        default=None,
        description="Sequence classifier to ask (hub id or s3:// model directory) whose classes are the "
        "source labels; without one the check is skipped and the manifest says so.",
    )
    min_agreement: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Probability the classifier must give the row's label."
    )


class Filters(ApiModel):
    """Which rows are kept. The quality filters judge generated rows only; the leakage guard (evalSplit)
    judges source rows and generated rows alike."""

    pii_redaction: bool = Field(
        default=True, description="Mask e-mail addresses, phone and ID numbers in generated text."
    )
    dedup: Dedup | None = Field(default=None, description="Duplicate removal; exact when unset.")
    similarity: SimilarityFilter | None = Field(
        default=None, description="Similarity window to the source row; off when unset."
    )
    length: LengthFilter | None = Field(default=None, description="Text length window; off when unset.")
    charset: CharsetFilter | None = Field(default=None, description="Allowed scripts; off when unset.")
    label_consistency: LabelConsistencyFilter | None = Field(
        default=None, description="Classifier agreement check on labels; off when unset."
    )
    eval_split: S3Uri | None = Field(
        default=None,
        description="s3:// URI of the evaluation set, read with source.columns (query and item) and cleaned "
        "as the source is. Guaranteed: no output row, source or generated, has a query (or item, per "
        "evalSplitMatch) that equals one the set holds out after Unicode (NFKC), case and whitespace "
        "normalisation, or near-duplicates one (Jaccard similarity of character 3-grams at or above "
        "filters.dedup.threshold with minhash, else 0.85, estimated with MinHash: pairs close to the "
        "threshold may fall either side); and no row generated from a source row so dropped is kept, "
        "whatever its own text became. Drops are counted per reason in the manifest "
        "(evalSplit.sourceRowsDropped for source rows, filters.evalSplit for generated ones). Not "
        "guaranteed: a paraphrase that shares few characters with an evaluation query, generated from a "
        "source row that does not leak, is kept; the check is lexical.",
    )
    eval_split_match: Literal["query", "item", "queryOrItem"] = Field(
        default="query",
        description="What the evaluation set holds out, and so which column of every row is compared: query "
        "(a split by query over a shared catalog: a row leaks when its query matches an evaluation query; "
        "its item may be an evaluated product), item (a split by item, e.g. cold-start items), or "
        "queryOrItem (both). Each column is compared with the same column of the evaluation set. Product "
        "matching, where the query column is itself a product (the left title of a pair): query drops "
        "every row whose left product is an evaluated left product, source rows and their generated "
        "variants alike; use queryOrItem to keep the right products of evaluation pairs out as well. A "
        "product that is on the left in evaluation and on the right in training is not compared across "
        "columns.",
    )


class AugmentationOutput(ApiModel):
    """Where the augmented set is written."""

    uri: S3Prefix = Field(description="s3:// prefix (ending in '/') the data files and manifest.json go under.")
    format: Literal["parquet", "jsonl"] = Field(default="parquet", description="File format of the output.")


#: Entries (names, labels) the augmenters' lists may hold together. Each list is bounded on its own,
#: but 32 augmenters each at their lists' limits would make a spec of megabytes; this keeps the
#: whole spec's worst case well under what reaches the pods (a ConfigMap holds at most 1 MiB).
MAX_AUGMENTER_LIST_ENTRIES = 128
#: Augmenters one run may list: every type once with room to spare (a real recipe has a handful).
MAX_AUGMENTERS = 20


def _list_entries(spec: AugmentationRunSpec) -> int:
    return sum(len(getattr(a, name, None) or ()) for a in spec.augmenters
               for name in ("features", "attributes", "target_distribution"))


def _names(spec: AugmentationRunSpec) -> list[str]:
    return [a.display_name() for a in spec.augmenters]


def _uses(spec: AugmentationRunSpec, types: tuple[str, ...]) -> bool:
    return any(a.type in types for a in spec.augmenters)


def _gpu_engines(spec: AugmentationRunSpec) -> list[str]:
    """Names of the augmenters whose engine needs a GPU in the pod."""
    return [a.display_name() for a in spec.augmenters if getattr(a, "engine", None) in GPU_ENGINES]


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _attributes_rule() -> Rule:
    return Rule(
        cel=f"!self.augmenters.exists(a, a.type in {_cel_list(NEEDS_ATTRIBUTES)}) || "
        "(has(self.source.columns) && has(self.source.columns.attributes) && size(self.source.columns.attributes) > 0)",
        message="augmenters of type attributeDrop, attributeReorder or attributeSwap need "
        "source.columns.attributes; list the attribute columns there",
        check=lambda s: not _uses(s, NEEDS_ATTRIBUTES) or bool(s.source.columns.attributes),
        field_path=".source",
        reason="FieldValueRequired",
    )


def _judged_names_known(spec: AugmentationRunSpec) -> bool:
    graded = {a.display_name() for a in spec.augmenters if a.type not in JUDGE_TYPES}
    return all(set(getattr(a, "judged", ())) <= graded for a in spec.augmenters)


def _judge_rules() -> tuple[Rule, ...]:
    judges = _cel_list(JUDGE_TYPES)
    return (
        Rule(
            cel="self.augmenters.all(a, !has(a.judged) || a.judged.all(n, self.augmenters.exists(b, "
            f"!(b.type in {judges}) && (has(b.name) ? b.name : b.type) == n)))",
            message="augmenters[].judged may only name augmenters of this run that are not llmJudge; fix the "
            "names or leave judged empty to grade every other augmenter's rows",
            check=_judged_names_known,
            field_path=".augmenters",
        ),
        Rule(
            cel=f"!self.augmenters.exists(a, a.type in {judges}) || "
            f"self.augmenters.exists(a, !(a.type in {judges}))",
            message="an llmJudge grades the rows other augmenters generate, and this run has none; add an "
            "augmenter that generates rows",
            check=lambda s: not _uses(s, JUDGE_TYPES) or any(a.type not in JUDGE_TYPES for a in s.augmenters),
            field_path=".augmenters",
        ),
    )


class AugmentationRunSpec(CommonRunSpec):
    """What an AugmentationRun reads, how it expands the data, and where it writes."""

    kube_rules = CommonRunSpec.kube_rules + (
        Rule(
            cel="self.augmenters.all(a, self.augmenters.exists_one(b, "
            "(has(b.name) ? b.name : b.type) == (has(a.name) ? a.name : a.type)))",
            message="augmenters must have distinct names; give augmenters of the same type a distinct name",
            check=lambda s: unique_names(_names(s)) is None,
            # No reason FieldValueDuplicate here: the API server would then drop the message.
            field_path=".augmenters",
        ),
        _attributes_rule(),
        *_judge_rules(),
        Rule(
            cel="self.augmenters.all(a, !has(a.attributes) || a.attributes.all(x, has(self.source.columns) && "
            "has(self.source.columns.attributes) && x in self.source.columns.attributes))",
            message="augmenters[].attributes may only name columns listed in source.columns.attributes; "
            "add them there or fix the names",
            check=lambda s: all(
                set(getattr(a, "attributes", [])) <= set(s.source.columns.attributes) for a in s.augmenters
            ),
            field_path=".augmenters",
        ),
        Rule(
            cel=f"!self.augmenters.exists(a, a.type in {_cel_list(NEEDS_DENSE_FEATURES)}) || "
            "(has(self.source.columns) && has(self.source.columns.denseFeatures) && "
            "size(self.source.columns.denseFeatures) > 0)",
            message="augmenters of type gan or mixup need source.columns.denseFeatures; list the numeric "
            "feature columns there",
            check=lambda s: not _uses(s, NEEDS_DENSE_FEATURES) or bool(s.source.columns.dense_features),
            field_path=".source",
            reason="FieldValueRequired",
        ),
        Rule(
            cel=f"!self.augmenters.exists(a, a.type in {_cel_list(NEEDS_IMAGE)}) || "
            "(has(self.source.columns) && has(self.source.columns.image))",
            message="augmenters of type image need source.columns.image; name the image column there",
            check=lambda s: not _uses(s, NEEDS_IMAGE) or s.source.columns.image is not None,
            field_path=".source",
            reason="FieldValueRequired",
        ),
        Rule(
            cel=f"!{s3_overlap_cel('self.source.uri', 'self.output.uri')}",
            message="output.uri and source.uri overlap (one lies under the other, or they are the same): a "
            "rerun would read its own output as input; choose an output.uri outside the source's prefix",
            check=lambda s: not s3_locations_overlap(s.source.uri, s.output.uri),
            field_path=".output.uri",
        ),
        Rule(
            cel="self.augmenters.map(a, (has(a.features) ? size(a.features) : 0) + "
            "(has(a.attributes) ? size(a.attributes) : 0) + "
            f"(has(a.targetDistribution) ? size(a.targetDistribution) : 0)).sum() <= {MAX_AUGMENTER_LIST_ENTRIES}",
            message=f"augmenters name too many columns and labels in total: their features, attributes and "
            f"targetDistribution entries may add up to at most {MAX_AUGMENTER_LIST_ENTRIES}; leave features empty to "
            "use all of source.columns.denseFeatures",
            check=lambda s: _list_entries(s) <= MAX_AUGMENTER_LIST_ENTRIES,
            field_path=".augmenters",
        ),
        Rule(
            cel="!has(self.filters) || !has(self.filters.evalSplit) || "
            f"!{s3_overlap_cel('self.filters.evalSplit', 'self.output.uri')}",
            message="output.uri and filters.evalSplit overlap (one lies under the other, or they are the same): "
            "the output would be mixed with the evaluation set; choose an output.uri outside it",
            check=lambda s: s.filters.eval_split is None or not s3_locations_overlap(s.filters.eval_split,
                                                                                    s.output.uri),
            field_path=".output.uri",
        ),
        Rule(
            cel=f"!self.augmenters.exists(a, has(a.engine) && a.engine in {_cel_list(GPU_ENGINES)}) || "
            "(has(self.resources) && has(self.resources.gpus) && self.resources.gpus >= 1)",
            message="augmenters with engine vllm run vLLM on the pod's GPU: set resources.gpus to at least 1 "
            "(and run the job image built with vLLM), or use engine transformers or openai",
            check=lambda s: not _gpu_engines(s) or (s.resources.gpus or 0) >= 1,
            field_path=".resources.gpus",
            reason="FieldValueRequired",
        ),
    )

    source: Annotated[Source, _immutable("source")] = Field(description="The training set to augment.")
    preprocess: Preprocess = Field(default_factory=Preprocess, description="Cleaning applied to the source rows first.")
    augmenters: Annotated[list[Augmenter], _immutable("augmenters")] = Field(
        min_length=1, max_length=MAX_AUGMENTERS, description="Augmenters to run, in this order; each adds rows."
    )
    filters: Filters = Field(default_factory=Filters, description="Which generated rows are kept.")
    output: Annotated[AugmentationOutput, _immutable("output")] = Field(
        description="Where the augmented set and its manifest are written."
    )
    parallelism: int = Field(
        default=1, ge=1, le=1000,
        description="Shards processed in parallel, one pod each. With more than one the run is three Jobs in "
                    "turn (status.stage): one pod analyses the whole source once, the shards each read that and "
                    "their own rows, and one pod removes the rows that different shards generated alike and "
                    "commits the manifest.")
    seed: int = Field(
        default=42, ge=0, le=2**31 - 1, description="Random seed; the same spec and seed give the same output."
    )


class AugmentationRun(ApiModel):
    """A whole AugmentationRun object as the API server returns it."""

    api_version: Literal["sampleforge.io/v1alpha1"] = Field(
        default="sampleforge.io/v1alpha1", description="API version."
    )
    kind: Literal["AugmentationRun"] = Field(default="AugmentationRun", description="Kind.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: AugmentationRunSpec = Field(description="What the run does.")
    status: AugmentationRunStatus | None = Field(default=None, description="What the run has done so far.")
