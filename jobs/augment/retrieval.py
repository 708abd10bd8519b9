"""Nearest-neighbour search over item embeddings with faiss, for hard negatives from whole catalogs.

One function builds the index from vectors given chunk by chunk (:func:`build_vector_index`), so
the vectors of millions of items never have to be held twice; the result can be written and read
back (:meth:`VectorIndex.save`, :meth:`VectorIndex.to_bytes`), so a step that runs once per run can
build it and every shard load it. :func:`build_item_index` is that step for the hard-negative miner:
BM25 or embeddings over the first pass's item pool; :func:`load_item_index` reads either back from
its ``to_bytes()`` (the analysis step of a run of several shards builds it, the shards load it).

The index type follows the catalog size (vectors are unit length, so inner product = cosine):

* up to :data:`EXACT_MAX_ITEMS` items: ``IndexFlatIP``, exact search (float32, 4·d bytes per item);
* above: ``IndexIVFScalarQuantizer`` with fp16 residuals (``IVF<nlist>,SQfp16``): ``nlist`` is the
  power of two nearest ``sqrt(n) / 2`` (1,024 lists at 5 million items), k-means trained on the first
  ``64 · nlist`` vectors (the pool is in hash order, so that is a uniform sample), 10 iterations,
  seeded; queries probe ``nprobe = nlist / 16`` lists (at least 16: about 6 % of the catalog).
  2·d + 8 bytes per item: 776 bytes at d = 384, 3.6 GiB at 5 million items. fp16 residuals change a
  cosine by well under 1e-3, so the ranking is the exact one up to near-ties; recall against exact
  search is measured in ``bench/bench_retrieval_index.py``.

Determinism: k-means is seeded, the training sample is fixed, and faiss computes each centroid and
each assignment independently of its thread count (a unit test builds with one and with two threads
and compares the serialised bytes), so the same vectors and seed give a byte-identical index and
identical results. Results are ordered by score, then by item number, so ties never depend on how
faiss's heaps happened to order them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from .bm25 import BM25Index
from .itempool import ItemPool

log = logging.getLogger(__name__)

__all__ = [
    "ENCODE_CHUNK",
    "EXACT_MAX_ITEMS",
    "VectorIndex",
    "build_item_index",
    "build_vector_index",
    "ivf_parameters",
    "load_item_index",
]

#: Catalogs up to this size are searched exactly.
EXACT_MAX_ITEMS = 200_000
#: Training vectors per inverted list (faiss's k-means wants at least 39).
TRAIN_PER_LIST = 64
KMEANS_ITERATIONS = 10
#: Items encoded and added to the index at a time.
ENCODE_CHUNK = 65_536
#: Queries searched at a time (bounds the result and distance buffers).
SEARCH_CHUNK = 4_096


class Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


def _faiss() -> Any:
    import faiss  # imported when used: the operator and most runs never need it

    return faiss


@contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """Run faiss with ``threads`` OpenMP threads (None: as it is), restoring the count afterwards."""
    faiss = _faiss()
    if threads is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def ivf_parameters(n: int) -> tuple[int, int]:
    """(nlist, nprobe) for ``n`` items (see the module docstring)."""
    nlist = 1 << max(4, round(math.log2(max(math.sqrt(n) / 2, 1.0))))
    return nlist, max(16, nlist // 16)


class VectorIndex:
    """A faiss index over unit vectors; :meth:`search` gives item numbers, best first."""

    def __init__(self, index: Any) -> None:
        self.index = index
        faiss = _faiss()
        self.ivf = faiss.extract_index_ivf(index) if isinstance(index, faiss.IndexIVF) else None

    @property
    def kind(self) -> str:
        return "flat" if self.ivf is None else f"ivf{self.ivf.nlist}-sqfp16"

    @property
    def nprobe(self) -> int | None:
        return int(self.ivf.nprobe) if self.ivf is not None else None

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: NDArray[np.float32], k: int) -> list[list[int]]:
        """The ``k`` most similar items of each query, by decreasing inner product, ties by item number."""
        out: list[list[int]] = []
        k = min(k, len(self))
        if k <= 0:
            return [[] for _ in range(len(queries))]
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        for start in range(0, len(queries), SEARCH_CHUNK):
            scores, ids = self.index.search(queries[start : start + SEARCH_CHUNK], k)
            for row_scores, row_ids in zip(scores, ids, strict=True):
                found = row_ids >= 0
                row_ids, row_scores = row_ids[found], row_scores[found]
                order = np.lexsort((row_ids, -row_scores))
                out.append(row_ids[order].tolist())
        return out

    def to_bytes(self) -> bytes:
        return bytes(_faiss().serialize_index(self.index).tobytes())

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> VectorIndex:
        return cls(_faiss().deserialize_index(np.frombuffer(data, dtype=np.uint8)))

    def save(self, path: str | Path) -> None:
        """Write the index (faiss's own format; nprobe included) to ``path``."""
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex:
        return cls(_faiss().read_index(str(path)))


def build_vector_index(chunks: Iterable[NDArray[np.float32]], total: int, *, seed: int = 0,
                       exact_max: int = EXACT_MAX_ITEMS, threads: int | None = None) -> VectorIndex:
    """An index of ``total`` unit vectors given in order as ``chunks`` (item ``i`` is the ``i``-th vector).

    Exact (flat) up to ``exact_max`` vectors, IVF with fp16 residuals above (module docstring).
    Only one chunk, plus the training sample for IVF, is held besides the index.
    """
    faiss = _faiss()
    started = time.monotonic()
    with faiss_threads(threads):
        index: Any = None
        nprobe = 0
        pending: list[NDArray[np.float32]] = []
        held = 0
        train_size = 0
        added = 0
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=np.float32)
            if index is None:
                dim = chunk.shape[1]
                if total <= exact_max:
                    index = faiss.IndexFlatIP(dim)
                else:
                    nlist, nprobe = ivf_parameters(total)
                    quantizer = faiss.IndexFlatIP(dim)
                    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                                          faiss.METRIC_INNER_PRODUCT)
                    index.own_fields = True
                    quantizer.this.disown()
                    index.cp.seed = seed
                    index.cp.niter = KMEANS_ITERATIONS
                    index.cp.max_points_per_centroid = TRAIN_PER_LIST
                    index.nprobe = nprobe
                    train_size = min(total, TRAIN_PER_LIST * nlist)
            if not index.is_trained:
                pending.append(chunk)
                held += len(chunk)
                if held < train_size:
                    continue
                sample = np.concatenate(pending)
                pending.clear()
                index.train(sample[:train_size])
                chunk = sample
            index.add(chunk)
            added += len(chunk)
        if index is not None and not index.is_trained:  # fewer vectors than announced
            sample = np.concatenate(pending)
            index.train(sample)
            index.add(sample)
            added += len(sample)
    if index is None:
        index = faiss.IndexFlatIP(1)
    built = VectorIndex(index)
    log.info("vector index built", extra={"kind": built.kind, "items": added, "nprobe": built.nprobe,
                                          "seconds": round(time.monotonic() - started, 2)})
    return built


def encoded_chunks(encode: Callable[[Sequence[str]], NDArray[np.float32]], pool: ItemPool,
                   chunk: int = ENCODE_CHUNK) -> Iterator[NDArray[np.float32]]:
    """Embeddings of the pool's item texts, ``chunk`` items at a time, in pool order."""
    for start in range(0, len(pool), chunk):
        yield encode(pool.titles(start, start + chunk))


def build_item_index(pool: ItemPool, method: str, encoder: Encoder | None = None, *,
                     seed: int = 0) -> BM25Index | VectorIndex:
    """The retrieval index hard negatives are mined with: BM25 over the item texts with their
    attributes (``method: bm25``), or the embeddings of the item texts (``method: embedding``).

    One call over the whole pool; the result can be saved and loaded (``save`` / ``load``), so a step
    that runs once per run can build it for every shard.
    """
    if method == "bm25":
        started = time.monotonic()
        bm25 = BM25Index(pool.texts())
        log.info("bm25 index built", extra={"items": bm25.size, "postings": bm25.postings,
                                            "seconds": round(time.monotonic() - started, 2)})
        return bm25
    if encoder is None:
        raise ValueError("method embedding needs an encoder")
    return build_vector_index(encoded_chunks(encoder.encode, pool), len(pool), seed=seed)


def load_item_index(method: str, data: bytes | memoryview) -> BM25Index | VectorIndex:
    """The index :func:`build_item_index` built for ``method``, from its ``to_bytes()``; ``ValueError``
    when ``data`` is not such an index."""
    if method == "bm25":
        return BM25Index.from_bytes(data)
    try:
        return VectorIndex.from_bytes(data)
    except RuntimeError as err:  # faiss reports a malformed index as a RuntimeError
        raise ValueError(f"not a serialised faiss index: {err}") from err
