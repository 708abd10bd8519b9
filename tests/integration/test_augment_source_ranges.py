"""Ranged reads of JSONL sources against the testbed's real MinIO: shards that enter an object at a
checkpoint the first pass learnt read about their share of the bytes and yield exactly what a read
from the object's first byte yields."""

from __future__ import annotations

import random

import pytest
from minio import Minio
from test_augment_support import put, qbqtc_lines

from sampleforge.jobs.augment.errors import SourceError
from sampleforge.jobs.augment.source import (
    CHECKPOINT_INTERVAL,
    Checkpoint,
    RawBatch,
    SourceReader,
    list_objects,
    shard_range,
)
from sampleforge.jobs.common.storage import ObjectStore

pytestmark = pytest.mark.integration

COLUMNS = ["query", "title", "label", "id"]


def dirty(lines: list[bytes], seed: int) -> bytes:
    """Real rows with broken JSON, text in another encoding, blank lines and CRLF ends sprinkled in."""
    rng = random.Random(seed)
    bad = [b"{oops", b"[1]", '{"query": "caf\xe9"}'.encode("latin-1"), b"", b'{"query": "\xe5\xb0']
    out: list[bytes] = []
    for line in lines:
        if rng.random() < 0.03:
            out.extend(rng.choice(bad) for _ in range(rng.randint(1, 3)))
        out.append(line + b"\r" if rng.random() < 0.05 else line)
    return b"\n".join(out) + b"\n{trailing\n"


def rows_of(batches: list[RawBatch]) -> list[tuple[int, tuple[object, ...]]]:
    return [(b.first_row + k, tuple(b.columns[c][k] for c in COLUMNS)) for b in batches for k in range(b.size)]


def malformed_of(batches: list[RawBatch]) -> list[tuple[str, str, object]]:
    return sorted((m.source, m.reason, str(m.record)) for b in batches for m in b.malformed)


def test_shards_read_their_share_of_a_jsonl_source_and_the_same_records(s3: Minio, bucket: str) -> None:
    lines = qbqtc_lines(20_000)
    big = dirty(lines + lines[::-1], seed=1)                     # about 5.7 MB
    small = dirty(lines[:3000], seed=2)
    put(s3, bucket, "src/part-0.jsonl", big)
    put(s3, bucket, "src/part-1.jsonl", small)
    store = ObjectStore(s3)
    objects = list_objects(store, f"s3://{bucket}/src/", None, "spec.source")
    first = SourceReader(store, objects, COLUMNS, [("spec.source.columns.query", "query")])
    rows: list[int] = []
    offsets: list[list[Checkpoint]] = []
    everything = list(first.read_all(rows, offsets))
    assert first.bytes_read == len(big) + len(small)
    assert [len(o) for o in offsets] == [1 + len(big) // CHECKPOINT_INTERVAL, 1]
    total = sum(rows)
    size = len(big) + len(small)
    for shards in (1, 2, 3, 8):
        got: list[RawBatch] = []
        for shard in range(shards):
            lo, hi = shard_range(total, shard, shards)
            reader = SourceReader(store, objects, COLUMNS, [("spec.source.columns.query", "query")])
            ranged = list(reader.read_range(rows, lo, hi, shard == shards - 1, offsets))
            assert reader.bytes_read <= 1.1 * size / shards + 2 * CHECKPOINT_INTERVAL, (shards, shard)
            if shards in (1, 3):
                whole = SourceReader(store, objects, COLUMNS, [("spec.source.columns.query", "query")])
                assert ranged == list(whole.read_range(rows, lo, hi, shard == shards - 1))
            got += ranged
        assert rows_of(got) == rows_of(everything)
        assert malformed_of(got) == malformed_of(everything)


def test_offsets_learnt_before_the_object_was_replaced_are_refused(s3: Minio, bucket: str) -> None:
    data = dirty(qbqtc_lines(20_000), seed=3)
    put(s3, bucket, "src/part-0.jsonl", data)
    store = ObjectStore(s3)
    objects = list_objects(store, f"s3://{bucket}/src/part-0.jsonl", None, "spec.source")
    rows: list[int] = []
    offsets: list[list[Checkpoint]] = []
    list(SourceReader(store, objects, COLUMNS, []).read_all(rows, offsets))
    put(s3, bucket, "src/part-0.jsonl", b"\n" + data)
    with pytest.raises(SourceError, match="replaced after it was listed"):
        list(SourceReader(store, objects, COLUMNS, []).read_range(rows, rows[0] - 5, rows[0], True, offsets))
