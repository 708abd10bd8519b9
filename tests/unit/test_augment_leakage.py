"""The leakage guard holds out what the evaluation split holds out: queries (a split by query over a
shared catalog), items (a split by item), or both."""

from __future__ import annotations

import pytest

from sampleforge.jobs.augment.filters import Candidate, LeakageGuard, eval_split
from sampleforge.jobs.augment.protocol import ColumnRoles

ROLES = ColumnRoles(query="q", item="t", label="y")
EVAL_QUERIES = ["wireless noise cancelling headphones", "red leather handbag large"]
EVAL_ITEMS = ["Sony WH-1000XM5 Wireless Headphones, Black", "Coach Tabby Shoulder Bag 26 in red leather"]


def _candidate(query: str, item: str) -> Candidate:
    row = {"q": query, "t": item, "y": 1}
    return Candidate(row, row, "typo", "keep", 0, 0, ("query",))


CANDIDATES = [
    _candidate("Wireless  Noise Cancelling Headphones", "Anker Soundcore Q30"),  # eval query, new item
    _candidate("wireless noise cancelling headphone", "Anker Soundcore Q30"),  # near an eval query
    _candidate("running shoes men", EVAL_ITEMS[0]),  # new query about an evaluated product
    _candidate("running shoes men", EVAL_ITEMS[1][:-1] + "s"),  # near an evaluated product
    _candidate("stainless steel bottle", "Hydro Flask 32 oz"),  # nothing held out
]


@pytest.mark.parametrize(("match", "expected"), [
    ("query", ["query in eval split", "query near-duplicates eval split", None, None, None]),
    ("item", [None, None, "item in eval split", "item near-duplicates eval split", None]),
    ("queryOrItem", ["query in eval split", "query near-duplicates eval split", "item in eval split",
                     "item near-duplicates eval split", None]),
])
def test_the_guard_compares_what_the_split_holds_out(match: str, expected: list[str | None]) -> None:
    split = eval_split("s3://d/eval.jsonl", EVAL_QUERIES, EVAL_ITEMS, threshold=0.8, num_perm=128, match=match)
    assert LeakageGuard(ROLES, split).check(CANDIDATES) == expected
    assert split.holds(EVAL_QUERIES[0], "x") is (match != "item")
    assert split.holds("x", EVAL_ITEMS[0]) is (match != "query")
