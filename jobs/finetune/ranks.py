"""A number per distinct text, numbered in sorted order, for millions of texts without holding them.

``ranks(stream)[i]`` is what ``np.unique(texts, return_inverse=True)[1][i]`` gives: the position
of text ``i`` among the distinct texts sorted by code point. The split by query numbers its groups
this way (so the split does not depend on row order), and the samplers' query and item keys are
these numbers; keeping exactly that numbering keeps every split and every batch what it was.

``np.unique`` over Python strings needs every text as an object at once. Here the texts come as a
stream of Arrow arrays (read again for each pass) and are ranked range by range: a first pass
measures them and samples splitting texts; each later pass keeps only the texts of one range
(dictionary-encoded per chunk, so a text repeated on many rows costs 12 bytes per row), sorts the
range's texts and numbers them after those of the ranges before it. Memory is bounded by
``budget`` bytes of text (plus 12 bytes per row of the range); data under the budget is ranked in
one pass. Arrow compares strings as UTF-8 bytes, which orders them by code point, as Python does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

__all__ = ["BUDGET_BYTES", "ranks"]

#: Text held at once per range (its sort and codes cost a few times that while a range is ranked).
BUDGET_BYTES = 4 << 20
#: Texts sampled to choose the ranges' bounds.
SAMPLE = 4096

Stream = Callable[[], Iterator[pa.Array]]


def _text_bytes(array: pa.Array) -> int:
    return int(pc.sum(pc.binary_length(array)).as_py() or 0)


def _measure(stream: Stream) -> tuple[int, int, list[str]]:
    """Row count, text bytes, and an evenly spaced sample of texts (deterministic)."""
    rows, size = 0, 0
    sample: list[str] = []
    step = 1
    for array in stream():
        size += _text_bytes(array)
        offsets = np.arange((-rows) % step, len(array), step)
        sample.extend(array.take(pa.array(offsets)).to_pylist())
        rows += len(array)
        while len(sample) >= 2 * SAMPLE:  # keep every other one: the spacing doubles
            sample = sample[::2]
            step *= 2
    return rows, size, sample


def _bounds(sample: list[str], size: int, budget: int) -> list[str]:
    """Texts splitting the sorted order into ranges of about ``budget`` bytes each."""
    count = -(-size // budget)
    if count <= 1 or not sample:
        return []
    ordered = sorted(set(sample))
    picks = [ordered[len(ordered) * k // count] for k in range(1, count)]
    return sorted(set(picks) - {ordered[0]})


def ranks(stream: Stream, budget: int = BUDGET_BYTES) -> NDArray[np.int64]:
    """The sorted-order number of each text of ``stream()`` (called once per pass) among the distinct
    texts; null texts are not allowed."""
    rows, size, sample = _measure(stream)
    out = np.empty(rows, dtype=np.int64)
    bounds = _bounds(sample, size, budget)
    edges: list[str | None] = [None, *bounds, None]
    offset = 0
    for low, high in itertools.pairwise(edges):
        positions: list[NDArray[np.int64]] = []
        indices: list[NDArray[np.int64]] = []
        dictionaries: list[pa.Array] = []
        start = 0
        for array in stream():
            mask = np.ones(len(array), dtype=bool)
            if low is not None:
                mask &= pc.greater_equal(array, low).to_numpy(zero_copy_only=False)
            if high is not None:
                mask &= pc.less(array, high).to_numpy(zero_copy_only=False)
            where = np.flatnonzero(mask)
            if len(where):
                chosen = array if len(where) == len(array) else array.take(pa.array(where))
                encoded = pc.dictionary_encode(chosen)
                positions.append(where + start)
                indices.append(encoded.indices.to_numpy().astype(np.int64))
                dictionaries.append(encoded.dictionary)
            start += len(array)
        if not dictionaries:
            continue
        # Dense ranks of the range's texts by sorting (no hash table): equal neighbours share one.
        texts = pa.concat_arrays(dictionaries)
        order = pc.array_sort_indices(texts).to_numpy()
        ordered = texts.take(pa.array(order))
        new = pc.not_equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1)).to_numpy(zero_copy_only=False)
        numbers = np.empty(len(texts), dtype=np.int64)
        numbers[order] = np.concatenate([[0], np.cumsum(new, dtype=np.int64)])
        first = 0
        for where, codes, dictionary in zip(positions, indices, dictionaries, strict=True):
            out[where] = numbers[first:first + len(dictionary)][codes] + offset
            first += len(dictionary)
        offset += int(numbers.max()) + 1
    return out
