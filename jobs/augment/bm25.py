"""Okapi BM25 over item texts, as a scipy sparse matrix, for hard-negative mining over whole catalogs.

Why our own: the job needs one function (top-k items for a query, ties broken by position so results
are reproducible) over every distinct item of the source (the first pass's item pool, no cap): a
term-by-document CSR matrix of precomputed term weights answers it with one sparse product per batch
of queries, and scales to millions of items.

Tokens: the normalised text (NFKC, case-folded) split into word characters; runs of Han characters
become overlapping character bigrams (a lone character stays a unigram). Bigrams are the standard
segmentation-free choice for Chinese retrieval and, unlike a word segmenter, never split a brand
name differently in the query than in the title.

Scoring is the classic BM25 with ``k1 = 1.2``, ``b = 0.75`` and the non-negative idf
``ln(1 + (N - df + 0.5) / (df + 0.5))``; each distinct query term counts once.

Memory: the index is built in one streaming pass over the texts (postings go to compact int32 arrays,
never to Python lists), then held as a CSR matrix of float64 weights and int32 document numbers: 12
bytes per (document, distinct term) posting plus the vocabulary, about 0.7 GB for 5 million titles of
a dozen distinct terms. Building needs about twice that for a moment (the document-major matrix is
turned term-major). A query batch's product is bounded by :data:`QUERY_POSTINGS` postings.
"""

from __future__ import annotations

import io
import math
import re
import zipfile
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from .dedup import norm_key

__all__ = ["QUERY_POSTINGS", "BM25Index", "bm25_tokens"]

#: Upper bound on the postings one sparse product touches (and so on its result's size): queries are
#: scored in batches whose terms' document frequencies add up to at most this (one query at least).
QUERY_POSTINGS = 4_000_000

_WORD = re.compile(r"\w+")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def bm25_tokens(text: str) -> list[str]:
    """Index terms of ``text`` (see the module docstring)."""
    tokens: list[str] = []
    for word in _WORD.findall(norm_key(text)):
        if word.isascii():
            tokens.append(word)
            continue
        pos = 0
        for match in _HAN.finditer(word):
            if match.start() > pos:
                tokens.append(word[pos : match.start()])
            run = match.group(0)
            if len(run) == 1:
                tokens.append(run)
            else:
                tokens.extend(run[i : i + 2] for i in range(len(run) - 1))
            pos = match.end()
        if pos < len(word):
            tokens.append(word[pos:])
    return tokens


class BM25Index:
    """BM25 over ``documents``; :meth:`top` returns (document index, score) best first.

    ``documents`` may be any iterable (a generator over millions of texts is read once).
    """

    def __init__(self, documents: Iterable[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        vocabulary: dict[str, int] = {}
        terms = array("i")  # document-major postings: term id and count, documents in order
        counts = array("i")
        lengths = array("i")
        indptr = array("q", [0])
        for text in documents:
            tokens = bm25_tokens(text)
            lengths.append(len(tokens))
            for term, count in Counter(tokens).items():
                terms.append(vocabulary.setdefault(term, len(vocabulary)))
                counts.append(count)
            indptr.append(len(terms))
        self.vocabulary = vocabulary
        self.size = len(lengths)
        doc_lengths = np.frombuffer(lengths, dtype=np.int32).astype(np.float64)
        tf = np.frombuffer(counts, dtype=np.int32).astype(np.float64)
        del counts
        term_ids = np.frombuffer(terms, dtype=np.int32)
        ptr = np.frombuffer(indptr, dtype=np.int64)
        # int32 document pointers while they fit, so that scipy keeps int32 indices (not int64 copies).
        small = len(term_ids) < np.iinfo(np.int32).max
        df = np.bincount(term_ids, minlength=len(vocabulary)).astype(np.float64)
        avg = float(doc_lengths.mean()) if self.size else 0.0
        per_posting = np.repeat(doc_lengths, np.diff(ptr))
        norm = k1 * (1.0 - b + b * per_posting / avg) if avg > 0 else np.full(len(tf), k1)
        del per_posting
        idf = np.log1p((self.size - df + 0.5) / (df + 0.5))
        weights = idf[term_ids] * tf * (k1 + 1.0) / (tf + norm)
        del tf, norm
        by_document = sp.csr_matrix((weights, term_ids, ptr.astype(np.int32) if small else ptr),
                                    shape=(self.size, len(vocabulary)))
        del weights, term_ids, ptr, terms, indptr
        self._set_matrix(by_document.T.tocsr())  # term-major; documents stay ascending within a term

    def _set_matrix(self, matrix: sp.csr_matrix) -> None:
        matrix.sort_indices()
        self._matrix = matrix
        self._df: NDArray[np.int64] = np.diff(matrix.indptr).astype(np.int64)

    @property
    def postings(self) -> int:
        return int(self._matrix.nnz)

    @property
    def nbytes(self) -> int:
        """Bytes of the matrix (not the vocabulary dict)."""
        m = self._matrix
        return int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes)

    def _query_terms(self, query: str) -> list[int]:
        """Distinct known terms of ``query``, in ascending id order."""
        return sorted({t for t in (self.vocabulary.get(term) for term in bm25_tokens(query)) if t is not None})

    def _scored(self, queries: Sequence[str]) -> Iterable[tuple[int, NDArray[np.int32], NDArray[np.float64]]]:
        """(query position, documents, scores) of the documents with a positive score, per query."""
        ids = [self._query_terms(q) for q in queries]
        start = 0
        while start < len(ids):
            stop, budget = start, 0
            while stop < len(ids) and (stop == start or budget + self._cost(ids[stop]) <= QUERY_POSTINGS):
                budget += self._cost(ids[stop])
                stop += 1
            rows = ids[start:stop]
            ptr = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum([len(r) for r in rows], out=ptr[1:])
            flat = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(ptr[-1]))
            q = sp.csr_matrix((np.ones(len(flat)), flat, ptr), shape=(len(rows), self._matrix.shape[0]))
            product = (q @ self._matrix).tocsr()
            for j in range(len(rows)):
                lo, hi = product.indptr[j], product.indptr[j + 1]
                docs, scores = product.indices[lo:hi], product.data[lo:hi]
                keep = scores > 0.0
                yield start + j, docs[keep], scores[keep]
            start = stop

    def _cost(self, term_ids: list[int]) -> int:
        return int(self._df[term_ids].sum()) if term_ids else 0

    def scores(self, query: str) -> NDArray[np.float64]:
        """BM25 score of every document for ``query``."""
        out = np.zeros(self.size, dtype=np.float64)
        for _, docs, scores in self._scored([query]):
            out[docs] = scores
        return out

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best documents with a positive score, best first; equal scores by index."""
        return self.top_many([query], k)[0]

    def top_many(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """:meth:`top` of each query, scored in batches of sparse products."""
        out: list[list[tuple[int, float]]] = [[] for _ in queries]
        if k <= 0 or not self.size:
            return out
        for j, docs, scores in self._scored(queries):
            if docs.size > k:
                kth = np.partition(scores, docs.size - k)[docs.size - k]
                keep = scores >= kth
                docs, scores = docs[keep], scores[keep]
            order = np.lexsort((docs, -scores))[:k]
            out[j] = [(int(d), float(s)) for d, s in zip(docs[order].tolist(), scores[order].tolist(), strict=True)]
        return out

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` (one ``.npz`` file); :meth:`load` reads it back."""
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> BM25Index:
        return cls.from_bytes(Path(path).read_bytes())

    def to_bytes(self) -> bytes:
        """The index as ``np.savez`` bytes: the term-major CSR arrays (``data``, ``indices``, ``indptr``,
        ``shape``), ``k1`` and ``b``, and the vocabulary as newline-separated UTF-8 terms in id order
        (tokens are word characters, never a newline). Plain arrays only, so loading needs no pickle;
        deterministic (the zip entries carry a fixed timestamp), so the same index gives the same bytes."""
        m = self._matrix
        terms = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        buffer = io.BytesIO()
        np.savez(buffer, data=m.data, indices=m.indices, indptr=m.indptr, shape=np.asarray(m.shape, dtype=np.int64),
                 params=np.asarray([self.k1, self.b]),
                 terms=np.frombuffer("\n".join(terms).encode("utf-8"), dtype=np.uint8))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> BM25Index:
        """The index :meth:`to_bytes` wrote; ``ValueError`` when the arrays do not make one."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as f:
                shape = tuple(int(x) for x in f["shape"])
                matrix = sp.csr_matrix((f["data"], f["indices"], f["indptr"]), shape=(shape[0], shape[1]))
                k1, b = (float(x) for x in f["params"])
                text = f["terms"].tobytes().decode("utf-8")
        except (OSError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as err:
            raise ValueError(f"not a saved BM25 index: {type(err).__name__}: {err}") from err
        vocabulary = {term: i for i, term in enumerate(text.split("\n"))} if shape[0] else {}
        if len(vocabulary) != shape[0]:
            raise ValueError(f"a saved BM25 index of {shape[0]} terms holds a vocabulary of {len(vocabulary)}")
        index = cls.__new__(cls)
        index.k1, index.b = k1, b
        index.vocabulary = vocabulary
        index.size = shape[1]
        index._set_matrix(matrix)
        return index


def idf(df: int, n: int) -> float:
    """The idf used above, for one term (tests and reports)."""
    return math.log1p((n - df + 0.5) / (df + 0.5))
