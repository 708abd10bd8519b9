"""``gan``: synthesise dense feature vectors with a conditional GAN trained on the source.

**Training.** One generator / discriminator pair (:mod:`.tabulargan`: MLPs, non-saturating GAN loss
with an R1 penalty on the discriminator, Adam) is trained on the dense features of the first pass's
row sample (``build.knowledge.sample``: uniform, whole-source, the same in every shard), conditioned
on the label; the weights are initialised and the mini-batches and noise drawn from the run seed
only. On CUDA (used when available) training is repeatable on the same GPU model; tests and CPU-only
clusters get bit-identical models.

**Trained once per run.** The type is registered with ``prepares=True``: in a run of several shards
the analysis step trains the model (and measures its fidelity) once and exports it
(:meth:`GanAugmenter.export_state`: the generator's float64 weights, the standardisation and the
condition as ``torch.save`` tensors, loaded with ``weights_only=True``); every shard's factory loads
it instead of training, after checking that it was trained on the same sample, features, labels and
settings (a fingerprint of them), and generates exactly the rows the model it would have trained
gives. A run of one shard trains in its factory. The summary of a loaded model says
``"prepared": true`` with ``trainingSeconds`` 0 (the analysis step logs its training time; the state
holds no clock reading, so preparing twice gives the same bytes); its ``device`` and ``fidelity`` are
the analysis step's.

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

import hashlib
import io
import json
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
from .registry import BuildContext, PreparedPayload, register_row_augmenter, seal_state
from .rows import RowBatch
from .tabulargan import HIDDEN, TabularGan, fidelity, train_gan

log = logging.getLogger(__name__)

__all__ = ["FIDELITY_ROWS", "MAX_CLASSES", "Condition", "GanAugmenter", "selected_rows", "shares"]

MAX_CLASSES = 64
FIDELITY_ROWS = 5000
#: Kind and format version of the prepared state (:func:`~.registry.seal_state`); a change to what
#: :meth:`GanAugmenter.export_state` writes must bump the version.
STATE_KIND = "gan"
STATE_VERSION = 1
#: Summary facts that come from training; a loaded model carries the analysis step's. Not its
#: training time: a clock reading would make the state's bytes differ between two identical runs.
_TRAINING_FACTS = ("device", "fidelity")


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
                 labels: Labels, label_column: str, quota: Mapping[int, int], summary: Mapping[str, Any],
                 fingerprint: str = "") -> None:
        self.name = name
        self.model = model
        self.features = tuple(features)
        self.condition = condition
        self.labels = labels
        self.label_column = label_column
        self.quota = dict(quota)
        self._summary = dict(summary)
        self.fingerprint = fingerprint

    def summary(self) -> Mapping[str, Any]:
        return self._summary

    def export_state(self) -> bytes:
        """The trained model for the shards (see the module docstring), sealed with its fingerprint
        and the training facts of the summary."""
        facts = {key: self._summary[key] for key in _TRAINING_FACTS}
        return seal_state(STATE_KIND, STATE_VERSION, _model_bytes(self.model, self.condition),
                          {"fingerprint": self.fingerprint, "features": list(self.features), **facts})

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


@register_row_augmenter(GanSpec, needs=("sample",), prepares=True)
def _build(entry: GanSpec, build: BuildContext) -> GanAugmenter:
    name = entry.display_name()
    features, positions = features_of(entry, build)
    row_ids, x, labels = sample_matrix(build, positions)
    if len(row_ids) < 2:
        raise ConfigError(f"{build.field_path}: the source has {len(row_ids)} usable row(s); a gan needs at least 2 "
                          "rows with every dense feature to train on; check spec.source.columns.denseFeatures")
    condition = Condition.fit(build.labels, labels, f"{build.field_path}")
    cond = condition.encode(labels, build.labels)
    randomness_seed = _seed(build, name)
    fingerprint = _fingerprint(entry, features, condition, x, cond, randomness_seed)
    prepared = build.prepared_payload(STATE_KIND, STATE_VERSION)
    if prepared is None:
        model, facts = _trained(entry, features, x, cond, randomness_seed)
    else:
        model, facts = _loaded(prepared, build, fingerprint, condition, entry.latent_dim)
    eligible = row_ids[selected_rows(build, name, row_ids)]
    total = min(entry.samples, entry.max_rows) if entry.max_rows else entry.samples
    counts = shares(total if len(eligible) else 0, len(eligible))
    quota = {int(r): int(c) for r, c in zip(eligible.tolist(), counts.tolist(), strict=True) if c}
    if not len(eligible):
        log.warning("gan: no sample row is selected by the augmenter's fraction; it generates nothing",
                    extra={"augmenter": name, "fraction": entry.fraction})
    summary = {
        "device": facts["device"], "trainingRows": len(x), "features": features,
        "conditioning": condition.describe(), "epochs": entry.epochs, "batchSize": entry.batch_size,
        "latentDim": entry.latent_dim, "trainingSeconds": facts["trainingSeconds"], "samples": sum(quota.values()),
        "sourceRows": len(quota), "fidelity": facts["fidelity"],
        **({"prepared": True} if prepared is not None else {}),
    }
    quality = summary["fidelity"]
    log.info("gan loaded from the analysis step" if prepared is not None else "gan trained",
             extra={"augmenter": name, **{k: v for k, v in summary.items() if k != "fidelity"},
                    "classifier_auc": quality["classifierAuc"], "wasserstein1_mean": quality["wasserstein1"]["mean"]})
    return GanAugmenter(name, model, features, condition, build.labels, build.roles.label, quota, summary,
                        fingerprint)


def _trained(entry: GanSpec, features: Sequence[str], x: NDArray[np.float64], cond: NDArray[np.float64],
             seed: int) -> tuple[TabularGan, dict[str, Any]]:
    """Train the model and measure its fidelity: (model, the summary's training facts)."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.monotonic()
    model = train_gan(x, cond, latent_dim=entry.latent_dim, epochs=entry.epochs, batch_size=entry.batch_size,
                      seed=seed, device=device)
    seconds = time.monotonic() - started
    rng = np.random.Generator(np.random.PCG64(seed ^ 0xF1DE))
    pick = np.sort(rng.choice(len(x), size=min(len(x), FIDELITY_ROWS), replace=False))
    fake = model.generate(rng.standard_normal((len(pick), entry.latent_dim)), cond[pick])
    quality = fidelity(x[pick], fake, cond[pick], features, seed)
    return model, {"device": device.type, "trainingSeconds": round(seconds, 3), "fidelity": quality}


def _fingerprint(entry: GanSpec, features: Sequence[str], condition: Condition, x: NDArray[np.float64],
                 cond: NDArray[np.float64], seed: int) -> str:
    """Digest of everything the trained model depends on: a loaded model must be the one this shard
    would have trained, or its rows would differ from a run that trained it."""
    settings = {"features": list(features), "classes": list(condition.classes), "mean": condition.mean,
                "scale": condition.scale, "latentDim": entry.latent_dim, "epochs": entry.epochs,
                "batchSize": entry.batch_size, "hidden": HIDDEN, "seed": seed}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8"))
    for array in (x, cond):
        digest.update(repr(array.shape).encode("ascii"))
        digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return digest.hexdigest()


def _model_bytes(model: TabularGan, condition: Condition) -> bytes:
    """``torch.save`` of the generator's float64 layers, the standardisation and the condition: tensors,
    numbers and strings only, so loading needs no pickled objects (``weights_only=True``)."""
    import torch

    state: dict[str, Any] = {"latentDim": model.latent_dim, "layers": len(model.layers),
                             "mean": torch.from_numpy(np.ascontiguousarray(model.mean, dtype=np.float64)),
                             "scale": torch.from_numpy(np.ascontiguousarray(model.scale, dtype=np.float64)),
                             "conditionClasses": list(condition.classes), "conditionMean": condition.mean,
                             "conditionScale": condition.scale}
    for k, (weight, bias) in enumerate(model.layers):
        state[f"layer{k}.weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float64))
        state[f"layer{k}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float64))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _loaded(prepared: PreparedPayload, build: BuildContext, fingerprint: str, condition: Condition,
            latent_dim: int) -> tuple[TabularGan, dict[str, Any]]:
    """The model the analysis step trained, after checking it is the one this spec and sample give."""
    import pickle

    import torch

    meta = prepared.meta
    if meta.get("fingerprint") != fingerprint:
        raise build.stale_state("another sample, features, labels or gan settings than this shard's analysis")
    try:
        state = torch.load(io.BytesIO(prepared.payload), map_location="cpu", weights_only=True)
        layers = tuple((_array(state[f"layer{k}.weight"]), _array(state[f"layer{k}.bias"]))
                       for k in range(int(state["layers"])))
        model = TabularGan(layers, _array(state["mean"]), _array(state["scale"]), int(state["latentDim"]))
        stored = Condition(tuple(str(c) for c in state["conditionClasses"]), float(state["conditionMean"]),
                           float(state["conditionScale"]))
        facts = {**{key: meta[key] for key in _TRAINING_FACTS}, "trainingSeconds": 0.0}
    except (RuntimeError, EOFError, OSError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as err:
        raise ConfigError(f"{build.field_path}: the prepared gan state does not load ({type(err).__name__}: {err}); "
                          "rerun the analysis step") from err
    if stored != condition or model.latent_dim != latent_dim:
        raise build.stale_state("another condition or latent size than this spec's")
    return model, facts


def _array(tensor: Any) -> NDArray[np.float64]:
    import torch

    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float64:
        raise TypeError(f"expected a float64 tensor, found {type(tensor).__name__}")
    out: NDArray[np.float64] = tensor.numpy().copy()
    return out


def _seed(build: BuildContext, name: str) -> int:
    """The augmenter's training seed: from the run seed and its name, like its row streams."""
    return RowRandomness(build.spec.seed, name).derived_seed("gan") & 0x7FFF_FFFF_FFFF
