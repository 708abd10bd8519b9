"""The adapter from the text-edit augmenters to the row protocol: row-keyed determinism through it,
budgets, fields, and per-name seeds."""

from __future__ import annotations

import numpy as np

from sampleforge.jobs.augment.protocol import BatchPlan
from sampleforge.jobs.augment.randomness import RowRandomness
from sampleforge.jobs.augment.rows import ColumnRoles, RowBatch
from sampleforge.jobs.augment.text import create_augmenter
from sampleforge.jobs.augment.textedit import TextEditAugmenter, text_options

ROLES = ColumnRoles(query="q", item="t", label="y", attributes=("brand",))
QUERIES = ["cheap running shoes for men", "wireless noise cancelling headphones", "red leather handbag large",
           "stainless steel water bottle", "kids winter jacket waterproof", "organic green tea bags"]


def _batch(ids: list[int]) -> RowBatch:
    return RowBatch(ROLES, np.asarray(ids, dtype=np.int64), {
        "q": [QUERIES[i % len(QUERIES)] for i in ids], "t": [f"Item number {i} deluxe edition" for i in ids],
        "y": [1] * len(ids), "brand": ["Sony" if i % 2 else None for i in ids]})


def _swap(name: str, fields: tuple[str, ...] = ("query",)) -> TextEditAugmenter:
    return TextEditAugmenter(name, create_augmenter("randomSwap", {"alpha": 0.3}), fields)


def _plan(name: str, n: int, per_row: int = 1) -> BatchPlan:
    return BatchPlan(np.ones(n, dtype=bool), per_row, RowRandomness(3, name))


def test_a_rows_variants_do_not_depend_on_batching_or_gaps() -> None:
    aug = _swap("swap")
    whole = {r.source_row: r.changes for r in aug.augment(_batch(list(range(12))), _plan("swap", 12))}
    gappy_ids = [0, 1, 2, 5, 6, 9, 10, 11]
    gappy = {r.source_row: r.changes for r in aug.augment(_batch(gappy_ids), _plan("swap", len(gappy_ids)))}
    assert gappy == {i: whole[i] for i in gappy_ids if i in whole}
    single = {r.source_row: r.changes for r in aug.augment(_batch([9]), _plan("swap", 1))}
    assert single == {9: whole[9]}


def test_unselected_rows_get_nothing_and_per_row_is_respected() -> None:
    aug = _swap("swap", ("query", "item"))
    batch = _batch(list(range(6)))
    plan = BatchPlan(np.array([True, False, True, False, True, False]), 2, RowRandomness(3, "swap"))
    rows = aug.augment(batch, plan)
    assert {r.source_row for r in rows} <= {0, 2, 4}
    for source in (0, 2, 4):
        mine = [r for r in rows if r.source_row == source]
        assert 1 <= len(mine) <= 2 and [r.variant for r in mine] == list(range(len(mine)))
        assert all(set(r.changes) <= {"q", "t"} and r.label_rule == "keep" for r in mine)


def test_two_names_of_one_type_make_different_edits() -> None:
    batch = _batch(list(range(12)))
    first = [r.changes for r in _swap("swap-a").augment(batch, _plan("swap-a", 12))]
    second = [r.changes for r in _swap("swap-b").augment(batch, _plan("swap-b", 12))]
    assert first != second


def test_spec_fractions_map_to_the_text_packages_options() -> None:
    class Entry:
        type = "typo"
        char_fraction = 0.2
        word_fraction = 0.5

    assert text_options(Entry()) == {"charAlpha": 0.2}
    Entry.type = "synonym"
    assert text_options(Entry()) == {"alpha": 0.5}


def test_a_synonym_entry_without_a_lexicon_uses_the_shipped_lexicons() -> None:
    from types import SimpleNamespace

    from sampleforge.api.augmenters import SynonymAugmenter
    from sampleforge.jobs.augment.textedit import build_text_augmenter

    entry = SynonymAugmenter.model_validate({"type": "synonym", "fields": ["query"], "fraction": 1.0})
    assert entry.lexicon is None
    # No store at all: nothing may be read from MinIO for an unset lexicon.
    aug = build_text_augmenter(entry, SimpleNamespace(store=None, field_path="spec.augmenters[0]"))  # type: ignore[arg-type]
    rows = aug.augment(_batch(list(range(6))), _plan("synonym", 6))
    assert rows and all(r.changes["q"] != QUERIES[r.source_row % len(QUERIES)] for r in rows)
