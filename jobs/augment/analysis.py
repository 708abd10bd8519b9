"""The analysis artifact: what the first pass learnt (:class:`~.knowledge.DatasetKnowledge`), committed
once under the run's output so the shards read it instead of each making the first pass again.

Layout, under ``<spec.output.uri>/_analysis/`` (one line per file: what it holds, why stored so):

* ``knowledge.json``: counts, labels, dense statistics, attribute values, selection budgets, the
  sample's column roles, records per object: small and bounded, so readable JSON (non-finite floats
  as the strings ``"inf"``/``"-inf"``/``"nan"``, ordered facts as lists, keys sorted);
* ``pairs.u64``: the source pair hashes, ascending raw little-endian uint64: 8 bytes per source row,
  random hashes do not compress, and the file is the :class:`~.dedup.HashSet`'s own array;
* ``items.arrow``: the item pool, Arrow IPC (zstd), one column per fact in pool (key) order, 65,536
  items per batch: millions of items are written one batch at a time and read one column at a time;
* ``sample.arrow``: the row sample (at most :data:`~.reducers.SAMPLE_ROWS` rows), Arrow IPC, one
  column per source column typed as read (JSON text only for a column of mixed or nested types, so
  ``1`` stays an int and ``1.0`` a float); absent when the run needs no sample;
* ``offsets.arrow``: the per-object (record, byte offset, line) checkpoints as four int64 columns;
* ``prepared/<name>.bin``: each augmenter's opaque prepared state (a trained GAN, an ANN index);
* ``index.json``, written last: the fingerprint, every file with size and sha256, the summary and
  the seconds the analysis took. Without it nothing else counts, as with every committed output.

Size per source row: 8 bytes of pair hash, plus per *distinct item* its compressed texts and 16
bytes of key and row id; everything else is bounded whatever the source size (the sample at its
20,000 rows, attribute values at 10,000 each). QBQTC's 20,000 Chinese query/title pairs: 8 bytes of
pair hash and 42 of pool per row (titles of 66 UTF-8 bytes), plus a 1 MB sample (every row, at this
size), 100 bytes per row in all, tending to about 50 for larger sources of such rows.

The files hold only what the knowledge holds, with fixed writer settings, so the same knowledge
gives byte-identical files; the time the analysis took lives in the index alone, so a second
analysis of the same source writes the same files too. A file missing or changed after the index
was written is an error naming it (the run's output was tampered with or half deleted), never a
silent rerun of the analysis with other results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
from pyarrow import ipc

from sampleforge.jobs.common.storage import ObjectStore, S3Uri, content_matches, sha256_file

from .dedup import HashSet
from .errors import SourceError
from .itempool import ItemPool
from .knowledge import DatasetKnowledge
from .labels import Labels
from .preprocess import DenseStats, FeatureStats
from .reducers import SelectionBudget
from .rows import ColumnRoles, RowBatch
from .source import Checkpoint

log = logging.getLogger(__name__)

__all__ = ["ANALYSIS_DIR", "FORMAT", "INDEX_NAME", "Analysis", "read_analysis", "read_analysis_index", "write_analysis"]

ANALYSIS_DIR = "_analysis"
INDEX_NAME = "index.json"
#: Bumped when the layout changes: an index of another format is treated like another fingerprint.
FORMAT = "sampleforge.analysis/1"
KNOWLEDGE = "knowledge.json"
PAIRS = "pairs.u64"
ITEMS = "items.arrow"
SAMPLE = "sample.arrow"
OFFSETS = "offsets.arrow"
POOL_BATCH_ROWS = 65_536
#: The fields of a :data:`~.source.Checkpoint`, one int64 column each.
_OFFSET_COLUMNS = ("record", "byte", "line")
_IPC_OPTIONS = ipc.IpcWriteOptions(compression=pa.Codec("zstd", compression_level=3), use_threads=False)


@dataclass(frozen=True)
class Analysis:
    """A committed analysis read back: the knowledge, the augmenters' prepared state by augmenter
    name, the index document, and the bytes read (index and files)."""

    knowledge: DatasetKnowledge
    prepared: dict[str, bytes]
    index: dict[str, Any]
    bytes_read: int


# --- writing ---------------------------------------------------------------------------------------


def write_analysis(store: ObjectStore, prefix: S3Uri, knowledge: DatasetKnowledge, fingerprint: str,
                   prepared: Mapping[str, bytes] | None = None) -> S3Uri:
    """Commit ``knowledge`` (and ``prepared``) under ``prefix``/_analysis/; returns the index's URI.

    An earlier index is removed first, so an attempt killed half-way leaves no index and the next one
    analyses again. Each file goes through a local temporary file (``TMPDIR``), uploaded and deleted
    before the next is made, so the scratch disk holds one file at a time.
    """
    root = prefix.join(ANALYSIS_DIR)
    index_uri = root.join(INDEX_NAME)
    if store.exists(index_uri):
        store.remove(index_uri)
    files: list[dict[str, Any]] = []
    prepared_paths: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="sampleforge-analysis-") as scratch:
        local = Path(scratch) / "file"

        def put(path: str, write: Callable[[Path], object]) -> None:
            write(local)
            size, digest = local.stat().st_size, sha256_file(local)
            store.upload_file(root.join(path), local)
            local.unlink()
            files.append({"path": path, "size": size, "sha256": digest})

        put(KNOWLEDGE, lambda path: path.write_bytes(_dumps(_knowledge_document(knowledge))))
        put(PAIRS, lambda path: knowledge.source_pairs.sorted_keys().astype("<u8", copy=False).tofile(path))
        put(ITEMS, lambda path: _write_ipc(path, knowledge.item_pool.arrow_schema(),
                                           knowledge.item_pool.record_batches(POOL_BATCH_ROWS)))
        sample = knowledge.sample
        if sample is not None:
            put(SAMPLE, lambda path: _write_ipc(path, *_sample_table(sample)))
        put(OFFSETS, lambda path: _write_ipc(path, *_offsets_table(knowledge.object_offsets)))
        blobs = dict(prepared or {})
        for name in sorted(blobs):
            blob = blobs[name]
            prepared_paths[name] = path = f"prepared/{quote(name, safe='')}.bin"
            store.write_bytes(root.join(path), blob)
            files.append({"path": path, "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})
    total = sum(entry["size"] for entry in files)
    index = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "files": sorted(files, key=lambda entry: entry["path"]),
        "prepared": prepared_paths,
        "summary": knowledge.summary(),
        "seconds": _float(knowledge.seconds),
        "bytes": total,
        "bytesPerSourceRow": round(total / max(knowledge.total_rows, 1), 2),
    }
    store.write_bytes(index_uri, _dumps(index), "application/json")
    log.info("analysis committed", extra={"uri": str(index_uri), "bytes": total, "files": len(files)})
    return index_uri


def _dumps(document: Any) -> bytes:
    """Strict JSON (non-finite floats are encoded by :func:`_float` beforehand), keys sorted."""
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False).encode("utf-8")


def _float(value: float) -> float | str:
    return float(value) if math.isfinite(value) else str(float(value))


def _unfloat(value: float | str) -> float:
    return float(value)


def _knowledge_document(k: DatasetKnowledge) -> dict[str, Any]:
    sample = k.sample
    return {
        "objectRows": list(k.object_rows),
        "objectOffsets": len(k.object_offsets),
        "totalRows": k.total_rows,
        "validRows": k.valid_rows,
        "rejectedRows": k.rejected_rows,
        "labels": {"kind": k.labels.kind, "counts": [[key, n] for key, n in k.labels.counts.items()]},
        "dense": _dense_document(k.dense) if k.dense is not None else None,
        "attributeValues": [[name, list(values)] for name, values in k.attribute_values.items()],
        "itemPool": {"items": len(k.item_pool), "attributes": list(k.item_pool.attributes)},
        "sourcePairs": len(k.source_pairs),
        "sample": None if sample is None else {"rows": len(sample), "roles": _roles_document(sample.roles)},
        "selection": [[name, {"fraction": _float(b.fraction), "threshold": _float(b.threshold),
                              "maxRows": b.max_rows, "perRow": b.per_row}] for name, b in k.selection.items()],
    }


def _dense_document(dense: DenseStats) -> dict[str, Any]:
    return {
        "clip": dense.clip,
        "normalization": dense.normalization,
        "sampleRows": dense.sample_rows,
        "features": [{"name": f.name, "count": f.count, "mean": _float(f.mean), "std": _float(f.std),
                      "min": _float(f.min), "max": _float(f.max), "clipLow": _float(f.clip_low),
                      "clipHigh": _float(f.clip_high), "center": _float(f.center), "scale": _float(f.scale)}
                     for f in dense.features],
    }


def _roles_document(roles: ColumnRoles) -> dict[str, Any]:
    return {"query": roles.query, "item": roles.item, "label": roles.label, "attributes": list(roles.attributes),
            "dense": list(roles.dense), "image": roles.image, "id": roles.id}


def _write_ipc(path: Path, schema: pa.Schema, batches: Iterator[pa.RecordBatch] | Sequence[pa.RecordBatch]) -> None:
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, schema, options=_IPC_OPTIONS) as writer:
        for batch in batches:
            writer.write_batch(batch)


def _sample_table(sample: RowBatch) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """The sample as ``row_id`` and ``c0``, ``c1``, ... (the names, which may be anything, and each
    column's encoding are in the metadata)."""
    paths = {column: field for field, column in sample.roles.field_paths()}
    arrays = [pa.array(sample.row_ids, type=pa.int64())]
    columns = []
    for name, values in sample.columns.items():
        array, encoding = _encode_column(values, paths.get(name, f"column {name!r}"))
        arrays.append(array)
        columns.append({"name": name, "encoding": encoding})
    fields = [pa.field("row_id", pa.int64(), nullable=False)]
    fields += [pa.field(f"c{i}", array.type) for i, array in enumerate(arrays[1:])]
    schema = pa.schema(fields, metadata={"columns": json.dumps(columns, ensure_ascii=False)})
    return schema, [pa.RecordBatch.from_arrays(arrays, schema=schema)]


_ARROW_TYPES: dict[type, pa.DataType] = {str: pa.large_string(), bool: pa.bool_(), int: pa.int64(),
                                         float: pa.float64()}


def _encode_column(values: list[Any], field_path: str) -> tuple[pa.Array, str]:
    """A sample column as an Arrow array of its own type when that gives the values back exactly
    (``"arrow"``), else as JSON texts (``"json"``: mixed ``1`` / ``"1"`` / ``1.5`` labels keep their types)."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.nulls(len(values)), "arrow"
    if len(kinds) == 1:
        [kind] = kinds
        if kind in _ARROW_TYPES:
            try:
                return pa.array(values, type=_ARROW_TYPES[kind]), "arrow"
            except (pa.ArrowInvalid, OverflowError):  # an int beyond 64 bits
                pass
    try:
        inferred = pa.array(values)
        if _same(inferred.to_pylist(), values):
            return inferred, "arrow"
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    try:
        texts = [None if v is None else json.dumps(v, ensure_ascii=False) for v in values]
        if _same([None if t is None else json.loads(t) for t in texts], values):
            return pa.array(texts, type=pa.large_string()), "json"
    except (TypeError, ValueError):
        pass
    raise SourceError(f"{field_path} holds values of types {sorted(k.__name__ for k in kinds)} that the analysis "
                      "cannot store and read back exactly; convert the column to numbers or text in the source")


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same Python types (NaN equals NaN), through lists and dicts."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def _offsets_table(offsets: list[list[Checkpoint]]) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    objects = np.repeat(np.arange(len(offsets), dtype=np.int64), [len(o) for o in offsets])
    marks = np.asarray([mark for o in offsets for mark in o], dtype=np.int64).reshape(-1, len(_OFFSET_COLUMNS))
    schema = pa.schema([pa.field(name, pa.int64(), nullable=False) for name in ("object", *_OFFSET_COLUMNS)])
    arrays = [pa.array(objects), *(pa.array(marks[:, i]) for i in range(len(_OFFSET_COLUMNS)))]
    return schema, [pa.RecordBatch.from_arrays(arrays, schema=schema)]


# --- reading ---------------------------------------------------------------------------------------


def read_analysis_index(store: ObjectStore, prefix: S3Uri, fingerprint: str) -> dict[str, Any] | None:
    """The index of the analysis committed under ``prefix`` when it is of ``fingerprint`` and every
    file it lists is there with its size, else None (then the analysis must run); a damaged index or
    a listed file missing or of another size is a :class:`SourceError` naming it. Reads only the
    listing and the index: how a retried analysis step sees that it has nothing to do."""
    found = _committed_index(store, prefix, fingerprint)
    return found[0] if found is not None else None


def _committed_index(store: ObjectStore, prefix: S3Uri, fingerprint: str) -> tuple[dict[str, Any], int] | None:
    """:func:`read_analysis_index`, and the index's size in bytes."""
    root = prefix.join(ANALYSIS_DIR, "")
    index_uri = root.join(INDEX_NAME)
    listed = {uri.key: size for uri, size, _ in store.list(root)}
    if index_uri.key not in listed:
        return None
    raw = store.read_bytes(index_uri)
    try:
        index = json.loads(raw)
        if not isinstance(index, dict):
            raise TypeError("not a JSON object")
        entries = {str(entry["path"]): entry for entry in index.get("files", [])}
    except (ValueError, TypeError, KeyError) as err:
        raise _broken(prefix, f"{index_uri} is not an analysis index ({err})") from err
    if index.get("format") != FORMAT or index.get("fingerprint") != fingerprint:
        log.info("analysis of another run configuration found; analysing again",
                 extra={"uri": str(index_uri), "found": index.get("fingerprint"), "format": index.get("format")})
        return None
    for path, entry in entries.items():
        uri = root.join(path)
        if uri.key not in listed:
            raise _broken(prefix, f"{uri}, listed in {index_uri}, is missing")
        if listed[uri.key] != entry["size"]:
            raise _broken(prefix, f"{uri} has {listed[uri.key]} bytes but {index_uri} says {entry['size']}")
    return index, len(raw)


def read_analysis(store: ObjectStore, prefix: S3Uri, fingerprint: str) -> Analysis | None:
    """The analysis committed under ``prefix``, or None when there is none for ``fingerprint`` (then
    the analysis must run). A file the index lists that is missing or differs from its size and
    sha256 is a :class:`SourceError` naming it."""
    found = _committed_index(store, prefix, fingerprint)
    if found is None:
        return None
    index, index_bytes = found
    root = prefix.join(ANALYSIS_DIR, "")
    entries = {str(entry["path"]): entry for entry in index.get("files", [])}
    with tempfile.TemporaryDirectory(prefix="sampleforge-analysis-") as scratch:
        fetch = _Fetcher(store, root, root.join(INDEX_NAME), prefix, entries, Path(scratch))
        try:
            knowledge = _read_knowledge(fetch)
            prepared = {name: fetch.bytes(path) for name, path in sorted(index.get("prepared", {}).items())}
        except (ValueError, KeyError, TypeError, pa.ArrowException) as err:
            raise _broken(prefix, f"the analysis under {root} does not read back ({err})") from err
    knowledge.seconds = _unfloat(index.get("seconds", 0.0))
    return Analysis(knowledge, prepared, index, index_bytes + fetch.bytes_read)


def _broken(prefix: S3Uri, what: str) -> SourceError:
    return SourceError(f"the analysis artifact of this run is damaged: {what}. It is written once and never "
                       f"repaired: delete the run's output prefix {prefix} (or its {ANALYSIS_DIR}/) and run again")


class _Fetcher:
    """Downloads listed files one at a time into a scratch directory and checks them against the index."""

    def __init__(self, store: ObjectStore, root: S3Uri, index_uri: S3Uri, prefix: S3Uri,
                 entries: dict[str, dict[str, Any]], scratch: Path) -> None:
        self.store, self.root, self.index_uri, self.prefix = store, root, index_uri, prefix
        self.entries = entries
        self.scratch = scratch
        self.bytes_read = 0
        self._downloads = 0

    def has(self, path: str) -> bool:
        return path in self.entries

    def file(self, path: str) -> Path:
        """The verified local copy of ``path`` (the caller deletes it when done)."""
        entry = self.entries.get(path)
        uri = self.root.join(path)
        if entry is None:
            raise _broken(self.prefix, f"{self.index_uri} does not list {path}")
        self._downloads += 1
        local = self.scratch / f"{self._downloads}.part"
        self.store.download_file(uri, local)
        self.bytes_read += local.stat().st_size
        if not content_matches(local, entry["size"], entry["sha256"]):
            raise _broken(self.prefix, f"{uri} does not match the size and sha256 in {self.index_uri}: it was "
                                       "changed after the analysis was committed")
        return local

    def bytes(self, path: str) -> bytes:
        local = self.file(path)
        try:
            return local.read_bytes()
        finally:
            local.unlink()


def _read_knowledge(fetch: _Fetcher) -> DatasetKnowledge:
    doc = json.loads(fetch.bytes(KNOWLEDGE))
    local = fetch.file(PAIRS)
    pairs = HashSet.from_sorted(np.fromfile(local, dtype="<u8").astype(np.uint64, copy=False))
    local.unlink()
    local = fetch.file(ITEMS)
    pool = _read_pool(local)
    local.unlink()
    if len(pool) != doc["itemPool"]["items"] or len(pairs) != doc["sourcePairs"]:
        raise ValueError("the item pool or the source pairs do not have the sizes knowledge.json gives")
    sample = None
    if doc["sample"] is not None:
        local = fetch.file(SAMPLE)
        sample = _read_sample(local, ColumnRoles(**{**doc["sample"]["roles"],
                                                    "attributes": tuple(doc["sample"]["roles"]["attributes"]),
                                                    "dense": tuple(doc["sample"]["roles"]["dense"])}))
        local.unlink()
    local = fetch.file(OFFSETS)
    offsets = _read_offsets(local, int(doc["objectOffsets"]))
    local.unlink()
    labels = doc["labels"]
    return DatasetKnowledge(
        object_rows=[int(n) for n in doc["objectRows"]],
        total_rows=int(doc["totalRows"]),
        valid_rows=int(doc["validRows"]),
        rejected_rows=int(doc["rejectedRows"]),
        labels=Labels(str(labels["kind"]), {str(key): int(n) for key, n in labels["counts"]}),
        dense=_read_dense(doc["dense"]) if doc["dense"] is not None else None,
        attribute_values={str(name): [str(v) for v in values] for name, values in doc["attributeValues"]},
        item_pool=pool,
        source_pairs=pairs,
        sample=sample,
        selection={str(name): SelectionBudget(_unfloat(b["fraction"]), _unfloat(b["threshold"]), b["maxRows"],
                                              b["perRow"]) for name, b in doc["selection"]},
        object_offsets=offsets,
    )


def _read_dense(doc: dict[str, Any]) -> DenseStats:
    features = tuple(FeatureStats(
        name=f["name"], count=int(f["count"]), mean=_unfloat(f["mean"]), std=_unfloat(f["std"]),
        min=_unfloat(f["min"]), max=_unfloat(f["max"]), clip_low=_unfloat(f["clipLow"]),
        clip_high=_unfloat(f["clipHigh"]), center=_unfloat(f["center"]), scale=_unfloat(f["scale"]))
        for f in doc["features"])
    return DenseStats(doc["clip"], str(doc["normalization"]), features, int(doc["sampleRows"]))


def _read_pool(path: Path) -> ItemPool:
    with pa.OSFile(str(path)) as source:
        schema = ipc.open_file(source).schema

    def column(name: str) -> pa.ChunkedArray:
        options = ipc.IpcReadOptions(included_fields=[schema.get_field_index(name)])
        with pa.OSFile(str(path)) as source:
            return ipc.open_file(source, options=options).read_all().column(0)

    return ItemPool.from_arrow(schema, column)


def _read_sample(path: Path, roles: ColumnRoles) -> RowBatch:
    with pa.OSFile(str(path)) as source:
        table = ipc.open_file(source).read_all()
    columns_doc = json.loads((table.schema.metadata or {})[b"columns"])
    row_ids = table.column("row_id").to_numpy().astype(np.int64, copy=True)
    columns: dict[str, list[Any]] = {}
    for i, entry in enumerate(columns_doc):
        values = table.column(f"c{i}").to_pylist()
        if entry["encoding"] == "json":
            values = [None if v is None else json.loads(v) for v in values]
        columns[entry["name"]] = values
    return RowBatch(roles, row_ids, columns)


def _read_offsets(path: Path, objects: int) -> list[list[Checkpoint]]:
    with pa.OSFile(str(path)) as source:
        table = ipc.open_file(source).read_all()
    found: list[list[Checkpoint]] = [[] for _ in range(objects)]
    columns = [table.column(name).to_pylist() for name in ("object", *_OFFSET_COLUMNS)]
    for obj, record, byte, line in zip(*columns, strict=True):
        found[obj].append((record, byte, line))
    return found