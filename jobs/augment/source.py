"""Reading a dataset from MinIO as a stream of record batches, with bounded memory, and sharding it.

**Row ids.** Every well-formed record of the source gets a *global row id*: its index over the whole
source, counting the objects in key order and the records in file order. Malformed records (a line
that is not JSON, a CSV row with the wrong number of fields) get no id; they are set aside with the
reason. Row ids are what the augmenters' random numbers are keyed by, so they must not depend on the
shard count: they do not.

**Sharding: contiguous row ranges.** With ``N`` records and ``n`` shards, shard ``i`` takes the row ids
``[i*N//n, (i+1)*N//n)``. Why contiguous ranges rather than ``row % n == i``: a Parquet shard then
reads only the row groups that overlap its range (ranged GETs, so ``1/n`` of the bytes), and
consecutive row ids let the text-edit augmenters, which key their randomness by ``first_row + i``,
process whole runs at once. ``N`` comes from the Parquet footers, and for JSONL and CSV from the
analysis step's pass over the whole source (:meth:`SourceReader.read_all`). A malformed record
belongs to the shard that owns the next well-formed record of the same object (or the previous one
at the object's end), so each is reported once.

**Entering a text object in the middle.** A JSONL line start is not a record boundary by itself:
only the analysis pass, which parsed everything before it, knows the index of the next well-formed
record and the line number there. So that pass also collects :data:`Checkpoint` s, about one per
:data:`CHECKPOINT_INTERVAL` (1 MiB) of each JSONL object, and a shard given them opens each object
with a ranged GET from the last checkpoint at or before its first row to the first one at or after
its end: it fetches its share of the bytes plus at most about two intervals (:attr:`SourceReader.bytes_read`
counts them). A checkpoint sits just past the line of a well-formed record, before any malformed
lines that share the next record's position, and batches stay aligned within the object, so a shard
yields exactly the batches, rows and malformed records (same line numbers) that a read from the
first byte yields. The GET insists on the ETag the object was listed with, as offsets of another
version would cut lines anywhere. CSV objects are still parsed from their start and stop at the end
of the range: a quoted value may hold a newline, so no line start is provably a record start
without parsing everything before it.

**Columns.** A mapped column missing from a Parquet schema or a CSV header, or from every record of
a JSONL object's first batch, is a :class:`~.errors.SourceError` naming the spec field; a JSONL
record that lacks a key present elsewhere just has that value missing.

**Parsing** of JSONL and CSV records is :mod:`sampleforge.jobs.common.records`, the same code the
fine-tune job reads with: strict UTF-8 (a record in another encoding is set aside with its line, never
decoded with replacement characters), lines split at ``\n`` only, and one fixed reason per kind of bad
record. The format of a file is :func:`sampleforge.jobs.common.formats.format_of`.

**Memory.** JSONL is split into lines from 1 MiB reads; CSV goes through pyarrow's streaming reader
(all columns as text, roles decide types later); Parquet is read through a seekable view of the object
built on ranged GETs, one row group's pages at a time. No format needs the whole object in memory.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from minio.error import S3Error

from sampleforge.jobs.common.formats import SUFFIX_FORMATS, format_of
from sampleforge.jobs.common.objectio import RangedObject, ResponseStream, ResumableBody, open_range
from sampleforge.jobs.common.outage import StorageError
from sampleforge.jobs.common.records import READ_CHUNK, BadRecord, CsvHeaderError, csv_blocks, jsonl_records_at
from sampleforge.jobs.common.storage import ObjectStore, S3Uri

from .errors import SourceError

__all__ = [
    "CHECKPOINT_INTERVAL",
    "SUFFIX_FORMATS",
    "Checkpoint",
    "Malformed",
    "RawBatch",
    "SourceObject",
    "SourceReader",
    "format_of",
    "list_objects",
    "shard_range",
]

_READ_CHUNK = READ_CHUNK
#: The same buffer :meth:`~sampleforge.jobs.common.storage.ObjectStore.open` reads a body through.
_BODY_BUFFER = 64 * 1024

#: Where a reader can start parsing a JSONL object instead of its first byte: ``(record, offset,
#: line)``, the object-local index of the next well-formed record, the byte offset just past the line
#: of the well-formed record before it (0 at the object's start), and the number of the line there.
#: It sits *after the previous record* rather than at the record's own line so that the malformed
#: lines in between, which share the record's position, are read by whoever starts there.
Checkpoint = tuple[int, int, int]
#: About one checkpoint per this many bytes of a JSONL object: a shard reads at most about this
#: much before its range, and the analysis keeps about 24 bytes per interval.
CHECKPOINT_INTERVAL = READ_CHUNK
_OBJECT_START: Checkpoint = (0, 0, 1)


def shard_range(total: int, shard: int, shards: int) -> tuple[int, int]:
    """Row ids ``[start, stop)`` of ``shard`` out of ``shards`` over ``total`` records."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is outside 0..{shards - 1}")
    return shard * total // shards, (shard + 1) * total // shards


@dataclass(frozen=True)
class SourceObject:
    """One data file of a source, with the ETag it had when listed (recorded in the manifest)."""

    uri: S3Uri
    size: int
    etag: str
    format: str


def list_objects(store: ObjectStore, uri: str, declared_format: str | None, field_path: str) -> list[SourceObject]:
    """The data files ``uri`` names: one object, or every data file under a prefix ending in '/'.

    Under a prefix, names starting with '_' or '.' (markers, hidden files) are skipped, as Spark and
    pyarrow datasets do. ``field_path`` (e.g. ``spec.source``) is named in every error.
    """
    try:
        location = S3Uri.parse(uri)
    except StorageError as err:
        raise SourceError(f"{field_path}.uri: {err}") from err
    try:
        if uri.endswith("/"):
            found = []
            for obj, size, etag in store.list(location):
                rel = obj.key[len(location.key):]
                if any(part.startswith(("_", ".")) for part in rel.split("/")):
                    continue
                fmt = format_of(obj.key, declared_format)
                if fmt is not None:
                    found.append(SourceObject(obj, size, etag.strip('"'), fmt))
            if not found:
                raise SourceError(f"{field_path}.uri {uri} holds no .jsonl, .csv or .parquet files; check the URI "
                                  f"(or set {field_path}.format)")
            return found
        fmt = format_of(location.key, declared_format)
        if fmt is None:
            raise SourceError(f"cannot tell the format of {field_path}.uri {uri}; set {field_path}.format "
                              "(jsonl, csv or parquet)")
        stat = store.call("stat", location, lambda: store.client.stat_object(location.bucket, location.key))
    except S3Error as err:
        if err.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
            raise SourceError(f"{field_path}.uri {uri} does not exist; check the URI and that the upload "
                              "finished") from err
        if err.code == "NoSuchBucket":
            raise SourceError(f"{field_path}.uri {uri}: bucket {location.bucket!r} does not exist") from err
        raise SourceError(f"{field_path}.uri {uri} cannot be read: {err.code}: {err.message}") from err
    except StorageError as err:
        raise SourceError(f"{field_path}.uri: {err}") from err
    return [SourceObject(location, int(stat.size or 0), str(stat.etag or "").strip('"'), fmt)]


@dataclass(frozen=True)
class Malformed:
    """A record that could not be parsed; ``position`` decides which shard reports it."""

    position: int
    source: str
    reason: str
    record: Any


@dataclass
class RawBatch:
    """Consecutive well-formed records: the requested columns as Python lists (absent values None)."""

    first_row: int
    columns: dict[str, list[Any]]
    size: int
    malformed: list[Malformed] = field(default_factory=list)
    #: The object the records come from (for rejects).
    source: str = ""


class _CountedReader(io.BufferedReader):
    """A buffered body that reports, once closed, how many bytes its body delivered."""

    def __init__(self, body: ResumableBody, report: Callable[[int], None]) -> None:
        super().__init__(body, buffer_size=_BODY_BUFFER)
        self._body = body
        self._report = report

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._report(self._body.delivered)


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


class SourceReader:
    """Reads the objects of one dataset as :class:`RawBatch` es with global row ids.

    ``columns`` are the columns to deliver; ``required`` is ``(spec field path, column)`` pairs that
    must exist in every object (a missing one is a :class:`SourceError` naming the field).
    """

    def __init__(self, store: ObjectStore, objects: Sequence[SourceObject], columns: Sequence[str],
                 required: Sequence[tuple[str, str]], batch_rows: int = 4096) -> None:
        self.store = store
        self.objects = list(objects)
        self.columns = list(dict.fromkeys(columns))
        self.required = list(required)
        self.batch_rows = batch_rows
        self._bytes_read = 0

    # -- public ---------------------------------------------------------------------------------

    @property
    def bytes_read(self) -> int:
        """Bytes of the source this reader has fetched from the store so far, all objects and
        formats (Parquet footers included): what a shard's share of the source cost it."""
        return self._bytes_read

    def read_all(self, object_rows: list[int] | None = None,
                 object_offsets: list[list[Checkpoint]] | None = None) -> Iterator[RawBatch]:
        """Every record of every object (the first pass). If ``object_rows`` is given it is filled with
        each object's record count as the objects are finished: that is how ``N`` is learnt. If
        ``object_offsets`` is given it is filled likewise with each object's :data:`Checkpoint` s,
        about one per :data:`CHECKPOINT_INTERVAL` bytes of JSONL (none for CSV and Parquet), for
        :meth:`read_range` to enter the object near a shard's first row."""
        start = 0
        for obj in self.objects:
            count = 0
            marks: list[Checkpoint] | None = [] if object_offsets is not None else None
            for batch in self._batches(obj, start, checkpoints=marks):
                count += batch.size
                yield batch
            if object_rows is not None:
                object_rows.append(count)
            if object_offsets is not None and marks is not None:
                object_offsets.append(marks)
            start += count

    def read_range(self, object_rows: Sequence[int], lo: int, hi: int, last: bool,
                   object_offsets: Sequence[Sequence[Sequence[int]]] | None = None) -> Iterator[RawBatch]:
        """Records with row ids in ``[lo, hi)``, and the malformed records this range owns.

        A malformed record's position is the id of the next well-formed record, clamped into its own
        object's ids; an object without any well-formed record has the position of where it starts.
        A range owns the positions inside it; the last range (``last``) also owns those at or past
        ``N``.

        With ``object_offsets`` (what :meth:`read_all` collected, e.g. back from JSON), a JSONL
        object is read with a ranged GET from the last checkpoint at or before the range's first
        record to the first one at or after its end, so a shard fetches about its share of the
        bytes; what it yields is the same, batch for batch, as without them.
        """
        if len(object_rows) != len(self.objects):
            raise ValueError("object_rows must give one count per object")
        if object_offsets is not None and len(object_offsets) != len(self.objects):
            raise ValueError(f"object_offsets must give one list per object: {len(object_offsets)} lists for "
                             f"{len(self.objects)} objects; use the offsets learnt from this same source")
        start = 0
        for i, (obj, count) in enumerate(zip(self.objects, object_rows, strict=True)):
            stop = start + count
            if count == 0:
                if lo <= start < hi or (last and start >= hi):
                    for batch in self._batches(obj, start):
                        if batch.malformed:
                            yield RawBatch(start, {c: [] for c in self.columns}, 0,
                                           [Malformed(start, m.source, m.reason, m.record) for m in batch.malformed],
                                           batch.source)
            elif stop > lo and start < hi:
                marks = [_checkpoint(obj, m) for m in object_offsets[i]] if object_offsets is not None else []
                yield from self._window(obj, start, count, max(lo, start), min(hi, stop), marks)
            start = stop

    def _window(self, obj: SourceObject, start: int, count: int, lo: int, hi: int,
                marks: Sequence[Checkpoint] = ()) -> Iterator[RawBatch]:
        """Rows ``[lo, hi)`` of the object whose rows are ``[start, start + count)``."""
        last_row = start + count - 1
        at, until = entry_points(marks, lo - start, hi - start, count)
        for batch in self._batches(obj, start, lo - start, hi - start, at=at, until=until):
            owned = []
            for bad in batch.malformed:
                pos = min(max(bad.position, start), last_row)
                if lo <= pos < hi:
                    owned.append(Malformed(pos, bad.source, bad.reason, bad.record))
            first, end = batch.first_row, batch.first_row + batch.size
            a, b = max(first, lo), min(end, hi)
            if a < b:
                i, j = a - first, b - first
                cols = batch.columns if (i, j) == (0, batch.size) else {c: v[i:j] for c, v in batch.columns.items()}
                yield RawBatch(a, cols, b - a, owned, batch.source)
            elif owned:
                yield RawBatch(min(max(a, lo), hi), {c: [] for c in self.columns}, 0, owned, batch.source)
            if end >= hi and hi <= last_row:
                # Malformed records after row hi-1 belong to the next range: stop reading.
                return

    # -- per format -----------------------------------------------------------------------------

    def _batches(self, obj: SourceObject, start: int, skip: int = 0, stop: int | None = None, *,
                 at: Checkpoint = _OBJECT_START, until: int | None = None,
                 checkpoints: list[Checkpoint] | None = None) -> Iterator[RawBatch]:
        """The object's records as batches with global ids from ``start``. ``skip``/``stop`` (local
        indices) let Parquet leave out row groups; JSONL is parsed from checkpoint ``at`` up to byte
        ``until`` (both from :func:`entry_points`), and collects its checkpoints into
        ``checkpoints``; CSV is parsed from its start (a quoted value may hold a newline, so a line
        start is not provably a record start)."""
        try:
            if obj.format == "parquet":
                batches = self._parquet(obj, start, skip, stop)
            elif obj.format == "csv":
                batches = self._csv(obj, start)
            elif obj.format == "jsonl":
                batches = self._jsonl(obj, start, at, until, checkpoints)
            else:
                raise SourceError(f"{obj.uri}: unknown data format {obj.format!r}; use jsonl, csv or parquet")
            for batch in batches:
                batch.source = str(obj.uri)
                yield batch
        except StorageError as err:
            raise SourceError(f"{obj.uri} cannot be read: {err}") from err
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as err:
            raise SourceError(f"{obj.uri} is not a readable {obj.format} file: {err}") from err

    def _check_columns(self, obj: SourceObject, available: set[str]) -> None:
        missing = [(path, col) for path, col in self.required if col not in available]
        if missing:
            named = ", ".join(f"{path} ({col!r})" for path, col in missing)
            shown = ", ".join(sorted(available)[:30]) or "none"
            raise SourceError(f"{obj.uri} has no column for {named}; its columns are: {shown}. "
                              "Fix the column mapping or the data")

    def _open(self, obj: SourceObject, offset: int = 0, until: int | None = None) -> io.BufferedReader:
        """A buffered body of the object from byte ``offset`` (to ``until``), its bytes counted into
        :attr:`bytes_read` when it is closed. Entered in the middle, the read insists on the ETag
        the object was listed with: offsets learnt from another version would split lines anywhere."""
        body = open_range(self.store, obj.uri, offset, until, obj.etag if offset or until is not None else "")
        return _CountedReader(body, self._count)

    def _count(self, delivered: int) -> None:
        self._bytes_read += delivered

    def _jsonl(self, obj: SourceObject, start: int, at: Checkpoint = _OBJECT_START, until: int | None = None,
               checkpoints: list[Checkpoint] | None = None) -> Iterator[RawBatch]:
        """Records from checkpoint ``at``. Batches stay aligned to multiples of ``batch_rows`` within
        the object, wherever the read starts, so a ranged read yields the very batches (and the same
        malformed records in each) that a read from the first byte yields."""
        local, offset, line = at
        stream = self._open(obj, offset, until)
        try:
            row = first = start + local
            values: dict[str, list[Any]] = {c: [] for c in self.columns}
            malformed: list[Malformed] = []
            seen: set[str] = set()
            # A read bounded by checkpoints may not see the object's whole first batch; the read that
            # learnt them checked that batch.
            checked = offset > 0 or until is not None
            size = 0
            limit = self.batch_rows - local % self.batch_rows
            next_mark = (offset // CHECKPOINT_INTERVAL + 1) * CHECKPOINT_INTERVAL
            if checkpoints is not None:
                checkpoints.append(at)
            for record, end, after in jsonl_records_at(stream, _READ_CHUNK, offset=offset, line=line):
                if isinstance(record, BadRecord):
                    malformed.append(Malformed(row, str(obj.uri), record.message, record.text))
                    continue
                if not checked:
                    seen.update(record)
                for c in self.columns:
                    values[c].append(record.get(c))
                row += 1
                size += 1
                if checkpoints is not None and end >= next_mark:
                    checkpoints.append((row - start, end, after))
                    next_mark = (end // CHECKPOINT_INTERVAL + 1) * CHECKPOINT_INTERVAL
                if size >= limit:
                    if not checked:
                        self._check_columns(obj, seen)
                        checked = True
                    yield RawBatch(first, values, size, malformed)
                    first, size, malformed, limit = row, 0, [], self.batch_rows
                    values = {c: [] for c in self.columns}
            if not checked and row > start:
                self._check_columns(obj, seen)
            if size or malformed:
                yield RawBatch(first, values, size, malformed)
        finally:
            stream.close()

    def _csv(self, obj: SourceObject, start: int) -> Iterator[RawBatch]:
        raw = self._open(obj)
        try:
            stream = io.BufferedReader(ResponseStream(raw), buffer_size=_READ_CHUNK)
            try:
                header, blocks = csv_blocks(stream, self.columns, _READ_CHUNK)
            except CsvHeaderError as err:
                raise SourceError(f"{obj.uri}: {err}") from err
            if not header:
                return
            self._check_columns(obj, set(header))
            row = start
            for block in blocks:
                # Records set aside while a block was parsed are placed at that block's first row.
                bad_rows = [Malformed(row, str(obj.uri), b.message, b.text) for b in block.bad]
                n = block.rows
                if n == 0 and bad_rows:
                    yield RawBatch(row, {c: [] for c in self.columns}, 0, bad_rows)
                for offset in range(0, n, self.batch_rows):
                    size = min(self.batch_rows, n - offset)
                    cols = {c: block.columns[c][offset:offset + size] for c in self.columns}
                    yield RawBatch(row, cols, size, bad_rows if offset == 0 else [])
                    row += size
        finally:
            raw.close()

    def parquet_row_counts(self) -> list[int]:
        """Record count of each (Parquet) object from its footer, without reading any data."""
        counts = []
        for obj in self.objects:
            with self._open_parquet(obj) as handle:
                counts.append(handle.metadata.num_rows)
        return counts

    @contextmanager
    def _open_parquet(self, obj: SourceObject) -> Iterator[pq.ParquetFile]:
        ranged = RangedObject(self.store, obj.uri, obj.size)
        try:
            with pq.ParquetFile(pa.PythonFile(ranged, mode="r"), buffer_size=_READ_CHUNK, pre_buffer=False) as handle:
                yield handle
        finally:
            self._bytes_read += ranged.fetched

    def _parquet(self, obj: SourceObject, start: int, skip: int, stop: int | None) -> Iterator[RawBatch]:
        with self._open_parquet(obj) as handle:
            names = set(handle.schema_arrow.names)
            self._check_columns(obj, names)
            present = [c for c in self.columns if c in names]
            meta = handle.metadata
            stop = meta.num_rows if stop is None else stop
            groups, first_local, offset = [], None, 0
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                if offset + rows > skip and offset < stop:
                    groups.append(g)
                    if first_local is None:
                        first_local = offset
                offset += rows
            if not groups or first_local is None:
                return
            row = start + first_local
            for record_batch in handle.iter_batches(batch_size=self.batch_rows, row_groups=groups,
                                                    columns=present, use_threads=False):
                cols = {c: [_finite_or_none(v) for v in record_batch.column(c).to_pylist()]
                        if pa.types.is_floating(record_batch.schema.field(c).type)
                        else record_batch.column(c).to_pylist() for c in present}
                for c in self.columns:
                    if c not in cols:
                        cols[c] = [None] * record_batch.num_rows
                yield RawBatch(row, cols, record_batch.num_rows)
                row += record_batch.num_rows


def _checkpoint(obj: SourceObject, mark: Sequence[int]) -> Checkpoint:
    """A checkpoint as :meth:`SourceReader.read_all` made it (a list once it went through JSON)."""
    if len(mark) != 3 or not all(isinstance(v, int) and v >= 0 for v in mark):
        raise ValueError(f"{obj.uri}: {list(mark)!r} is not a checkpoint (record, offset, line); pass the "
                         "object_offsets that SourceReader.read_all collected for this source")
    return mark[0], mark[1], mark[2]


def entry_points(marks: Sequence[Checkpoint], lo: int, hi: int, count: int) -> tuple[Checkpoint, int | None]:
    """Where to start and stop reading an object of ``count`` records for its local rows ``[lo, hi)``.

    Start: the last checkpoint at or before record ``lo``. Everything a range owns lies after it:
    the malformed lines just before record ``lo`` share its position, and a checkpoint sits before
    those lines, past the previous record. Stop: the first checkpoint at or after record ``hi``, the
    end of a line at or past record ``hi - 1``; but no stop when ``hi`` is the object's end, as the
    malformed lines after its last record are owned with that record.
    """
    at, until = _OBJECT_START, None
    for mark in marks:
        if mark[0] <= lo:
            at = mark
        elif mark[0] >= hi and hi < count:
            until = mark[1]
            break
    return at, until
