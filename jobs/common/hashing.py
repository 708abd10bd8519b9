"""Hashes and random keys that are the same in every process, shard, retry and job image.

A restarted shard must write the rows its first attempt wrote, in another pod and perhaps under a newer
image, so no random number of a run may come from ``hash()`` (salted per process), a generator's
position in a stream of rows, or the clock. Every one is derived from integers mixed here instead:
FNV-1a 64 turns a name into a salt, and SplitMix64 mixes a seed, a salt and a global row id into that
row's key. Each function has a scalar (Python int) and a vectorised (uint64 array) form that agree bit
for bit, so a value is the same whichever path computed it. tests/unit/test_hashing.py pins the
values: changing any of them changes the output of every seed.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "GOLDEN",
    "MASK64",
    "fnv1a64",
    "row_key",
    "row_keys",
    "splitmix64",
    "splitmix64_array",
    "stream_base",
    "unit_float",
    "unit_floats",
]

MASK64 = (1 << 64) - 1
#: SplitMix64's increment (2**64 / the golden ratio): the step between consecutive rows' keys, and
#: between consecutive values of a counter-based stream.
GOLDEN = 0x9E3779B97F4A7C15
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_INV_2_53 = 1.0 / (1 << 53)

# numpy scalars made once: building them per call costs more than the arithmetic on a short batch
_U11, _U27, _U30, _U31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)
_UC1, _UC2, _UGOLDEN = np.uint64(_C1), np.uint64(_C2), np.uint64(GOLDEN)


def fnv1a64(text: str) -> int:
    """FNV-1a 64 of ``text``'s UTF-8 bytes: a salt that, unlike ``hash()``, is the same in every process."""
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


def splitmix64(z: int) -> int:
    """SplitMix64's finaliser of one integer, taken modulo 2**64 first (so -1 mixes as 2**64 - 1)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * _C1) & MASK64
    z = ((z ^ (z >> 27)) * _C2) & MASK64
    return z ^ (z >> 31)


def splitmix64_array(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """:func:`splitmix64` of every element, **in place** (numpy wraps on overflow, as the algorithm
    needs), returning ``z``. In place because a short batch's cost is mostly numpy call overhead and
    temporaries; pass a copy to keep the input."""
    z ^= z >> _U30
    z *= _UC1
    z ^= z >> _U27
    z *= _UC2
    z ^= z >> _U31
    return z


def stream_base(seed: int, salt: int) -> int:
    """The key of a ``(seed, salt)`` pair, from which every row's key is derived (:func:`row_key`)."""
    return splitmix64((seed & MASK64) ^ salt)


def row_key(base: int, row: int) -> int:
    """The 64-bit key of global row id ``row`` (modulo 2**64) under ``base`` (:func:`stream_base`)."""
    return splitmix64(base + (row & MASK64) * GOLDEN)


def row_keys(base: int, rows: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """:func:`row_key` of every row id in ``rows`` (negative ids already wrapped to uint64), as a new array."""
    keys: NDArray[np.uint64] = rows * _UGOLDEN
    keys += np.uint64(base)
    return splitmix64_array(keys)


def unit_float(z: int) -> float:
    """A float in [0, 1) from the top 53 bits of the 64-bit ``z`` (every such float equally likely)."""
    return (z >> 11) * _INV_2_53


def unit_floats(z: NDArray[np.uint64]) -> NDArray[np.float64]:
    """:func:`unit_float` of every element."""
    out: NDArray[np.float64] = (z >> _U11).astype(np.float64) * _INV_2_53
    return out
