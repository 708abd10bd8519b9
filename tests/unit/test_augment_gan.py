"""The ``gan`` augmenter: a conditional GAN that learns a known distribution, is deterministic in the
seed, spreads exactly ``samples`` rows over the shards, and reports fidelity metrics that tell a good
generator from a bad one."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from sampleforge.api.augmentation import AugmentationRunSpec
from sampleforge.jobs.augment.catalog import build_augmenters, needs_of
from sampleforge.jobs.augment.errors import ConfigError
from sampleforge.jobs.augment.gan import Condition, shares
from sampleforge.jobs.augment.knowledge import DatasetKnowledge, learn
from sampleforge.jobs.augment.labels import Labels
from sampleforge.jobs.augment.preprocess import Cleaner
from sampleforge.jobs.augment.protocol import BatchPlan
from sampleforge.jobs.augment.randomness import RowRandomness
from sampleforge.jobs.augment.rows import ColumnRoles, RowBatch
from sampleforge.jobs.augment.source import RawBatch
from sampleforge.jobs.augment.tabulargan import fidelity, roc_auc, train_gan

ROLES = ColumnRoles(query="q", item="t", label="y", dense=("price", "ctr", "age"))


def _mixture(n: int, seed: int = 0, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two classes, each a correlated 2-D Gaussian with its own mean and correlation."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n) if y is None else y
    a = rng.multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], n)
    b = rng.multivariate_normal([3, 2], [[1, -0.5], [-0.5, 1]], n)
    return np.where(y[:, None] == 0, a, b), np.eye(2)[y], y


def test_a_trained_gan_is_hard_to_tell_from_real_and_a_trivial_generator_is_not() -> None:
    x, cond, y = _mixture(800)
    model = train_gan(x, cond, latent_dim=8, epochs=40, batch_size=128, seed=1, hidden=32)
    noise = np.random.default_rng(5).standard_normal((len(x), 8))
    fake = model.generate(noise, cond)
    good = fidelity(x, fake, cond, ["a", "b"], seed=3)
    # Trivially bad: one Gaussian with the right marginal means and deviations, blind to the label.
    trivial = np.random.default_rng(6).standard_normal(x.shape) * x.std(axis=0) + x.mean(axis=0)
    bad = fidelity(x, trivial, cond, ["a", "b"], seed=3)
    assert good["classifierAuc"] < 0.65 and bad["classifierAuc"] > 0.8
    assert good["wasserstein1"]["max"] < 0.2
    assert good["correlationDiff"]["meanAbs"] < 0.1 < bad["correlationDiff"]["meanAbs"]
    # The condition works: each class's generated mean is that class's mean.
    for label, mean in ((0, [0, 0]), (1, [3, 2])):
        assert np.abs(fake[y == label].mean(axis=0) - mean).max() < 0.4


def test_fidelity_of_a_fresh_draw_is_near_perfect_and_of_a_shift_is_not() -> None:
    x, cond, y = _mixture(400, seed=2)
    same = fidelity(x, x.copy(), cond, ["a", "b"], seed=1)
    assert same["wasserstein1"]["max"] == 0.0 and same["ks"]["max"] == 0.0
    assert same["correlationDiff"]["frobenius"] == 0.0
    fresh = fidelity(x, _mixture(400, seed=9, y=y)[0], cond, ["a", "b"], seed=1)
    assert 0.4 < fresh["classifierAuc"] < 0.62
    shifted = fidelity(x, x + x.std(axis=0), cond, ["a", "b"], seed=1)
    assert shifted["wasserstein1"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert shifted["classifierAuc"] > 0.75


def test_training_is_deterministic_in_the_seed() -> None:
    x, cond, _ = _mixture(200, seed=4)
    noise = np.random.default_rng(0).standard_normal((50, 4))

    def run(seed: int) -> bytes:
        model = train_gan(x, cond, latent_dim=4, epochs=3, batch_size=64, seed=seed, hidden=16)
        return model.generate(noise, cond[:50]).tobytes()

    assert run(11) == run(11) != run(12)


def test_roc_auc_matches_the_mann_whitney_definition_with_ties() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 300).astype(float)  # many ties
    positive = rng.random(300) < 0.4
    assert roc_auc(scores, positive) == pytest.approx(sklearn_metrics.roc_auc_score(positive, scores))
    assert roc_auc(scores, np.ones(300, dtype=bool)) == 0.5


def test_shares_add_up_exactly_and_differ_by_at_most_one() -> None:
    for total, rows in ((37, 10), (5, 9), (1_000_000, 7), (0, 3)):
        split = shares(total, rows)
        assert len(split) == rows and int(split.sum()) == total and int(split.max() - split.min()) <= 1
    assert len(shares(10, 0)) == 0


def test_condition_is_one_hot_for_few_labels_and_a_number_for_many() -> None:
    assert Condition.fit(Labels("int", {"0": 5, "1": 2}), [0, 1], "f").encode([1, 0], Labels("int")).tolist() == \
        [[0.0, 1.0], [1.0, 0.0]]
    many = Labels("float", {str(float(v)): 1 for v in range(100)})
    condition = Condition.fit(many, [float(v) for v in range(100)], "f")
    assert condition.width == 1 and condition.encode([49.5], many)[0, 0] == pytest.approx(0.0)
    with pytest.raises(ConfigError, match=r"spec.augmenters\[0\].*100 distinct text labels"):
        Condition.fit(Labels("string", {f"c{v}": 1 for v in range(100)}), [], "spec.augmenters[0]")


# --- the augmenter as the pipeline builds and runs it --------------------------------------------------


def _spec(augmenter: dict[str, Any]) -> AugmentationRunSpec:
    return AugmentationRunSpec.model_validate({
        "storage": {"endpoint": "minio:9000", "credentialsSecret": "s"},
        "source": {"uri": "s3://data/train.parquet",
                   "columns": {"query": "q", "item": "t", "label": "y", "denseFeatures": list(ROLES.dense)}},
        "preprocess": {"denseNormalization": "standard"},
        "augmenters": [augmenter], "output": {"uri": "s3://data/out/"}, "seed": 5})


def _rows(n: int) -> dict[str, list[Any]]:
    """Raw rows: prices in the hundreds (the first pass sees them unnormalised), labels 0/1."""
    rng = np.random.default_rng(8)
    y = (rng.random(n) < 0.3).astype(int)
    return {"q": [f"query {i % 17}" for i in range(n)], "t": [f"item {i}" for i in range(n)], "y": y.tolist(),
            "price": (200 + 80 * y + 30 * rng.standard_normal(n)).tolist(),
            "ctr": (0.02 + 0.01 * rng.random(n)).tolist(), "age": rng.integers(18, 70, n).astype(float).tolist()}


def _built(spec: AugmentationRunSpec, columns: dict[str, list[Any]]) -> tuple[Any, DatasetKnowledge]:
    n = len(columns["q"])
    knowledge = learn(iter([RawBatch(0, columns, n)]), [n], ROLES, spec, needs_of(spec))
    [(_, augmenter)] = build_augmenters(spec, roles=ROLES, labels=knowledge.labels, knowledge=knowledge,
                                               store=None, models=None)
    return augmenter, knowledge


def _run(augmenter: Any, spec: AugmentationRunSpec, knowledge: DatasetKnowledge, columns: dict[str, list[Any]],
         batch_rows: int) -> tuple[list[Any], list[RowBatch]]:
    """The augmenter over the source in batches of ``batch_rows``, planned as the pipeline plans."""
    cleaner = Cleaner(ROLES, spec.preprocess, False, knowledge.labels.kind, knowledge.dense)
    name = augmenter.name
    budget = knowledge.selection[name]
    out, batches = [], []
    n = len(columns["q"])
    for start in range(0, n, batch_rows):
        raw = RawBatch(start, {c: v[start:start + batch_rows] for c, v in columns.items()}, min(batch_rows, n - start))
        batch, _ = cleaner.clean(raw)
        random = RowRandomness(spec.seed, name)
        plan = BatchPlan(random.uniform(batch.row_ids, "select") < min(budget.fraction, budget.threshold),
                         budget.per_row, random)
        out += augmenter.augment(batch, plan)
        batches.append(batch)
    return out, batches


def test_the_augmenter_generates_exactly_samples_rows_whatever_the_batches() -> None:
    spec = _spec({"type": "gan", "samples": 37, "epochs": 2, "batchSize": 64, "latentDim": 4,
                  "features": ["price", "ctr"], "fraction": 0.5})
    columns = _rows(300)
    augmenter, knowledge = _built(spec, columns)
    small, batches = _run(augmenter, spec, knowledge, columns, 64)
    large, _ = _run(augmenter, spec, knowledge, columns, 300)
    assert len(small) == 37 and small == large  # same rows, same values, whatever the batching
    labels = {int(r): y for b in batches for r, y in zip(b.row_ids, b.labels, strict=True)}
    sample_ids = set(knowledge.sample.row_ids.tolist()) if knowledge.sample is not None else set()
    for row in small:
        assert row.source_row in sample_ids and row.label_rule == "condition"
        assert set(row.changes) == {"price", "ctr", "y"} and row.changes["y"] == labels[row.source_row]
        # Generated in the output's space: standard-normalised, not raw prices in the hundreds.
        assert abs(row.changes["price"]) < 10
    assert len({(r.source_row, r.variant) for r in small}) == 37


def test_the_summary_carries_training_and_fidelity() -> None:
    spec = _spec({"type": "gan", "samples": 10, "epochs": 2, "batchSize": 64, "latentDim": 4})
    augmenter, _ = _built(spec, _rows(200))
    summary = augmenter.summary()
    assert summary["device"] in ("cpu", "cuda") and summary["trainingRows"] == 200 and summary["samples"] == 10
    assert summary["features"] == ["price", "ctr", "age"] and summary["conditioning"].startswith("label, one-hot")
    quality = summary["fidelity"]
    assert set(quality["wasserstein1"]["perFeature"]) == {"price", "ctr", "age"}
    assert 0.0 <= quality["classifierAuc"] <= 1.0 and math.isfinite(quality["correlationDiff"]["frobenius"])
    assert summary["trainingSeconds"] >= 0


def test_features_must_be_dense_feature_columns() -> None:
    spec = _spec({"type": "gan", "samples": 10, "epochs": 1, "features": ["price", "colour"]})
    with pytest.raises(ConfigError, match=r"spec.augmenters\[0\].features names colour"):
        _built(spec, _rows(50))
