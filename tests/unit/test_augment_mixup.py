"""The ``mixup`` augmenter: mixed features lie between the row and its partner, nearer the row; the
label follows the dominant row (integer labels) or is mixed with the same weight (float labels); the
output depends on the row alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sampleforge.api.augmentation import AugmentationRunSpec
from sampleforge.jobs.augment.catalog import build_augmenters, needs_of
from sampleforge.jobs.augment.knowledge import DatasetKnowledge, learn
from sampleforge.jobs.augment.mixup import Mixup
from sampleforge.jobs.augment.preprocess import Cleaner
from sampleforge.jobs.augment.protocol import BatchPlan, GeneratedRow
from sampleforge.jobs.augment.randomness import RowRandomness
from sampleforge.jobs.augment.rows import ColumnRoles, RowBatch
from sampleforge.jobs.augment.source import RawBatch

ROLES = ColumnRoles(query="q", item="t", label="y", dense=("price", "ctr", "age"))


def _spec(augmenter: dict[str, Any], preprocess: dict[str, Any] | None = None) -> AugmentationRunSpec:
    return AugmentationRunSpec.model_validate({
        "storage": {"endpoint": "minio:9000", "credentialsSecret": "s"},
        "source": {"uri": "s3://data/train.parquet",
                   "columns": {"query": "q", "item": "t", "label": "y", "denseFeatures": list(ROLES.dense)}},
        "preprocess": preprocess or {}, "augmenters": [augmenter], "output": {"uri": "s3://data/out/"}, "seed": 3})


def _rows(n: int, float_labels: bool = False) -> dict[str, list[Any]]:
    rng = np.random.default_rng(2)
    labels = rng.random(n).round(3).tolist() if float_labels else rng.integers(0, 3, n).tolist()
    return {"q": [f"q{i}" for i in range(n)], "t": [f"t{i}" for i in range(n)], "y": labels,
            "price": (100 + 50 * rng.standard_normal(n)).tolist(), "ctr": rng.random(n).tolist(),
            "age": rng.integers(18, 70, n).astype(float).tolist()}


def _run(spec: AugmentationRunSpec, columns: dict[str, list[Any]], batch_rows: int
         ) -> tuple[Mixup, list[GeneratedRow], dict[int, dict[str, Any]], DatasetKnowledge]:
    n = len(columns["q"])
    knowledge = learn(iter([RawBatch(0, columns, n)]), [n], ROLES, spec, needs_of(spec))
    [(_, mixup)] = build_augmenters(spec, roles=ROLES, labels=knowledge.labels, knowledge=knowledge,
                                           store=None, models=None)
    assert isinstance(mixup, Mixup)
    cleaner = Cleaner(ROLES, spec.preprocess, False, knowledge.labels.kind, knowledge.dense)
    budget = knowledge.selection[mixup.name]
    out: list[GeneratedRow] = []
    rows: dict[int, dict[str, Any]] = {}
    for start in range(0, n, batch_rows):
        batch: RowBatch = cleaner.clean(RawBatch(start, {c: v[start:start + batch_rows] for c, v in columns.items()},
                                                 min(batch_rows, n - start)))[0]
        random = RowRandomness(spec.seed, mixup.name)
        plan = BatchPlan(random.uniform(batch.row_ids, "select") < budget.fraction, budget.per_row, random)
        out += mixup.augment(batch, plan)
        rows.update({int(r): batch.row(i) for i, r in enumerate(batch.row_ids)})
    return mixup, out, rows, knowledge


def _weight_and_partner(generated: GeneratedRow, own: dict[str, Any], rows: dict[int, dict[str, Any]],
                        features: tuple[str, ...]) -> tuple[float, int]:
    """The (weight, partner row) that explain a mixed row exactly: every feature with one weight."""
    x = np.asarray([own[f] for f in features])
    mixed = np.asarray([generated.changes[f] for f in features])
    for row, partner in rows.items():
        p = np.asarray([partner[f] for f in features])
        if row == generated.source_row or np.allclose(x, p):
            continue
        weight = float(np.dot(mixed - p, x - p) / np.dot(x - p, x - p))
        if np.allclose(weight * x + (1 - weight) * p, mixed, rtol=0, atol=1e-9):
            return weight, row
    raise AssertionError(f"no partner explains row {generated.source_row}")


def test_mixed_features_lie_between_the_row_and_a_partner_nearer_the_row() -> None:
    spec = _spec({"type": "mixup", "alpha": 0.4, "perRow": 2, "fraction": 0.3},
                 {"denseNormalization": "standard"})
    _, out, rows, _ = _run(spec, _rows(120), 50)
    assert out and max(r.variant for r in out) == 1
    assert len(out) == 2 * len({r.source_row for r in out})
    for generated in out:
        own = rows[generated.source_row]
        weight, partner = _weight_and_partner(generated, own, rows, ROLES.dense)
        assert 0.5 <= weight <= 1.0 and partner != generated.source_row
        for f in ROLES.dense:
            low, high = sorted((own[f], rows[partner][f]))
            assert low - 1e-9 <= generated.changes[f] <= high + 1e-9
        assert generated.label_rule == "dominant" and generated.changes["y"] == own["y"]


def test_float_labels_are_mixed_with_the_features_weight() -> None:
    spec = _spec({"type": "mixup", "alpha": 1.0, "features": ["price", "ctr"]})
    mixup, out, rows, _ = _run(spec, _rows(80, float_labels=True), 80)
    assert mixup.label_rule == "mix" and out
    for generated in out:
        own = rows[generated.source_row]
        assert set(generated.changes) == {"price", "ctr", "y"}  # age is not among the features: kept
        weight, partner = _weight_and_partner(generated, own, rows, ("price", "ctr"))
        assert generated.changes["y"] == pytest.approx(weight * own["y"] + (1 - weight) * rows[partner]["y"])


def test_a_rows_variants_do_not_depend_on_the_batches() -> None:
    spec = _spec({"type": "mixup", "perRow": 3})
    _, small, _, _ = _run(spec, _rows(90), 16)
    _, large, _, _ = _run(spec, _rows(90), 90)
    assert small == large and len(small) == 270


def test_a_one_row_source_has_no_partner_and_makes_nothing() -> None:
    _, out, _, _ = _run(_spec({"type": "mixup"}), _rows(1), 1)
    assert out == []
