"""Duplicate detection: normalised keys, the compact hash set, exact and MinHash dedup filters."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sampleforge.jobs.augment import dedup
from sampleforge.jobs.augment.dedup import HashSet, item_repr, norm_key, pair_hash, pair_hashes, sorted_unique
from sampleforge.jobs.augment.filters import Candidate, ExactDedup, NearDedup, char_ngram_cosine
from sampleforge.jobs.augment.rows import ColumnRoles

ROLES = ColumnRoles(query="q", item="t", label="y", attributes=("brand",))


def _candidate(query: str, title: str, brand: str | None = None, source: dict[str, Any] | None = None) -> Candidate:
    row = {"q": query, "t": title, "y": 1, "brand": brand}
    return Candidate(row, source or dict(row), "aug", "keep", 0, 0, ("query",))


def test_normalised_keys_ignore_width_case_and_spacing() -> None:
    assert norm_key("  Nike\u3000ＡＩＲ  Max ") == "nike air max"
    assert pair_hash("Nike Air", "Shoe") == pair_hash("nike  air", "SHOE")
    assert pair_hash("nike air", "shoe") != pair_hash("nike", "air shoe")
    assert item_repr("Shoe", {"brand": "Nike", "color": None}) == "Shoe | brand: Nike"
    assert pair_hashes(["a", "b"], ["x", "y"]).dtype == np.uint64


def test_hash_set_reports_new_keys_in_order_and_survives_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup, "_MERGE_AT", 4)
    keys = HashSet(np.array([5, 1, 5], dtype=np.uint64))
    assert len(keys) == 2
    new = keys.add_new(np.array([1, 2, 3, 2, 4, 6, 7], dtype=np.uint64))
    assert new.tolist() == [False, True, True, False, True, True, True]
    assert keys.contains(np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=np.uint64)).tolist() == [True] * 7 + [False]
    assert 8 not in keys and 7 in keys
    assert keys.nbytes <= 8 * len(keys)


def test_sorted_unique_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    for n in (0, 1, 2, 1000):
        keys = rng.integers(0, 50, size=n).astype(np.uint64)
        assert sorted_unique(keys.copy()).tolist() == np.unique(keys).tolist()


def test_exact_dedup_drops_copies_of_source_rows_and_of_earlier_generated_rows() -> None:
    source_pairs = HashSet(pair_hashes(["nike shoes"], [item_repr("Air Max", {"brand": "Nike"})]))
    flt = ExactDedup(ROLES, source_pairs)
    batch = [_candidate("Nike  Shoes", "air max", "nike"),  # a source pair, differently spelled
             _candidate("nike shoe", "Air Max", "Nike"),
             _candidate("nike shoe", "Air Max", "Nike"),
             _candidate("nike shoe", "Air Max", None)]  # attributes are part of the key
    assert flt.check(batch) == ["duplicates a source row", None, "duplicates a generated row", None]
    assert flt.check([_candidate("nike shoe", "Air Max", "Nike")]) == ["duplicates a generated row"]


def test_near_dedup_needs_both_query_and_item_to_be_close() -> None:
    flt = NearDedup(ROLES, threshold=0.7, num_perm=128)
    title = "Mama Koala One Size Baby Washable Reusable Pocket Cloth Diapers, 6 Pack with Inserts"
    source = {"q": "mama koala cloth diapers for babies", "t": title, "y": 1, "brand": "Mama Koala"}
    near_copy = _candidate("mama koala cloth diapers for babys", title, "Mama Koala", source)
    other_query = _candidate("reusable swim diapers", title, "Mama Koala", source)
    again = _candidate("reusable swim diaper", title, "Mama Koala", source)
    assert flt.check([near_copy, other_query, again]) == [
        "near-duplicates its source row", None, "near-duplicates a generated row"]
    assert len(flt.index) == 1


def test_character_ngram_cosine() -> None:
    assert char_ngram_cosine("running shoes", "Running  Shoes") == pytest.approx(1.0)
    assert char_ngram_cosine("abc", "xyz") == 0.0
    assert 0.3 < char_ngram_cosine("running shoes", "runing shoes") < 1.0
    assert char_ngram_cosine("", "") == 1.0
