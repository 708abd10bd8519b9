"""Reading training and evaluation rows from MinIO: one file, a prefix of files, or a committed
output (an AugmentationRun's, or any prefix with a ``manifest.json``).

Two rules shape this module:

* A committed prefix is read only through its manifest: the files it lists, each checked against
  the size and sha256 recorded there, so leftovers of a failed attempt are never trained on.
* Bad rows (no query, no item text, no label, a non-numeric dense feature, unparseable JSON or CSV)
  are counted and set aside with the reason, never silently dropped and never fatal; a dataset
  with no usable row at all is an error that names the spec field.

The result is plain Python and numpy (:class:`Examples`): tokenising and batching live in
:mod:`.batches`, and what a label means for each task in :mod:`.labels`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from numpy.typing import NDArray

from sampleforge.api.augmentation import Columns
from sampleforge.jobs.common.storage import MANIFEST_NAME, ObjectStore, S3Uri, StorageError

from .errors import DatasetError

#: File name endings the reader understands, and the format each one means.
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Examples:
    """Rows ready for a task: query text, item text (attributes appended), raw label, features."""

    queries: list[str]
    items: list[str]
    labels: list[Any] | None
    dense: NDArray[np.float32] | None = None

    def __len__(self) -> int:
        return len(self.queries)

    def take(self, indices: Sequence[int] | NDArray[np.int64]) -> Examples:
        idx = [int(i) for i in indices]
        return Examples(
            queries=[self.queries[i] for i in idx],
            items=[self.items[i] for i in idx],
            labels=None if self.labels is None else [self.labels[i] for i in idx],
            dense=None if self.dense is None else self.dense[idx],
        )


@dataclass
class Rejected:
    """Rows set aside, with why; written next to the model so nobody has to guess what was dropped."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, source: str, reason: str, row: Any) -> None:
        self.reasons[reason] += 1
        self.rows.append({"source": source, "reason": reason, "row": row})

    @property
    def count(self) -> int:
        return sum(self.reasons.values())


@dataclass(frozen=True)
class Dataset:
    """What was read from one place, and from where."""

    examples: Examples
    rejected: Rejected
    uri: str
    files: list[str]
    columns: Columns
    #: The committed manifest, when the data came from one (an AugmentationRun's output).
    manifest: dict[str, Any] | None = None


# --- files -> columns -------------------------------------------------------------------------


def _format_of(key: str, declared: str | None) -> str | None:
    if declared:
        return declared
    for suffix, fmt in SUFFIX_FORMATS.items():
        if key.endswith(suffix):
            return fmt
    return None


def _read_columns(data: bytes, fmt: str, source: str, rejected: Rejected) -> dict[str, list[Any]]:
    """Every column of one file as Python lists; malformed records go to ``rejected``."""
    if fmt == "parquet":
        table = pq.read_table(io.BytesIO(data))
        return {name: table.column(name).to_pylist() for name in table.column_names}
    if fmt == "csv":
        def skip(row: Any) -> str:
            rejected.add(source, "malformed CSV row", getattr(row, "text", str(row)))
            return "skip"

        # Every column as text: types are decided per role below, the same way for every format.
        header = next(csv.reader(io.StringIO(data[:65536].decode("utf-8", "replace"))), [])
        table = pacsv.read_csv(
            io.BytesIO(data),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=skip),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string())),
        )
        return {name: table.column(name).to_pylist() for name in table.column_names}
    if fmt == "jsonl":
        records: list[dict[str, Any]] = []
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                rejected.add(source, f"invalid JSON (line {number}): {err.msg}", line[:2000])
                continue
            if not isinstance(record, dict):
                rejected.add(source, f"not a JSON object (line {number})", line[:2000])
                continue
            records.append(record)
        names = list(dict.fromkeys(k for r in records for k in r))
        return {name: [r.get(name) for r in records] for name in names}
    raise DatasetError(f"unknown data format {fmt!r}; use jsonl, csv or parquet")


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _to_examples(cols: dict[str, list[Any]], columns: Columns, source: str, field_name: str,
                 need_label: bool, rejected: Rejected) -> Examples:
    """Pick the columns the spec names, build item text, and set aside rows that lack something."""
    n = len(next(iter(cols.values()))) if cols else 0
    roles = {"query": columns.query, "item": columns.item}
    if need_label:
        roles["label"] = columns.label
    for i, attr in enumerate(columns.attributes):
        roles[f"attributes[{i}]"] = attr
    for i, feature in enumerate(columns.dense_features):
        roles[f"denseFeatures[{i}]"] = feature
    missing = [f"{name!r} ({field_name}.columns.{role})" for role, name in roles.items() if name not in cols]
    if missing and n:
        raise DatasetError(f"{source} has no column {', '.join(missing)}; its columns are "
                           f"{', '.join(sorted(cols))}. Fix {field_name}.columns or the data")
    has_label = columns.label in cols
    queries: list[str] = []
    items: list[str] = []
    labels: list[Any] = []
    dense_rows: list[list[float]] = []
    for i in range(n):
        query, item = _text(cols[columns.query][i]), _text(cols[columns.item][i])
        label = cols[columns.label][i] if has_label else None
        reason = None
        if query is None:
            reason = f"empty query ({columns.query})"
        elif item is None:
            reason = f"empty item ({columns.item})"
        elif need_label and _text(label) is None:
            reason = f"no label ({columns.label})"
        features: list[float] = []
        if reason is None:
            for name in columns.dense_features:
                try:
                    value = float(cols[name][i])
                except (TypeError, ValueError):
                    value = math.nan
                if not math.isfinite(value):
                    reason = f"dense feature {name} is missing or not a finite number"
                    break
                features.append(value)
        if reason is not None:
            rejected.add(source, reason, {k: _jsonable(v[i]) for k, v in cols.items()})
            continue
        attributes = [(a, _text(cols[a][i])) for a in columns.attributes]
        suffix = "".join(f" | {a}: {v}" for a, v in attributes if v is not None)
        queries.append(query)  # type: ignore[arg-type]  # checked above
        items.append(f"{item}{suffix}")
        labels.append(label)
        dense_rows.append(features)
    dense = np.asarray(dense_rows, dtype=np.float32).reshape(len(queries), len(columns.dense_features)) \
        if columns.dense_features else None
    return Examples(queries, items, labels if has_label else None, dense)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _concat(parts: list[Examples]) -> Examples:
    labelled = all(p.labels is not None for p in parts)
    dense = [p.dense for p in parts if p.dense is not None]
    return Examples(
        queries=[q for p in parts for q in p.queries],
        items=[t for p in parts for t in p.items],
        labels=[x for p in parts for x in p.labels or []] if labelled else None,
        dense=np.concatenate(dense) if dense and len(dense) == len(parts) else None,
    )


# --- places -> Dataset ------------------------------------------------------------------------


def _read_all(store: ObjectStore, uris: list[S3Uri], formats: list[str], columns: Columns, field_name: str,
              need_label: bool, expected: list[dict[str, Any]] | None = None) -> tuple[Examples, Rejected]:
    rejected = Rejected()
    parts = []
    for i, (uri, fmt) in enumerate(zip(uris, formats, strict=True)):
        try:
            data = store.read_bytes(uri)
        except StorageError as err:
            raise DatasetError(f"{field_name}: {err}") from err
        if expected is not None:
            entry = expected[i]
            if len(data) != entry.get("size", len(data)) or (
                    "sha256" in entry and hashlib.sha256(data).hexdigest() != entry["sha256"]):
                raise DatasetError(f"{uri} does not match the size or sha256 in its manifest ({field_name}): the "
                                   "committed output was changed afterwards; rerun the run that produced it")
        try:
            cols = _read_columns(data, fmt, str(uri), rejected)
        except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as err:
            raise DatasetError(f"{uri} is not a readable {fmt} file ({field_name}): {err}") from err
        parts.append(_to_examples(cols, columns, str(uri), field_name, need_label, rejected))
    return _concat(parts), rejected


def data_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest entries that are training rows. An entry with a ``role`` is data only when the
    role is ``data``. Otherwise a data file has the manifest's ``format`` (by its suffix, or no
    suffix at all) or, without a declared format, a .parquet/.jsonl/.ndjson/.csv suffix; and is
    not a side output, i.e. no part of its path starts with ``rejected``, ``_`` or ``.`` (rows the
    producer set aside, statistics, markers). A bare ``.json`` here is a document, not rows."""
    declared = manifest.get("format")
    out = []
    for entry in manifest.get("files", []):
        path = str(entry.get("path", ""))
        if "role" in entry:
            if entry["role"] == "data":
                out.append(entry)
            continue
        parts = path.split("/")
        if any(p.startswith(("_", ".", "rejected")) for p in parts):
            continue
        by_suffix = None if path.endswith(".json") and declared != "jsonl" else _format_of(path, None)
        if (by_suffix is not None and by_suffix == (declared or by_suffix)) or (declared and "." not in parts[-1]):
            out.append(entry)
    return out


def read_committed(store: ObjectStore, prefix: S3Uri, field_name: str, need_label: bool,
                   columns: Columns | None = None) -> Dataset:
    """Read exactly the files a committed manifest lists. Column roles come from the manifest's
    ``columns`` (camelCase, as in the AugmentationRun spec) unless ``columns`` is given."""
    try:
        manifest = store.read_manifest(prefix)
    except StorageError as err:
        raise DatasetError(f"{field_name}: {err}") from err
    if manifest is None:
        raise DatasetError(f"{prefix} has no {MANIFEST_NAME} ({field_name}): its output was never committed; wait "
                           "for the run that writes it to succeed, or point at a committed output")
    entries = data_entries(manifest)
    if not entries:
        raise DatasetError(f"the manifest under {prefix} lists no data files ({field_name})")
    if columns is None:
        columns = Columns.model_validate(manifest.get("columns") or {})
    uris = [prefix.join(e["path"]) for e in entries]
    formats = [_format_of(e["path"], manifest.get("format")) or "" for e in entries]
    examples, rejected = _read_all(store, uris, formats, columns, field_name, need_label, expected=entries)
    return _checked(Dataset(examples, rejected, str(prefix), [str(u) for u in uris], columns, manifest), field_name)


def read_dataset(store: ObjectStore, uri: str, fmt: str | None, columns: Columns | None, field_name: str,
                 need_label: bool) -> Dataset:
    """Read ``uri``: one file, or every data file under a prefix ending in '/'. A prefix with a
    manifest is read as a committed output (only what the manifest lists)."""
    location = S3Uri.parse(uri)
    columns = columns or Columns()
    if uri.endswith("/"):
        if _exists(store, location.join(MANIFEST_NAME), field_name):
            return read_committed(store, location, field_name, need_label, columns)
        listed = [u for u, _, _ in _listing(store, location, field_name)
                  if not any(part.startswith(("_", ".")) for part in u.key[len(location.key):].split("/"))]
        found = [(u, _format_of(u.key, fmt)) for u in listed]
        uris = [u for u, f in found if f]
        if not uris:
            raise DatasetError(f"no .jsonl, .csv or .parquet files under {uri} ({field_name}); check the URI")
        formats = [f for _, f in found if f]
    else:
        detected = _format_of(location.key, fmt)
        if detected is None:
            raise DatasetError(f"cannot tell the format of {uri}; set {field_name.rsplit('.', 1)[0]}.format "
                               "(jsonl, csv or parquet)")
        if not _exists(store, location, field_name):
            raise DatasetError(f"{uri} does not exist ({field_name}); check the URI and that the upload finished")
        uris, formats = [location], [detected]
    examples, rejected = _read_all(store, uris, formats, columns, field_name, need_label)
    return _checked(Dataset(examples, rejected, uri, [str(u) for u in uris], columns), field_name)


def _exists(store: ObjectStore, uri: S3Uri, field_name: str) -> bool:
    try:
        return bool(store.exists(uri))
    except StorageError as err:
        raise DatasetError(f"{field_name}: {err}") from err


def _listing(store: ObjectStore, prefix: S3Uri, field_name: str) -> list[tuple[S3Uri, int, str]]:
    try:
        return list(store.list(prefix))
    except StorageError as err:
        raise DatasetError(f"{field_name}: {err}") from err


def _checked(dataset: Dataset, field_name: str) -> Dataset:
    if len(dataset.examples) == 0:
        reasons = ", ".join(f"{r} ({n})" for r, n in dataset.rejected.reasons.most_common(3)) or "the files are empty"
        raise DatasetError(f"no usable rows in {dataset.uri} ({field_name}): {reasons}")
    return dataset


# --- splitting --------------------------------------------------------------------------------


def split_by_query(queries: Sequence[str], fraction: float, seed: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Row indices (train, eval) such that no query has rows on both sides.

    Whole queries are drawn in a seeded random order until the evaluation side holds ``fraction``
    of the rows (at least one query, and never every query), so the split is the same on every
    rank and every restart.
    """
    unique, inverse = np.unique(np.asarray(queries, dtype=object), return_inverse=True)
    if len(unique) < 2:
        raise DatasetError("the training data has a single query, so no evaluation split by query is possible; "
                           "set data.eval to a separate evaluation set")
    counts = np.bincount(inverse, minlength=len(unique))
    order = np.random.default_rng(seed).permutation(len(unique))
    target = fraction * len(queries)
    taken = np.zeros(len(unique), dtype=bool)
    rows = 0
    for q in order[:-1]:
        if rows >= target and taken.any():
            break
        taken[q] = True
        rows += int(counts[q])
    is_eval = taken[inverse]
    return np.flatnonzero(~is_eval), np.flatnonzero(is_eval)
