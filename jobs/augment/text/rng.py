"""Per-row random streams that do not depend on sharding, process or Python's ``hash()``.

An augmentation run is split into shards that run in different pods, and a restarted shard must
produce byte-identical rows. So the random numbers a row sees may depend only on
``(seed, augmenter name, row index)``, never on which rows came before it in the same process.

Creating a ``numpy.random.Generator`` per row costs more than the edits themselves (tens of
microseconds), so each row gets a counter-based stream instead: value ``j`` of row ``r`` is
SplitMix64 of ``key(seed, salt, r) + (j + 1) * golden``, with the row keys and mixing of
:mod:`sampleforge.jobs.common.hashing` (which the other augmenters' ``RowRandomness`` uses too). The
first values of every row in a batch are computed at once with vectorised numpy; a row that needs more
continues the same sequence in pure Python, so the values are identical whichever path produced them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sampleforge.jobs.common.hashing import (
    GOLDEN,
    MASK64,
    row_keys,
    splitmix64,
    splitmix64_array,
    stream_base,
    unit_float,
    unit_floats,
)

__all__ = ["BatchRandom", "RowRandom"]

_UGOLDEN = np.uint64(GOLDEN)


class RowRandom:
    """A deterministic stream of uniform floats in [0, 1) for one row at a time.

    One object serves a whole batch: :meth:`BatchRandom.select` points it at a row's precomputed
    values, so no per-row object or list slice is created. Past the precomputed values the same
    sequence continues in pure Python. Only the two operations the augmenters need are offered,
    as plain methods on a slotted object, because they are called a few times per word.
    """

    __slots__ = ("_base", "_end", "_key", "_pos", "_values")

    def __init__(self, key: int, values: list[float], start: int = 0, end: int | None = None) -> None:
        self._key = key
        self._values = values
        self._pos = start
        self._base = start
        self._end = len(values) if end is None else end

    def random(self) -> float:
        """The next float in [0, 1)."""
        pos = self._pos
        self._pos = pos + 1
        if pos < self._end:
            return self._values[pos]
        return _value(self._key, pos - self._base)

    def below(self, n: int) -> int:
        """A uniform int in ``range(n)`` (``n >= 1``); the 53-bit float makes the bias negligible."""
        pos = self._pos
        self._pos = pos + 1
        if pos < self._end:
            return int(self._values[pos] * n)
        return int(_value(self._key, pos - self._base) * n)

    def take(self, n: int) -> list[float]:
        """The next ``n`` floats at once (a list slice: much cheaper than ``n`` calls)."""
        pos = self._pos
        end = pos + n
        self._pos = end
        if end <= self._end:
            return self._values[pos:end]
        head = self._values[pos : self._end] if pos < self._end else []
        first = max(pos, self._end)
        return head + [_value(self._key, j - self._base) for j in range(first, end)]


def _value(key: int, j: int) -> float:
    """Value ``j`` (0-based) of the stream with ``key``, computed directly."""
    return unit_float(splitmix64(key + (j + 1) * GOLDEN))


class BatchRandom:
    """Precomputed stream prefixes for a batch of rows; ``select(i)`` gives row ``rows[i]``'s stream.

    ``draws`` is only a speed hint (how many values row ``i`` is likely to use); it never changes the
    values a row sees.
    """

    __slots__ = ("_keys", "_offsets", "_stream", "_values")

    def __init__(self, seed: int, salt: int, rows: Sequence[int], draws: Sequence[int]) -> None:
        n = len(rows)
        self._stream = RowRandom(0, [], 0, 0)
        if n == 0:
            self._keys: list[int] = []
            self._values: list[float] = []
            self._offsets: list[int] = [0]
            return
        if min(rows) < 0 or max(rows) > MASK64:
            rows = [r & MASK64 for r in rows]  # two's complement wrap, as row_key does
        keys = row_keys(stream_base(seed, salt), np.array(rows, dtype=np.uint64))
        counts = np.array(draws, dtype=np.int64)
        np.maximum(counts, 1, out=counts)
        ends = counts.cumsum()
        total = int(ends[-1])
        starts = ends - counts
        # z = key + (j + 1) * golden for counter j within each row's segment, laid out row after row
        steps = np.arange(1, total + 1, dtype=np.uint64)
        steps -= np.repeat(starts.astype(np.uint64), counts)
        steps *= _UGOLDEN
        z = np.repeat(keys, counts)
        z += steps
        self._values = unit_floats(splitmix64_array(z)).tolist()
        self._keys = keys.tolist()
        self._offsets = starts.tolist() + [total]

    def select(self, i: int) -> RowRandom:
        """The stream of the batch's row ``i`` (the same object each call, repositioned)."""
        stream = self._stream
        stream._key = self._keys[i]
        stream._values = self._values
        stream._pos = stream._base = self._offsets[i]
        stream._end = self._offsets[i + 1]
        return stream

