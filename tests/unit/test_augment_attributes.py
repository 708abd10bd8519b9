"""Attribute-aware augmenters on hand-made rows: mentions, relaxation, reordering, swaps."""

from __future__ import annotations

import numpy as np

from sampleforge.jobs.augment.attributes import (
    AttributeDrop,
    AttributeReorder,
    AttributeSwap,
    find_mention,
    remove_span,
)
from sampleforge.jobs.augment.protocol import BatchPlan
from sampleforge.jobs.augment.randomness import RowRandomness
from sampleforge.jobs.augment.rows import ColumnRoles, RowBatch

ROLES = ColumnRoles(query="q", item="t", label="y", attributes=("brand", "color"))


def _batch() -> RowBatch:
    return RowBatch(ROLES, np.arange(100, 104, dtype=np.int64), {
        "q": ["nike red running shoes", "running shoes", "耐克跑步鞋", "adidas blue"],
        "t": ["Nike Pegasus 41 Red", "Asics Gel", "耐克男子跑步鞋", "Adidas Samba Blue"],
        "y": [2, 1, 2, 2],
        "brand": ["Nike", "Asics", "耐克", "Adidas"],
        "color": ["red", None, None, "blue"],
    })


def _plan(name: str, per_row: int = 1, selected: list[bool] | None = None) -> BatchPlan:
    mask = np.array(selected if selected is not None else [True] * 4)
    return BatchPlan(mask, per_row, RowRandomness(5, name))


def test_mentions_respect_word_boundaries_but_not_in_chinese() -> None:
    assert find_mention("red shoes", "Red") == (0, 3)
    assert find_mention("bored shoes", "red") is None
    assert find_mention("iphone 13 pro", "13") == (7, 9)
    assert find_mention("iphone 130", "13") is None
    assert find_mention("耐克跑步鞋", "耐克") == (0, 2)
    assert find_mention("elite  screens", "Elite Screens") == (0, 14)
    assert find_mention("x", None) is None and find_mention("x", " ") is None
    assert remove_span("nike, red shoes", (6, 9)) == "nike shoes"
    assert remove_span("耐克跑步鞋", (0, 2)) == "跑步鞋"


def test_swap_only_touches_attributes_the_query_mentions() -> None:
    swap = AttributeSwap("swap", ["brand", "color"], 1, 0, {"brand": ["Nike", "Asics", "Adidas", "耐克", "李宁"],
                                                            "color": ["red", "blue", "green"]})
    rows = swap.augment(_batch(), _plan("swap", per_row=2))
    by_row: dict[int, list] = {}
    for row in rows:
        by_row.setdefault(row.source_row, []).append(row)
    assert 101 not in by_row  # "running shoes" names no attribute
    for row in rows:
        assert row.label_rule == "assign" and row.changes["y"] == 0
        (attribute,) = [a for a in ("brand", "color") if a in row.changes]
        old = _batch().columns[attribute][row.source_row - 100]
        assert row.changes[attribute] != old
        if "t" in row.changes:
            assert row.changes[attribute] in row.changes["t"]
    assert len(by_row[100]) == 2 and len({tuple(sorted(r.changes.items())) for r in by_row[100]}) == 2
    assert swap.augment(_batch(), _plan("swap", per_row=2)) == rows  # reproducible


def test_swap_only_demotes_never_promotes() -> None:
    pools = {"brand": ["Nike", "Asics", "Adidas", "耐克", "李宁"], "color": ["red", "blue", "green"]}
    batch = RowBatch(ROLES, np.arange(4, dtype=np.int64), {
        "q": ["nike red running shoes"] * 4, "t": ["Nike Pegasus 41 Red"] * 4, "y": [2, 1, 0, None],
        "brand": ["Nike"] * 4, "color": ["red"] * 4})
    # Graded labels, spec label 1 ("partial match"): only the exact match (2) is demoted; a 1 is
    # already partial and a 0 would be promoted.
    rows = AttributeSwap("swap", ["brand", "color"], 1, 1, pools).augment(batch, _plan("swap"))
    assert {r.source_row for r in rows} == {0}
    strings = RowBatch(ROLES, np.arange(4, dtype=np.int64), {**batch.columns, "y": ["E", "S", "I", "C"]})
    rows = AttributeSwap("swap", ["brand"], 1, "I", pools).augment(strings, _plan("swap"))
    assert {r.source_row for r in rows} == {0, 1, 3}  # unordered labels: all but those already "I"


def test_drop_relaxes_the_query_or_blanks_the_attribute() -> None:
    drop = AttributeDrop("drop", ["brand", "color"], 1, max_attributes=2)
    rows = drop.augment(_batch(), _plan("drop"))
    assert {r.source_row for r in rows} == {100, 101, 102, 103}
    for row in rows:
        assert row.label_rule == "keep" and "y" not in row.changes
        if "q" in row.changes:
            assert len(row.changes["q"]) < len(_batch().queries[row.source_row - 100])
    asics = next(r for r in rows if r.source_row == 101)
    assert asics.changes == {"brand": None}  # not in the query: the catalogue loses it instead


def test_reorder_moves_mentioned_values_only() -> None:
    reorder = AttributeReorder("reorder", ["brand", "color"], 1)
    rows = reorder.augment(_batch(), _plan("reorder", selected=[True, True, False, True]))
    changed = {r.source_row: r.changes for r in rows}
    assert changed[100] == {"q": "red nike running shoes", "t": "Red Pegasus 41 Nike"}
    assert changed[103] == {"q": "blue adidas", "t": "Blue Samba Adidas"}
    assert changed[101] == {"t": "Gel Asics"}  # the query names no attribute; the title's one value moves
    assert 102 not in changed  # not selected
