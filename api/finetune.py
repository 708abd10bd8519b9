"""FineTuneRun: fine-tune a transformers model on a dataset in MinIO and publish it back.

The data comes either straight from a URI or from an AugmentationRun in the same namespace (the
operator waits until that run has succeeded and then reads its committed output). ``method`` picks
full fine-tuning or a parameter-efficient method; ``distribution`` says how many GPUs and nodes.

Kept in one module although it is long: it is the kind's whole schema, and the field descriptions
here are what ``kubectl explain`` and docs/reference.md show, so a reviewer reads one kind's
contract top to bottom, in the order the CRD lists it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Union

from pydantic import BeforeValidator, Field

from ._base import ApiModel, Rule
from ._unions import FlatUnion
from .augmentation import Columns, DataFormat
from .common import CommonRunSpec
from .fields import (
    LOWER_IS_BETTER,
    Metric,
    Metrics,
    ModelRef,
    ObjectName,
    S3Prefix,
    S3Uri,
    s3_locations_overlap,
    s3_overlap_cel,
)
from .status import FineTuneRunStatus


def _immutable(field: str) -> Rule:
    return Rule(cel="self == oldSelf", message=f"{field} is immutable once created; create a new run")


class Task(StrEnum):
    """What the model learns."""

    #: Cross-encoder classifying (query, item) pairs into the label's classes.
    RELEVANCE = "relevance"
    #: Cross-encoder predicting a graded relevance score (regression on the label).
    RELEVANCE_REGRESSION = "relevanceRegression"
    #: Click-through-rate prediction: click probability of (query, item, dense features).
    CTR = "ctr"
    #: Two-tower (bi-encoder) retrieval: query and item embeddings trained with in-batch negatives.
    TWO_TOWER = "twoTower"


#: Metrics evaluated when ``evaluation.metrics`` is empty.
DEFAULT_METRICS: Final[dict[Task, tuple[str, ...]]] = {
    Task.RELEVANCE: ("ndcg@10", "accuracy", "macroF1"),
    Task.RELEVANCE_REGRESSION: ("ndcg@10", "rmse", "spearman"),
    Task.CTR: ("auc", "logLoss"),
    Task.TWO_TOWER: ("recall@100", "mrr", "ndcg@10"),
}
#: Share of training rows held out for evaluation when neither data.eval nor data.evalFraction is set.
DEFAULT_EVAL_FRACTION: Final = 0.05


class FineTuneData(ApiModel):
    """Training and evaluation data."""

    kube_rules = (
        Rule(
            cel="!(has(self.uri) && has(self.fromAugmentationRun))",
            message="data.uri and data.fromAugmentationRun are mutually exclusive; set only one",
            check=lambda d: not (d.uri is not None and d.from_augmentation_run is not None),
            field_path=".fromAugmentationRun",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="has(self.uri) || has(self.fromAugmentationRun)",
            message="set data.uri (an s3:// dataset) or data.fromAugmentationRun (an AugmentationRun in this namespace)",
            check=lambda d: d.uri is not None or d.from_augmentation_run is not None,
            field_path=".uri",
            reason="FieldValueRequired",
        ),
        Rule(
            cel="has(self.uri) || (!has(self.format) && !has(self.columns))",
            message="data.format and data.columns apply only with data.uri; with fromAugmentationRun they come "
            "from that run's manifest, so remove them",
            check=lambda d: d.uri is not None or (d.format is None and d.columns is None),
            field_path=".columns",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="!(has(self.eval) && has(self.evalFraction))",
            message="data.eval and data.evalFraction are mutually exclusive; set only one",
            check=lambda d: not (d.eval is not None and d.eval_fraction is not None),
            field_path=".evalFraction",
            reason="FieldValueForbidden",
        ),
    )

    uri: S3Uri | None = Field(default=None, description="s3:// URI of the training file, or of a prefix ending in '/'.")
    from_augmentation_run: ObjectName | None = Field(
        default=None,
        description="Name of an AugmentationRun in this namespace to train on; the run waits until it has succeeded.",
    )
    format: DataFormat | None = Field(
        default=None, description="File format of data.uri; inferred from the extension when unset."
    )
    columns: Columns | None = Field(
        default=None, description="Column roles in data.uri; query, item and label when unset."
    )
    eval: S3Uri | None = Field(default=None, description="s3:// URI of the evaluation set.")
    eval_fraction: float | None = Field(
        default=None,
        gt=0.0,
        lt=0.5,
        description="Share of the training data's source rows held out for evaluation when data.eval is unset; "
        "0.05 when both are unset. Whole query groups are held out: queries equal after Unicode (NFKC), case "
        "and whitespace normalisation, with every generated row following its source row (sf_source_row), "
        "so a typo or paraphrase of an evaluated query is never trained on.",
    )


# --- method: a tagged union, flat in the CRD (see _unions) ---------------------------------------

Rank = Annotated[int, Field(ge=1, le=1024, description="LoRA rank (target rank for adalora).")]
Alpha = Annotated[
    float, Field(gt=0.0, le=4096.0, description="LoRA scaling alpha; the update is scaled by alpha/rank.")
]
Dropout = Annotated[float, Field(ge=0.0, lt=1.0, description="Dropout on the LoRA path.")]
TargetModules = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=128)]],
    Field(
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Module names to adapt, e.g. query, value; the model type's usual choice when empty.",
    ),
]


class FullMethod(ApiModel):
    """full: update every weight."""

    type: Literal["full"] = Field(description="Fine-tuning method.")


class LoraMethod(ApiModel):
    """lora: train low-rank adapters next to frozen weights."""

    type: Literal["lora"] = Field(description="Fine-tuning method.")
    rank: Rank = 8
    alpha: Alpha = 16.0
    dropout: Dropout = 0.05
    target_modules: TargetModules = Field(default=[])


class AdaLoraMethod(ApiModel):
    """adalora: LoRA that reallocates rank across layers during training."""

    kube_rules = (
        Rule(
            # The CRD carries no defaults for variant fields (see _unions), so spell them out here.
            cel="(has(self.rank) ? self.rank : 8) <= (has(self.initialRank) ? self.initialRank : 12)",
            message="rank (the target rank) must not exceed initialRank; lower rank or raise initialRank",
            check=lambda m: m.rank <= m.initial_rank,
            field_path=".rank",
        ),
    )

    type: Literal["adalora"] = Field(description="Fine-tuning method.")
    initial_rank: int = Field(default=12, ge=1, le=1024, description="adalora: rank every layer starts with.")
    rank: Rank = 8
    alpha: Alpha = 16.0
    dropout: Dropout = 0.05
    target_modules: TargetModules = Field(default=[])


class PrefixTuningMethod(ApiModel):
    """prefixTuning: learn virtual prefix tokens, the model stays frozen."""

    type: Literal["prefixTuning"] = Field(description="Fine-tuning method.")
    num_virtual_tokens: int = Field(default=20, ge=1, le=512, description="Virtual tokens prepended at every layer.")
    projection: bool = Field(default=False, description="Reparameterise the prefix through an MLP (prefix_projection).")


METHOD_UNION = FlatUnion([FullMethod, LoraMethod, AdaLoraMethod, PrefixTuningMethod])
Method = Annotated[
    Union[FullMethod, LoraMethod, AdaLoraMethod, PrefixTuningMethod],  # noqa: UP007
    Field(discriminator="type"),
    BeforeValidator(METHOD_UNION.check),
]
ADAPTER_METHODS: Final = ("lora", "adalora")


LabelName = Annotated[str, Field(min_length=1, max_length=128)]
ClassWeight = Annotated[float, Field(gt=0.0, le=1000.0)]
#: Tasks whose labels are classes, so that class weights and decision calibration apply.
CLASS_TASKS: Final = ("relevance", "ctr")


class ClassWeights(ApiModel):
    """How much each label's rows weigh in the training loss (tasks relevance and ctr)."""

    kube_rules = (
        Rule(
            cel="self.type == 'explicit' ? (has(self.weights) && size(self.weights) > 0) : !has(self.weights)",
            message="training.classWeights.weights is required with type explicit (a weight per label, e.g. "
            "{\"0\": 1.0, \"1\": 4.0}) and forbidden with type balanced; set one or change type",
            check=lambda c: bool(c.weights) if c.type == "explicit" else c.weights is None,
            field_path=".weights",
        ),
    )

    type: Literal["balanced", "explicit"] = Field(
        description="balanced: each label weighs (training rows) / (labels x its rows), scikit-learn's "
        "'balanced', so every label contributes as much to the loss as any other; explicit: the weights map."
    )
    weights: dict[LabelName, ClassWeight] | None = Field(
        default=None,
        max_length=256,
        description="type explicit: weight per label, keyed by the label as written in the label column "
        "(\"0\", \"2\", \"Exact\"; for ctr \"0\" and \"1\"); labels not listed weigh 1. Each row's loss is "
        "multiplied by its label's weight and averaged over the rows, so weights that average 1 over the "
        "training rows keep the learning rate's meaning.",
    )


class Training(ApiModel):
    """Optimisation settings."""

    kube_rules = (
        Rule(
            cel="!(has(self.warmupRatio) && has(self.warmupSteps))",
            message="training.warmupRatio and training.warmupSteps are mutually exclusive; set only one",
            check=lambda t: not (t.warmup_ratio is not None and t.warmup_steps is not None),
            field_path=".warmupSteps",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="!has(self.classWeights) || !has(self.loss) || self.loss == 'pointwise'",
            message="training.classWeights weigh rows of the pointwise loss; remove them or set training.loss "
            "pointwise",
            check=lambda t: t.class_weights is None or t.loss == "pointwise",
            field_path=".classWeights",
            reason="FieldValueForbidden",
        ),
    )

    epochs: int = Field(default=3, ge=1, le=1000, description="Passes over the training data.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps, even mid-epoch."
    )
    batch_size: int = Field(default=32, ge=1, le=4096, description="Rows per batch per GPU.")
    learning_rate: float = Field(
        default=5.0e-5,
        strict=True,  # like the API server: a quoted "3e-5" (or PyYAML's reading of 3e-5) is not a number
        gt=0.0,
        le=1.0,
        description="Peak learning rate. A number: write 3.0e-5 or 0.00003 (some YAML parsers read 3e-5 as a string).",
    )
    weight_decay: float = Field(default=0.01, ge=0.0, le=1.0, description="AdamW weight decay.")
    warmup_ratio: float | None = Field(default=None, ge=0.0, le=0.5, description="Share of steps spent warming up.")
    warmup_steps: int | None = Field(default=None, ge=0, description="Steps spent warming up.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        default="linear", description="Learning-rate schedule after warmup."
    )
    gradient_clipping: float = Field(
        default=1.0, ge=0.0, le=1000.0, description="Max gradient norm; 0 turns clipping off."
    )
    seed: int = Field(
        default=42, ge=0, le=2**31 - 1, description="Random seed for initialisation, shuffling and dropout."
    )
    max_length: int = Field(
        default=128, ge=8, le=8192, description="Tokens per (query, item) input; longer inputs are cut."
    )
    loss: Literal["pointwise", "pairwise", "listwise"] = Field(
        default="pointwise",
        description="pointwise: each row on its own (cross-entropy, mean squared error or click log-loss); "
        "pairwise: RankNet's logistic loss on the score difference of every pair of rows of one query with "
        "different labels; listwise: ListNet's cross-entropy between the softmax of a query's labels and of its "
        "scores. The grouped losses train the ranking score (the expected grade for relevance) and keep each "
        "query's rows in one batch (a query with more rows than batchSize is cut into batches); they need "
        "ordered labels and do not apply to twoTower.",
    )
    class_weights: ClassWeights | None = Field(
        default=None,
        description="Weigh each label's rows in the loss (relevance and ctr): balanced, or a weight per label; "
        "every row weighs 1 when unset. The evaluation loss stays unweighted, so runs remain comparable.",
    )


class Distribution(ApiModel):
    """How many processes train, and with which numerics."""

    kube_rules = (
        Rule(
            cel="self.nodes <= 1 || !has(self.gpusPerNode) || self.gpusPerNode >= 1",
            message="distribution.gpusPerNode must be at least 1 when distribution.nodes > 1",
            check=lambda d: d.nodes <= 1 or d.gpus_per_node is None or d.gpus_per_node >= 1,
            field_path=".gpusPerNode",
        ),
    )

    nodes: int = Field(default=1, ge=1, le=64, description="Pods (nodes) that train together.")
    gpus_per_node: int | None = Field(
        default=None, ge=0, le=16, description="GPUs (processes) per pod; resources.gpus, else 1, when unset."
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        default="no", description="Mixed precision: no, fp16 or bf16."
    )
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=1024, description="Batches accumulated per optimizer step."
    )
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations to save GPU memory.")


class Checkpoint(ApiModel):
    """When training state is saved, so a restarted pod resumes instead of starting over."""

    every_steps: int = Field(
        default=500, ge=1, le=10_000_000, description="Save a checkpoint every this many optimizer steps."
    )
    keep: int = Field(default=3, ge=1, le=100, description="Committed checkpoints kept; older ones are deleted.")


class EarlyStopping(ApiModel):
    """Stop when the metric stops improving."""

    metric: Metric = Field(description="Metric to watch; must be listed in evaluation.metrics.")
    patience: int = Field(default=3, ge=1, le=1000, description="Evaluations without improvement before stopping.")
    mode: Literal["max", "min"] | None = Field(
        default=None, description="max or min; min for loss, logLoss, mse, rmse and mae, max otherwise, when unset."
    )
    min_delta: float = Field(default=0.0, ge=0.0, description="Smallest change that counts as an improvement.")
    restore_best: bool = Field(
        default=True,
        description="Publish the weights of the evaluation with the best metric, not the last step's: a "
        "checkpoint is committed at each improvement and kept through retention, and the published "
        "metrics are those of the restored weights.",
    )

    def effective_mode(self) -> str:
        """The mode, default applied."""
        return self.mode or ("min" if self.metric in LOWER_IS_BETTER else "max")


class Calibration(ApiModel):
    """How scores become decisions, tuned on the evaluation split after training."""

    method: Literal["auto", "threshold", "prior"] = Field(
        default="auto",
        description="threshold: the probability above which a row is predicted positive (ctr, or relevance with "
        "two labels), instead of 0.5; prior: an offset per class added to the log-probabilities before the "
        "argmax (relevance), which corrects a training label prior that differs from the data's; auto: "
        "threshold for two labels, prior for more.",
    )
    objective: Literal["macroF1", "f1", "accuracy"] = Field(
        default="macroF1",
        description="What the threshold or offsets maximise on the evaluation split: macroF1, f1 (of the "
        "positive class with two labels, macro-averaged otherwise) or accuracy.",
    )
    estimate: Literal["inSample", "crossFit"] = Field(
        default="inSample",
        description="How metrics.json measures the calibrated decision: inSample, on the evaluation rows it was "
        "tuned on (optimistic); crossFit, on each half of the evaluation queries with a decision tuned on the "
        "other half, so no row is measured by a decision tuned on it. Either way the published decision is "
        "the one tuned on every evaluation row.",
    )


class Evaluation(ApiModel):
    """What is measured on the evaluation set, and when."""

    kube_rules = (
        Rule(
            cel="!has(self.earlyStopping) || (has(self.metrics) && self.earlyStopping.metric in self.metrics)",
            message="evaluation.earlyStopping.metric must be one of evaluation.metrics; add it to evaluation.metrics",
            check=lambda e: e.early_stopping is None or e.early_stopping.metric in e.metrics,
            field_path=".earlyStopping.metric",
        ),
    )

    metrics: Metrics = Field(
        default_factory=list,
        description="Metrics such as ndcg@10, mrr, auc; the task's usual metrics when empty.",
    )
    every_steps: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Evaluate every this many steps; at the end of each epoch when unset.",
    )
    early_stopping: EarlyStopping | None = Field(default=None, description="Stop early when a metric stops improving.")
    include_synthetic: bool = Field(
        default=False,
        description="Also evaluate on rows an augmenter generated (sf_origin: generated). When false, evaluation "
        "holds source rows only: with data.evalFraction the generated variants of the held-out queries are "
        "left out of training and evaluation alike, and with data.eval its generated rows are skipped. Either "
        "way the split groups every generated row with its source row's query (sf_source_row), so no variant "
        "of an evaluated query is trained on.",
    )
    calibration: Calibration | None = Field(
        default=None,
        description="Tune the decision (a threshold, or per-class prior offsets) on the evaluation split, the one "
        "early stopping watches (data.eval, or the rows data.evalFraction holds out), after training; "
        "recorded in metrics.json and the model card, applied to predictions.parquet and by the published "
        "model's predict(). calibration.estimate says whether its metrics are measured in-sample or cross-fitted; "
        "either way keep a test set the job never sees for a claim. Tasks relevance and ctr; argmax (0.5 for "
        "ctr) when unset.",
    )


class FineTuneOutput(ApiModel):
    """Where the trained model is published."""

    uri: S3Prefix = Field(description="s3:// prefix (ending in '/') the model, checkpoints and manifest go under.")
    merge_adapter: bool = Field(
        default=False, description="lora/adalora: also publish a copy with the adapter merged into the base weights."
    )
    onnx: bool = Field(
        default=False,
        description="Also export the model to ONNX (model/onnx/model.onnx: a cross-encoder's logits; a two-tower "
        "encoder's last_hidden_state and sentence_embedding, one file per tower), checked before publishing by "
        "running it with onnxruntime on evaluation texts against PyTorch (the largest difference is recorded in "
        "sampleforge_model.json). lora/adalora adapters are merged for the export; not with prefixTuning.",
    )


class TwoTowerOptions(ApiModel):
    """Two-tower retrieval settings (task twoTower)."""

    temperature: float = Field(
        default=0.05,
        ge=0.005,
        le=1.0,
        description="Temperature of the in-batch-negative (InfoNCE) loss over cosine similarities: 0.05 "
        "scales them by 20, as sentence-transformers does; lower sharpens the softmax over negatives.",
    )
    hard_negatives: Literal["generated", "all", "none"] = Field(
        default="generated",
        description="Which judged-irrelevant rows (label grade <= 0) train as extra negatives beside the in-batch "
        "ones: generated (rows an augmenter made with a non-positive label: hardNegative's mined items, "
        "attributeSwap's demoted ones; sf_origin generated), all (the source's own non-positive rows too) or "
        "none (in-batch negatives only). Each positive pair of a query with such rows is trained beside one of "
        "them, in turn, so that every one is used each epoch (a query with more negatives than positives "
        "repeats its positives); in the loss every query is also scored against the other rows' negatives.",
    )
    shared_encoder: bool = Field(
        default=True,
        description="One encoder for queries and items (true), or two started from the same base model "
        "(false) for asymmetric text such as short queries against long product descriptions; two "
        "doubles the encoder's parameters and memory.",
    )


class FineTuneRunSpec(CommonRunSpec):
    """What a FineTuneRun trains, on which data, how, and where the model goes."""

    kube_rules = CommonRunSpec.kube_rules + (
        Rule(
            cel="!has(self.output.mergeAdapter) || !self.output.mergeAdapter || "
            f"(has(self.method) && self.method.type in {list(ADAPTER_METHODS)!r})",
            message="output.mergeAdapter applies only when method.type is lora or adalora; remove it or change method",
            check=lambda s: not s.output.merge_adapter or s.method.type in ADAPTER_METHODS,
            field_path=".output.mergeAdapter",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="!has(self.output.onnx) || !self.output.onnx || !has(self.method) || "
            "self.method.type != 'prefixTuning'",
            message="output.onnx needs method.type full, lora or adalora: a prefix-tuning adapter cannot be merged "
            "into the weights an ONNX graph holds; remove output.onnx or change method",
            check=lambda s: not s.output.onnx or s.method.type != "prefixTuning",
            field_path=".output.onnx",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="!has(self.distribution) || !has(self.distribution.gpusPerNode) || !has(self.resources) || "
            "!has(self.resources.gpus) || self.distribution.gpusPerNode == self.resources.gpus",
            message="distribution.gpusPerNode and resources.gpus disagree; set only distribution.gpusPerNode",
            check=lambda s: (
                s.distribution.gpus_per_node is None
                or s.resources.gpus is None
                or s.distribution.gpus_per_node == s.resources.gpus
            ),
            field_path=".resources.gpus",
        ),
        Rule(
            cel=f"!has(self.data.uri) || !{s3_overlap_cel('self.data.uri', 'self.output.uri')}",
            message="output.uri and data.uri overlap (one lies under the other, or they are the same): the "
            "model and checkpoints would be mixed with the training data; choose an output.uri outside it",
            check=lambda s: s.data.uri is None or not s3_locations_overlap(s.data.uri, s.output.uri),
            field_path=".output.uri",
        ),
        Rule(
            cel=f"!has(self.data.eval) || !{s3_overlap_cel('self.data.eval', 'self.output.uri')}",
            message="output.uri and data.eval overlap (one lies under the other, or they are the same): the "
            "model and checkpoints would be mixed with the evaluation data; choose an output.uri outside it",
            check=lambda s: s.data.eval is None or not s3_locations_overlap(s.data.eval, s.output.uri),
            field_path=".output.uri",
        ),
        Rule(
            cel="!has(self.training) || !has(self.training.classWeights) || "
            f"self.task in {list(CLASS_TASKS)!r}",
            message="training.classWeights applies only when task is relevance or ctr; remove it or change task",
            check=lambda s: s.training.class_weights is None or s.task in CLASS_TASKS,
            field_path=".training.classWeights",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="!has(self.training) || !has(self.training.loss) || self.training.loss == 'pointwise' || "
            "self.task != 'twoTower'",
            message="training.loss pairwise and listwise rank a query's rows with a cross-encoder; twoTower trains "
            "with in-batch negatives: remove training.loss or change task",
            check=lambda s: s.training.loss == "pointwise" or s.task != Task.TWO_TOWER,
            field_path=".training.loss",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="!has(self.evaluation) || !has(self.evaluation.calibration) || "
            f"self.task in {list(CLASS_TASKS)!r}",
            message="evaluation.calibration applies only when task is relevance or ctr; remove it or change task",
            check=lambda s: s.evaluation.calibration is None or s.task in CLASS_TASKS,
            field_path=".evaluation.calibration",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="!has(self.evaluation) || !has(self.evaluation.calibration) || "
            "!has(self.evaluation.calibration.method) || self.evaluation.calibration.method != 'prior' || "
            "self.task == 'relevance'",
            message="evaluation.calibration.method prior needs task relevance (class labels); use threshold or auto "
            "for ctr",
            check=lambda s: (s.evaluation.calibration is None or s.evaluation.calibration.method != "prior"
                             or s.task == Task.RELEVANCE),
            field_path=".evaluation.calibration.method",
        ),
        Rule(
            cel="!has(self.twoTower) || self.task == 'twoTower'",
            message="twoTower applies only when task is twoTower; remove it or change task",
            check=lambda s: s.two_tower is None or s.task == Task.TWO_TOWER,
            field_path=".twoTower",
            reason="FieldValueForbidden",
        ),
    )

    model: Annotated[ModelRef, _immutable("model")] = Field(
        description="Base model: a hub id (org/name) or the s3:// URI of a model directory (works offline)."
    )
    task: Annotated[Task, _immutable("task")] = Field(
        description="relevance (classify query-item pairs), relevanceRegression (predict a graded score), "
        "ctr (predict clicks) or twoTower (train query and item embeddings for retrieval)."
    )
    data: Annotated[FineTuneData, _immutable("data")] = Field(description="Training and evaluation data.")
    method: Method = Field(
        default_factory=lambda: FullMethod(type="full"), description="Fine-tuning method; full when unset."
    )
    training: Training = Field(default_factory=Training, description="Optimisation settings.")
    distribution: Distribution = Field(default_factory=Distribution, description="GPUs, nodes and numerics.")
    checkpoint: Checkpoint = Field(default_factory=Checkpoint, description="Checkpoint cadence and retention.")
    evaluation: Evaluation = Field(default_factory=Evaluation, description="Metrics and early stopping.")
    output: Annotated[FineTuneOutput, _immutable("output")] = Field(description="Where the model is published.")
    two_tower: TwoTowerOptions | None = Field(
        default=None, description="Loss temperature and encoder sharing for task twoTower; defaults when unset."
    )

    def two_tower_options(self) -> TwoTowerOptions:
        """The two-tower settings, defaults applied."""
        return self.two_tower or TwoTowerOptions()

    def gpus_per_pod(self) -> int:
        """GPUs each training pod gets, defaults applied."""
        if self.distribution.gpus_per_node is not None:
            return self.distribution.gpus_per_node
        return self.resources.gpus if self.resources.gpus is not None else 1

    def effective_metrics(self) -> tuple[str, ...]:
        """The metrics evaluated, defaults applied."""
        return tuple(self.evaluation.metrics) or DEFAULT_METRICS[self.task]

    def eval_fraction(self) -> float | None:
        """Share held out for evaluation, or None when data.eval gives the evaluation set."""
        if self.data.eval is not None:
            return None
        return self.data.eval_fraction if self.data.eval_fraction is not None else DEFAULT_EVAL_FRACTION


class FineTuneRun(ApiModel):
    """A whole FineTuneRun object as the API server returns it."""

    api_version: Literal["sampleforge.io/v1alpha1"] = Field(
        default="sampleforge.io/v1alpha1", description="API version."
    )
    kind: Literal["FineTuneRun"] = Field(default="FineTuneRun", description="Kind.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: FineTuneRunSpec = Field(description="What the run does.")
    status: FineTuneRunStatus | None = Field(default=None, description="What the run has done so far.")
