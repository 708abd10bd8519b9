"""Retrieval indexes for hard negatives over whole catalogs: the faiss index (which type, recall
against exact search, byte-identical rebuilds, save/load), the column-wise item pool, and the sparse
BM25 index against the numpy implementation it replaced."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from sampleforge.jobs.augment import bm25 as bm25_module
from sampleforge.jobs.augment.bm25 import BM25Index, bm25_tokens
from sampleforge.jobs.augment.dedup import hash64, item_repr, norm_key
from sampleforge.jobs.augment.itempool import ItemPool, ItemPoolBuilder, PoolItem
from sampleforge.jobs.augment.retrieval import (
    VectorIndex,
    build_item_index,
    build_vector_index,
    faiss_threads,
    ivf_parameters,
)

DIM = 48


def clustered(n: int, seed: int, dim: int = DIM) -> NDArray[np.float32]:
    """Unit vectors in families of about 10 around 40 topics (nearest neighbours are family members)."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((40, dim))
    families = topics[rng.integers(0, 40, n // 10 + 1)] + 0.6 * rng.standard_normal((n // 10 + 1, dim))
    families /= np.linalg.norm(families, axis=1, keepdims=True)
    x = families[rng.integers(0, len(families), n)] + 0.05 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def chunks(x: NDArray[np.float32], size: int = 1000) -> Iterator[NDArray[np.float32]]:
    for start in range(0, len(x), size):
        yield x[start : start + size]


def exact_top(x: NDArray[np.float32], q: NDArray[np.float32], k: int) -> list[list[int]]:
    sims = q @ x.T
    return [np.lexsort((np.arange(len(x)), -row))[:k].tolist() for row in sims]


# --- the vector index --------------------------------------------------------------------------------


def test_small_catalogs_are_searched_exactly_and_large_ones_with_ivf() -> None:
    x = clustered(3000, 1)
    flat = build_vector_index(chunks(x), len(x))
    assert flat.kind == "flat" and flat.nprobe is None and len(flat) == 3000
    ivf = build_vector_index(chunks(x), len(x), exact_max=2000)
    assert ivf.kind.startswith("ivf") and ivf.kind.endswith("sqfp16") and len(ivf) == 3000
    assert ivf.nprobe == 16
    # The stated parameters at catalog scale: lists near sqrt(n)/2, a sixteenth of them probed.
    assert ivf_parameters(1_000_000) == (512, 32)
    assert ivf_parameters(5_000_000) == (1024, 64)
    assert ivf_parameters(200_001) == (256, 16)


def test_exact_index_ranks_like_brute_force_with_ties_by_item_number() -> None:
    x = clustered(2000, 2)
    x[7] = x[3]  # two identical items: the lower number comes first
    q = np.vstack([x[3], clustered(50, 9)])
    index = build_vector_index(chunks(x), len(x))
    got = index.search(q, 10)
    assert got[0][:2] == [3, 7]
    assert [set(r) for r in got] == [set(r) for r in exact_top(x, q, 10)]


def test_ivf_recall_against_exact_search() -> None:
    x = clustered(8000, 3)
    rng = np.random.default_rng(4)
    q = x[rng.integers(0, len(x), 200)] + 0.02 * rng.standard_normal((200, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    index = build_vector_index(chunks(x), len(x), exact_max=1000)
    assert index.kind.startswith("ivf")
    k = 20
    got = index.search(q, k)
    truth = exact_top(x, q, k)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(got, truth, strict=True)])
    assert recall >= 0.95, recall


def test_rebuilds_are_byte_identical_whatever_the_thread_count() -> None:
    x = clustered(6000, 5)
    q = clustered(100, 6)
    builds = [build_vector_index(chunks(x, 700), len(x), exact_max=1000, seed=11, threads=t) for t in (1, 2, 2)]
    blobs = [b.to_bytes() for b in builds]
    assert blobs[0] == blobs[1] == blobs[2]
    with faiss_threads(1):
        first = builds[0].search(q, 25)
    assert builds[1].search(q, 25) == builds[2].search(q, 25) == first
    other_seed = build_vector_index(chunks(x, 700), len(x), exact_max=1000, seed=12)
    assert other_seed.to_bytes() != blobs[0]  # the seed is what k-means starts from


@pytest.mark.parametrize("exact_max", [10_000, 1000], ids=["flat", "ivf"])
def test_save_and_load_give_the_same_index(tmp_path: Path, exact_max: int) -> None:
    x = clustered(4000, 7)
    q = clustered(30, 8)
    index = build_vector_index(chunks(x), len(x), exact_max=exact_max)
    index.save(tmp_path / "items.faiss")
    loaded = VectorIndex.load(tmp_path / "items.faiss")
    assert (loaded.kind, loaded.nprobe, len(loaded), loaded.dim) == (index.kind, index.nprobe, 4000, DIM)
    assert loaded.search(q, 15) == index.search(q, 15)
    again = VectorIndex.from_bytes(index.to_bytes())
    assert again.search(q, 15) == index.search(q, 15) and again.to_bytes() == index.to_bytes()


def test_search_asks_for_no_more_than_the_catalog() -> None:
    x = clustered(5, 9)
    index = build_vector_index(chunks(x), len(x))
    assert sorted(index.search(x[:1], 50)[0]) == [0, 1, 2, 3, 4]
    assert build_vector_index(iter([]), 0).search(x[:2], 3) == [[], []]


# --- the item pool -----------------------------------------------------------------------------------


def test_item_pool_keeps_first_row_per_key_in_key_order_column_wise() -> None:
    builder = ItemPoolBuilder(("brand", "color"), image=True)
    rows = [("Air Max", "Nike", None, "a.jpg"), ("Superstar", "Adidas", "white", None),
            ("Air Max", "Nike", None, "b.jpg"), ("跑步鞋 轻便", None, "红", "c.jpg")]
    reprs = [item_repr(t, {"brand": b, "color": c}) for t, b, c, _ in rows]
    keys = np.asarray([hash64(norm_key(r)) for r in reprs], dtype=np.uint64)
    builder.add(keys[:2], [10, 11], [r[0] for r in rows[:2]], {"brand": [r[1] for r in rows[:2]],
                                                              "color": [r[2] for r in rows[:2]]}, [r[3] for r in rows[:2]])
    builder.add(keys[2:], [12, 13], [r[0] for r in rows[2:]], {"brand": [r[1] for r in rows[2:]],
                                                              "color": [r[2] for r in rows[2:]]}, [r[3] for r in rows[2:]])
    pool = builder.build()
    assert len(pool) == 3  # row 12 repeats row 10's item: the first row wins
    assert pool.keys.tolist() == sorted({int(k) for k in keys})
    by_row = {p.row_id: p for p in pool}
    assert by_row[10] == PoolItem(10, "Air Max", {"brand": "Nike", "color": None}, "a.jpg")
    assert by_row[13] == PoolItem(13, "跑步鞋 轻便", {"brand": None, "color": "红"}, "c.jpg")
    assert list(pool.texts()) == [item_repr(p.item, p.attributes) for p in pool]
    assert pool.titles() == [p.item for p in pool] and pool[-1] == pool[2] and pool[0:2] == [pool[0], pool[1]]
    with pytest.raises(IndexError):
        pool[3]
    assert pool.nbytes < 400


def test_item_index_for_embeddings_is_built_from_the_titles_in_pool_order() -> None:
    titles = [f"item {i} {'red' if i % 3 else 'blue'} shoes" for i in range(300)]
    pool = ItemPool.of([PoolItem(i, t, {}, None) for i, t in enumerate(titles)], [hash64(t) for t in titles])

    class Letters:  # a toy encoder: letter counts, unit length
        def encode(self, texts: list[str]) -> NDArray[np.float32]:
            v = np.asarray([[t.count(c) + 0.01 * t.count(str(d)) for d, c in enumerate("abcdefghijklmnopqrstuvwxyz")]
                            for t in texts], dtype=np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    index = build_item_index(pool, "embedding", Letters())
    assert isinstance(index, VectorIndex) and len(index) == 300
    encoded = Letters().encode(pool.titles())
    assert index.search(encoded[:5], 1) != [] and all(r[0] in range(300) for r in index.search(encoded[:5], 1))
    assert isinstance(build_item_index(pool, "bm25"), BM25Index)


# --- BM25 on sparse matrices against the implementation it replaced ----------------------------------


class NumpyBM25:
    """The previous index (numpy postings, one query at a time), kept here as the reference."""

    def __init__(self, documents: list[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.size = len(documents)
        vocabulary: dict[str, int] = {}
        term_ids: list[int] = []
        doc_ids: list[int] = []
        tfs: list[int] = []
        lengths = np.zeros(self.size, dtype=np.float64)
        for d, text in enumerate(documents):
            tokens = bm25_tokens(text)
            lengths[d] = len(tokens)
            for term, count in Counter(tokens).items():
                term_ids.append(vocabulary.setdefault(term, len(vocabulary)))
                doc_ids.append(d)
                tfs.append(count)
        self.vocabulary = vocabulary
        terms = np.asarray(term_ids, dtype=np.int64)
        order = np.argsort(terms, kind="stable")
        self._docs = np.asarray(doc_ids, dtype=np.int64)[order]
        tf = np.asarray(tfs, dtype=np.float64)[order]
        df = np.bincount(terms, minlength=len(vocabulary)).astype(np.float64)
        self._ptr = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
        avg = float(lengths.mean()) if self.size else 0.0
        norm = k1 * (1.0 - b + b * lengths[self._docs] / avg) if avg > 0 else np.full(len(tf), k1)
        idf = np.log1p((self.size - df + 0.5) / (df + 0.5))
        term_of_posting = np.repeat(np.arange(len(vocabulary)), np.diff(self._ptr))
        self._weights = idf[term_of_posting] * tf * (k1 + 1.0) / (tf + norm)

    def scores(self, query: str) -> NDArray[np.float64]:
        scores = np.zeros(self.size, dtype=np.float64)
        for term in dict.fromkeys(bm25_tokens(query)):
            t = self.vocabulary.get(term)
            if t is not None:
                lo, hi = self._ptr[t], self._ptr[t + 1]
                scores[self._docs[lo:hi]] += self._weights[lo:hi]
        return scores

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        scores = self.scores(query)
        candidates = np.flatnonzero(scores > 0.0)
        order = np.lexsort((candidates, -scores[candidates]))[:k]
        return [(int(d), float(scores[d])) for d in candidates[order]]


def _catalog(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["nike", "adidas", "puma", "air", "max", "running", "shoes", "red", "blue", "white", "size", "10", "11",
             "跑步", "鞋", "耐克", "红色", "boost", "ultra", "zoom", "pro", "kids", "women", "men"]
    docs = []
    for _ in range(n):
        text = " ".join(rng.choices(words, k=rng.randint(1, 10)))
        docs.append(item_repr(text, {"brand": rng.choice(["Nike", "Adidas", None]), "color": rng.choice(["red", None])}))
    return docs + docs[:20]  # exact duplicates: ties broken by position


def test_sparse_bm25_scores_and_ranks_like_the_previous_index(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _catalog(1500, 1)
    old, new = NumpyBM25(docs), BM25Index(iter(docs))
    rng = random.Random(2)
    queries = [" ".join(rng.choices(["nike", "air", "max", "red", "跑步鞋", "size 10", "boost", "unknown"], k=rng.randint(1, 4)))
               for _ in range(60)] + ["", "unknown words"]
    for q in queries:
        assert new.scores(q).tolist() == pytest.approx(old.scores(q).tolist(), rel=1e-12, abs=1e-12)
        for k in (1, 7, 40):
            got, want = new.top(q, k), old.top(q, k)
            assert [d for d, _ in got] == [d for d, _ in want], q
            assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-12)
    # Batches of queries: the same answers, however the postings budget cuts the batches.
    one_by_one = [new.top(q, 12) for q in queries]
    assert new.top_many(queries, 12) == one_by_one
    monkeypatch.setattr(bm25_module, "QUERY_POSTINGS", 50)
    assert new.top_many(queries, 12) == one_by_one


def test_bm25_index_saves_and_loads(tmp_path: Path) -> None:
    docs = _catalog(400, 3)
    index = BM25Index(docs)
    index.save(tmp_path / "bm25.npz")
    loaded = BM25Index.load(tmp_path / "bm25.npz")
    assert loaded.size == index.size and loaded.vocabulary == index.vocabulary
    for q in ("nike air", "跑步鞋 red", "nothing"):
        assert loaded.top(q, 20) == index.top(q, 20)
    empty = BM25Index([])
    empty.save(tmp_path / "empty.npz")
    assert BM25Index.load(tmp_path / "empty.npz").top("nike", 3) == []
