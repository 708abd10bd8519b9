"""Data for the quality benchmark (bench_quality.py): fixed, deterministic splits of the real public
datasets in ../shared/data, read in place.

* QBQTC (Chinese query-title relevance, grades 0/1/2; ``dev.json`` is the only file shipped). Almost
  every query has one title, so NDCG per query only means something for the ~1,100 queries with two
  or more titles. The held-out **test** split is a fixed set of such multi-title queries (whole
  queries, never split); the **validation** split used to tune the recipe is another, disjoint set of
  multi-title queries; every remaining row (other queries) is the **training pool**. No query occurs
  in two of the three.
* Walmart-Amazon (English product matching, 0/1, about 9 % positives): the official splits. Training
  slices come from ``train.txt``, recipe tuning uses ``valid.txt`` and the test split is a fixed
  random subset of ``test.txt``. The Walmart product is the query (title, with its brand and model
  number appended as ``| brand: ..`` text, mirroring how the fine-tune job renders the item), the
  Amazon product is the item (title column, brand and model number as attribute columns).

Training slices are nested (the 500-row slice is the first 500 rows of the 2,000-row one), drawn once
with a fixed seed; the benchmark's seeds vary augmentation and training, not the slice.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SAMPLEFORGE_SHARED_DATA") or REPO.parent / "shared" / "data")
SPLIT_SEED = 2026


@dataclass(frozen=True)
class DataSplits:
    name: str
    #: Training pool in a fixed random order; a slice of n rows is ``pool[:n]``.
    pool: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    #: AugmentationRun / FineTuneRun ``columns`` (camelCase).
    columns: dict[str, Any]
    description: str

    def slice(self, n: int) -> list[dict[str, Any]]:
        if n > len(self.pool):
            raise ValueError(f"{self.name}: slice of {n} rows asked, the training pool has {len(self.pool)}")
        return self.pool[:n]


def _take_queries(groups: list[list[dict[str, Any]]], rows: int) -> tuple[list[dict[str, Any]], int]:
    """Whole query groups from the front of ``groups`` until at least ``rows`` rows; rows, groups used."""
    out: list[dict[str, Any]] = []
    used = 0
    for group in groups:
        if len(out) >= rows:
            break
        out.extend(group)
        used += 1
    return out, used


def qbqtc(eval_rows: int, validation_rows: int) -> DataSplits:
    path = SHARED / "qbqtc" / "dev.json"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_query: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_query.setdefault(r["query"], []).append(
            {"query": r["query"], "title": r["title"], "label": int(r["label"])})
    rng = random.Random(SPLIT_SEED)
    multi = [g for g in by_query.values() if len(g) >= 2]
    rng.shuffle(multi)
    test, used = _take_queries(multi, eval_rows)
    validation, used_val = _take_queries(multi[used:], validation_rows)
    held = {g[0]["query"] for g in multi[: used + used_val]}
    pool = [r for q, g in by_query.items() if q not in held for r in g]
    rng.shuffle(pool)
    return DataSplits(
        "QBQTC", pool, validation, test, {"query": "query", "item": "title", "label": "label"},
        f"`qbqtc/dev.json` ({len(records):,} rows): test = {len(test)} rows of {used} held-out queries with 2+ "
        f"titles; validation = {len(validation)} rows of {used_val} other such queries; training pool = the "
        f"other {len(pool):,} rows (disjoint queries)")


_FIELD = re.compile(r"COL (\w+) VAL (.*?)(?= COL |$)")


def _walmart_side(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2).strip() for m in _FIELD.finditer(text.strip())}


def walmart_rows(split: str) -> list[dict[str, Any]]:
    rows = []
    for line in (SHARED / "walmart-amazon" / f"{split}.txt").read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        left, right = _walmart_side(parts[0]), _walmart_side(parts[1])
        query = left.get("title", "")
        for attribute in ("brand", "modelno"):
            if left.get(attribute):
                query += f" | {attribute}: {left[attribute]}"
        rows.append({"query": query, "title": right.get("title", ""), "brand": right.get("brand") or None,
                     "modelno": right.get("modelno") or None, "label": int(parts[2].strip())})
    return rows


def walmart_amazon(eval_rows: int, validation_rows: int) -> DataSplits:
    rng = random.Random(SPLIT_SEED)
    pool, validation, test = walmart_rows("train"), walmart_rows("valid"), walmart_rows("test")
    rng.shuffle(pool)
    rng.shuffle(validation)
    rng.shuffle(test)
    validation, test = validation[:validation_rows], test[:eval_rows]
    positives = sum(r["label"] for r in test)
    return DataSplits(
        "Walmart-Amazon", pool, validation, test,
        {"query": "query", "item": "title", "label": "label", "attributes": ["brand", "modelno"]},
        f"training pool = `train.txt` ({len(pool):,} pairs), validation = {len(validation)} random "
        f"pairs of `valid.txt`, test = {len(test)} random pairs of `test.txt` ({positives} positives)")


DATASETS = {"qbqtc": qbqtc, "walmart": walmart_amazon}
