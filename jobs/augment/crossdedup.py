"""The reduce step's exact dedup across shards, hash-partitioned so that no step holds every row.

Within a shard :class:`~.filters.ExactDedup` keeps the first generated row of each (normalised
query, item) key and drops the later ones; rows of different shards can still repeat. Each shard
therefore writes, beside every part, the key of each row it wrote (:meth:`~.output.PartWriter.add`:
8 bytes a row; :data:`~.output.NEVER_DUPLICATE` for source rows, which dedup never removes).
:func:`cross_shard_dedup` then:

1. **Spills** ``(key, position)`` of every generated row into ``partitions`` local files by the
   key's top bits, reading only the keys objects, never the parts. A position is the row's index in
   the run's global order (shard, part, row in part), and a file receives its records in that order.
2. **Finds duplicates** one partition at a time (a stable numpy sort by key): of each key the first
   position stays and every later one is dropped. Equal keys share a partition, so this is the
   global first occurrence, which is the row one shard reading the shards' rows in order would
   have kept. Memory: one partition's records (16 bytes a generated row / ``partitions``) and the
   positions dropped (8 bytes a removed row).
3. **Rewrites** only the parts that lose rows, a row group (Parquet) or a line (JSON lines) at a
   time, with the writer settings of :class:`~.output.PartWriter`, so a part's bytes depend only on
   the rows it keeps. A rewritten part is uploaded under a new name (``...-dedup.parquet``) and the
   originals stay untouched: the step is a pure function of the shards' output, so a reduce pod
   retried after uploading half its parts computes the same result again instead of finding rows
   already gone (and their counts with them). :func:`remove_replaced` deletes the originals and the
   keys objects once the manifest is committed.
4. **Counts** what it removed, from the removed rows themselves, as a delta of the shard markers'
   ``counts`` (:meth:`~.shardbatch.BatchProcessor.marker_counts`): for each removed row, its
   augmenter's ``kept`` -1 and ``dropped.dedup["duplicates a generated row"]`` +1, the same in
   ``filtered``, ``generatedKept`` -1, ``labelsAfter`` and ``textLengths.after`` -1 in its bins.

With ``filters.dedup.method: minhash`` only exact duplicates are removed across shards; near
duplicates remain a per-shard notion.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from sampleforge.jobs.common.storage import ObjectStore, S3Uri, content_matches, sha256_file

from .labels import Labels
from .output import NEVER_DUPLICATE, ROW_GROUP_ROWS, length_bin, open_parquet
from .rows import ColumnRoles

__all__ = ["DEDUP_FILTER", "DEDUP_REASON", "CrossDedupResult", "apply_counts_delta", "cross_shard_dedup",
           "remove_replaced", "rewritten_path"]

#: The filter and reason a removed row is counted under: what one shard's ExactDedup would have said.
DEDUP_FILTER = "dedup"
DEDUP_REASON = "duplicates a generated row"

_RECORD = np.dtype([("key", "<u8"), ("pos", "<i8")])
_CONTENT_TYPES = {"parquet": "application/vnd.apache.parquet", "jsonl": "application/x-ndjson"}


@dataclass
class CrossDedupResult:
    """What the reduce step learnt and wrote."""

    #: Each shard's part entries in order, a rewritten part's entry in place of its original's (and
    #: none for a part that lost every row): what the manifest lists instead of the markers' ``files``.
    files: list[list[dict[str, Any]]]
    #: To add to the sum of the markers' ``counts`` (:func:`apply_counts_delta`).
    counts: dict[str, Any]
    #: Generated rows removed as duplicates of a generated row of an earlier shard.
    removed: int
    #: Paths of the original parts that were replaced by a rewritten one (:func:`remove_replaced`).
    replaced: list[str]
    #: Bytes fetched from the store: every keys object, and the parts that lost rows.
    bytes_read: int
    #: Generated rows looked at, and the most records one partition held (what bounds memory).
    generated_rows: int
    max_partition_records: int
    partitions: int
    #: The removed rows' positions in the run's global order, sorted, and where each shard's rows
    #: start in it (one more entry than shards): what :meth:`removed_rows` answers from.
    dropped: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    shard_starts: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def removed_rows(self, shard: int, rows: Sequence[int]) -> list[bool]:
        """Whether each of a shard's rows (positions among the rows that shard wrote) was removed."""
        positions = np.asarray(rows, dtype=np.int64) + self.shard_starts[shard]
        found = np.searchsorted(self.dropped, positions)
        hit = found < len(self.dropped)
        hit[hit] = self.dropped[found[hit]] == positions[hit]
        return [bool(x) for x in hit]

    def summary(self) -> dict[str, Any]:
        """The manifest's ``crossShardDedup`` section (:class:`~sampleforge.api.manifest.CrossShardDedup`);
        ``partsRewritten`` counts the parts replaced, a part that lost every row (and is left out) included."""
        return {"removed": self.removed, "keys": self.generated_rows, "partitions": self.partitions,
                "partsRewritten": len(self.replaced), "bytesRead": self.bytes_read,
                "seconds": self.seconds.get("totalSeconds", 0.0)}


def rewritten_path(path: str) -> str:
    """Where a part that lost rows is written: ``data/part-00001-00000.parquet`` ->
    ``data/part-00001-00000-dedup.parquet`` (next to the original, which stays until the commit)."""
    stem, ext = path.rsplit(".", 1)
    return f"{stem}-dedup.{ext}"


def cross_shard_dedup(store: ObjectStore, prefix: S3Uri, files: Sequence[Sequence[Mapping[str, Any]]],
                      key_files: Sequence[Sequence[Mapping[str, Any]]], workdir: Path, roles: ColumnRoles,
                      labels: Labels, *, partitions: int = 64, group_rows: int = ROW_GROUP_ROWS) -> CrossDedupResult:
    """Remove generated rows that repeat a generated row of an earlier position across the shards.

    ``files`` and ``key_files`` are each shard's part entries and keys entries, in shard order (the
    markers' ``files`` and ``dedupKeys``); ``roles`` and ``labels`` say which columns the counts read
    and how labels are counted. ``group_rows`` must be the row-group size the parts were written with.
    """
    if not 1 <= partitions <= 1 << 16:
        raise ValueError("partitions must be between 1 and 65536")
    if len(files) != len(key_files):
        raise ValueError(f"{len(files)} shards of parts but {len(key_files)} of keys")
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    parts = [dict(entry) for shard in files for entry in shard]
    keys = [dict(entry) for shard in key_files for entry in shard]
    _check_aligned(parts, keys)
    spill = _Spill(workdir / "spill", partitions)
    bytes_read = spill.scan(store, prefix, keys)
    scanned = time.monotonic()
    drops = spill.drops()
    found = time.monotonic()
    rewrite = _Rewriter(store, prefix, workdir / "parts", roles, labels, group_rows)
    offsets = np.cumsum([0] + [int(p["rows"]) for p in parts])
    new_parts: list[dict[str, Any] | None] = []
    for i, entry in enumerate(parts):
        lo, hi = np.searchsorted(drops, offsets[i : i + 2])
        new_parts.append(rewrite.part(entry, drops[lo:hi] - offsets[i]) if hi > lo else entry)
    bounds = np.cumsum([0, *(len(shard) for shard in files)]).tolist()
    return CrossDedupResult(
        files=[[e for e in new_parts[a:b] if e is not None] for a, b in itertools.pairwise(bounds)],
        counts=rewrite.delta(), removed=len(drops), replaced=rewrite.replaced,
        bytes_read=bytes_read + rewrite.bytes_read, generated_rows=spill.records,
        max_partition_records=spill.max_records, partitions=partitions,
        dropped=drops, shard_starts=[int(offsets[b]) for b in bounds],
        seconds={"scanSeconds": round(scanned - started, 3), "partitionSeconds": round(found - scanned, 3),
                 "rewriteSeconds": round(time.monotonic() - found, 3),
                 "totalSeconds": round(time.monotonic() - started, 3)})


def _check_aligned(parts: Sequence[Mapping[str, Any]], keys: Sequence[Mapping[str, Any]]) -> None:
    """One keys object per part, of as many rows: anything else would attribute keys to other rows."""
    if len(parts) != len(keys):
        raise ValueError(f"{len(parts)} parts but {len(keys)} keys objects: every part needs its keys")
    for part, key in zip(parts, keys, strict=True):
        if int(part["rows"]) != int(key["rows"]):
            raise ValueError(f"{part['path']} has {part['rows']} rows but its keys {key['path']} {key['rows']}")


class _Spill:
    """The partition files: ``(key, position)`` records of generated rows, by the key's top bits."""

    def __init__(self, directory: Path, partitions: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.paths = [directory / f"{p:05d}.rec" for p in range(partitions)]
        for path in self.paths:
            path.write_bytes(b"")
        self.partitions = partitions
        self.records = 0
        self.max_records = 0

    def scan(self, store: ObjectStore, prefix: S3Uri, keys: Sequence[Mapping[str, Any]]) -> int:
        """Spill every keys object's generated rows, in global order; the bytes read."""
        handles = [path.open("ab") for path in self.paths]
        read = 0
        position = 0
        try:
            for entry in keys:
                data = store.read_bytes(prefix.join(str(entry["path"])))
                read += len(data)
                _check_object(entry, data)
                self._spill(handles, np.frombuffer(data, dtype="<u8"), position)
                position += int(entry["rows"])
        finally:
            for handle in handles:
                handle.close()
        return read

    def _spill(self, handles: Sequence[IO[bytes]], keys: NDArray[np.uint64], start: int) -> None:
        generated = np.flatnonzero(keys != NEVER_DUPLICATE)
        records = np.empty(len(generated), dtype=_RECORD)
        records["key"] = keys[generated]
        records["pos"] = generated + start
        # Multiply-shift on the top 32 bits: any partition count, the key's top bits decide.
        bucket = ((records["key"] >> np.uint64(32)) * np.uint64(self.partitions)) >> np.uint64(32)
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(self.partitions + 1, dtype=np.uint64))
        for p in range(self.partitions):
            if bounds[p + 1] > bounds[p]:
                handles[p].write(records[order[bounds[p] : bounds[p + 1]]].tobytes())
        self.records += len(records)

    def drops(self) -> NDArray[np.int64]:
        """Positions of every generated row whose key an earlier position has, sorted."""
        found = [self._partition_drops(path) for path in self.paths]
        drops = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
        drops.sort()
        return drops

    def _partition_drops(self, path: Path) -> NDArray[np.int64]:
        records = np.fromfile(path, dtype=_RECORD)
        path.unlink()
        self.max_records = max(self.max_records, len(records))
        if len(records) < 2:
            return np.zeros(0, dtype=np.int64)
        # Records arrive in position order, so a stable sort by key leaves each key's first position first.
        order = np.argsort(records["key"], kind="stable")
        keys = records["key"][order]
        later = keys[1:] == keys[:-1]
        dropped: NDArray[np.int64] = records["pos"][order[1:][later]].astype(np.int64)
        return dropped


def _check_object(entry: Mapping[str, Any], data: bytes) -> None:
    """An object must be what its entry says: a stale or truncated one would drop the wrong rows."""
    if not content_matches(data, entry["size"], entry["sha256"]):
        raise ValueError(f"{entry['path']} does not match its size or sha256 in the shard marker")


class _Rewriter:
    """Rewrites parts without their dropped rows and counts what they lose."""

    def __init__(self, store: ObjectStore, prefix: S3Uri, workdir: Path, roles: ColumnRoles, labels: Labels,
                 group_rows: int) -> None:
        self.store, self.prefix, self.workdir = store, prefix, workdir
        self.roles, self.labels, self.group_rows = roles, labels, group_rows
        self.replaced: list[str] = []
        self.bytes_read = 0
        self._augmenters: Counter[str] = Counter()
        self._labels: Counter[str] = Counter()
        self._lengths: dict[str, Counter[str]] = {"query": Counter(), "item": Counter()}
        workdir.mkdir(parents=True, exist_ok=True)

    def part(self, entry: Mapping[str, Any], drop: NDArray[np.int64]) -> dict[str, Any] | None:
        """Rewrite one part without the rows at ``drop`` (indices within the part); its new entry, or
        None when no row is left (a part writer never writes an empty part either)."""
        path = str(entry["path"])
        fmt = "parquet" if path.endswith(".parquet") else "jsonl"
        source = self.workdir / f"in.{fmt}"
        target = self.workdir / f"out.{fmt}"
        self.store.download_file(self.prefix.join(path), source)
        self.bytes_read += source.stat().st_size
        if not content_matches(source, entry["size"], entry["sha256"]):
            raise ValueError(f"{path} does not match its size or sha256 in the shard marker")
        keep = np.ones(int(entry["rows"]), dtype=bool)
        keep[drop] = False
        rows = _rewrite_parquet(source, target, keep, self.group_rows, self._count) if fmt == "parquet" \
            else _rewrite_jsonl(source, target, keep, self._count)
        self.replaced.append(path)
        source.unlink()
        if not rows:
            target.unlink()
            return None
        new_path = rewritten_path(path)
        self.store.upload_file(self.prefix.join(new_path), target, content_type=_CONTENT_TYPES[fmt])
        new_entry = {**entry, "path": new_path, "size": target.stat().st_size, "sha256": sha256_file(target),
                     "rows": rows}
        target.unlink()
        return new_entry

    def _count(self, removed: Sequence[Mapping[str, Any]]) -> None:
        roles = self.roles
        for row in removed:
            self._augmenters[str(row["sf_augmenter"])] += 1
            self._labels[self.labels.key(row[roles.label])] += 1
            self._lengths["query"][length_bin(row[roles.query])] += 1
            self._lengths["item"][length_bin(row[roles.item])] += 1

    def delta(self) -> dict[str, Any]:
        """The removed rows as a change of the markers' ``counts`` (same shape, signed)."""
        removed = sum(self._augmenters.values())
        if not removed:
            return {}
        return {
            "generatedKept": -removed,
            "augmenters": {name: {"kept": -n, "dropped": {DEDUP_FILTER: {DEDUP_REASON: n}}}
                           for name, n in sorted(self._augmenters.items())},
            "filtered": {DEDUP_FILTER: {DEDUP_REASON: removed}},
            "labelsAfter": {label: -n for label, n in sorted(self._labels.items())},
            "textLengths": {"after": {text: {b: -n for b, n in sorted(bins.items())}
                                      for text, bins in self._lengths.items()}},
        }


_Count = Callable[[Sequence[Mapping[str, Any]]], None]


def _rewrite_parquet(source: Path, target: Path, keep: NDArray[np.bool_], group_rows: int, count: _Count) -> int:
    """Copy the kept rows into row groups of ``group_rows``, as PartWriter groups them; rows kept."""
    reader = pq.ParquetFile(str(source))
    schema = reader.schema_arrow
    pending: list[pa.Table] = []
    pending_rows = 0
    written = 0
    start = 0
    with open_parquet(target, schema) as writer:
        for g in range(reader.num_row_groups):
            table = reader.read_row_group(g)
            mask = keep[start : start + table.num_rows]
            start += table.num_rows
            if not mask.all():
                count(table.filter(pa.array(~mask)).to_pylist())
                table = table.filter(pa.array(mask))
            pending.append(table)
            pending_rows += table.num_rows
            while pending_rows >= group_rows:
                pending, pending_rows = _write_group(writer, pending, group_rows)
                written += group_rows
        if pending_rows:
            _write_group(writer, pending, pending_rows)
            written += pending_rows
    return written


def _write_group(writer: pq.ParquetWriter, pending: list[pa.Table], rows: int) -> tuple[list[pa.Table], int]:
    """Write the first ``rows`` pending rows as one row group; what is left pending."""
    table = pa.concat_tables(pending)
    writer.write_table(table.slice(0, rows), row_group_size=rows)
    rest = table.slice(rows)
    return ([rest.combine_chunks()] if rest.num_rows else []), rest.num_rows


def _rewrite_jsonl(source: Path, target: Path, keep: NDArray[np.bool_], count: _Count) -> int:
    """Copy the kept lines byte for byte (each row is one line: JSON escapes newlines); rows kept."""
    written = 0
    with source.open("rb") as src, target.open("wb") as out:
        for i, line in enumerate(_lines(src)):
            if keep[i]:
                out.write(line)
                written += 1
            else:
                count([json.loads(line)])
    return written


def _lines(handle: IO[bytes]) -> Iterator[bytes]:
    """Lines split on ``\\n`` only (``str.splitlines`` would also split on U+2028 inside a text)."""
    yield from iter(handle.readline, b"")


def apply_counts_delta(totals: dict[str, Any], delta: Mapping[str, Any]) -> None:
    """Add ``delta`` to the summed markers' ``counts`` in place, dropping the per-label and per-bin
    counts that reach 0: one shard never lists a label or a length bin it wrote no row of, so
    neither does the reduced run."""
    _apply(totals, delta, ())


#: Where counts are per value (label, length bin) and a 0 means "none", so it is left out.
_PRUNED = (("labelsAfter",), ("textLengths", "after", "query"), ("textLengths", "after", "item"))


def _apply(totals: dict[str, Any], delta: Mapping[str, Any], path: tuple[str, ...]) -> None:
    for key, value in delta.items():
        if isinstance(value, Mapping):
            _apply(totals.setdefault(key, {}), value, (*path, key))
        else:
            totals[key] = totals.get(key, 0) + value
            if path in _PRUNED and totals[key] == 0:
                del totals[key]


def remove_replaced(store: ObjectStore, prefix: S3Uri, result: CrossDedupResult,
                    key_files: Sequence[Sequence[Mapping[str, Any]]]) -> None:
    """After the manifest is committed: delete the parts a rewritten one replaced, and the keys
    objects (the manifest lists neither, so no reader sees them go)."""
    for path in result.replaced:
        store.remove(prefix.join(path))
    for shard in key_files:
        for entry in shard:
            store.remove(prefix.join(str(entry["path"])))
