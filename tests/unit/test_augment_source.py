"""Sharding slices and the pure parts of the source reader (the reader itself runs against the real
MinIO in tests/integration)."""

from __future__ import annotations

import io
import itertools

import pytest

from sampleforge.jobs.augment.source import format_of, shard_range
from sampleforge.jobs.common.records import lines


@pytest.mark.parametrize("total", [0, 1, 2, 7, 100, 9_999, 5_000_000])
@pytest.mark.parametrize("shards", [1, 2, 3, 7, 64, 1000])
def test_shards_are_contiguous_disjoint_balanced_and_cover_every_row(total: int, shards: int) -> None:
    ranges = [shard_range(total, i, shards) for i in range(shards)]
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    for (_, stop), (start, _) in itertools.pairwise(ranges):
        assert stop == start
    sizes = [b - a for a, b in ranges]
    assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1
    assert sum(sizes) == total


def test_a_shard_outside_the_run_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        shard_range(10, 3, 3)


def test_the_slice_of_a_row_does_not_depend_on_anything_but_the_counts() -> None:
    # Row 2_500_000 of 5M rows is in shard 1 of 2 and in shard 1 of 3 (ranges [1666666, 3333333)).
    assert shard_range(5_000_000, 1, 2) == (2_500_000, 5_000_000)
    assert shard_range(5_000_000, 1, 3) == (1_666_666, 3_333_333)


def test_formats_from_suffix_or_declaration() -> None:
    assert format_of("a/train.JSONL", None) == "jsonl"
    assert format_of("a/train.ndjson", None) == "jsonl"
    assert format_of("a/train.csv", None) == "csv"
    assert format_of("a/part-0.parquet", None) == "parquet"
    assert format_of("a/data.txt", None) is None
    assert format_of("a/data.txt", "csv") == "csv"


def test_lines_are_split_across_read_chunks() -> None:
    data = b'{"a": 1}\n{"b": "two"}\n\n{"c": 3}'
    assert list(lines(io.BytesIO(data), chunk=7)) == [b'{"a": 1}', b'{"b": "two"}', b"", b'{"c": 3}']
    assert list(lines(io.BytesIO(b""), chunk=7)) == []
    assert list(lines(io.BytesIO(b"x\n"), chunk=7)) == [b"x"]
