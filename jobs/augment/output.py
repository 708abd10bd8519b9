"""Writing a shard's rows and rejects (the shard markers and the manifest: :mod:`.commit`).

Layout under ``spec.output.uri`` (every path in a manifest is relative to it)::

    data/part-<shard:05d>-<seq:05d>.parquet   rows (or .jsonl with output.format: jsonl)
    data/part-<shard:05d>-<seq:05d>-dedup.parquet  a part the reduce step wrote again without cross-shard duplicates
    rejects/shard-<shard:05d>.jsonl           records set aside: {"position", "source", "reason", "record"}
    _analysis/index.json                      the analysis step's commit (files beside it: analysis.py)
    _dedup/part-<shard:05d>-<seq:05d>.u64     a part's exact-dedup keys, for the reduce step (deleted at the commit)
    _shards/<shard>.json                      the shard's commit marker
    preprocess.json                           fitted dense-feature statistics (when there are dense features)
    report.md                                 the human-readable report
    report.html                               the same with plots (htmlreport.py)
    manifest.json                             written last: the run's commit

In a run of several shards a shard writes each part's exact-dedup keys (:meth:`PartWriter.add`); the
reduce step reads them to remove duplicates across shards and writes a part that lost rows again
under its ``-dedup`` name (:mod:`.crossdedup`).

**Byte-identical parts.** Rows are written in a fixed order with fixed writer settings (zstd level 3,
dictionary encoding, format 2.6, data page v1, row groups of :data:`ROW_GROUP_ROWS`, parts of
:data:`PART_ROWS`); parts contain no timestamps, hostnames or paths. The same input, configuration,
seed and code therefore give the same bytes, which the manifest's sha256 values make checkable.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from sampleforge.jobs.common.records import reason_class
from sampleforge.jobs.common.storage import ObjectStore, S3Uri, sha256_file

from .preprocess import Reject
from .rows import ColumnRoles

__all__ = ["KEYS_DIR", "NEVER_DUPLICATE", "PART_ROWS", "ROW_GROUP_ROWS", "TEXT_LENGTH_EDGES", "PartWriter", "RejectsWriter",
           "clear_directory", "json_line", "keys_path", "length_bin", "open_parquet", "output_schema", "stored_keys"]

PART_ROWS = 1_000_000
ROW_GROUP_ROWS = 50_000

_LABEL_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}

#: Lower edges of the text-length bins (characters) the manifest's ``textLengths`` counts rows in; fixed,
#: so that shards' counts add up.
TEXT_LENGTH_EDGES = (0, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400, 500, 750, 1000)


def length_bin(text: Any) -> str:
    """The ``textLengths`` bin of a text: the lower edge of its length's bin, as a string."""
    n = len(text) if isinstance(text, str) else 0
    return str(TEXT_LENGTH_EDGES[bisect.bisect_right(TEXT_LENGTH_EDGES, n) - 1])


def output_schema(roles: ColumnRoles, label_kind: str, judged: bool = False) -> pa.Schema:
    """Mapped columns under their source names, then the provenance columns (``judged``: with the
    llmJudge's, :data:`~.judge.JUDGE_COLUMNS`)."""
    fields = []
    if roles.id:
        fields.append(pa.field(roles.id, pa.string()))
    fields += [pa.field(roles.query, pa.string()), pa.field(roles.item, pa.string()),
               pa.field(roles.label, _LABEL_TYPES[label_kind])]
    fields += [pa.field(a, pa.string()) for a in roles.attributes]
    fields += [pa.field(d, pa.float64()) for d in roles.dense]
    if roles.image:
        fields.append(pa.field(roles.image, pa.string()))
    fields += [pa.field("sf_origin", pa.string(), nullable=False), pa.field("sf_augmenter", pa.string()),
               pa.field("sf_source_row", pa.int64(), nullable=False), pa.field("sf_label_rule", pa.string())]
    if judged:
        fields += [pa.field("sf_judge_label", _LABEL_TYPES[label_kind]), pa.field("sf_judge_agrees", pa.bool_())]
    return pa.schema(fields)


def json_line(row: Mapping[str, Any]) -> str:
    """A JSON-lines row as every part is written (no newline: one line per row, whatever the text)."""
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def open_parquet(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """A Parquet writer with the fixed settings parts are written with; the reduce step rewrites parts
    with it too, so their bytes depend only on their rows."""
    return pq.ParquetWriter(str(path), schema, compression="zstd", compression_level=3, use_dictionary=True,
                            write_statistics=True, version="2.6", data_page_version="1.0", write_page_index=False,
                            store_schema=True)


#: Where each part's dedup keys go (one object per part; see :meth:`PartWriter.add`).
KEYS_DIR = "_dedup"


#: The stored key of a row that is never a duplicate: a source row (the user's data, which dedup never
#: removes). A generated row whose key happens to be 0 is stored as 1 (:func:`stored_keys`), which
#: could merge it with a row of key 1: a 2^-64 chance, like any other 64-bit collision.
NEVER_DUPLICATE = 0


def stored_keys(keys: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Generated rows' keys as a keys object stores them: 0 is taken by :data:`NEVER_DUPLICATE`."""
    out = np.asarray(keys, dtype=np.uint64).copy()
    out[out == NEVER_DUPLICATE] = 1
    return out


def keys_path(part_path: str) -> str:
    """The keys object of a part: ``data/part-00001-00002.parquet`` -> ``_dedup/part-00001-00002.u64``."""
    name = part_path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return f"{KEYS_DIR}/{name}.u64"


class PartWriter:
    """Writes rows to local part files in fixed-size row groups and uploads each finished part.

    Rows are turned into Arrow record batches as they arrive (compact, columnar), so what waits for
    the next row group costs a few bytes per value rather than a Python object per cell.

    **Dedup keys.** When :meth:`add` is given each row's exact-dedup key, every part also gets a keys
    object (:func:`keys_path`: raw little-endian uint64, one per row in part order), listed in
    :attr:`key_files` in part order. The reduce step reads these 8 bytes a row instead of the parts to
    find duplicates across shards. They are a separate list, not a field of the part entries, because
    part entries go into the manifest unchanged and its model allows no other keys.
    """

    def __init__(self, store: ObjectStore, prefix: S3Uri, shard: int, fmt: str, schema: pa.Schema,
                 workdir: Path, part_rows: int = PART_ROWS, group_rows: int = ROW_GROUP_ROWS) -> None:
        if part_rows % group_rows:
            raise ValueError("part_rows must be a multiple of group_rows")
        self.store, self.prefix, self.shard, self.fmt, self.schema = store, prefix, shard, fmt, schema
        self.workdir = workdir
        self.part_rows, self.group_rows = part_rows, group_rows
        self.names = schema.names
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._seq = 0
        self._part_written = 0
        self._path: Path | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._text: Any = None
        self.files: list[dict[str, Any]] = []
        #: Entries of the parts' keys objects (path, size, sha256, rows), in part order; empty when
        #: rows came without keys.
        self.key_files: list[dict[str, Any]] = []
        self._with_keys: bool | None = None
        self._keys: list[NDArray[np.uint64]] = []
        #: Rows given to :meth:`add` so far: the shard-local position (part after part) of the next row.
        self.rows_added = 0
        workdir.mkdir(parents=True, exist_ok=True)

    def add(self, rows: Sequence[Mapping[str, Any]], keys: NDArray[np.uint64] | None = None) -> None:
        """Append ``rows``; ``keys``, one per row, are their exact-dedup keys. Either every call gives
        keys or none does, so each part's keys object lines up with its rows."""
        if not rows:
            return
        with_keys = keys is not None
        if self._with_keys is None:
            self._with_keys = with_keys
        elif self._with_keys != with_keys:
            raise ValueError("PartWriter.add: give keys with every batch of rows or with none")
        if keys is not None:
            if len(keys) != len(rows):
                raise ValueError(f"PartWriter.add: {len(keys)} keys for {len(rows)} rows")
            self._keys.append(np.asarray(keys, dtype=np.uint64))
        self.rows_added += len(rows)
        if self.fmt != "parquet":
            self._write_lines(rows)
            return
        columns = [pa.array([row.get(name) for row in rows], type=field.type)
                   for name, field in zip(self.names, self.schema, strict=True)]
        self._pending.append(pa.RecordBatch.from_arrays(columns, schema=self.schema))
        self._pending_rows += len(rows)
        while self._pending_rows >= self.group_rows:
            self._write_group(self.group_rows)

    def _open(self) -> None:
        ext = "parquet" if self.fmt == "parquet" else "jsonl"
        self._path = self.workdir / f"part-{self.shard:05d}-{self._seq:05d}.{ext}"
        if self.fmt == "parquet":
            self._parquet = open_parquet(self._path, self.schema)
        else:
            self._text = self._path.open("w", encoding="utf-8", newline="\n")

    def _write_group(self, rows: int) -> None:
        """Write the first ``rows`` pending rows as one row group."""
        if self._path is None:
            self._open()
        assert self._parquet is not None
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        self._parquet.write_table(table.slice(0, rows), row_group_size=rows)
        rest = table.slice(rows)
        self._pending = rest.combine_chunks().to_batches() if rest.num_rows else []
        self._pending_rows = rest.num_rows
        self._part_written += rows
        if self._part_written >= self.part_rows:
            self._finish_part()

    def _write_lines(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            if self._path is None:
                self._open()
            self._text.write(json_line({name: row.get(name) for name in self.names}) + "\n")
            self._part_written += 1
            if self._part_written >= self.part_rows:
                self._finish_part()

    def _finish_part(self) -> None:
        if self._path is None:
            return
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._text is not None:
            self._text.close()
            self._text = None
        rel = f"data/{self._path.name}"
        content = "application/vnd.apache.parquet" if self.fmt == "parquet" else "application/x-ndjson"
        self.store.upload_file(self.prefix.join(rel), self._path, content_type=content)
        self.files.append({"path": rel, "size": self._path.stat().st_size, "sha256": sha256_file(self._path),
                           "rows": self._part_written})
        if self._with_keys:
            self._upload_keys(rel)
        self._path.unlink()
        self._path = None
        self._seq += 1
        self._part_written = 0

    def _upload_keys(self, rel: str) -> None:
        """Upload the keys of the part just finished: the first ``_part_written`` keys not yet written
        (the rest belong to rows still pending for the next part)."""
        keys = np.concatenate(self._keys) if self._keys else np.zeros(0, dtype=np.uint64)
        n = self._part_written
        data = keys[:n].astype("<u8", copy=False).tobytes()
        self._keys = [keys[n:]] if len(keys) > n else []
        path = keys_path(rel)
        self.store.write_bytes(self.prefix.join(path), data, "application/octet-stream")
        self.key_files.append({"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                               "rows": n})

    def close(self) -> list[dict[str, Any]]:
        """Write what is pending, upload the last part; the entries of every part, in order."""
        if self._pending_rows:
            self._write_group(self._pending_rows)
        self._finish_part()
        return self.files


class RejectsWriter:
    """The shard's rejects file (JSON lines, in row order within the shard)."""

    def __init__(self, store: ObjectStore, prefix: S3Uri, shard: int, workdir: Path) -> None:
        self.store, self.prefix = store, prefix
        self.rel = f"rejects/shard-{shard:05d}.jsonl"
        workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / f"rejects-{shard:05d}.jsonl"
        self._file = self.path.open("w", encoding="utf-8", newline="\n")
        self.reasons: Counter[str] = Counter()
        self.rows = 0

    def add(self, rejects: Sequence[Reject]) -> None:
        for r in rejects:
            self.reasons[_reason_class(r.reason)] += 1
            self.rows += 1
            record = {"position": r.position, "source": r.source, "reason": r.reason, "record": r.record}
            self._file.write(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n")

    def close(self) -> dict[str, Any] | None:
        self._file.close()
        if not self.rows:
            self.path.unlink()
            return None
        self.store.upload_file(self.prefix.join(self.rel), self.path, content_type="application/x-ndjson")
        entry = {"path": self.rel, "size": self.path.stat().st_size, "sha256": sha256_file(self.path),
                 "rows": self.rows}
        self.path.unlink()
        return entry


def _reason_class(reason: str) -> str:
    """A reason without its line number, so counts group ("invalid JSON (line 7): ..." -> "invalid JSON")."""
    parsed = reason_class(reason)
    return parsed if parsed != reason else reason.split(" (line ", 1)[0]


def clear_directory(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
