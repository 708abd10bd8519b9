"""One data file (JSONL, CSV or Parquet, on local disk) into an Arrow IPC file of rows ready for a
task, streamed batch by batch: the file is never held as Python objects, whatever its size.

Per row it keeps what the job trains on and splits by, in a fixed schema (:data:`SCHEMA`): the
query, the item text (attributes appended, ``title | brand: Nike``), the query's normalised key
(for the split by query), the raw label (JSON-encoded, so ``2``, ``"2"`` and ``2.0`` stay what
they were), the dense features, and the provenance an AugmentationRun writes. Rows that lack
something are set aside with the reason, exactly as :mod:`.data` documents; the counts and the
rejected rows go to a small JSON file next to the Arrow file, which is written last and so marks
the part as done.

What a file holds is decided per file, as when files were read whole: a column is missing only if
no record of the file has it (JSON lines may omit keys), a file without a label column is
unlabelled, a rejected row shows every column of its file, and the parser's rejections of a file
come before the rows its roles set aside.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sampleforge.api.augmentation import Columns
from sampleforge.jobs.common.records import BadRecord, csv_blocks, jsonl_records
from sampleforge.jobs.common.text import norm_key

from .errors import DatasetError
from .mapped import write_ipc
from .rejected import Rejected

__all__ = ["BATCH_ROWS", "GENERATED", "ORIGIN", "SOURCE", "ingest", "label_text", "schema"]

#: Provenance columns an AugmentationRun writes next to the data (see jobs/augment/rows.py).
ORIGIN: Final = "sf_origin"
SOURCE_ROW: Final = "sf_source_row"
LABEL_RULE: Final = "sf_label_rule"
#: sf_origin of a row an augmenter made, and of a source row (also of rows without provenance).
GENERATED: Final = "generated"
SOURCE: Final = "source"
#: Rows per record batch: parsing, role checks and Arrow batches work this many rows at a time.
BATCH_ROWS: Final = 8192


def schema(dense_width: int) -> pa.Schema:
    """The columns of a rows file (``dense`` only with dense features)."""
    fields = [pa.field("query", pa.string(), False), pa.field("item", pa.string(), False),
              pa.field("key", pa.string(), False), pa.field("label", pa.string()),
              pa.field("origin", pa.string(), False), pa.field("source_row", pa.int64()),
              pa.field("label_rule", pa.string())]
    if dense_width:
        fields.append(pa.field("dense", pa.list_(pa.float32(), dense_width), False))
    return pa.schema(fields)


def label_text(value: Any) -> str | None:
    """A raw label as stored: JSON, so its type survives (text for what JSON cannot hold, which
    the label space reads as text anyway); None stays None."""
    if value is None:
        return None
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return json.dumps(str(value), ensure_ascii=False)


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _row_id(value: Any) -> int | None:
    """An sf_source_row value (an int in Parquet and JSON, text in CSV) as an int."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


class _File:
    """One file read batch by batch: its column names so far, what the parser refused, and what
    the roles set aside (each row's columns as its batch had them; completed at the end)."""

    def __init__(self, path: Path, fmt: str, source: str) -> None:
        self.path, self.fmt, self.source = path, fmt, source
        self.names: dict[str, None] = {}
        self.parsed = Rejected()
        self.set_aside: list[tuple[str, dict[str, Any]]] = []
        self.rows = 0

    def column_batches(self) -> Iterator[tuple[dict[str, list[Any]], int]]:
        """Every column of each batch of records as lists, and the batch's row count."""
        if self.fmt == "parquet":
            parquet = pq.ParquetFile(self.path)
            self.names.update(dict.fromkeys(parquet.schema_arrow.names))
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                yield {name: batch.column(name).to_pylist() for name in batch.schema.names}, batch.num_rows
        elif self.fmt == "csv":
            # Every column as text: types are decided per role, the same way for every format.
            with open(self.path, "rb") as handle:  # buffered: csv_blocks peeks at the header
                header, blocks = csv_blocks(handle)
                self.names.update(dict.fromkeys(header))
                for block in blocks:
                    for bad in block.bad:
                        self.parsed.add_bad(self.source, bad)
                    if block.rows:
                        yield block.columns, block.rows
        elif self.fmt == "jsonl":
            with open(self.path, "rb") as handle:
                records: list[dict[str, Any]] = []
                for record in jsonl_records(handle):
                    if isinstance(record, BadRecord):
                        self.parsed.add_bad(self.source, record)
                        continue
                    records.append(record)
                    if len(records) == BATCH_ROWS:
                        yield self._records(records), len(records)
                        records = []
                if records:
                    yield self._records(records), len(records)
        else:
            raise DatasetError(f"unknown data format {self.fmt!r}; use jsonl, csv or parquet")

    def _records(self, records: list[dict[str, Any]]) -> dict[str, list[Any]]:
        names = list(dict.fromkeys(k for r in records for k in r))
        self.names.update(dict.fromkeys(names))
        return {name: [r.get(name) for r in records] for name in names}

    def rejected(self) -> Rejected:
        """The parser's rejections, then the rows the roles set aside, each with every column of the file."""
        rejected = Rejected()
        rejected.extend(self.parsed)
        for reason, row in self.set_aside:
            rejected.add(self.source, reason, {k: row.get(k) for k in self.names})
        return rejected


def _roles(columns: Columns, need_label: bool) -> dict[str, str]:
    """Spec field (under ``columns``) -> the column it names, for the columns every file must have."""
    roles = {"query": columns.query, "item": columns.item}
    if need_label:
        roles["label"] = columns.label
    for i, attr in enumerate(columns.attributes):
        roles[f"attributes[{i}]"] = attr
    for i, feature in enumerate(columns.dense_features):
        roles[f"denseFeatures[{i}]"] = feature
    return roles


def _batch(file: _File, cols: dict[str, list[Any]], n: int, columns: Columns, need_label: bool) -> pa.RecordBatch:
    """The rows of one batch ready for the task; rows that lack something go to ``file.set_aside``."""
    def column(name: str) -> list[Any]:
        return cols.get(name) or [None] * n

    query_col, item_col, label_col = column(columns.query), column(columns.item), column(columns.label)
    origin_col, source_col, rule_col = column(ORIGIN), column(SOURCE_ROW), column(LABEL_RULE)
    attribute_cols = [(a, column(a)) for a in columns.attributes]
    dense_cols = [(f, column(f)) for f in columns.dense_features]
    out: dict[str, list[Any]] = {name: [] for name in ("query", "item", "key", "label", "origin", "source_row",
                                                        "label_rule")}
    dense: list[float] = []
    # Labels repeat (a few classes): each distinct one is encoded once per batch. The type is part
    # of the key, so 1, 1.0 and True (equal in Python) stay apart.
    stored: dict[tuple[type, Any], str | None] = {}
    for i in range(n):
        query, item = _text(query_col[i]), _text(item_col[i])
        label = label_col[i]
        reason = None
        if query is None:
            reason = f"empty query ({columns.query})"
        elif item is None:
            reason = f"empty item ({columns.item})"
        elif need_label and _text(label) is None:
            reason = f"no label ({columns.label})"
        features: list[float] = []
        if reason is None:
            for name, values in dense_cols:
                try:
                    value = float(values[i])
                except (TypeError, ValueError):
                    value = math.nan
                if not math.isfinite(value):
                    reason = f"dense feature {name} is missing or not a finite number"
                    break
                features.append(value)
        if reason is not None:
            file.set_aside.append((reason, {k: _jsonable(v[i]) for k, v in cols.items()}))
            continue
        assert query is not None and item is not None  # checked above
        suffix = "".join(f" | {a}: {v}" for a, v in ((a, _text(values[i])) for a, values in attribute_cols)
                         if v is not None)
        out["query"].append(query)
        out["item"].append(f"{item}{suffix}")
        out["key"].append(norm_key(query))
        if isinstance(label, str | int | float | bool):
            key = (type(label), label)
            if key not in stored:
                stored[key] = label_text(label)
            out["label"].append(stored[key])
        else:
            out["label"].append(label_text(label))
        out["origin"].append(_text(origin_col[i]) or SOURCE)
        out["source_row"].append(_row_id(source_col[i]))
        out["label_rule"].append(_text(rule_col[i]))
        dense.extend(features)
    width = len(columns.dense_features)
    arrays = [pa.array(out[f.name], f.type) for f in schema(0)]
    if width:
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(dense, dtype=np.float32)), width))
    return pa.RecordBatch.from_arrays(arrays, schema=schema(width))


def ingest(path: Path, fmt: str, columns: Columns, source: str, field_name: str, need_label: bool,
           rows_path: Path) -> dict[str, Any]:
    """Read the local file ``path`` into ``rows_path`` (Arrow IPC); what was read, as JSON: rows
    kept, whether the file had a label column and provenance, and the rows set aside."""
    file = _File(path, fmt, source)

    def batches() -> Iterator[pa.RecordBatch]:
        for cols, n in file.column_batches():
            file.rows += n
            yield _batch(file, cols, n, columns, need_label)
        missing = [f"{name!r} ({field_name}.columns.{role})" for role, name in _roles(columns, need_label).items()
                   if name not in file.names]
        if missing and file.rows:
            raise DatasetError(f"{source} has no column {', '.join(missing)}; its columns are "
                               f"{', '.join(sorted(file.names))}. Fix {field_name}.columns or the data")

    kept = write_ipc(rows_path, schema(len(columns.dense_features)), batches())
    return {"rows": kept, "labelled": columns.label in file.names, "traced": ORIGIN in file.names,
            "rejected": file.rejected().to_json()}
