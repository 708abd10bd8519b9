"""``gan``: synthesise dense feature vectors with a conditional GAN trained on the source.

**Training.** The factory trains one generator / discriminator pair (:mod:`.tabulargan`: MLPs,
non-saturating GAN loss with an R1 penalty on the discriminator, Adam) on the dense features of the
first pass's row sample (``build.knowledge.sample``: uniform, whole-source, the same in every
shard), conditioned on the label. Every shard trains the same model:
the weights are initialised and the mini-batches and noise drawn from the run seed only. On CUDA
(used when available) training is repeatable on the same GPU model; tests and CPU-only clusters get
bit-identical models.

* The features are first put in the space the output is written in (the sample holds raw values;
  ``spec.preprocess`` clipping and normalisation are applied with the first pass's statistics), then
  standardised with the sample's own mean and deviation for training, whatever the preprocessing
  did (``denseNormalization: none`` leaves prices in the hundreds, which a GAN does not learn well).
  ``features`` restricts the GAN to some dense columns; the others are copied from the source row.
* The condition is the label: one-hot over the label values when there are at most
  :data:`MAX_CLASSES` of them (click, relevance grades, ESCI classes), the standardised number for
  numeric labels with more distinct values (a continuous rating or CTR).

**Generation.** ``samples`` rows in total (at most ``maxRows``), spread over the sample's rows that
the augmenter's ``fraction`` selects: sample row ``j`` of ``m`` (in row order) gets
``floor((j+1)S/m) - floor(jS/m)`` synthetic rows. A shard generates the share of the sample rows in
its range, so the total is exactly ``S`` whatever the shard count, and a retried shard generates the
same rows. A synthetic row keeps its source row's texts, attributes and image, takes generated
values for the GAN's features, and keeps the source row's label, which the features were generated
conditioned on: label rule ``condition``. Its noise comes from the row's own random stream, and the
forward pass runs in float64 on the CPU one source row at a time, so a row's values depend on
nothing but the model, the seed and the row.

**Fidelity** (in the manifest under ``augmenters.<name>.summary.fidelity`` and in the report) is
measured on up to :data:`FIDELITY_ROWS` rows of the sample against as many generated rows with the
same labels (:func:`~.tabulargan.fidelity`: per-feature Wasserstein-1 and KS distances, correlation
differences, and the AUC of a classifier that tells real from generated rows).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sampleforge.api.augmenters import GanAugmenter as GanSpec

from .errors import ConfigError
from .labels import Labels
from .mixup import features_of, sample_matrix
from .protocol import BatchPlan, GeneratedRow
from .randomness import RowRandomness
from .registry import BuildContext, register_row_augmenter
from .rows import RowBatch
from .tabulargan import TabularGan, fidelity, train_gan

log = logging.getLogger(__name__)

__all__ = ["FIDELITY_ROWS", "MAX_CLASSES", "Condition", "GanAugmenter", "selected_rows", "shares"]

MAX_CLASSES = 64
FIDELITY_ROWS = 5000


# --- the condition --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """How a label becomes the condition vector: one-hot over ``classes``, or ``(value - mean) / scale``."""

    classes: tuple[str, ...]
    mean: float = 0.0
    scale: float = 1.0

    @property
    def width(self) -> int:
        return len(self.classes) if self.classes else 1

    def describe(self) -> str:
        if self.classes:
            return f"label, one-hot over {len(self.classes)} values"
        return f"label as a number, standardised (mean {self.mean:.4g}, deviation {self.scale:.4g})"

    def encode(self, labels: Sequence[Any], codec: Labels) -> NDArray[np.float64]:
        """Rows x width condition vectors of ``labels`` (values of the source's label type)."""
        out = np.zeros((len(labels), self.width))
        if self.classes:
            index = {key: k for k, key in enumerate(self.classes)}
            for row, label in enumerate(labels):
                k = index.get(codec.key(label))
                if k is not None:  # a label the first pass never saw cannot happen; zeros if it does
                    out[row, k] = 1.0
        else:
            out[:, 0] = (np.asarray([float(v) for v in labels]) - self.mean) / self.scale
        return out

    @classmethod
    def fit(cls, labels: Labels, values: Sequence[Any], field_path: str) -> Condition:
        if len(labels.counts) <= MAX_CLASSES:
            return cls(tuple(labels.counts))
        if labels.kind == "string":
            raise ConfigError(f"{field_path}: the source has {len(labels.counts)} distinct text labels; a gan is "
                              f"conditioned on the label and supports at most {MAX_CLASSES} label values (or numeric "
                              "labels); map the labels to fewer classes or to numbers")
        numbers = np.asarray([float(v) for v in values]) if len(values) else np.zeros(1)
        scale = float(numbers.std())
        return cls((), float(numbers.mean()), scale if math.isfinite(scale) and scale > 0 else 1.0)


# --- the augmenter --------------------------------------------------------------------------------


class GanAugmenter:
    """Generates each selected sample row's share of synthetic rows (see the module docstring)."""

    label_rule = "condition"

    def __init__(self, name: str, model: TabularGan, features: Sequence[str], condition: Condition,
                 labels: Labels, label_column: str, quota: Mapping[int, int], summary: Mapping[str, Any]) -> None:
        self.name = name
        self.model = model
        self.features = tuple(features)
        self.condition = condition
        self.labels = labels
        self.label_column = label_column
        self.quota = dict(quota)
        self._summary = dict(summary)

    def summary(self) -> Mapping[str, Any]:
        return self._summary

    def augment(self, batch: RowBatch, plan: BatchPlan) -> list[GeneratedRow]:
        out: list[GeneratedRow] = []
        for i in plan.selected_indices():
            row = int(batch.row_ids[i])
            n = self.quota.get(row, 0)
            if not n:
                continue
            label = batch.labels[i]
            noise = plan.random.generator(row, "gan").standard_normal((n, self.model.latent_dim))
            values = self.model.generate(noise, np.repeat(self.condition.encode([label], self.labels), n, axis=0))
            for variant in range(n):
                changes: dict[str, Any] = {c: float(values[variant, j]) for j, c in enumerate(self.features)}
                changes[self.label_column] = label
                out.append(GeneratedRow(row, changes, self.label_rule, variant))
        return out


def shares(total: int, rows: int) -> NDArray[np.int64]:
    """``total`` split over ``rows`` as evenly as integers allow (row j: floor((j+1)T/m) - floor(jT/m))."""
    edges = (np.arange(rows + 1, dtype=np.int64) * total) // max(rows, 1)
    return np.diff(edges)


def selected_rows(build: BuildContext, name: str, row_ids: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Which of ``row_ids`` the augmenter's budget selects: the pipeline's own rule (see ``BatchProcessor._plan``)."""
    budget = build.knowledge.selection[name]
    chosen: NDArray[np.bool_] = RowRandomness(build.spec.seed, name).uniform(row_ids, "select") < \
        min(budget.fraction, budget.threshold)
    return chosen


@register_row_augmenter(GanSpec, needs=("sample",))
def _build(entry: GanSpec, build: BuildContext) -> GanAugmenter:
    import torch

    name = entry.display_name()
    features, positions = features_of(entry, build)
    row_ids, x, labels = sample_matrix(build, positions)
    if len(row_ids) < 2:
        raise ConfigError(f"{build.field_path}: the source has {len(row_ids)} usable row(s); a gan needs at least 2 "
                          "rows with every dense feature to train on; check spec.source.columns.denseFeatures")
    condition = Condition.fit(build.labels, labels, f"{build.field_path}")
    cond = condition.encode(labels, build.labels)
    randomness_seed = _seed(build, name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.monotonic()
    model = train_gan(x, cond, latent_dim=entry.latent_dim, epochs=entry.epochs, batch_size=entry.batch_size,
                      seed=randomness_seed, device=device)
    seconds = time.monotonic() - started
    rng = np.random.Generator(np.random.PCG64(randomness_seed ^ 0xF1DE))
    pick = np.sort(rng.choice(len(x), size=min(len(x), FIDELITY_ROWS), replace=False))
    fake = model.generate(rng.standard_normal((len(pick), entry.latent_dim)), cond[pick])
    quality = fidelity(x[pick], fake, cond[pick], features, randomness_seed)
    eligible = row_ids[selected_rows(build, name, row_ids)]
    total = min(entry.samples, entry.max_rows) if entry.max_rows else entry.samples
    counts = shares(total if len(eligible) else 0, len(eligible))
    quota = {int(r): int(c) for r, c in zip(eligible.tolist(), counts.tolist(), strict=True) if c}
    if not len(eligible):
        log.warning("gan: no sample row is selected by the augmenter's fraction; it generates nothing",
                    extra={"augmenter": name, "fraction": entry.fraction})
    summary = {
        "device": device.type, "trainingRows": len(x), "features": features, "conditioning": condition.describe(),
        "epochs": entry.epochs, "batchSize": entry.batch_size, "latentDim": entry.latent_dim,
        "trainingSeconds": round(seconds, 3), "samples": sum(quota.values()), "sourceRows": len(quota),
        "fidelity": quality,
    }
    log.info("gan trained", extra={"augmenter": name, **{k: v for k, v in summary.items() if k != "fidelity"},
                                   "classifier_auc": quality["classifierAuc"],
                                   "wasserstein1_mean": quality["wasserstein1"]["mean"]})
    return GanAugmenter(name, model, features, condition, build.labels, build.roles.label, quota, summary)


def _seed(build: BuildContext, name: str) -> int:
    """The augmenter's training seed: from the run seed and its name, like its row streams."""
    return RowRandomness(build.spec.seed, name).derived_seed("gan") & 0x7FFF_FFFF_FFFF
