"""Pinned values of every hash and random stream an augmentation run's output depends on.

A shard restarted by a newer job image must write the rows its first attempt wrote, so these numbers
may never change: the values below were computed once and are compared exactly. A failure here means
outputs of the same seed would differ between two versions of the code.
"""

from __future__ import annotations

import numpy as np

from sampleforge.jobs.augment.generation import request_seed
from sampleforge.jobs.augment.randomness import RowRandomness
from sampleforge.jobs.augment.text import create_augmenter
from sampleforge.jobs.augment.text.rng import BatchRandom
from sampleforge.jobs.common.hashing import (
    fnv1a64,
    row_key,
    row_keys,
    splitmix64,
    splitmix64_array,
    stream_base,
    unit_float,
    unit_floats,
)

U64_MAX = 2**64 - 1


class TestHashes:
    def test_fnv1a64(self) -> None:
        assert [fnv1a64(s) for s in ("", "typo", "select", "同义词")] == [
            14695981039346656037, 12075329206510848815, 13652116963433683981, 1254283244833283862]

    def test_splitmix64_of_python_ints_wraps_to_64_bits(self) -> None:
        assert [splitmix64(v) for v in (0, 1, U64_MAX, -1, 123456789)] == [
            0, 6238072747940578789, 13029008266876403067, 13029008266876403067, 17445968401720671584]

    def test_splitmix64_of_arrays(self) -> None:
        values = np.array([0, 1, U64_MAX, 123456789], dtype=np.uint64)
        assert [int(v) for v in splitmix64_array(values)] == [
            0, 6238072747940578789, 13029008266876403067, 17445968401720671584]


class TestScalarAndVectorisedFormsAgree:
    values = (0, 1, 2**63, U64_MAX, 123456789, 0x9E3779B97F4A7C15)

    def test_splitmix64(self) -> None:
        mixed = splitmix64_array(np.array(self.values, dtype=np.uint64))
        assert [int(v) for v in mixed] == [splitmix64(v) for v in self.values]

    def test_row_keys(self) -> None:
        base = stream_base(7, fnv1a64("x"))
        rows = [0, 1, 5, 2**40, -1, -3]
        keys = row_keys(base, np.array(rows, dtype=np.int64).astype(np.uint64))
        assert [int(k) for k in keys] == [row_key(base, r) for r in rows]

    def test_unit_floats(self) -> None:
        floats = unit_floats(np.array(self.values, dtype=np.uint64))
        assert floats.tolist() == [unit_float(v) for v in self.values]
        assert unit_float(U64_MAX) < 1.0 and unit_float(0) == 0.0


class TestRowRandomness:
    random = RowRandomness(42, "typo")

    def test_row_keys(self) -> None:
        assert [self.random.row_key(r) for r in (0, 1, 777, -1)] == [
            14663915050112521817, 1643607358225263334, 8364851621789752816, 9216771355340617588]

    def test_uniform(self) -> None:
        assert self.random.uniform([0, 1, 777, 2**40], "select").tolist() == [
            0.03445961215379789, 0.050335767990420055, 0.10051861197706757, 0.5661718666512301]
        assert self.random.uniform([0, 1, 777]).tolist() == [0.43005776360886916, 0.9158742257110074,
                                                             0.6424979300810436]

    def test_derived_seeds_and_generators(self) -> None:
        assert (self.random.derived_seed(), self.random.derived_seed("query")) == (
            2457928144804994012, 2085137107087414953)
        assert self.random.generator(12).integers(1 << 30, size=3).tolist() == [709774999, 872415976, 721176583]
        assert self.random.generator(12, "x").random() == 0.3409947654515214

    def test_generation_request_seed(self) -> None:
        assert request_seed(self.random.row_key(12), "query", 0) == 8668522003884563048


class TestTextEditStreams:
    """The text-edit augmenters' counter-based streams, on their precomputed prefix and past it."""

    def test_an_augmenters_salt_is_the_hash_of_its_name(self) -> None:
        assert create_augmenter("typo")._salt == 12075329206510848815  # type: ignore[attr-defined]

    def test_streams(self) -> None:
        batch = BatchRandom(3, 12075329206510848815, [5, 6, 9, -2], [2, 1, 3, 1])
        assert batch.select(0).take(4) == [0.8108388669265723, 0.5508463617560467, 0.6867618831397421,
                                           0.7022152631644435]
        stream = batch.select(2)
        assert (stream.random(), stream.below(10), stream.random(), stream.random()) == (
            0.6936365546724357, 6, 0.912731474124703, 0.43920188808134997)
        assert batch.select(3).take(3) == [0.4557731895614201, 0.9811410736206823, 0.9794912243494076]
