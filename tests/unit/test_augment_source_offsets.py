"""Ranged reads of JSONL objects: the checkpoints the first pass collects, and shards that enter an
object at one of them yet yield exactly what a read from the object's first byte yields.

The reader runs on the real :class:`ObjectStore` over an in-memory stand-in for the MinIO client
(ranged GETs, If-Match); the same checks against real MinIO are in
tests/integration/test_augment_source_ranges.py.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from minio.error import S3Error

from sampleforge.jobs.augment import source
from sampleforge.jobs.augment.source import (
    Checkpoint,
    RawBatch,
    SourceObject,
    SourceReader,
    entry_points,
    shard_range,
)
from sampleforge.jobs.common.objectio import open_range
from sampleforge.jobs.common.outage import StorageError
from sampleforge.jobs.common.records import BadRecord, jsonl_records, jsonl_records_at
from sampleforge.jobs.common.storage import ObjectStore, S3Uri

QBQTC = Path(__file__).resolve().parents[3] / "shared" / "data" / "qbqtc" / "dev.json"
COLUMNS = ["query", "title", "label", "id"]


class FakeResponse:
    """What minio's get_object returns, over bytes in memory."""

    def __init__(self, data: bytes, etag: str) -> None:
        self._body = io.BytesIO(data)
        self.headers = {"ETag": etag}

    def read(self, amount: int | None = None) -> bytes:
        return self._body.read(amount)

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class FakeMinio:
    """The part of the MinIO client a reader uses: GETs with a Range and If-Match, recorded."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.gets: list[tuple[str, int, int]] = []

    def etag(self, key: str) -> str:
        return hashlib.md5(self.objects[key]).hexdigest()

    def get_object(self, bucket: str, key: str, offset: int = 0, length: int = 0,
                   request_headers: dict[str, str] | None = None) -> FakeResponse:
        data = self.objects[key]
        if request_headers and request_headers.get("If-Match") not in (None, self.etag(key)):
            raise S3Error(None, "PreconditionFailed", "At least one of the pre-conditions you specified did not "  # type: ignore[arg-type]
                          "hold", key, "", "", bucket, key)
        self.gets.append((key, offset, length))
        return FakeResponse(data[offset:offset + length] if length else data[offset:], self.etag(key))


def make_store(objects: dict[str, bytes]) -> tuple[ObjectStore, FakeMinio, list[SourceObject]]:
    client = FakeMinio()
    client.objects.update(objects)
    store = ObjectStore(client)
    found = [SourceObject(S3Uri("b", key), len(data), client.etag(key), "csv" if key.endswith(".csv") else "jsonl")
             for key, data in sorted(objects.items())]
    return store, client, found


def qbqtc_lines() -> list[bytes]:
    if not QBQTC.exists():
        pytest.skip(f"the QBQTC copy {QBQTC} is not here (see shared/data/README.md)")
    return QBQTC.read_bytes().rstrip(b"\n").split(b"\n")


def dirty_jsonl(lines: list[bytes], seed: int, every: int = 37) -> bytes:
    """Real rows with what a file in the wild holds sprinkled in: broken JSON, non-objects, text
    in another encoding, blank and whitespace lines, CRLF ends, runs of bad lines; a BOM first and
    no newline after the last line."""
    rng = random.Random(seed)
    bad = [b'{"query": "\xe5\xb0\x8f', b"[1, 2]", '{"query": "caf\xe9"}'.encode("latin-1"), b"", b"   ",
           b'"text"', b'{"query": "\\ud800", "title": "x", "label": "1"}', b"{oops"]
    out = [b"\xef\xbb\xbf" + rng.choice(bad[:3])]
    for line in lines:
        if rng.random() < 1 / every:
            out.extend(rng.choice(bad) for _ in range(rng.randint(1, 3)))
        out.append(line + b"\r" if rng.random() < 0.05 else line)
    return b"\n".join(out)


def first_pass(reader: SourceReader) -> tuple[list[RawBatch], list[int], list[list[Checkpoint]]]:
    rows: list[int] = []
    offsets: list[list[Checkpoint]] = []
    return list(reader.read_all(rows, offsets)), rows, offsets


def rows_of(batches: list[RawBatch]) -> list[tuple[int, tuple[Any, ...]]]:
    return [(b.first_row + k, tuple(b.columns[c][k] for c in b.columns)) for b in batches for k in range(b.size)]


def malformed_of(batches: list[RawBatch]) -> list[tuple[str, str, Any]]:
    return [(m.source, m.reason, m.record) for b in batches for m in b.malformed]


# -- the parser's offsets -------------------------------------------------------------------------------------------


def parse_at(data: bytes, offset: int = 0, line: int = 1,
             chunk: int = 7) -> list[tuple[dict[str, Any] | BadRecord, int, int]]:
    return list(jsonl_records_at(io.BytesIO(data[offset:]), chunk, offset=offset, line=line))


def test_each_record_comes_with_the_offset_past_its_line_and_the_next_line_number() -> None:
    data = '\ufeff{"q": "小孩"}\r\n\n{oops\n  \n{"q": "咳嗽感冒"}\n[1]\n{"q": 3}'.encode()
    got = parse_at(data)
    assert [(r if isinstance(r, dict) else r.message, end, after) for r, end, after in got] == [
        ({"q": "小孩"}, data.index(b"\n") + 1, 2),
        ("invalid JSON (line 3): Expecting property name enclosed in double quotes", data.index(b"{oops") + 6, 4),
        ({"q": "咳嗽感冒"}, data.index(b"[1]"), 6),
        ("not a JSON object (line 6)", data.index(b'{"q": 3}'), 7),
        ({"q": 3}, len(data), 8),
    ]
    # The records, reasons and line numbers are jsonl_records' own, whatever the chunk size.
    for chunk in (1, 2, 5, 1 << 20):
        assert [r for r, _, _ in parse_at(data, chunk=chunk)] == list(jsonl_records(io.BytesIO(data), chunk))


def test_a_read_entered_at_a_line_start_says_what_a_read_from_the_first_byte_says() -> None:
    data = b'{"q": 1}\n\n{bad\n{"q": "\xe5\xb0\x8f\xe5\xad\xa9"}\n"x"\n{"q": 4}\n'
    whole = parse_at(data)
    for record, end, after in whole:
        # Entering past each record gives the rest of the file, same line numbers and offsets.
        assert parse_at(data, end, after) == [r for r in whole if r[1] > end]


def test_a_bom_is_only_stripped_on_the_first_line() -> None:
    data = b'{"q": 1}\n\xef\xbb\xbf{"q": 2}\n'
    (_, end, after), = parse_at(data, 0, 1)[:1]
    (bad, _, _), = parse_at(data, end, after)
    assert isinstance(bad, BadRecord) and bad.where == "line 2"
    assert bad == next(r for r in jsonl_records(io.BytesIO(data)) if isinstance(r, BadRecord))


# -- where a range enters and leaves an object ----------------------------------------------------------------------


MARKS: list[Checkpoint] = [(0, 0, 1), (100, 5000, 120), (200, 10000, 230), (300, 15000, 330)]


@pytest.mark.parametrize(("lo", "hi", "count", "expected"), [
    (0, 50, 400, ((0, 0, 1), 5000)),
    (99, 100, 400, ((0, 0, 1), 5000)),
    (100, 101, 400, ((100, 5000, 120), 10000)),
    (150, 200, 400, ((100, 5000, 120), 10000)),
    (150, 201, 400, ((100, 5000, 120), 15000)),
    (250, 400, 400, ((200, 10000, 230), None)),   # the object's end: its trailing bad lines come with it
    (250, 300, 300, ((200, 10000, 230), None)),
    (301, 350, 400, ((300, 15000, 330), None)),
])
def test_entry_points(lo: int, hi: int, count: int, expected: tuple[Checkpoint, int | None]) -> None:
    assert entry_points(MARKS, lo, hi, count) == expected


def test_no_checkpoints_means_the_whole_object() -> None:
    assert entry_points([], 10, 20, 30) == ((0, 0, 1), None)


# -- checkpoints the first pass collects ----------------------------------------------------------------------------


def test_checkpoints_sit_past_a_record_line_about_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "CHECKPOINT_INTERVAL", 4096)
    data = dirty_jsonl(qbqtc_lines()[:3000], seed=3, every=5)
    store, _, objects = make_store({"a.jsonl": data})
    batches, rows, offsets = first_pass(SourceReader(store, objects, COLUMNS, [], batch_rows=64))
    marks = offsets[0]
    assert marks[0] == (0, 0, 1)
    assert len(marks) - 1 == pytest.approx(len(data) / 4096, abs=2)
    ids = rows_of(batches)
    good = [r for r, _, _ in parse_at(data, chunk=1 << 20) if isinstance(r, dict)]
    for (record, offset, line), (next_record, next_offset, _) in itertools.pairwise(marks):
        assert record < next_record and offset < next_offset
        assert next_offset // 4096 > offset // 4096
    for record, offset, line in marks[1:]:
        # Past the line of record `record - 1`, on line `line`, and record `record` is the next one.
        assert data[offset - 1:offset] == b"\n"
        assert data[:offset].count(b"\n") == line - 1
        assert json.loads(data[:offset].rstrip(b"\r\n").rsplit(b"\n", 1)[-1]) == good[record - 1]
        after = next(r for r, _, _ in parse_at(data, offset, line) if isinstance(r, dict))
        assert after == good[record] and ids[record][1][3] == after["id"]
    assert rows == [len(good)]


def test_one_checkpoint_a_mebibyte_and_none_for_csv() -> None:
    data = dirty_jsonl(qbqtc_lines(), seed=1)
    csv_data = b"query,title,label\n" + b"".join(b"q%d,t,1\n" % i for i in range(50_000))
    store, _, objects = make_store({"a.jsonl": data, "b.csv": csv_data})
    _, rows, offsets = first_pass(SourceReader(store, objects, ["query", "label"], []))
    assert offsets[1] == []
    assert len(offsets[0]) == 1 + len(data) // source.CHECKPOINT_INTERVAL
    assert len(json.dumps(offsets[0])) < 32 * (1 + len(data) / (1 << 20))
    assert rows[1] == 50_000


def test_a_record_straddling_a_read_chunk_and_text_cut_inside_a_character() -> None:
    # A long multi-byte record across the 1 MiB read chunk edge, with 3-byte characters cut there.
    head = [json.dumps({"query": "短", "title": "题" * 10, "label": "1", "id": i}, ensure_ascii=False).encode()
            for i in range(5000)]
    size = sum(len(x) + 1 for x in head)
    long = json.dumps({"query": "长", "title": "题" * ((source.CHECKPOINT_INTERVAL - size) // 3 + 5000),
                       "label": "2", "id": -1}, ensure_ascii=False).encode()
    tail = [json.dumps({"query": "尾", "title": "题", "label": "0", "id": 10_000 + i}, ensure_ascii=False).encode()
            for i in range(5000)]
    data = b"\n".join([*head, long, b"{broken", *tail]) + b"\n"
    assert size < source.CHECKPOINT_INTERVAL < size + len(long)
    store, _, objects = make_store({"a.jsonl": data})
    reader = SourceReader(store, objects, COLUMNS, [], batch_rows=1000)
    _batches, rows, offsets = first_pass(reader)
    # The first record whose line ends past 1 MiB is the long one: the checkpoint is past it, before
    # the broken line that shares the next record's position.
    assert offsets[0][1] == (5001, size + len(long) + 1, 5002)
    assert_ranges_equal(reader, rows, offsets, [(5001, 5002), (5000, 5002), (5001, 10_001), (4000, 6000)])
    assert malformed_of(list(reader.read_range(rows, 5001, 5002, False, offsets)))[0][1].startswith(
        "invalid JSON (line 5002)")


# -- ranged reads yield what whole reads yield ----------------------------------------------------------------------


def assert_ranges_equal(reader: SourceReader, rows: list[int], offsets: list[list[Checkpoint]],
                        ranges: list[tuple[int, int]]) -> None:
    total = sum(rows)
    for lo, hi in ranges:
        last = hi >= total
        ranged = list(reader.read_range(rows, lo, hi, last, offsets))
        whole = list(reader.read_range(rows, lo, hi, last))
        assert ranged == whole, (lo, hi)


@pytest.fixture(scope="module")
def dirty_source() -> tuple[dict[str, bytes], list[bytes]]:
    lines = qbqtc_lines()
    return {
        "part-0.jsonl": dirty_jsonl(lines, seed=11),
        "part-1.jsonl": b"{nothing\n[2]\n\n",                        # no well-formed record at all
        "part-2.jsonl": dirty_jsonl(lines[:7000], seed=12, every=3),
        "part-3.jsonl": dirty_jsonl(lines[::-1], seed=13) + b"\n{trailing\n[3]\n",
    }, lines


def shard_ranges(total: int, checkpoints: list[list[Checkpoint]], rows: list[int]) -> Iterator[tuple[int, int]]:
    for shards in range(1, 9):
        yield from (shard_range(total, i, shards) for i in range(shards))
    start = 0
    for marks, count in zip(checkpoints, rows, strict=True):
        for record, _, _ in marks:
            at = start + record
            yield from ((max(0, at - 1), at), (at, at + 1), (at, at + 700), (max(0, at - 1), at + 1),
                        (max(0, at - 5000), at), (at + 1, at + 9000))
        yield start, start + count
        start += count


@pytest.mark.parametrize("batch_rows", [4096, 333])
def test_every_range_reads_the_same_batches_with_and_without_offsets(
        dirty_source: tuple[dict[str, bytes], list[bytes]], batch_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "CHECKPOINT_INTERVAL", 64 * 1024)
    store, _, objects = make_store(dirty_source[0])
    reader = SourceReader(store, objects, COLUMNS, [("spec.source.columns.query", "query")], batch_rows=batch_rows)
    _everything, rows, offsets = first_pass(reader)
    total = sum(rows)
    ranges = sorted({(lo, min(hi, total)) for lo, hi in shard_ranges(total, offsets, rows) if lo < min(hi, total)})
    assert len(ranges) > 300
    shards = {shard_range(total, i, n) for n in range(1, 9) for i in range(n)}
    # Every shard of 1..8 and a sample of the ranges at the checkpoints (all of them take minutes).
    sample = sorted(shards | set(random.Random(batch_rows).sample(ranges, 80)))
    assert_ranges_equal(reader, rows, offsets, sample)


@pytest.mark.parametrize("shards", range(1, 9))
def test_shards_together_read_the_source_once_and_each_about_its_share(
        dirty_source: tuple[dict[str, bytes], list[bytes]], shards: int) -> None:
    data = dirty_source[0]["part-0.jsonl"] + b"\n" + dirty_source[0]["part-3.jsonl"]
    data += b"\n" + dirty_source[0]["part-0.jsonl"]            # about 8.6 MB of rows, one object
    store, client, objects = make_store({"big.jsonl": data})
    everything, rows, offsets = first_pass(SourceReader(store, objects, COLUMNS, []))
    total = sum(rows)
    got: list[RawBatch] = []
    for shard in range(shards):
        reader = SourceReader(store, objects, COLUMNS, [])
        lo, hi = shard_range(total, shard, shards)
        client.gets.clear()
        got += reader.read_range(rows, lo, hi, shard == shards - 1, json.loads(json.dumps(offsets)))
        assert len(client.gets) == 1
        share = len(data) / shards
        assert reader.bytes_read <= 1.1 * share + 2 * source.CHECKPOINT_INTERVAL, (shard, reader.bytes_read, share)
        if shards > 1:
            assert reader.bytes_read < len(data)
    assert rows_of(got) == rows_of(everything)
    assert sorted(malformed_of(got)) == sorted(malformed_of(everything))
    positions = [m.position for b in got for m in b.malformed]
    assert len(positions) == len(malformed_of(everything)) > 100


def test_bytes_read_counts_every_byte_of_a_whole_read() -> None:
    data = dirty_jsonl(qbqtc_lines()[:2000], seed=5)
    store, _, objects = make_store({"a.jsonl": data, "b.jsonl": data[:1000].rsplit(b"\n", 1)[0]})
    reader = SourceReader(store, objects, COLUMNS, [])
    first_pass(reader)
    assert reader.bytes_read == len(data) + len(data[:1000].rsplit(b"\n", 1)[0])


def test_a_column_check_is_not_repeated_on_a_range_of_records_that_lack_it() -> None:
    # The mapped column exists in the object's first batch only: the first pass accepts the object,
    # and a range read through offsets must not fail where a read from the first byte does not.
    lines = [json.dumps({"query": f"q{i}", "extra": 1} if i < 10 else {"query": f"q{i}"}).encode()
             for i in range(60_000)]
    store, _, objects = make_store({"a.jsonl": b"\n".join(lines)})
    reader = SourceReader(store, objects, ["query", "extra"], [("spec.x", "extra")], batch_rows=100)
    _, rows, offsets = first_pass(reader)
    assert len(offsets[0]) > 1
    assert_ranges_equal(reader, rows, offsets, [(50_000, 50_100), (0, 50), (59_000, 60_000)])


def test_offsets_from_another_version_of_the_object_are_refused() -> None:
    data = dirty_jsonl(qbqtc_lines()[:12_000], seed=7)
    store, client, objects = make_store({"a.jsonl": data})
    reader = SourceReader(store, objects, COLUMNS, [])
    _, rows, offsets = first_pass(reader)
    client.objects["a.jsonl"] = b"\n" + data
    with pytest.raises(source.SourceError, match="replaced after it was listed"):
        list(reader.read_range(rows, rows[0] - 10, rows[0], True, offsets))


def test_offsets_that_are_not_checkpoints_are_refused() -> None:
    store, _, objects = make_store({"a.jsonl": b'{"query": 1}\n'})
    reader = SourceReader(store, objects, ["query"], [])
    with pytest.raises(ValueError, match="is not a checkpoint"):
        list(reader.read_range([1], 0, 1, True, [[[0, 0]]]))
    with pytest.raises(ValueError, match="one list per object"):
        list(reader.read_range([1], 0, 1, True, []))


def test_a_bounded_body_stops_at_its_end_and_resumes_within_it() -> None:
    client = FakeMinio()
    client.objects["k"] = bytes(range(256)) * 10
    store = ObjectStore(client)
    body = open_range(store, S3Uri("b", "k"), 100, 300)
    assert body.read(150) == client.objects["k"][100:250]
    body._reopen(ConnectionError("reset"), type("B", (), {"wait": lambda self, err: None})())
    assert body.read(1000) == client.objects["k"][250:300]
    assert body.read(10) == b"" and body.delivered == 200
    assert client.gets[-1] == ("k", 250, 50)
    with pytest.raises(ValueError, match="empty"):
        open_range(store, S3Uri("b", "k"), 5, 5)
    client.objects["k"] = b"changed"
    with pytest.raises(StorageError, match="replaced"):
        open_range(store, S3Uri("b", "k"), 1, None, etag="0" * 32)


def test_malformed_records_keep_their_owner_across_a_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bad lines right after the record a checkpoint follows belong to the range that starts there.
    monkeypatch.setattr(source, "CHECKPOINT_INTERVAL", 16 * 1024)
    lines = []
    for i in range(30_000):
        lines.append(json.dumps({"query": f"查询{i}", "id": i}, ensure_ascii=False).encode())
        if i % 2 == 0:
            lines.append(b"{bad %d" % i)
    store, _, objects = make_store({"a.jsonl": b"\n".join(lines)})
    reader = SourceReader(store, objects, ["query", "id"], [], batch_rows=50)
    _, rows, offsets = first_pass(reader)
    assert len(offsets[0]) > 50
    for record, _, _ in offsets[0][1:]:
        ranged = list(reader.read_range(rows, record, record + 3, False, offsets))
        owned = [m for b in ranged for m in b.malformed]
        first_bad = record if record % 2 else record + 1   # after the even record before it
        assert (owned[0].position, owned[0].record) == (first_bad, f"{{bad {first_bad - 1}")
        assert ranged == list(reader.read_range(rows, record, record + 3, False))
