"""Data for the quality benchmark (bench_quality.py): fixed, deterministic splits of the real public
datasets in ../shared/data, read in place.

* QBQTC (Chinese query-title relevance, grades 0/1/2; ``dev.json`` is the only file shipped). Almost
  every query has one title, so NDCG per query only means something for the ~1,100 queries with two
  or more titles. Those multi-title queries are shuffled once; the held-out **test** split is the
  first of them (whole queries, at least ``testRows`` rows), the **validation** split (early
  stopping, calibration, recipe choice) the next ones (at least ``validationRows`` rows). The
  **training pool** is every single-title query, whatever the two sizes are: changing an evaluation
  size never changes a training slice. No query occurs in two of the three.
* Walmart-Amazon (English product matching, 0/1, about 9 % positives): the official splits. Training
  slices come from ``train.txt``, the validation split is a fixed random subset of ``valid.txt`` and
  the test split a fixed random subset of ``test.txt``. The Walmart product is the query (title, with
  its brand and model number appended as ``| brand: ..`` text, mirroring how the fine-tune job renders
  the item), the Amazon product is the item (title column, brand and model number as attribute
  columns).

Each dataset declares its language (what nlpaug's edits are configured for) and its own options
(:data:`OPTIONS`, set with ``--option DATASET.NAME=VALUE``); nothing is shared between datasets.

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
    #: BCP 47 language of the text (nlpaug's tokenizer and edits follow it).
    language: str
    #: Whether test rows come in query groups (resampled whole by the bootstrap, ranked by NDCG).
    grouped: bool

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


#: Per-dataset options and their defaults (``--option qbqtc.testRows=800``).
OPTIONS: dict[str, dict[str, int]] = {
    "qbqtc": {"testRows": 600, "validationRows": 400},
    "walmart": {"testRows": 1200, "validationRows": 500},
}


def qbqtc(testRows: int, validationRows: int) -> DataSplits:
    eval_rows, validation_rows = testRows, validationRows
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
    # the pool never depends on the evaluation sizes: every multi-title query stays out of it
    pool = [r for g in by_query.values() if len(g) == 1 for r in g]
    rng.shuffle(pool)
    return DataSplits(
        "QBQTC", pool, validation, test, {"query": "query", "item": "title", "label": "label"},
        f"`qbqtc/dev.json` ({len(records):,} rows): test = {len(test)} rows of {used} held-out queries with 2+ "
        f"titles; validation = {len(validation)} rows of {used_val} other such queries; training pool = the "
        f"{len(pool):,} rows of single-title queries (disjoint queries)", language="zh", grouped=True)


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


def walmart_amazon(testRows: int, validationRows: int) -> DataSplits:
    eval_rows, validation_rows = testRows, validationRows
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
        f"pairs of `valid.txt`, test = {len(test)} random pairs of `test.txt` ({positives} positives)",
        language="en", grouped=False)


DATASETS = {"qbqtc": qbqtc, "walmart": walmart_amazon}


def load(name: str, options: dict[str, int] | None = None) -> DataSplits:
    """The splits of dataset ``name`` with its default options updated by ``options``."""
    chosen = {**OPTIONS[name], **(options or {})}
    unknown = set(chosen) - set(OPTIONS[name])
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {sorted(unknown)}; known: {sorted(OPTIONS[name])}")
    return DATASETS[name](**chosen)


def parse_options(values: list[str]) -> dict[str, dict[str, int]]:
    """``["qbqtc.testRows=800", ...]`` -> ``{"qbqtc": {"testRows": 800}}``."""
    out: dict[str, dict[str, int]] = {}
    for value in values:
        key, sep, number = value.partition("=")
        dataset, dot, option = key.partition(".")
        if not (sep and dot) or dataset not in OPTIONS or option not in OPTIONS[dataset]:
            raise ValueError(f"--option {value!r}: write DATASET.NAME=VALUE, one of "
                             + ", ".join(f"{d}.{o}" for d in OPTIONS for o in OPTIONS[d]))
        out.setdefault(dataset, {})[option] = int(number)
    return out
