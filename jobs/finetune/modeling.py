"""The models each task trains, and the fine-tuning methods applied to their encoders.

Every task puts a small head of its own on a transformers ``AutoModel`` encoder, instead of using
``AutoModelForSequenceClassification``: a CTR model concatenates dense features to the pooled
text vector, a two-tower model has no head at all, and prefix tuning through peft only works on
BERT-style encoders as a feature extractor (the sequence-classification wrapper refuses it in
transformers 5). One shape for all tasks keeps the training loop, checkpoints and the published
layout the same everywhere.

* :class:`CrossEncoder` — relevance (classes or a regression score) and CTR. Without dense features
  (``head_style`` ``sequenceClassification``) the head is the architecture's own sequence-classification
  head (BERT: pooler, dropout, linear), taken from ``AutoModelForSequenceClassification`` and run on
  this encoder, so that the published model is a plain transformers sequence-classification directory
  that scores exactly as the job evaluated. With dense features (``linear``): ``[CLS]`` vector of the
  (query, item) pair, dense features (standardised with the training set's mean and std) appended,
  dropout, linear.
* :class:`TwoTower` — query and item encoders (one shared encoder, or two), pooled as the base model's
  sentence-transformers files declare (mean when it has none; :mod:`sampleforge.jobs.common.pooling`),
  L2 normalisation; trained with in-batch negatives (InfoNCE with a temperature).

peft wraps the encoder(s) only; the head is always fully trained.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from peft import AdaLoraModel, PeftModel
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from sampleforge.api.finetune import (
    Task,
    TwoTowerOptions,
)
from sampleforge.jobs.common.pooling import PoolingConfigError, model_pooling, pool

from .methods import MethodSpec, apply_method, freeze_unused_pooler, load_config_hidden
from .model_source import ModelSource, load_failure

#: Defaults of spec.twoTower (api.finetune.TwoTowerOptions), for models published before it existed.
TWO_TOWER_TEMPERATURE = TwoTowerOptions().temperature
TWO_TOWER_SHARED = TwoTowerOptions().shared_encoder

#: CrossEncoder heads: [CLS] + linear (dense features can be appended), or the architecture's own
#: sequence-classification head (what AutoModelForSequenceClassification runs).
LINEAR_HEAD = "linear"
SEQUENCE_CLASSIFICATION_HEAD = "sequenceClassification"


@dataclass(frozen=True)
class HeadConfig:
    """What the published model needs besides the encoder weights to be used again."""

    task: Task
    num_outputs: int
    num_dense: int = 0
    dropout: float = 0.1
    shared_towers: bool = TWO_TOWER_SHARED
    temperature: float = TWO_TOWER_TEMPERATURE
    #: Dense features are clipped before they are standardised: the augmentation stage's
    #: preprocessing (preprocess.json) travels inside the model.
    dense_clip: bool = False
    #: Cross-encoders: LINEAR_HEAD or SEQUENCE_CLASSIFICATION_HEAD (models published before it: linear).
    head_style: str = LINEAR_HEAD
    #: Two-tower: the sentence-transformers pooling mode of the base model (jobs.common.pooling).
    pooling: str = "mean"


def supports_sequence_classification(location: str) -> bool:
    """Whether transformers has a sequence-classification class for the model at ``location``
    (its config's model type), so that a cross-encoder without dense features can use its head."""
    try:
        model_type = str(AutoConfig.from_pretrained(location).model_type)
    except (OSError, ValueError, KeyError):
        return False
    return model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES


def encoder_pooling(source: ModelSource) -> str:
    """The pooling mode spec.model's sentence-transformers files declare (mean when it has none)."""
    try:
        return model_pooling(source.location).mode
    except PoolingConfigError as err:
        raise load_failure(source, err) from err


def sequence_classifier_shell(config: Any, num_outputs: int) -> PreTrainedModel:
    """An ``AutoModelForSequenceClassification`` of ``config`` whose base model is left on the meta
    device (it is replaced by the real encoder) and whose head is allocated, uninitialised, on the CPU:
    for loading a saved head into."""
    config = copy.deepcopy(config)
    config.num_labels = num_outputs
    with torch.device("meta"):
        shell: PreTrainedModel = AutoModelForSequenceClassification.from_config(config)  # type: ignore[no-untyped-call]
    for name, child in shell.named_children():
        if name != shell.base_model_prefix:
            child.to_empty(device="cpu")
    return shell


@dataclass(frozen=True)
class DenseTransform:
    """An AugmentationRun's dense-feature preprocessing (its committed preprocess.json):
    ``x' = (clip(x, low, high) - center) / scale`` per feature, in ``names`` order.

    Its output rows hold x'; the fine-tune job maps them back (:meth:`invert`, exact up to the
    clipping, which the forward transform repeats) and puts the transform itself in the model, so
    that training, evaluation on a raw data.eval file and serving all start from raw features."""

    names: tuple[str, ...]
    low: NDArray[np.float64]
    high: NDArray[np.float64]
    center: NDArray[np.float64]
    scale: NDArray[np.float64]
    #: preprocess.json as committed, shipped beside the published model.
    document: dict[str, Any]

    @classmethod
    def from_preprocess(cls, document: dict[str, Any], names: Sequence[str]) -> DenseTransform | None:
        """The transform of ``names`` (the training data's dense features); None when the
        preprocessing is the identity (raw values were written)."""
        if document.get("clipOutliers") is None and document.get("denseNormalization", "none") == "none":
            return None
        by_name = {f["name"]: f for f in document.get("features", [])}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"preprocess.json has no statistics for dense features {missing}")

        def column(key: str) -> NDArray[np.float64]:
            return np.asarray([float(by_name[n][key]) for n in names], dtype=np.float64)

        return cls(tuple(names), column("clipLow"), column("clipHigh"), column("center"), column("scale"),
                   document)

    def apply(self, raw: NDArray[Any]) -> NDArray[np.float64]:
        out: NDArray[np.float64] = (np.clip(np.asarray(raw, dtype=np.float64), self.low, self.high)
                                    - self.center) / self.scale
        return out

    def invert(self, transformed: NDArray[Any]) -> NDArray[np.float64]:
        out: NDArray[np.float64] = np.asarray(transformed, dtype=np.float64) * self.scale + self.center
        return out


class CrossEncoder(nn.Module):
    """Scores a (query, item) pair: relevance classes, a relevance score, or a click logit.

    With ``head_style`` sequenceClassification, ``classifier`` is an ``AutoModelForSequenceClassification``
    of the encoder's architecture: its head modules are registered here under ``sequence_head``, the
    encoder (peft-wrapped or not) takes its base model's place, and forward runs its forward. The
    classifier itself is not registered, so no tensor is stored twice."""

    dense_mean: torch.Tensor
    dense_std: torch.Tensor
    dense_low: torch.Tensor
    dense_high: torch.Tensor

    def __init__(self, encoder: nn.Module, config: HeadConfig, hidden_size: int,
                 classifier: PreTrainedModel | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self._classifier: tuple[PreTrainedModel, ...] = ()
        if config.head_style == SEQUENCE_CLASSIFICATION_HEAD:
            assert classifier is not None, "a sequenceClassification head needs its classifier model"
            assert not config.num_dense, "dense features need the linear head"
            prefix = classifier.base_model_prefix
            self.sequence_head = nn.ModuleDict({n: m for n, m in classifier.named_children() if n != prefix})
            setattr(classifier, prefix, encoder)
            self._classifier = (classifier,)
            return
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(hidden_size + config.num_dense, config.num_outputs)
        # Standardisation of dense features, learned from the training rows (part of the model).
        # Only when there are features: safetensors cannot tell two empty tensors apart.
        if config.num_dense:
            self.register_buffer("dense_mean", torch.zeros(config.num_dense))
            self.register_buffer("dense_std", torch.ones(config.num_dense))
        if config.num_dense and config.dense_clip:
            self.register_buffer("dense_low", torch.full((config.num_dense,), -torch.inf))
            self.register_buffer("dense_high", torch.full((config.num_dense,), torch.inf))

    def set_dense_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.dense_mean.copy_(mean)
        self.dense_std.copy_(torch.clamp(std, min=1e-6))

    def set_dense_transform(self, transform: DenseTransform) -> None:
        """The augmentation stage's preprocessing instead of statistics of this run's own rows."""
        assert self.config.dense_clip, "build the head with dense_clip=True to carry a preprocessing transform"
        self.set_dense_stats(torch.from_numpy(transform.center).float(), torch.from_numpy(transform.scale).float())
        self.dense_low.copy_(torch.from_numpy(transform.low).float())
        self.dense_high.copy_(torch.from_numpy(transform.high).float())

    @property
    def classifier(self) -> PreTrainedModel | None:
        """The sequence-classification model this head runs (sequenceClassification style), else None."""
        return self._classifier[0] if self._classifier else None

    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        if self._classifier:
            self._classifier[0].training = mode
        return self

    def forward(self, inputs: dict[str, torch.Tensor], dense: torch.Tensor | None = None) -> torch.Tensor:
        if self._classifier:
            out: torch.Tensor = self._classifier[0](**inputs).logits
            return out
        hidden = self.encoder(**inputs).last_hidden_state
        pooled = hidden[:, 0]
        if self.config.num_dense:
            assert dense is not None, "this model was built with dense features; pass them"
            if self.config.dense_clip:  # in fp32: the bounds may be infinite
                dense = torch.minimum(torch.maximum(dense.float(), self.dense_low), self.dense_high)
            scaled = (dense.to(pooled.dtype) - self.dense_mean.to(pooled.dtype)) / self.dense_std.to(pooled.dtype)
            pooled = torch.cat([pooled, scaled], dim=-1)
        logits: torch.Tensor = self.head(self.dropout(pooled))
        return logits


class TwoTower(nn.Module):
    """Query and item encoders producing L2-normalised embeddings (cosine similarity = dot product)."""

    def __init__(self, query_encoder: nn.Module, item_encoder: nn.Module | None, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.query_encoder = query_encoder
        # One module when shared: registering it twice would save every tensor twice.
        self.item_encoder = item_encoder

    def _embed(self, encoder: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = encoder(**inputs).last_hidden_state
        return F.normalize(pool(hidden, inputs["attention_mask"], self.config.pooling).float(), dim=-1)

    def encode_queries(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._embed(self.query_encoder, inputs)

    def encode_items(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._embed(self.item_encoder or self.query_encoder, inputs)

    def forward(self, query: dict[str, torch.Tensor], item: dict[str, torch.Tensor],
                negative: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
        """Query and item embeddings, and those of the hard negatives when the batch has any (through
        forward, so that DDP sees every encoder call of the step)."""
        if negative is None:
            return self.encode_queries(query), self.encode_items(item)
        return self.encode_queries(query), self.encode_items(item), self.encode_items(negative)


def encoders(model: nn.Module) -> dict[str, nn.Module]:
    """The model's encoders by the name they are published under."""
    if isinstance(model, TwoTower):
        if model.item_encoder is None:
            return {"encoder": model.query_encoder}
        return {"query_encoder": model.query_encoder, "item_encoder": model.item_encoder}
    assert isinstance(model, CrossEncoder)
    return {"encoder": model.encoder}


def load_encoder(source: ModelSource) -> PreTrainedModel:
    """The pretrained encoder of spec.model; a load failure names spec.model and what to do."""
    try:
        model: PreTrainedModel = AutoModel.from_pretrained(source.location)
        return model
    except (OSError, ValueError, KeyError) as err:
        raise load_failure(source, err) from err


def build_model(source: ModelSource, config: HeadConfig, method: MethodSpec, total_steps: int,
                gradient_checkpointing: bool) -> nn.Module:
    """The task's model on the pretrained encoder(s), with the method applied. Seed torch first:
    the head (and a separate item encoder's adapters) are initialised at random."""

    classifier: PreTrainedModel | None = None
    if config.task != Task.TWO_TOWER and config.head_style == SEQUENCE_CLASSIFICATION_HEAD:
        # Its load report lists the new head's weights as missing: expected, and not a JSON log line.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            # A published sampleforge model as spec.model may carry a head of another label count: a new one.
            classifier = AutoModelForSequenceClassification.from_pretrained(
                source.location, num_labels=config.num_outputs, ignore_mismatched_sizes=True)
        except (OSError, ValueError, KeyError) as err:
            raise load_failure(source, err) from err
        finally:
            hf_logging.set_verbosity(verbosity)

    def encoder() -> nn.Module:
        if classifier is not None:
            # The base model as the classifier built it: its head uses what it keeps (BERT's pooler).
            base: PreTrainedModel = getattr(classifier, classifier.base_model_prefix)
        else:
            base = load_encoder(source)
            freeze_unused_pooler(base)
        if gradient_checkpointing:
            # Non-reentrant checkpointing works with frozen inputs (peft) without extra hooks.
            # transformers 5.x renamed it (the old name warns); older releases only have the old one.
            options = {"use_reentrant": False}
            if hasattr(base, "activation_checkpointing_enable"):
                base.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)  # type: ignore[no-untyped-call]
        return apply_method(base, method, total_steps)

    if config.task == Task.TWO_TOWER:
        return TwoTower(encoder(), None if config.shared_towers else encoder(), config)
    first = encoder()
    hidden = int(load_config_hidden(first).hidden_size)
    return CrossEncoder(first, config, hidden, classifier)


def adalora_update(model: nn.Module, step: int) -> None:
    """AdaLoRA reallocates rank from the gradients' sensitivity: call after backward and the
    optimizer step, before the gradients are zeroed (peft's contract)."""
    for enc in encoders(model).values():
        if isinstance(enc, PeftModel) and isinstance(enc.base_model, AdaLoraModel):
            enc.base_model.update_and_allocate(step)  # type: ignore[no-untyped-call]
