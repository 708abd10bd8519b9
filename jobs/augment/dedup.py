"""Duplicate detection: normalised text keys, a compact 64-bit hash set, and MinHash near-duplicates.

Exact duplicates are decided on the normalised ``(query, item)`` pair, where the item includes its
attribute values (a row that only blanks an attribute is not a copy of its source). Keys are 64-bit
BLAKE2b hashes held in a sorted numpy array plus a small Python set for recent additions, about
8 bytes per row instead of the ~70 of a Python set of ints: a shard of millions of rows keeps its
dedup state in tens of megabytes and never holds the rows themselves. A 64-bit collision between
two different pairs is a ~1e-7 chance per billion pairs: acceptable for dropping a generated row.

Near duplicates use datasketch's MinHash over character 3-grams (which works for Chinese and English
alike) and MinHash LSH. Two rows are near duplicates when *both* their queries and their items are
(Jaccard at or above the threshold): comparing the concatenated pair instead would let a long
shared title hide two unrelated queries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from datasketch import MinHash, MinHashLSH
from numpy.typing import NDArray

# One rule for "the same text" in both jobs: the leakage guard and the fine-tune split must agree.
from sampleforge.jobs.common.text import norm_key

__all__ = ["HashSet", "NearDuplicateIndex", "hash64", "item_repr", "minhashes", "norm_key", "normalized_pair_hashes",
           "pair_hash", "pair_hashes", "shingles"]

_MERGE_AT = 1 << 17


def item_repr(item: str, attributes: Mapping[str, str | None]) -> str:
    """The item with its attributes, as the fine-tune job reads it (``title | brand: x | color: y``)."""
    return item + "".join(f" | {name}: {value}" for name, value in attributes.items() if value)


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def pair_hash(query: str, item_text: str) -> int:
    """64-bit key of a normalised (query, item) pair; ``item_text`` should be :func:`item_repr`."""
    return hash64(norm_key(query) + "\x1f" + norm_key(item_text))


def normalized_pair_hashes(query_key: str, item_keys: Sequence[str]) -> NDArray[np.uint64]:
    """:func:`pair_hash` of one query with many items, all already passed through :func:`norm_key`."""
    head = query_key + "\x1f"
    return np.fromiter((hash64(head + key) for key in item_keys), dtype=np.uint64, count=len(item_keys))


def pair_hashes(queries: Sequence[str], item_texts: Sequence[str]) -> NDArray[np.uint64]:
    return np.fromiter((pair_hash(q, t) for q, t in zip(queries, item_texts, strict=True)), dtype=np.uint64,
                       count=len(queries))


def sorted_unique(keys: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """``np.unique`` that sorts in place and needs one extra bit per key instead of copies of the array:
    for millions of keys the difference is tens of megabytes."""
    keys.sort()
    if len(keys) < 2:
        return keys
    fresh = np.empty(len(keys), dtype=bool)
    fresh[0] = True
    np.not_equal(keys[1:], keys[:-1], out=fresh[1:])
    return keys if fresh.all() else keys[fresh]


class HashSet:
    """A set of 64-bit keys: a sorted array (vectorised lookups) plus a set of recent additions.

    ``base`` is taken over (sorted in place), not copied.
    """

    def __init__(self, base: NDArray[np.uint64] | None = None) -> None:
        self._sorted: NDArray[np.uint64] = sorted_unique(base) if base is not None else np.zeros(0, dtype=np.uint64)
        self._recent: set[int] = set()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    @property
    def nbytes(self) -> int:
        return int(self._sorted.nbytes) + 8 * len(self._recent)

    def _in_sorted(self, keys: NDArray[np.uint64]) -> NDArray[np.bool_]:
        if not len(self._sorted) or not len(keys):
            return np.zeros(len(keys), dtype=bool)
        pos = np.searchsorted(self._sorted, keys)
        pos[pos == len(self._sorted)] = 0
        found: NDArray[np.bool_] = self._sorted[pos] == keys
        return found

    def contains(self, keys: NDArray[np.uint64]) -> NDArray[np.bool_]:
        found = self._in_sorted(keys)
        if self._recent:
            found |= np.fromiter((int(k) in self._recent for k in keys), dtype=bool, count=len(keys))
        return found

    def __contains__(self, key: int) -> bool:
        return bool(self.contains(np.asarray([key], dtype=np.uint64))[0])

    def add_new(self, keys: NDArray[np.uint64]) -> NDArray[np.bool_]:
        """Add ``keys`` in order; True where a key was not present before (nor earlier in ``keys``)."""
        seen = self._in_sorted(keys)
        new = np.zeros(len(keys), dtype=bool)
        recent = self._recent
        for i, key in enumerate(keys.tolist()):
            if not seen[i] and key not in recent:
                recent.add(key)
                new[i] = True
        if len(recent) >= _MERGE_AT:
            # Recent keys are new by construction: concatenate and sort, no dedup pass (peak: two arrays).
            merged = np.concatenate((self._sorted, np.fromiter(recent, dtype=np.uint64, count=len(recent))))
            self._sorted = np.empty(0, dtype=np.uint64)
            merged.sort()
            self._sorted = merged
            recent.clear()
        return new

    def sorted_keys(self) -> NDArray[np.uint64]:
        """Every key, ascending and distinct: the set's own array when nothing was added since its last
        merge (so no copy of millions of keys; do not modify it), else a merged copy."""
        if not self._recent:
            return self._sorted
        merged = np.concatenate((self._sorted, np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))))
        merged.sort()
        return merged

    @classmethod
    def from_sorted(cls, keys: NDArray[np.uint64]) -> HashSet:
        """The set of ``keys``, already ascending and distinct (as :meth:`sorted_keys` gives them), taken
        over without sorting; ValueError when they are not."""
        if len(keys) > 1 and not bool((keys[1:] > keys[:-1]).all()):
            raise ValueError("the keys are not ascending and distinct")
        found = cls()
        found._sorted = keys
        return found


def shingles(text: str, n: int = 3) -> list[bytes]:
    """Distinct character ``n``-grams of the normalised text (the whole text when shorter)."""
    key = norm_key(text)
    if len(key) <= n:
        return [key.encode("utf-8")] if key else []
    return sorted({key[i : i + n].encode("utf-8") for i in range(len(key) - n + 1)})


def minhashes(texts: Iterable[str], num_perm: int) -> list[MinHash]:
    """MinHash signatures of ``texts`` (fixed seed: the same text always gets the same signature)."""
    return list(MinHash.bulk([shingles(t) for t in texts], num_perm=num_perm, seed=1))


class NearDuplicateIndex:
    """Rows kept so far, as two LSH indexes (queries and items); a row is a near duplicate of a kept
    row when some key is a candidate in both and both Jaccard estimates reach the threshold."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.threshold = threshold
        self.num_perm = num_perm
        self._queries = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._items = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._signatures: dict[int, tuple[MinHash, MinHash]] = {}
        self._next = 0

    def __len__(self) -> int:
        return self._next

    def similar(self, query_sig: MinHash, item_sig: MinHash) -> bool:
        """Whether a kept row is a near duplicate of (query_sig, item_sig)."""
        both = set(self._queries.query(query_sig)) & set(self._items.query(item_sig))
        for key in sorted(both):
            kept_query, kept_item = self._signatures[key]
            if query_sig.jaccard(kept_query) >= self.threshold and item_sig.jaccard(kept_item) >= self.threshold:
                return True
        return False

    def add(self, query_sig: MinHash, item_sig: MinHash) -> None:
        key = self._next
        self._next += 1
        self._queries.insert(key, query_sig)
        self._items.insert(key, item_sig)
        self._signatures[key] = (query_sig, item_sig)
