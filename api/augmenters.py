"""The augmenters an AugmentationRun applies, one model per type.

Each class's first docstring line is shown to users (it documents the ``type`` enum in
``kubectl explain``); the rest is for maintainers. Parameters shared by several types are declared
once as annotated types below, so they mean and validate the same everywhere (the CRD holds one flat
object with every parameter; see ``_unions``).

Every augmenter has a budget: ``fraction`` of the input rows it is applied to, ``perRow`` new rows
per selected row (where that makes sense) and an overall ``maxRows`` cap.

Kept in one module although it is long: the types share the annotated parameter types and the
budget above, and the discriminated union (and so the CRD's one flat augmenter object) is built
from this module's list of them.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BeforeValidator, Field

from ._base import ApiModel, Rule
from ._unions import FlatUnion
from .common import SecretKeySelector
from .fields import ColumnNames, DataLabel, DenseFeatureNames, ModelRef, S3Uri, TextFields

# --- shared parameters ------------------------------------------------------------------------

AugmenterName = Annotated[str, Field(min_length=1, max_length=63, pattern="^[A-Za-z][A-Za-z0-9_-]*$")]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
PerRow = Annotated[int, Field(ge=1, le=100, description="New rows generated for each selected row.")]
EditFraction = Annotated[float, Field(gt=0.0, le=1.0)]
BatchSize = Annotated[int, Field(ge=1, le=4096, description="Rows per batch on the accelerator.")]
MaxNewTokens = Annotated[int, Field(ge=1, le=2048, description="Most tokens generated per output.")]
Temperature = Annotated[
    float,
    Field(
        ge=0.0,
        le=2.0,
        description="Sampling temperature for generation; 0 means greedy decoding, which gives one variant per "
        "row whatever perRow says.",
    ),
]
PromptTemplate = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        description="Prompt sent to the model; {text} is replaced by the row's text, and for backTranslation "
        "{language} and {languageName} by the step's target language (tag and name: >>{language}<< {text} "
        "for a multilingual Marian model). The job's built-in prompt for the type when unset.",
    ),
    Rule(
        cel="self.contains('{text}')",
        message="promptTemplate must contain the placeholder {text}, where the row's text goes",
        check=lambda v: "{text}" in v,
    ),
]
Model = Annotated[ModelRef, Field(description="Model to run: a hub id (org/name) or an s3:// model directory.")]
Fields = Annotated[TextFields, Field(description="Text columns to edit: query, item or both.")]
WordFraction = Annotated[EditFraction, Field(description="Share of the words in each edited text that change.")]
CharFraction = Annotated[EditFraction, Field(description="Share of the characters in each edited text that change.")]
Attributes = Annotated[ColumnNames, Field(description="Attribute columns (from source.columns.attributes) it uses.")]
Features = Annotated[
    DenseFeatureNames,
    Field(description="Dense feature columns it uses; all of source.columns.denseFeatures when empty."),
]
AssignedLabel = Annotated[
    DataLabel,
    Field(
        description="Label given to the rows it generates. Required for attributeSwap; when unset, doc2query "
        "keeps the source row's label and hardNegative uses the lowest label in the source."
    ),
]


def _sums_to_one(distribution: dict[str, float]) -> dict[str, float]:
    if distribution and abs(sum(distribution.values()) - 1.0) > 0.01:
        raise ValueError("targetDistribution fractions must add up to 1 (within 0.01)")
    return distribution


def _label_keys_as_strings(value: object) -> object:
    # YAML turns `0: 0.5` into an integer key; the API server only ever has string keys.
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


TargetDistribution = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[float, Field(ge=0.0, le=1.0)]],
    Field(min_length=1, max_length=64),
    BeforeValidator(_label_keys_as_strings),
    Rule(
        cel="self.map(k, self[k]).sum() >= 0.99 && self.map(k, self[k]).sum() <= 1.01",
        message="targetDistribution fractions must add up to 1 (within 0.01)",
    ),
    AfterValidator(_sums_to_one),
]


class _Budget(ApiModel):
    """Fields every augmenter has."""

    name: AugmenterName | None = Field(
        default=None,
        description="Name in reports and metrics (status.results.perAugmenter); defaults to the type. "
        "Needed when two augmenters have the same type.",
    )
    fraction: Fraction = Field(default=1.0, description="Share of the input rows the augmenter is applied to.")
    max_rows: int | None = Field(default=None, ge=1, le=1_000_000_000, description="Most rows this augmenter may add.")

    def display_name(self) -> str:
        """The name used in status and metrics."""
        return self.name or str(getattr(self, "type"))  # noqa: B009 -- each subclass declares type


# --- token and character edits (EDA-style, no model) -------------------------------------------


class SynonymAugmenter(_Budget):
    """synonym: replace words with synonyms from a lexicon."""

    type: Literal["synonym"] = Field(description="Augmenter type.")
    lexicon: S3Uri | None = Field(
        default=None,
        description="A domain lexicon as an s3:// URI (TSV, one synonym group a line, terms separated by tabs); "
        "used on top of the e-commerce lexicons shipped for English and Chinese. Unset: the shipped ones only.",
    )
    word_fraction: WordFraction = 0.15
    fields: Fields = Field(default=["query", "item"])
    per_row: PerRow = 1


class RandomInsertAugmenter(_Budget):
    """randomInsert: insert a synonym of a word of the text (from the lexicon) at a random position, as EDA does."""

    type: Literal["randomInsert"] = Field(description="Augmenter type.")
    word_fraction: WordFraction = 0.1
    fields: Fields = Field(default=["query"])
    per_row: PerRow = 1


class RandomSwapAugmenter(_Budget):
    """randomSwap: swap the positions of random word pairs."""

    type: Literal["randomSwap"] = Field(description="Augmenter type.")
    word_fraction: WordFraction = 0.1
    fields: Fields = Field(default=["query"])
    per_row: PerRow = 1


class RandomDeleteAugmenter(_Budget):
    """randomDelete: delete random words (never all of them)."""

    type: Literal["randomDelete"] = Field(description="Augmenter type.")
    word_fraction: WordFraction = 0.1
    fields: Fields = Field(default=["query"])
    per_row: PerRow = 1


class TypoAugmenter(_Budget):
    """typo: keyboard-neighbour typos, as users make them in search boxes."""

    type: Literal["typo"] = Field(description="Augmenter type.")
    char_fraction: CharFraction = 0.05
    fields: Fields = Field(default=["query"])
    per_row: PerRow = 1


class CharNoiseAugmenter(_Budget):
    """charNoise: random character insertions, substitutions, swaps and deletions."""

    type: Literal["charNoise"] = Field(description="Augmenter type.")
    char_fraction: CharFraction = 0.05
    fields: Fields = Field(default=["query"])
    per_row: PerRow = 1


# --- structured attributes ----------------------------------------------------------------------


class AttributeDropAugmenter(_Budget):
    """attributeDrop: blank out item attributes, as sparse catalogue data does."""

    type: Literal["attributeDrop"] = Field(description="Augmenter type.")
    attributes: Attributes = Field(default=[])
    max_attributes: int = Field(default=1, ge=1, le=64, description="Most attributes blanked per generated row.")
    per_row: PerRow = 1


class AttributeReorderAugmenter(_Budget):
    """attributeReorder: shuffle the order attributes appear in the item text."""

    type: Literal["attributeReorder"] = Field(description="Augmenter type.")
    attributes: Attributes = Field(default=[])
    per_row: PerRow = 1


class AttributeSwapAugmenter(_Budget):
    """attributeSwap: swap attributes with another item's, making a mismatch with the given label."""

    kube_rules = (
        Rule(
            cel="!has(self.attributes) || size(self.attributes) >= 1",
            message="attributes must list at least one attribute column to swap",
            check=lambda a: len(a.attributes) >= 1,
            field_path=".attributes",
        ),
    )

    type: Literal["attributeSwap"] = Field(description="Augmenter type.")
    attributes: Attributes
    label: AssignedLabel
    per_row: PerRow = 1


# --- generation with a language model -------------------------------------------------------------

#: Where a generation augmenter's text comes from. Why a choice: transformers inside the pod suits
#: small runs and custom models; vllm is vLLM's offline batch engine on the pod's GPU (continuous
#: batching, paged attention: far faster than generate() on the same GPU); production teams also serve
#: models behind an OpenAI-compatible endpoint (vLLM, SGLang, TGI, llama.cpp, KServe, a gateway).
GenerationEngine = Annotated[
    Literal["transformers", "vllm", "openai"],
    Field(
        description="Where the text is generated: transformers loads model inside the pod (as a hub id or s3:// "
        "directory); vllm runs model with vLLM's offline batch engine inside the pod, which needs a GPU "
        "(resources.gpus of at least 1) and the job image built with vLLM (the Dockerfile's job-vllm target); "
        "openai sends chat completion requests to the OpenAI-compatible endpoint in openai (model is then the "
        "name the endpoint serves)."
    ),
]
#: Engines that run the model on the pod's GPU and refuse to start without one.
GPU_ENGINES = ("vllm",)
MaxBatchTokens = Annotated[
    int,
    Field(
        ge=64,
        le=1_048_576,
        description="Most tokens in one batch of the transformers engine, padding and new tokens included "
        "(sequences x (longest prompt + maxNewTokens)); prompts are sorted by length and a batch ends at "
        "batchSize sequences or at this budget, whichever comes first, so long texts cannot exhaust memory. "
        "Outputs do not depend on it. vllm schedules tokens itself; openai sends one request per text.",
    ),
]
ENDPOINT_URL_PATTERN = "^https?://[^\\s/?#]+(/[^\\s?#]*)?$"


class OpenAIEndpoint(ApiModel):
    """An OpenAI-compatible chat completions endpoint, and how hard the run may drive it."""

    endpoint: str = Field(
        min_length=1,
        max_length=512,
        pattern=ENDPOINT_URL_PATTERN,
        description="Base URL of the API, up to and including its version path, such as "
        "http://llm-gateway.ml:8000/v1; the job posts to <endpoint>/chat/completions.",
    )
    api_key_secret: SecretKeySelector | None = Field(
        default=None,
        description="Secret key holding the API key, sent as a bearer token; never written in the spec. "
        "Unset: no Authorization header (an in-cluster server without authentication).",
    )
    concurrency: int = Field(default=4, ge=1, le=256, description="Requests in flight at once, per pod.")
    max_retries: int = Field(
        default=5,
        ge=0,
        le=20,
        description="Retries of a request that got 429, a 5xx, a timeout or a connection error, with "
        "exponential backoff (Retry-After is honoured).",
    )
    timeout_seconds: int = Field(default=60, ge=1, le=3600, description="Time limit of one request.")
    max_requests: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Most requests (retries included) the run may send, split evenly across its shards; "
        "rows past it are counted as not generated. Unlimited when unset.",
    )


OpenAISettings = Annotated[
    OpenAIEndpoint | None,
    Field(description="The endpoint and its limits; required when engine is openai, forbidden otherwise."),
]

#: The engine rules every generation type carries (the union's rules apply per variant).
_ENGINE_RULES = (
    Rule(
        cel="!has(self.engine) || self.engine != 'openai' || has(self.openai)",
        message="openai is required when engine is openai; set openai.endpoint",
        check=lambda a: a.engine != "openai" or a.openai is not None,
        field_path=".openai",
        reason="FieldValueRequired",
    ),
    Rule(
        cel="!has(self.openai) || (has(self.engine) && self.engine == 'openai')",
        message="openai applies only when engine is openai; remove openai or set engine: openai",
        check=lambda a: a.openai is None or a.engine == "openai",
        field_path=".openai",
        reason="FieldValueForbidden",
    ),
)


class ParaphraseAugmenter(_Budget):
    """paraphrase: rewrite the text with a language model, keeping its meaning."""

    kube_rules = _ENGINE_RULES

    type: Literal["paraphrase"] = Field(description="Augmenter type.")
    model: Model
    engine: GenerationEngine = "transformers"
    openai: OpenAISettings = None
    prompt_template: PromptTemplate | None = None
    batch_size: BatchSize = 16
    max_batch_tokens: MaxBatchTokens = 16384
    max_new_tokens: MaxNewTokens = 64
    temperature: Temperature = 0.7
    fields: Fields = Field(default=["query"])
    per_row: PerRow = 1


class Doc2QueryAugmenter(_Budget):
    """doc2query: generate search queries an item should be found by."""

    kube_rules = _ENGINE_RULES

    type: Literal["doc2query"] = Field(description="Augmenter type.")
    model: Model
    engine: GenerationEngine = "transformers"
    openai: OpenAISettings = None
    prompt_template: PromptTemplate | None = None
    batch_size: BatchSize = 16
    max_batch_tokens: MaxBatchTokens = 16384
    max_new_tokens: MaxNewTokens = 32
    temperature: Temperature = 0.7
    label: AssignedLabel | None = None
    per_row: PerRow = 1


class BackTranslationAugmenter(_Budget):
    """backTranslation: translate to a pivot language and back."""

    kube_rules = _ENGINE_RULES

    type: Literal["backTranslation"] = Field(description="Augmenter type.")
    model: Model
    engine: GenerationEngine = "transformers"
    openai: OpenAISettings = None
    reverse_model: ModelRef | None = Field(
        default=None, description="Model for the way back from the pivot language; the same model when unset."
    )
    pivot_language: str = Field(
        default="en",
        min_length=2,
        max_length=16,
        pattern="^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$",
        description="Language to translate through, as a BCP 47 tag such as en or zh-Hans.",
    )
    prompt_template: PromptTemplate | None = None
    batch_size: BatchSize = 16
    max_batch_tokens: MaxBatchTokens = 16384
    max_new_tokens: MaxNewTokens = 64
    temperature: Temperature = 0.7
    fields: Fields = Field(default=["query"])
    per_row: PerRow = 1


JudgeRubric = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        description="Instruction sent to the judge model for each pair; {query} and {item} are replaced by the "
        "row's query and item text (with its attributes), {labels} by the run's label scale (the source's "
        "labels, lowest first, and those the augmenters assign). The job's built-in relevance rubric when unset.",
    ),
    Rule(
        cel="self.contains('{query}') && self.contains('{item}')",
        message="rubric must contain the placeholders {query} and {item}, where the pair goes",
        check=lambda v: "{query}" in v and "{item}" in v,
    ),
]


class LlmJudgeAugmenter(_Budget):
    """llmJudge: have a language model grade generated pairs on the label scale, then keep, drop or relabel them."""

    kube_rules = _ENGINE_RULES + (
        Rule(
            cel="!has(self.maxRows)",
            message="maxRows does not apply to llmJudge, which adds no rows; bound it with fraction or "
            "openai.maxRequests",
            check=lambda a: a.max_rows is None,
            field_path=".maxRows",
            reason="FieldValueForbidden",
        ),
    )

    type: Literal["llmJudge"] = Field(description="Augmenter type.")
    model: Model
    engine: GenerationEngine = "transformers"
    openai: OpenAISettings = None
    mode: Literal["filter", "relabel"] = Field(
        default="filter",
        description="What a grade that differs from the row's label does: filter drops the row, relabel gives "
        "it the judge's grade as its label (label rule judge). Agreeing rows are kept unchanged either way.",
    )
    judged: Annotated[
        list[AugmenterName], Field(max_length=19, json_schema_extra={"x-kubernetes-list-type": "set"})
    ] = Field(
        default=[],
        description="Names of the augmenters whose generated rows it grades; every augmenter that is not an "
        "llmJudge when empty. Source rows are never graded.",
    )
    rubric: JudgeRubric | None = None
    on_failure: Literal["keep", "drop"] = Field(
        default="keep",
        description="What happens to a row the judge gave no grade for (a failed request, or an answer with no "
        "label of the scale in it): keep it unchanged, or drop it. Such a row is never relabelled; either way "
        "it is counted per reason.",
    )
    batch_size: BatchSize = 16
    max_new_tokens: MaxNewTokens = 8
    temperature: Temperature = 0.0


# --- sampling and synthesis ---------------------------------------------------------------------


class HardNegativeAugmenter(_Budget):
    """hardNegative: pair queries with similar but non-relevant items."""

    kube_rules = (
        Rule(
            cel="!has(self.model) || (has(self.method) && self.method == 'embedding')",
            message="model applies only when method is embedding; remove model or set method: embedding",
            check=lambda a: a.model is None or a.method == "embedding",
            field_path=".model",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="!has(self.method) || self.method != 'embedding' || has(self.model)",
            message="model is required when method is embedding; set model to an embedding model",
            check=lambda a: a.method != "embedding" or a.model is not None,
            field_path=".model",
            reason="FieldValueRequired",
        ),
    )

    type: Literal["hardNegative"] = Field(description="Augmenter type.")
    method: Literal["bm25", "embedding"] = Field(
        default="bm25", description="How candidates are retrieved: bm25 (lexical) or embedding (needs model)."
    )
    per_query: int = Field(default=4, ge=1, le=100, description="Hard negatives added per query.")
    skip_top: int = Field(
        default=0, ge=0, le=100, description="Retrieved items skipped first, as they are often unlabelled positives."
    )
    model: Model | None = None
    label: AssignedLabel | None = None


class RebalanceAugmenter(_Budget):
    """rebalance: resample rows until labels follow a target distribution."""

    type: Literal["rebalance"] = Field(description="Augmenter type.")
    target_distribution: TargetDistribution = Field(
        description="Wanted share of each label value (label -> fraction); fractions add up to 1."
    )
    strategy: Literal["oversample", "undersample"] = Field(
        default="oversample", description="oversample minority labels (duplicates rows) or undersample majority ones."
    )


class GanAugmenter(_Budget):
    """gan: synthesise rows of dense features and labels with a tabular GAN."""

    type: Literal["gan"] = Field(description="Augmenter type.")
    samples: int = Field(ge=1, le=100_000_000, description="Synthetic rows to generate.")
    epochs: int = Field(default=300, ge=1, le=10_000, description="GAN training epochs.")
    batch_size: BatchSize = 256
    latent_dim: int = Field(default=128, ge=2, le=4096, description="Size of the generator's noise input.")
    features: Features = Field(default=[])


class MixupAugmenter(_Budget):
    """mixup: interpolate dense features and labels between random row pairs."""

    type: Literal["mixup"] = Field(description="Augmenter type.")
    alpha: float = Field(default=0.2, gt=0.0, le=10.0, description="Beta(alpha, alpha) parameter of the mixing weight.")
    features: Features = Field(default=[])
    per_row: PerRow = 1


ImageOperation = Literal["flip", "rotate", "crop", "colorJitter", "blur", "grayscale"]


class ImageAugmenter(_Budget):
    """image: flip, crop, rotate and colour-jitter the item image."""

    type: Literal["image"] = Field(description="Augmenter type.")
    operations: Annotated[
        list[ImageOperation],
        Field(min_length=1, max_length=6, json_schema_extra={"x-kubernetes-list-type": "set"}),
    ] = Field(default=["flip", "crop", "colorJitter"], description="Image operations, applied in random order.")
    per_row: PerRow = 1


AUGMENTER_UNION = FlatUnion(
    [
        SynonymAugmenter,
        RandomInsertAugmenter,
        RandomSwapAugmenter,
        RandomDeleteAugmenter,
        TypoAugmenter,
        CharNoiseAugmenter,
        AttributeDropAugmenter,
        AttributeReorderAugmenter,
        AttributeSwapAugmenter,
        ParaphraseAugmenter,
        Doc2QueryAugmenter,
        BackTranslationAugmenter,
        LlmJudgeAugmenter,
        HardNegativeAugmenter,
        RebalanceAugmenter,
        GanAugmenter,
        MixupAugmenter,
        ImageAugmenter,
    ]
)

AugmenterSpec = Union[  # noqa: UP007 -- a discriminated union reads better spelled out
    SynonymAugmenter,
    RandomInsertAugmenter,
    RandomSwapAugmenter,
    RandomDeleteAugmenter,
    TypoAugmenter,
    CharNoiseAugmenter,
    AttributeDropAugmenter,
    AttributeReorderAugmenter,
    AttributeSwapAugmenter,
    ParaphraseAugmenter,
    Doc2QueryAugmenter,
    BackTranslationAugmenter,
    LlmJudgeAugmenter,
    HardNegativeAugmenter,
    RebalanceAugmenter,
    GanAugmenter,
    MixupAugmenter,
    ImageAugmenter,
]
#: One augmenter: the field type of ``AugmentationRunSpec.augmenters`` items.
Augmenter = Annotated[AugmenterSpec, Field(discriminator="type"), BeforeValidator(AUGMENTER_UNION.check)]

#: Types whose work needs these source columns (checked in AugmentationRunSpec).
NEEDS_ATTRIBUTES = ("attributeDrop", "attributeReorder", "attributeSwap")
NEEDS_DENSE_FEATURES = ("gan", "mixup")
NEEDS_IMAGE = ("image",)
#: The type that grades other augmenters' rows instead of adding its own.
JUDGE_TYPES = ("llmJudge",)
