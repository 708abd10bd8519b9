"""``gan``: synthesise dense feature vectors with a conditional GAN trained on the source.

**Training.** The factory trains one generator / discriminator pair (MLPs, non-saturating GAN loss
with an R1 penalty on the discriminator, Adam) on the dense features of the first pass's row sample (``build.knowledge.sample``: uniform,
whole-source, the same in every shard), conditioned on the label. Every shard trains the same model:
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

**Fidelity** (in the manifest under ``augmenters.<name>.summary.fidelity`` and in the report),
measured on up to :data:`FIDELITY_ROWS` rows of the sample against as many generated rows with the
same labels, both standardised with the real rows' statistics:

* ``wasserstein1`` and ``ks`` per feature (mean and max over features, and each feature's value):
  distance between the real and generated marginal distributions, in standard deviations / as the
  two-sample Kolmogorov-Smirnov statistic;
* ``correlationDiff``: mean absolute and Frobenius difference of the real and generated correlation
  matrices (what marginals miss);
* ``classifierAuc``: ROC AUC of an MLP trained to tell real from generated rows (features and label)
  on 70 % of them, measured on the other 30 %: 0.5 means it cannot tell them apart, 1.0 that every
  generated row is recognisable.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # torch is imported on first use: a run without a gan never pays for it
    import torch
    from torch import nn

log = logging.getLogger(__name__)

__all__ = ["FIDELITY_ROWS", "MAX_CLASSES", "Condition", "GanAugmenter", "TabularGan", "fidelity", "train_gan"]

MAX_CLASSES = 64
HIDDEN = 256
FIDELITY_ROWS = 5000
LEAK = 0.2
#: Weight of the R1 penalty (squared gradient of the discriminator on real rows).
R1_WEIGHT = 10.0
_LEARNING_RATE = 1e-3
_BETAS = (0.5, 0.9)
_CLASSIFIER_STEPS = 200
_CLASSIFIER_HIDDEN = 64


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


# --- the model ------------------------------------------------------------------------------------


def _mlp(inputs: int, outputs: int, hidden: int) -> nn.Sequential:
    from torch import nn

    return nn.Sequential(nn.Linear(inputs, hidden), nn.LeakyReLU(LEAK), nn.Linear(hidden, hidden),
                         nn.LeakyReLU(LEAK), nn.Linear(hidden, outputs))


@dataclass(frozen=True)
class TabularGan:
    """A trained generator as float64 arrays: generating on the CPU in numpy makes a row's values
    independent of the device that trained it and of which other rows share the forward pass."""

    layers: tuple[tuple[NDArray[np.float64], NDArray[np.float64]], ...]
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    latent_dim: int

    def generate(self, noise: NDArray[np.float64], condition: NDArray[np.float64]) -> NDArray[np.float64]:
        """Rows of features (in the output's space) for rows of ``noise`` and ``condition``."""
        h = np.concatenate([noise, condition], axis=1)
        for k, (weight, bias) in enumerate(self.layers):
            h = h @ weight + bias
            if k < len(self.layers) - 1:
                h = np.where(h > 0, h, LEAK * h)
        out: NDArray[np.float64] = h * self.scale + self.mean
        return out

    @classmethod
    def from_module(cls, generator: nn.Sequential, mean: NDArray[np.float64], scale: NDArray[np.float64],
                    latent_dim: int) -> TabularGan:
        from torch import nn

        layers = tuple((m.weight.detach().cpu().double().numpy().T.copy(), m.bias.detach().cpu().double().numpy().copy())
                       for m in generator if isinstance(m, nn.Linear))
        return cls(layers, mean, scale, latent_dim)


def _standardisation(x: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    scale = x.std(axis=0) if len(x) else np.ones(x.shape[1])
    scale = np.where(np.isfinite(scale) & (scale > 1e-12), scale, 1.0)  # a constant feature: centre only
    return mean, scale


@contextmanager
def _cpu_threads(device: torch.device) -> Iterator[None]:
    """One intra-op thread while training on the CPU: these MLPs are far too small to gain from more
    (on a busy node extra threads cost ten times as much as they save), and one thread makes the
    float32 sums, so the model, the same on every node whatever its core count."""
    import torch

    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fork_rng(device: torch.device) -> Any:
    """Seed torch's global generator (which module initialisation uses) without disturbing anyone's."""
    import torch

    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def train_gan(x: NDArray[np.float64], condition: NDArray[np.float64], *, latent_dim: int, epochs: int,
              batch_size: int, seed: int, device: torch.device | None = None,
              hidden: int = HIDDEN) -> TabularGan:
    """Train a conditional GAN on rows ``x`` (features) with ``condition`` vectors; deterministic in ``seed``."""
    import torch

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n, d = x.shape
    if n == 0:
        raise ValueError("no rows to train on")
    mean, scale = _standardisation(x)
    width = condition.shape[1]
    with _fork_rng(device):
        torch.manual_seed(seed)
        generator = _mlp(latent_dim + width, d, hidden).to(device)
        discriminator = _mlp(d + width, 1, hidden).to(device)
    data = torch.as_tensor((x - mean) / scale, dtype=torch.float32, device=device)
    cond = torch.as_tensor(condition, dtype=torch.float32, device=device)
    order_rng = torch.Generator().manual_seed(seed)
    noise_rng = torch.Generator(device=device).manual_seed(seed ^ 0x5EED)
    batch = max(1, min(batch_size, n))
    with _cpu_threads(device):
        _train(generator, discriminator, data, cond, epochs=epochs, batch=batch, latent_dim=latent_dim,
               order_rng=order_rng, noise_rng=noise_rng)
    return TabularGan.from_module(generator, mean, scale, latent_dim)


def _train(generator: nn.Sequential, discriminator: nn.Sequential, data: torch.Tensor, cond: torch.Tensor, *,
           epochs: int, batch: int, latent_dim: int, order_rng: torch.Generator, noise_rng: torch.Generator) -> None:
    """The training loop: per mini-batch one discriminator step (logistic loss plus the R1 penalty
    on real rows), then one generator step (non-saturating loss).

    Why R1: without it the discriminator overshoots and the pair oscillates (a real-vs-generated
    classifier AUC of 0.75-0.9 on a two-Gaussian mixture after a thousand steps); with it the same
    run reaches about 0.51. WGAN-GP and spectral normalisation converged far slower here.
    """
    import torch
    from torch.nn import functional

    device, n = data.device, len(data)
    opt_g = torch.optim.Adam(generator.parameters(), lr=_LEARNING_RATE, betas=_BETAS)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=_LEARNING_RATE, betas=_BETAS)
    for _ in range(epochs):
        order = torch.randperm(n, generator=order_rng).to(device)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            real, c = data[idx].requires_grad_(True), cond[idx]
            noise = torch.randn(len(idx), latent_dim, generator=noise_rng, device=device)
            fake = generator(torch.cat([noise, c], dim=1))
            d_real = discriminator(torch.cat([real, c], dim=1))
            (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            d_fake = discriminator(torch.cat([fake.detach(), c], dim=1))
            loss_d = (functional.softplus(-d_real).mean() + functional.softplus(d_fake).mean()
                      + R1_WEIGHT / 2 * grad.pow(2).sum(dim=1).mean())
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            loss_g = functional.softplus(-discriminator(torch.cat([fake, c], dim=1))).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()


# --- fidelity -------------------------------------------------------------------------------------


def _ranks(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """1-based ranks, ties averaged (what the Mann-Whitney form of the AUC needs)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(average, counts)
    return ranks


def roc_auc(scores: NDArray[np.float64], positive: NDArray[np.bool_]) -> float:
    """ROC AUC of ``scores`` for the ``positive`` rows (0.5 when one class is absent)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return 0.5
    ranks = _ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _wasserstein1(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """W1 of two 1-D samples, through their quantile functions on a common grid."""
    grid = (np.arange(max(len(a), len(b))) + 0.5) / max(len(a), len(b))
    return float(np.mean(np.abs(np.quantile(a, grid) - np.quantile(b, grid))))


def _ks(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def _correlation(x: NDArray[np.float64]) -> NDArray[np.float64]:
    if x.shape[1] < 2:
        return np.ones((x.shape[1], x.shape[1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.asarray(np.corrcoef(x, rowvar=False), dtype=np.float64)  # 2-D: x has two columns or more
    return np.nan_to_num(corr)  # a constant column correlates with nothing


def _classifier_auc(real: NDArray[np.float64], fake: NDArray[np.float64], seed: int) -> float:
    """Held-out AUC of a small MLP that tells ``real`` from ``fake`` rows."""
    import torch
    from torch.nn import functional

    x = np.concatenate([real, fake])
    y = np.concatenate([np.ones(len(real)), np.zeros(len(fake))])
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(x))
    cut = int(0.7 * len(x))
    train, test = order[:cut], order[cut:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _mlp(x.shape[1], 1, _CLASSIFIER_HIDDEN)
    features = torch.as_tensor(x, dtype=torch.float32)
    targets = torch.as_tensor(y, dtype=torch.float32).unsqueeze(1)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    with _cpu_threads(torch.device("cpu")):
        for _ in range(_CLASSIFIER_STEPS):  # full batch: a few thousand rows of a few features
            loss = functional.binary_cross_entropy_with_logits(model(features[train]), targets[train])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            scores = model(features[test]).squeeze(1).double().numpy()
    return roc_auc(scores, y[test] > 0.5)


def fidelity(real: NDArray[np.float64], fake: NDArray[np.float64], condition: NDArray[np.float64],
             names: Sequence[str], seed: int) -> dict[str, Any]:
    """How close ``fake`` rows are to ``real`` ones with the same ``condition`` rows (see the module
    docstring); both are standardised with the real rows' statistics first."""
    mean, scale = _standardisation(real)
    r, f = (real - mean) / scale, (fake - mean) / scale
    w1 = {name: _wasserstein1(r[:, j], f[:, j]) for j, name in enumerate(names)}
    ks = {name: _ks(r[:, j], f[:, j]) for j, name in enumerate(names)}
    diff = _correlation(r) - _correlation(f)
    off = ~np.eye(len(names), dtype=bool)
    auc = _classifier_auc(np.concatenate([r, condition], axis=1), np.concatenate([f, condition], axis=1), seed)

    def spread(values: dict[str, float]) -> dict[str, Any]:
        return {"mean": _round(float(np.mean(list(values.values())))), "max": _round(max(values.values())),
                "perFeature": {k: _round(v) for k, v in values.items()}}

    return {
        "rows": len(real),
        "wasserstein1": spread(w1),
        "ks": spread(ks),
        "correlationDiff": {"meanAbs": _round(float(np.abs(diff[off]).mean()) if off.any() else 0.0),
                            "frobenius": _round(float(np.linalg.norm(diff)))},
        "classifierAuc": _round(auc),
        "classifier": "MLP (2 x 64) on standardised features and label, trained on 70 %, AUC on the other 30 %; "
                      "0.5 = indistinguishable",
    }


def _round(value: float) -> float:
    return float(f"{value:.6g}")


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
    """Which of ``row_ids`` the augmenter's budget selects: the pipeline's own rule (see ``ShardJob._plan``)."""
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
