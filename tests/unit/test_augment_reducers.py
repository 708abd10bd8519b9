"""The first pass's reducers: each learns its fact, and merging two reducers that read two halves of
a source gives what one reducer over the whole source gives (``merge(a, b) == reduce(a + b)``)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pytest

from sampleforge.api.augmentation import AugmentationRunSpec, Preprocess
from sampleforge.jobs.augment import reducers
from sampleforge.jobs.augment.dedup import item_repr, pair_hashes
from sampleforge.jobs.augment.knowledge import DatasetKnowledge, FirstPass, learn
from sampleforge.jobs.augment.preprocess import Cleaner
from sampleforge.jobs.augment.randomness import RowRandomness
from sampleforge.jobs.augment.reducers import (
    AttributeValues,
    BottomK,
    CleanBatch,
    DenseColumns,
    ItemPoolReducer,
    LabelCounts,
    MaxRowsHistogram,
    Reducer,
    RowSample,
    SelectionBudget,
    SelectionHistograms,
    SourcePairs,
)
from sampleforge.jobs.augment.rows import ColumnRoles, RowBatch
from sampleforge.jobs.augment.source import RawBatch

ROLES = ColumnRoles(query="q", item="t", label="y", attributes=("brand", "color"), dense=("price", "weight"),
                    image="img", id="id")
R = TypeVar("R", bound=Reducer)


def _columns(n: int, start: int = 0, seed: int = 0) -> dict[str, list[Any]]:
    """``n`` rows with repeated items (so the item pool and attribute values have duplicates),
    integer-valued dense features (so their sums are exact in any order) and int labels."""
    rng = random.Random(seed)
    brands = ["Nike", "NIKE", "adidas", "Puma", None, ""]
    return {
        "id": [f"r{start + i}" for i in range(n)],
        "q": [f"query {rng.randrange(50)}" for _ in range(n)],
        "t": [f"shoe {rng.randrange(40)}" for _ in range(n)],
        "y": [rng.randrange(3) for _ in range(n)],
        "brand": [rng.choice(brands) for _ in range(n)],
        "color": [rng.choice(["red", "blue", None]) for _ in range(n)],
        "price": [float(rng.randrange(1, 500)) for _ in range(n)],
        "weight": [float(rng.randrange(100, 2000)) for _ in range(n)],
        "img": [f"s3://b/img/{rng.randrange(40)}.jpg" for _ in range(n)],
    }


def _batch(n: int, start: int = 0, seed: int = 0) -> CleanBatch:
    columns = _columns(n, start, seed)
    return CleanBatch(RowBatch(ROLES, np.arange(start, start + n, dtype=np.int64), columns))


#: Three batches of a source, in reading order: the first reducer reads BATCHES[:2], the second the rest.
BATCHES = [_batch(300, 0, 1), _batch(250, 300, 2), _batch(400, 550, 3)]


def _merged_and_whole(make: Callable[[], R]) -> tuple[R, R]:
    """(a reducer of the first two batches merged with one of the third, one reducer of all three)."""
    first, second, whole = make(), make(), make()
    for batch in BATCHES[:2]:
        first.add(batch)
    second.add(BATCHES[2])
    first.merge(second)
    for batch in BATCHES:
        whole.add(batch)
    return first, whole


def _spec(augmenters: list[dict[str, Any]], seed: int = 3) -> AugmentationRunSpec:
    return AugmentationRunSpec.model_validate({
        "storage": {"endpoint": "minio:9000", "credentialsSecret": "s"},
        "source": {"uri": "s3://data/train.parquet",
                   "columns": {"query": "q", "item": "t", "label": "y", "id": "id", "attributes": ["brand", "color"],
                               "denseFeatures": ["price", "weight"], "image": "img"}},
        "augmenters": augmenters, "output": {"uri": "s3://data/out/"}, "seed": seed})


# --- BottomK ---------------------------------------------------------------------------------------------


def test_bottom_k_merge_is_one_pass_over_both_parts_first_payload_kept() -> None:
    keys = random.Random(4).sample(range(10**9), 3000)
    shared = keys[:50]  # offered by both parts, with different payloads: the first part's wins
    part_a, part_b = keys[:1500], shared + keys[1500:]
    a, b, whole = BottomK(100), BottomK(100), BottomK(100)
    for key in part_a:
        a.offer(key, f"a{key}")
        whole.offer(key, f"a{key}")
    for key in part_b:
        b.offer(key, f"b{key}")
        whole.offer(key, f"b{key}")
    a.merge(b)
    assert a.result() == whole.result()
    assert [k for k, _ in a.result()] == sorted(keys)[:100]
    assert all(payload == f"a{key}" for key, payload in a.result() if key in set(shared))


# --- labels ----------------------------------------------------------------------------------------------


def test_label_counts_count_by_string_form_in_the_narrowest_type() -> None:
    counts = LabelCounts()
    for batch in BATCHES:
        counts.add(batch)
    labels = counts.result()
    expected: dict[str, int] = {}
    for batch in BATCHES:
        for value in batch.rows.labels:
            expected[str(value)] = expected.get(str(value), 0) + 1
    assert labels.kind == "int" and dict(labels.counts) == dict(sorted(expected.items()))
    floats = LabelCounts()
    floats.add(CleanBatch(RowBatch(ROLES, np.arange(3, dtype=np.int64), {"y": [1, 0.5, 1.0]})))
    assert floats.result().kind == "float" and dict(floats.result().counts) == {"0.5": 1, "1.0": 2}


def test_label_counts_merge() -> None:
    merged, whole = _merged_and_whole(LabelCounts)
    assert merged.result() == whole.result()


# --- dense columns ---------------------------------------------------------------------------------------


def test_dense_columns_are_the_exact_moments_of_every_row() -> None:
    dense = DenseColumns(ROLES.dense, Preprocess(dense_normalization="standard"))
    for batch in BATCHES:
        dense.add(batch)
    values = np.array([[row[d] for d in ROLES.dense] for b in BATCHES for row in
                       (b.rows.row(i) for i in range(len(b.rows)))])
    assert dense.rows == len(values)
    assert np.array_equal(dense.total, values.sum(axis=0)) and np.array_equal(dense.low, values.min(axis=0))
    stats = dense.result()
    assert [f.mean for f in stats.features] == pytest.approx(values.mean(axis=0).tolist())
    assert stats.sample_rows == len(values)  # a small source is sampled whole


def test_dense_columns_merge() -> None:
    options = Preprocess(dense_normalization="standard", clip_outliers={"method": "quantile", "lower": 0.05,
                                                                         "upper": 0.95})
    merged, whole = _merged_and_whole(lambda: DenseColumns(ROLES.dense, options))
    # Integer-valued features: the sums are exact whatever their order, so the statistics are equal.
    assert merged.result() == whole.result()


# --- attribute values ------------------------------------------------------------------------------------


def test_attribute_values_are_distinct_non_empty_first_spelling_kept() -> None:
    values = AttributeValues(ROLES.attributes)
    for batch in BATCHES:
        values.add(batch)
    found = values.result()
    assert sorted(found["color"]) == ["blue", "red"]
    assert len([v for v in found["brand"] if v.lower() == "nike"]) == 1  # Nike and NIKE are one value
    assert "" not in found["brand"] and None not in found["brand"]
    first_nike = next(v for b in BATCHES for v in b.rows.columns["brand"] if v and v.lower() == "nike")
    assert first_nike in found["brand"]


def test_attribute_values_merge() -> None:
    merged, whole = _merged_and_whole(lambda: AttributeValues(ROLES.attributes))
    assert merged.result() == whole.result()


# --- row sample ------------------------------------------------------------------------------------------


def test_row_sample_is_every_row_of_a_small_source_in_row_order() -> None:
    sample = RowSample(ROLES)
    for batch in reversed(BATCHES):
        sample.add(batch)
    rows = sample.result()
    assert rows.row_ids.tolist() == list(range(950))
    assert rows.row(7) == BATCHES[0].rows.row(7)


def test_row_sample_merge_with_a_bound_smaller_than_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reducers, "SAMPLE_ROWS", 120)
    merged, whole = _merged_and_whole(lambda: RowSample(ROLES))
    result = merged.result()
    assert len(result) == 120
    assert result.row_ids.tolist() == whole.result().row_ids.tolist()
    assert result.columns == whole.result().columns


# --- item pool -------------------------------------------------------------------------------------------


def test_item_pool_holds_each_distinct_item_once_from_its_first_row() -> None:
    pool_reducer = ItemPoolReducer(ROLES)
    for batch in BATCHES:
        pool_reducer.add(batch)
    pool = pool_reducer.result()
    first: dict[str, int] = {}
    for batch in BATCHES:
        for i, text in enumerate(batch.item_reprs):
            first.setdefault(text.lower(), int(batch.rows.row_ids[i]))
    assert len(pool) == len(first)
    assert sorted(p.row_id for p in pool) == sorted(first.values())
    assert list(pool.keys) == sorted(pool.keys)
    item = pool[0]
    row = next(b.rows.row(int(np.flatnonzero(b.rows.row_ids == item.row_id)[0])) for b in BATCHES
               if item.row_id in b.rows.row_ids)
    assert (item.item, item.attributes, item.image) == (row["t"], {"brand": row["brand"], "color": row["color"]},
                                                        row["img"])


def test_item_pool_merge() -> None:
    merged, whole = _merged_and_whole(lambda: ItemPoolReducer(ROLES))
    pool, expected = merged.result(), whole.result()
    assert list(pool) == list(expected)
    assert np.array_equal(pool.keys, expected.keys)


# --- source pairs ----------------------------------------------------------------------------------------


def test_source_pairs_hold_every_query_and_item_with_attributes() -> None:
    pairs = SourcePairs()
    for batch in BATCHES:
        pairs.add(batch)
    found = pairs.result()
    rows = BATCHES[1].rows
    reprs = [item_repr(rows.items[i], rows.attributes(i)) for i in range(len(rows))]
    assert found.contains(pair_hashes(rows.queries, reprs)).all()
    assert not found.contains(pair_hashes(["never asked"], ["shoe 1"])).any()


def test_source_pairs_merge() -> None:
    merged, whole = _merged_and_whole(SourcePairs)
    assert np.array_equal(merged.result()._sorted, whole.result()._sorted)


# --- selection -------------------------------------------------------------------------------------------


def test_max_rows_histogram_merge() -> None:
    make = lambda: MaxRowsHistogram(RowRandomness(9, "typo"), fraction=0.8, max_rows=300, per_row=2)
    a, b, whole = make(), make(), make()
    rows = np.arange(20_000, dtype=np.int64)
    a.add(rows[:12_000])
    b.add(rows[12_000:])
    whole.add(rows)
    a.merge(b)
    assert np.array_equal(a.counts, whole.counts) and a.threshold() == whole.threshold() < 0.8


def test_selection_budgets_lower_the_fraction_only_for_max_rows_and_never_for_rebalance() -> None:
    spec = _spec([{"type": "typo", "fraction": 0.5, "maxRows": 20, "perRow": 2},
                  {"type": "randomSwap", "fraction": 0.3},
                  {"type": "rebalance", "targetDistribution": {"0": 0.5, "1": 0.5}, "maxRows": 5}])
    selection = SelectionHistograms(spec)
    for batch in BATCHES:
        selection.add(batch)
    budgets = selection.result()
    assert list(budgets) == ["typo", "randomSwap", "rebalance"]
    assert budgets["randomSwap"] == SelectionBudget(0.3, 0.3, None, 1)  # perRow defaults to 1
    assert budgets["rebalance"].threshold == budgets["rebalance"].fraction  # bounded by its rates instead
    typo = budgets["typo"]
    assert typo.threshold < 0.5 and (typo.max_rows, typo.per_row) == (20, 2)
    ids = np.concatenate([b.rows.row_ids for b in BATCHES])
    assert (RowRandomness(spec.seed, "typo").uniform(ids, "select") < typo.threshold).sum() <= 10


def test_selection_histograms_merge() -> None:
    spec = _spec([{"type": "typo", "fraction": 0.5, "maxRows": 20}, {"type": "charNoise", "maxRows": 300}])
    merged, whole = _merged_and_whole(lambda: SelectionHistograms(spec))
    assert merged.result() == whole.result()


# --- all of them: the first pass ------------------------------------------------------------------------


def _same_knowledge(a: DatasetKnowledge, b: DatasetKnowledge) -> None:
    assert (a.object_rows, a.total_rows, a.valid_rows, a.rejected_rows) == \
        (b.object_rows, b.total_rows, b.valid_rows, b.rejected_rows)
    assert (a.labels, a.dense, a.attribute_values, a.selection) == (b.labels, b.dense, b.attribute_values, b.selection)
    assert list(a.item_pool) == list(b.item_pool)
    assert np.array_equal(a.source_pairs._sorted, b.source_pairs._sorted)
    assert a.sample is not None and b.sample is not None
    assert a.sample.row_ids.tolist() == b.sample.row_ids.tolist() and a.sample.columns == b.sample.columns
    assert a.summary() == b.summary()


def test_first_passes_of_two_readers_merge_into_what_one_pass_learns() -> None:
    spec = _spec([{"type": "typo", "maxRows": 50}, {"type": "hardNegative"}])
    needs = frozenset({"itemPool", "attributeValues", "sample"})
    raws = [RawBatch(0, _columns(300, 0, 1), 300), RawBatch(300, _columns(200, 300, 2), 200),
            RawBatch(500, _columns(250, 500, 3), 250)]
    raws[1].columns["q"][5] = "  "  # set aside while cleaning (empty query): counted as rejected
    whole = learn(iter(raws), [750], ROLES, spec, needs)
    cleaner = Cleaner(ROLES, spec.preprocess, spec.filters.pii_redaction)
    first, second = FirstPass(ROLES, spec, needs), FirstPass(ROLES, spec, needs)
    for part, raw in zip((first, first, second), raws, strict=True):
        batch, rejects = cleaner.clean(raw)
        part.add(raw.size, batch, len(rejects))
    first.merge(second)
    merged = first.knowledge([750])
    assert merged.rejected_rows == 1 and merged.valid_rows == 749
    _same_knowledge(merged, whole)
