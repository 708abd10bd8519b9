"""Each augmenter's random numbers, keyed by row so that sharding, batching and retries cannot change them.

The mixing itself is :mod:`sampleforge.jobs.common.hashing`'s (shared with the text-edit streams of
:mod:`.text.rng`); this module is what an augmenter holds: one seed and name, and per-row numbers,
generators and seeds derived from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from sampleforge.jobs.common.hashing import (
    fnv1a64,
    row_key,
    row_keys,
    splitmix64,
    splitmix64_array,
    stream_base,
    unit_floats,
)

__all__ = ["RowRandomness"]


class RowRandomness:
    """Random numbers for one augmenter, keyed by ``(seed, name, global row id)``.

    Why not one generator per augmenter: its numbers would depend on which rows came before in the
    same process, so a shard, a retry or another batch size would change the output. Here row ``r``'s
    numbers depend on nothing but the seed, the augmenter's name and ``r``.
    """

    def __init__(self, seed: int, name: str) -> None:
        self.seed = seed
        self.name = name
        self._base = stream_base(seed, fnv1a64(name))

    def row_key(self, row: int) -> int:
        """The 64-bit key of row ``row``."""
        return row_key(self._base, row)

    def uniform(self, rows: Sequence[int] | NDArray[np.int64], stream: str = "") -> NDArray[np.float64]:
        """One float in [0, 1) per row, for the named ``stream`` (vectorised: a batch at a time)."""
        ids = np.asarray(rows, dtype=np.int64).astype(np.uint64)  # negative ids wrap, as row_key's do
        if ids.size == 0:
            return np.zeros(0, dtype=np.float64)
        keys = row_keys(self._base, ids)
        keys ^= np.uint64(fnv1a64(stream))
        return unit_floats(splitmix64_array(keys))

    def generator(self, row: int, stream: str = "") -> np.random.Generator:
        """A numpy Generator for row ``row`` (about 20 us to create: fine per row, not per word)."""
        return np.random.Generator(np.random.PCG64([self.row_key(row), fnv1a64(stream)]))

    def derived_seed(self, purpose: str = "") -> int:
        """A non-negative 63-bit seed for libraries that take one seed and key rows themselves (the
        text-edit augmenters key by row index, so giving each augmenter name its own seed keeps two
        augmenters of the same type from producing the same edits)."""
        return splitmix64(self._base ^ fnv1a64(purpose)) >> 1
