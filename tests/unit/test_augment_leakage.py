"""The leakage guard holds out what the evaluation split holds out: queries (a split by query over a
shared catalog), items (a split by item), or both; and it judges source rows and generated rows
alike."""

from __future__ import annotations

import pytest

from sampleforge.jobs.augment.filters import Candidate
from sampleforge.jobs.augment.leakage import LeakageGuard, eval_split
from sampleforge.jobs.augment.rows import ColumnRoles

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


def test_source_rows_are_judged_as_generated_rows_are() -> None:
    split = eval_split("s3://d/eval.jsonl", EVAL_QUERIES, EVAL_ITEMS, threshold=0.8, num_perm=128,
                       match="queryOrItem")
    guard = LeakageGuard(ROLES, split)
    rows = [c.row for c in CANDIDATES]
    assert guard.check_sources(rows, list(range(len(rows)))) == [
        "query in eval split", "query near-duplicates eval split", "item in eval split",
        "item near-duplicates eval split", None]


def test_a_variant_of_a_leaking_source_row_is_dropped_whatever_its_own_text() -> None:
    """A typo can move a query below the near-duplicate threshold; it is still a variant of an
    evaluation query, and its source row's verdict decides."""
    split = eval_split("s3://d/eval.jsonl", EVAL_QUERIES, EVAL_ITEMS, threshold=0.8, num_perm=128, match="query")
    guard = LeakageGuard(ROLES, split)
    leaking = {"q": EVAL_QUERIES[0], "t": "Anker Soundcore Q30", "y": 1}
    clean = {"q": "stainless steel bottle", "t": "Hydro Flask 32 oz", "y": 1}
    assert guard.check_sources([leaking, clean], [10, 11]) == ["query in eval split", None]
    drifted = Candidate({**leaking, "q": "wirless nois canceling headfones"}, leaking, "typo", "keep", 10, 0,
                        ("query",))
    negative = Candidate({**leaking, "t": "Hydro Flask 32 oz", "y": 0}, leaking, "hardNegative", "assign", 10, 0,
                         ("item", "label"))
    fine = Candidate({**clean, "q": "stainles steel botle"}, clean, "typo", "keep", 11, 0, ("query",))
    assert guard.check([drifted, negative, fine]) == [LeakageGuard.FROM_LEAKING_SOURCE, "query in eval split", None]
    assert split.reasons([drifted.row["q"]], ["x"]) == [None], "the drifted text alone would have passed"


def test_product_matching_drops_source_and_generated_rows_of_an_evaluated_product() -> None:
    """Product matching: the "query" is itself a product (the left title of a pair), the item the
    right title. The guard once dropped the generated rows whose left product is evaluated but kept
    the source rows with that same product; now both go, by the same rule."""
    roles = ColumnRoles(query="left", item="right", label="match")
    evaluated = "Apple iPhone 13 128GB Blue Unlocked"
    split = eval_split("s3://d/eval.parquet", [evaluated], ["iPhone 13 (128 GB) - Blue"], threshold=0.85,
                       num_perm=128, match="query")
    sources = [{"left": evaluated, "right": "Apple iPhone 13, 128 GB, blue", "match": 1},
               {"left": "apple iphone 13 128gb blue unlocked", "right": "Samsung Galaxy S21", "match": 0},
               {"left": "Sony WH-1000XM5", "right": "Sony WH1000XM5 Headphones", "match": 1}]
    guard = LeakageGuard(roles, split)
    assert guard.check_sources(sources, [0, 1, 2]) == ["query in eval split", "query in eval split", None]
    generated = [Candidate({**sources[0], "right": "Google Pixel 7", "match": 0}, sources[0], "hardNegative",
                           "assign", 0, 0, ("item", "label")),
                 Candidate({**sources[2], "left": "Sony WH-1000XM5 black"}, sources[2], "typo", "keep", 2, 0,
                           ("query",))]
    assert guard.check(generated) == ["query in eval split", None]
