"""Reading training and evaluation rows from MinIO: one file, a prefix of files, or a committed
output (an AugmentationRun's, or any prefix with a ``manifest.json``).

Two rules shape this module:

* A committed prefix is read only through its manifest: the files it lists, each checked against
  the size and sha256 recorded there, so leftovers of a failed attempt are never trained on.
* Bad rows (no query, no item text, no label, a non-numeric dense feature, unparseable JSON or CSV,
  bytes that are not UTF-8) are counted per reason and set aside, never silently dropped, never
  decoded with replacement characters and never fatal; a dataset with no usable row at all is an
  error that names the spec field. JSONL and CSV are parsed by :mod:`sampleforge.jobs.common.records`,
  the code the augmentation job reads its source with, so both jobs agree on what a row is.
* Rows that carry an augmentation run's provenance (``sf_origin``, ``sf_source_row``) keep it, so
  that the evaluation split can follow lineage (:func:`split_by_query`).

The result is plain Python and numpy (:class:`Examples`): tokenising and batching live in
:mod:`.batches`, and what a label means for each task in :mod:`.labels`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray
from pydantic import ValidationError

from sampleforge.api.augmentation import Columns
from sampleforge.api.manifest import CommittedData, OutputFile, describe
from sampleforge.jobs.common.formats import SUFFIX_FORMATS, format_of
from sampleforge.jobs.common.records import BadRecord, CsvHeaderError, csv_blocks, jsonl_records
from sampleforge.jobs.common.storage import MANIFEST_NAME, ObjectStore, S3Uri, StorageError
from sampleforge.jobs.common.text import norm_key

from .errors import DatasetError

__all__ = ["SUFFIX_FORMATS", "Dataset", "Examples", "QuerySplit", "Rejected", "committed_data", "data_formats",
           "query_groups", "read_committed", "read_dataset", "split_by_query"]

#: Provenance columns an AugmentationRun writes next to the data (see jobs/augment/rows.py).
ORIGIN: Final = "sf_origin"
SOURCE_ROW: Final = "sf_source_row"
LABEL_RULE: Final = "sf_label_rule"
#: sf_origin of a row an augmenter made (source rows say "source").
GENERATED: Final = "generated"


@dataclass(frozen=True)
class Examples:
    """Rows ready for a task: query text, item text (attributes appended), raw label, features, and
    the provenance of rows an augmentation run wrote (None when the data carries none)."""

    queries: list[str]
    items: list[str]
    labels: list[Any] | None
    dense: NDArray[np.float32] | None = None
    #: sf_origin per row: "source" or "generated".
    origins: list[str] | None = None
    #: sf_source_row per row: the global index of the source row the row is or derives from.
    source_rows: list[int | None] | None = None
    #: sf_label_rule per row: how a generated row's label was set (None for source rows).
    label_rules: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.queries)

    def take(self, indices: Sequence[int] | NDArray[np.int64]) -> Examples:
        idx = [int(i) for i in indices]

        def pick(values: list[Any] | None) -> list[Any] | None:
            return None if values is None else [values[i] for i in idx]

        return Examples(
            queries=[self.queries[i] for i in idx],
            items=[self.items[i] for i in idx],
            labels=pick(self.labels),
            dense=None if self.dense is None else self.dense[idx],
            origins=pick(self.origins),
            source_rows=pick(self.source_rows),
            label_rules=pick(self.label_rules),
        )

    def generated(self) -> NDArray[np.bool_]:
        """Which rows an augmenter made (all False without provenance)."""
        if self.origins is None:
            return np.zeros(len(self), dtype=bool)
        return np.asarray([o == GENERATED for o in self.origins], dtype=bool)


@dataclass
class Rejected:
    """Rows set aside, with why; written next to the model so nobody has to guess what was dropped.

    ``reasons`` counts by reason class ("invalid JSON"), so the counts stay a short table however
    many lines are bad; each row's own entry keeps the full message ("invalid JSON (line 7): ...").
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, source: str, reason: str, row: Any, message: str | None = None) -> None:
        self.reasons[reason] += 1
        self.rows.append({"source": source, "reason": message or reason, "row": row})

    def add_bad(self, source: str, bad: BadRecord) -> None:
        """A record the parser refused."""
        self.add(source, bad.reason, bad.text, bad.message)

    def extend(self, other: Rejected) -> None:
        self.rows.extend(other.rows)
        self.reasons.update(other.reasons)

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
    #: The committed manifest, when the data came from one (an AugmentationRun's output): as written
    #: (for the model card), and the part this job reads, validated.
    manifest: dict[str, Any] | None = None
    committed: CommittedData | None = None


# --- files -> columns -------------------------------------------------------------------------


def _read_columns(data: bytes, fmt: str, source: str, rejected: Rejected) -> dict[str, list[Any]]:
    """Every column of one file as Python lists; malformed records go to ``rejected``."""
    if fmt == "parquet":
        table = pq.read_table(io.BytesIO(data))
        return {name: table.column(name).to_pylist() for name in table.column_names}
    if fmt == "csv":
        # Every column as text: types are decided per role below, the same way for every format.
        header, blocks = csv_blocks(io.BufferedReader(io.BytesIO(data)))
        columns: dict[str, list[Any]] = {name: [] for name in header}
        for block in blocks:
            for bad in block.bad:
                rejected.add_bad(source, bad)
            for name, values in block.columns.items():
                columns.setdefault(name, []).extend(values)
        return columns
    if fmt == "jsonl":
        records: list[dict[str, Any]] = []
        for record in jsonl_records(io.BytesIO(data)):
            if isinstance(record, BadRecord):
                rejected.add_bad(source, record)
            else:
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
    has_provenance = ORIGIN in cols
    queries: list[str] = []
    items: list[str] = []
    labels: list[Any] = []
    dense_rows: list[list[float]] = []
    origins: list[str] = []
    source_rows: list[int | None] = []
    label_rules: list[str | None] = []
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
        if has_provenance:
            origins.append(_text(cols[ORIGIN][i]) or "source")
            source_rows.append(_row_id(cols[SOURCE_ROW][i]) if SOURCE_ROW in cols else None)
            label_rules.append(_text(cols[LABEL_RULE][i]) if LABEL_RULE in cols else None)
    dense = np.asarray(dense_rows, dtype=np.float32).reshape(len(queries), len(columns.dense_features)) \
        if columns.dense_features else None
    if not has_provenance:
        return Examples(queries, items, labels if has_label else None, dense)
    return Examples(queries, items, labels if has_label else None, dense, origins, source_rows, label_rules)


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


def _concat(parts: list[Examples]) -> Examples:
    labelled = all(p.labels is not None for p in parts)
    dense = [p.dense for p in parts if p.dense is not None]
    # Rows of a file without provenance are source rows of their own (no lineage to follow).
    traced = any(p.origins is not None for p in parts)
    return Examples(
        queries=[q for p in parts for q in p.queries],
        items=[t for p in parts for t in p.items],
        labels=[x for p in parts for x in p.labels or []] if labelled else None,
        dense=np.concatenate(dense) if dense and len(dense) == len(parts) else None,
        origins=[o for p in parts for o in (p.origins or ["source"] * len(p))] if traced else None,
        source_rows=[r for p in parts for r in (p.source_rows or [None] * len(p))] if traced else None,
        label_rules=[r for p in parts for r in (p.label_rules or [None] * len(p))] if traced else None,
    )


# --- places -> Dataset ------------------------------------------------------------------------


def _read_all(store: ObjectStore, uris: list[S3Uri], formats: list[str], columns: Columns, field_name: str,
              need_label: bool, expected: list[OutputFile] | None = None) -> tuple[Examples, Rejected]:
    rejected = Rejected()
    parts = []
    for i, (uri, fmt) in enumerate(zip(uris, formats, strict=True)):
        try:
            data = store.read_bytes(uri)
        except StorageError as err:
            raise DatasetError(f"{field_name}: {err}") from err
        if expected is not None:
            entry = expected[i]
            if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
                raise DatasetError(f"{uri} does not match the size or sha256 in its manifest ({field_name}): the "
                                   "committed output was changed afterwards; rerun the run that produced it")
        try:
            cols = _read_columns(data, fmt, str(uri), rejected)
        except (pa.ArrowInvalid, CsvHeaderError, OSError) as err:
            raise DatasetError(f"{uri} is not a readable {fmt} file ({field_name}): {err}") from err
        parts.append(_to_examples(cols, columns, str(uri), field_name, need_label, rejected))
    return _concat(parts), rejected


def committed_data(manifest: dict[str, Any], prefix: S3Uri, field_name: str) -> CommittedData:
    """The part of a committed manifest this job reads, validated; a DatasetError naming each
    missing or malformed key otherwise."""
    try:
        return CommittedData.model_validate(manifest)
    except ValidationError as err:
        raise DatasetError(f"the manifest under {prefix} is not a usable augmentation manifest ({field_name}): "
                           f"{describe(err)}; it was not written by sampleforge or was changed afterwards: rerun "
                           "the run that produced it") from err


def data_formats(committed: CommittedData, prefix: S3Uri, field_name: str) -> list[str]:
    """The format of each file the manifest lists: all of them are data parts (the manifest lists
    rejects and reports elsewhere). The manifest's ``format``, else the file's suffix."""
    formats = []
    for entry in committed.files:
        fmt = format_of(entry.path, committed.format)
        if fmt is None:
            raise DatasetError(f"the manifest under {prefix} lists {entry.path} as data, but declares no format and "
                               f"the name does not end in {', '.join(SUFFIX_FORMATS)} ({field_name})")
        formats.append(fmt)
    return formats


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
    committed = committed_data(manifest, prefix, field_name)
    formats = data_formats(committed, prefix, field_name)
    if columns is None:
        columns = committed.columns or Columns()
    uris = [prefix.join(e.path) for e in committed.files]
    examples, rejected = _read_all(store, uris, formats, columns, field_name, need_label, expected=committed.files)
    dataset = Dataset(examples, rejected, str(prefix), [str(u) for u in uris], columns, manifest, committed)
    return _checked(dataset, field_name)


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
        found = [(u, format_of(u.key, fmt)) for u in listed]
        uris = [u for u, f in found if f]
        if not uris:
            raise DatasetError(f"no .jsonl, .csv or .parquet files under {uri} ({field_name}); check the URI")
        formats = [f for _, f in found if f]
    else:
        detected = format_of(location.key, fmt)
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


def query_groups(queries: Sequence[str], source_rows: Sequence[int | None] | None = None) -> NDArray[np.int64]:
    """A group number per row: rows that must be on the same side of a train/eval split.

    Two rows are in one group when their queries are equal once normalised (NFKC, case and
    whitespace, :func:`~sampleforge.jobs.common.text.norm_key`) or when they share a source row
    (``sf_source_row``), and so on transitively. A generated row therefore follows its source
    row's query whatever its own query became (a typo, a paraphrase), and a generated query that
    happens to equal another row's query joins that row's group too: either way no text that is
    evaluated is trained on. Groups are numbered in the order of their smallest normalised query,
    so the numbering does not depend on the order of the rows.
    """
    keys, key_of_row = np.unique(np.asarray([norm_key(q) for q in queries], dtype=object), return_inverse=True)
    parent = list(range(len(keys)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    if source_rows is not None:
        first_key: dict[int, int] = {}
        for row, source in enumerate(source_rows):
            if source is None:
                continue
            key = int(key_of_row[row])
            seen = first_key.setdefault(source, key)
            a, b = find(seen), find(key)
            if a != b:
                # The smaller key (the earlier query in sorted order) names the group.
                parent[max(a, b)] = min(a, b)
    roots = np.asarray([find(k) for k in range(len(keys))], dtype=np.int64)
    _, group_of_key = np.unique(roots, return_inverse=True)
    return group_of_key[key_of_row].astype(np.int64)


@dataclass(frozen=True)
class QuerySplit:
    """Row indices of a split by query group (see :func:`split_by_query`)."""

    train: NDArray[np.int64]
    eval: NDArray[np.int64]
    #: Generated rows of the evaluation groups: variants of evaluated rows, so never trained on, and
    #: not evaluated either unless synthetic rows are (evaluation.includeSynthetic).
    held_out: NDArray[np.int64]


def split_by_query(queries: Sequence[str], fraction: float, seed: int, *,
                   source_rows: Sequence[int | None] | None = None,
                   generated: Sequence[bool] | NDArray[np.bool_] | None = None,
                   include_synthetic: bool = False) -> QuerySplit:
    """Rows for training and for evaluation, such that no query group (:func:`query_groups`) has
    rows on both sides.

    Whole groups are drawn in a seeded random order until the evaluation side holds ``fraction``
    of the rows it can hold (at least one group, and never every group), so the split is the same
    on every rank and every restart. Evaluation holds the source rows of the drawn groups; their
    generated rows (``generated``) are held out of both sides unless ``include_synthetic``, in
    which case they are evaluated too. ``fraction`` is counted over the rows evaluation may hold.
    A group of generated rows only (their source row was set aside) is never drawn: it has no row
    to evaluate.
    """
    n = len(queries)
    groups = query_groups(queries, source_rows)
    made = np.zeros(n, dtype=bool) if generated is None else np.asarray(generated, dtype=bool)
    if made.shape != (n,):
        raise ValueError("generated must have one flag per row")
    count = int(groups.max()) + 1 if n else 0
    if count < 2:
        raise DatasetError("the training data has a single query (counting the generated variants of each source "
                           "row's query as that query), so no evaluation split by query is possible; set data.eval "
                           "to a separate evaluation set")
    eligible = ~made if not include_synthetic else np.ones(n, dtype=bool)
    sizes = np.bincount(groups[eligible], minlength=count)
    order = [int(g) for g in np.random.default_rng(seed).permutation(count) if sizes[g] > 0]
    if not order:
        raise DatasetError("the training data has no source row to evaluate on (every row is generated); set "
                           "data.eval to a separate evaluation set, or evaluation.includeSynthetic: true")
    if len(order) == count:
        order = order[:-1]  # never every group: something must be left to train on
    target = fraction * int(eligible.sum())
    taken = np.zeros(count, dtype=bool)
    rows = 0
    for g in order:
        if rows >= target and taken.any():
            break
        taken[g] = True
        rows += int(sizes[g])
    in_eval_group = taken[groups]
    return QuerySplit(train=np.flatnonzero(~in_eval_group), eval=np.flatnonzero(in_eval_group & eligible),
                      held_out=np.flatnonzero(in_eval_group & ~eligible))
