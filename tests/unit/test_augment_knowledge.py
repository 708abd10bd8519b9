"""Whole-source facts: bottom-k samples, the maxRows threshold, rebalance rates, dense statistics
and the cleaner that both passes share."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sampleforge.api.augmentation import Preprocess
from sampleforge.jobs.augment.pii import PiiRedactor
from sampleforge.jobs.augment.preprocess import Cleaner, fit_dense_stats
from sampleforge.jobs.augment.randomness import RowRandomness
from sampleforge.jobs.augment.rebalance import rebalance_rates
from sampleforge.jobs.augment.reducers import HISTOGRAM_BINS, BottomK, MaxRowsHistogram
from sampleforge.jobs.augment.rows import ColumnRoles
from sampleforge.jobs.augment.source import Malformed, RawBatch


def test_bottom_k_is_the_k_smallest_whatever_the_order() -> None:
    keys = random.Random(1).sample(range(10**9), 5000)
    results = []
    for seed in range(3):
        order = keys[:]
        random.Random(seed).shuffle(order)
        bottom = BottomK(100)
        for key in order:
            bottom.offer(key, lambda key=key: str(key))
        results.append(bottom.result())
    assert results[0] == results[1] == results[2]
    assert [k for k, _ in results[0]] == sorted(keys)[:100]
    assert results[0][0][1] == str(min(keys))


def test_bottom_k_keeps_the_first_payload_of_a_key() -> None:
    bottom = BottomK(3)
    bottom.offer(7, "Nike")
    bottom.offer(7, "NIKE")
    assert bottom.result() == [(7, "Nike")]


@pytest.mark.parametrize(("max_rows", "per_row"), [(1, 1), (100, 1), (1000, 3), (50_000, 1)])
def test_max_rows_threshold_never_exceeds_the_cap_and_nearly_reaches_it(max_rows: int, per_row: int) -> None:
    random_ = RowRandomness(9, "typo")
    hist = MaxRowsHistogram(random_, fraction=0.8, max_rows=max_rows, per_row=per_row)
    rows = np.arange(40_000)
    for start in range(0, len(rows), 7000):
        hist.add(rows[start : start + 7000])
    threshold = hist.threshold()
    selected = int((random_.uniform(rows, "select") < min(0.8, threshold)).sum())
    cap = max(1, max_rows // per_row)
    expected = min(cap, int((random_.uniform(rows, "select") < 0.8).sum()))
    assert selected <= cap
    assert selected >= expected - 40_000 // HISTOGRAM_BINS - 2


def test_rebalance_rates() -> None:
    counts = {"0": 100, "1": 500, "2": 50}
    rates, unreachable = rebalance_rates(counts, {"0": 1 / 3, "1": 1 / 3, "2": 1 / 3}, "oversample")
    assert unreachable == []
    assert rates["1"] == pytest.approx(0.0)
    assert rates["0"] == pytest.approx(4.0) and rates["2"] == pytest.approx(9.0)
    halved, _ = rebalance_rates(counts, {"0": 1 / 3, "1": 1 / 3, "2": 1 / 3}, "oversample", fraction=0.5)
    assert halved["0"] == pytest.approx(8.0)
    capped, _ = rebalance_rates(counts, {"0": 1 / 3, "1": 1 / 3, "2": 1 / 3}, "oversample", max_rows=130)
    assert capped["0"] * 100 + capped["2"] * 50 == pytest.approx(130)
    keep, _ = rebalance_rates(counts, {"0": 0.5, "1": 0.5}, "undersample")
    assert keep == {"0": pytest.approx(1.0), "1": pytest.approx(0.2)}
    _, missing = rebalance_rates(counts, {"0": 0.5, "7": 0.5}, "oversample")
    assert missing == ["7"]


def _dense(options: Preprocess, values: np.ndarray):  # type: ignore[no-untyped-def]
    return fit_dense_stats(["a", "b"], options, len(values), values.sum(axis=0), (values * values).sum(axis=0),
                           values.min(axis=0), values.max(axis=0), values)


def test_dense_statistics_match_numpy() -> None:
    rng = np.random.default_rng(0)
    values = np.column_stack([rng.normal(10, 2, 5000), rng.exponential(3, 5000)])
    values[0, 1] = 500.0  # an outlier
    stats = _dense(Preprocess(dense_normalization="standard",
                              clip_outliers={"method": "quantile", "lower": 0.01, "upper": 0.99}), values)
    low, high = np.quantile(values, 0.01, axis=0), np.quantile(values, 0.99, axis=0)
    clipped = np.clip(values, low, high)
    out = stats.transform(values)
    assert np.allclose(out, (clipped - clipped.mean(axis=0)) / clipped.std(axis=0))
    assert stats.features[1].max == 500.0 and stats.features[1].clip_high == pytest.approx(high[1])
    zscore = _dense(Preprocess(dense_normalization="minmax", clip_outliers={"method": "zscore", "z": 3}), values)
    bounds = values.mean(axis=0) + 3 * values.std(axis=0)
    assert zscore.features[1].clip_high == pytest.approx(bounds[1])
    scaled = zscore.transform(values)
    assert scaled.min() == pytest.approx(0.0) and scaled.max() == pytest.approx(1.0)
    constant = _dense(Preprocess(dense_normalization="standard"), np.ones((10, 2)))
    assert np.allclose(constant.transform(np.ones((3, 2))), 0.0)
    assert _dense(Preprocess(), values).is_identity


ROLES = ColumnRoles(query="q", item="t", label="y", attributes=("brand",), dense=("price",), id="id")


def test_cleaner_normalises_redacts_and_sets_aside_with_reasons() -> None:
    raw = RawBatch(first_row=100, size=6, source="s3://b/k.jsonl", malformed=[
        Malformed(100, "s3://b/k.jsonl", "invalid JSON (line 1): Expecting value", "{oops")],
        columns={"q": ["ＮＩＫＥ  shoes", "", "tv", "phone", "x", "bag"],
                 "t": ["Air\u3000Max", "t", "Sony TV", "call 13812345678", "y", "tote"],
                 "y": [1, 0, None, 2, 1, 0],
                 "brand": [" Nike ", None, "Sony", "", "b", "c"],
                 "price": [9.5, 1.0, 2.0, "3", "n/a", float("inf")],
                 "id": [1, 2, 3, 4, 5, 6]})
    cleaner = Cleaner(ROLES, Preprocess(), redact_pii=True, label_kind="int")
    redactor = PiiRedactor()
    batch, rejects = cleaner.clean(raw, redactor)
    assert batch.row_ids.tolist() == [100, 103]
    assert batch.queries == ["NIKE shoes", "phone"]
    assert batch.items == ["Air Max", "call [PHONE]"]
    assert batch.columns["brand"] == ["Nike", None]
    assert batch.columns["price"] == [9.5, 3.0]
    assert batch.columns["id"] == ["1", "4"]
    assert [(r.position, r.reason) for r in rejects] == [
        (100, "invalid JSON (line 1): Expecting value"), (101, "empty query (q)"), (102, "no label (y)"),
        (104, "dense feature price is missing or not a finite number"),
        (105, "dense feature price is missing or not a finite number")]
    assert redactor.counts == {"phone": 1}


def test_cleaner_keeps_empty_texts_when_told_and_labels_as_strings() -> None:
    raw = RawBatch(first_row=0, size=2, columns={"q": ["", "a"], "t": ["x", "y"], "y": [1, "2"], "brand": [None, None],
                                                  "price": [1, 2], "id": [None, 7]})
    batch, rejects = Cleaner(ROLES, Preprocess(drop_empty=False), False, "string").clean(raw)
    assert not rejects and batch.queries == ["", "a"] and batch.labels == ["1", "2"]
    assert batch.columns["id"] == [None, "7"]
