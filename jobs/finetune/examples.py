"""Rows ready for a task, as views over Arrow record batches: a training set of tens of millions of
rows is a few memory-mapped files (:mod:`.ingest` writes them) and integer arrays, never lists of
Python strings.

* :class:`RowStore` is the rows of a dataset, in the order of its files. Text stays in the batches
  and is read a chunk at a time; what is needed for every row at once is a compact numpy array:
  the dense features, and which rows an augmenter generated.
* :class:`Examples` is a view of a store: all its rows, or the rows of a split, in a given order
  (an index array). ``take`` makes another view and copies no text.
* :class:`TextColumn` and :class:`LabelColumn` read one column of a view: by row, or as chunks in
  view order (what tokenising, key ranking and label encoding stream through). After each chunk
  the mapped pages are handed back (:meth:`.mapped.MappedFile.release`), so a pass over the data
  does not leave it resident.

``Examples(queries, items, labels, ...)`` builds a small view in memory from lists (tests, the
throughput benchmark), with the same behaviour as one read from files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, Final, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from sampleforge.jobs.common.text import norm_key

from .ingest import BATCH_ROWS, GENERATED, SOURCE, label_text, schema
from .mapped import InMemory, Part, Scratch

__all__ = ["CHUNK_ROWS", "Examples", "LabelColumn", "RowStore", "TextColumn"]

#: Rows per chunk when a column is streamed in view order.
CHUNK_ROWS: Final = 8192


class RowStore:
    """The rows of one dataset: record batches of :func:`.ingest.schema`, from one or more parts."""

    def __init__(self, parts: Sequence[Part], *, labelled: bool, traced: bool, dense_width: int,
                 keep: Scratch | None = None) -> None:
        self.parts = list(parts)
        #: The directory of files made for this store alone, removed with it.
        self.keep = keep
        self.labelled, self.traced, self.dense_width = labelled, traced, dense_width
        self.batches = [batch for part in self.parts for batch in part.batches]
        sizes = np.fromiter((b.num_rows for b in self.batches), dtype=np.int64, count=len(self.batches))
        #: First row of each batch, and the row count after the last.
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.rows = int(self.starts[-1])
        self.dense: NDArray[np.float32] | None = self._dense() if dense_width else None
        self.generated: NDArray[np.bool_] = (self._flags("origin", GENERATED) if traced
                                             else np.zeros(self.rows, dtype=bool))

    def release(self) -> None:
        for part in self.parts:
            part.release()

    def _dense(self) -> NDArray[np.float32]:
        out = np.empty((self.rows, self.dense_width), dtype=np.float32)
        for batch, start in zip(self.batches, self.starts, strict=False):
            values = batch.column("dense").flatten().to_numpy(zero_copy_only=False)
            out[start:start + batch.num_rows] = values.reshape(batch.num_rows, self.dense_width)
        self.release()
        return out

    def _flags(self, name: str, value: str) -> NDArray[np.bool_]:
        out = np.empty(self.rows, dtype=bool)
        for batch, start in zip(self.batches, self.starts, strict=False):
            out[start:start + batch.num_rows] = pc.equal(batch.column(name), value).to_numpy(zero_copy_only=False)
        self.release()
        return out

    def int_column(self, name: str, rows: NDArray[np.int64] | None, missing: int = -1) -> NDArray[np.int64]:
        """An int64 column of the given rows (all when None), ``missing`` for nulls."""
        return np.concatenate([pc.fill_null(a, missing).to_numpy(zero_copy_only=False).astype(np.int64)
                               for a in self.arrays(name, rows)] or [np.zeros(0, dtype=np.int64)])

    def gather(self, name: str, rows: NDArray[np.int64]) -> pa.Array:
        """Column ``name`` at ``rows`` (global row numbers, any order), as one array in that order."""
        if len(rows) == 0:
            return pa.array([], schema(self.dense_width).field(name).type)
        batch_of = np.searchsorted(self.starts, rows, side="right") - 1
        first, last = int(batch_of.min()), int(batch_of.max())
        if first == last:
            local = rows - self.starts[first]
            column = self.batches[first].column(name)
            if np.all(np.diff(local) == 1):
                return column.slice(int(local[0]), len(local))
            return column.take(pa.array(local))
        order = np.argsort(batch_of, kind="stable")
        pieces = []
        sorted_batches = batch_of[order]
        bounds = np.flatnonzero(np.diff(sorted_batches)) + 1
        for chunk in np.split(order, bounds):
            b = int(batch_of[chunk[0]])
            pieces.append(self.batches[b].column(name).take(pa.array(rows[chunk] - self.starts[b])))
        combined = pa.concat_arrays(pieces)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return combined.take(pa.array(back))

    def arrays(self, name: str, rows: NDArray[np.int64] | None, chunk: int = CHUNK_ROWS) -> Iterator[pa.Array]:
        """Column ``name`` of ``rows`` (all rows in order when None) in chunks, releasing the mapped
        pages after each."""
        if rows is None:
            for batch in self.batches:
                yield batch.column(name)
                self.release()
            return
        for start in range(0, len(rows), chunk):
            yield self.gather(name, rows[start:start + chunk])
            self.release()

    @classmethod
    def from_lists(cls, queries: Sequence[str], items: Sequence[str], labels: Sequence[Any] | None,
                   dense: NDArray[np.float32] | None, origins: Sequence[str | None] | None,
                   source_rows: Sequence[int | None] | None, label_rules: Sequence[str | None] | None) -> RowStore:
        """Rows given as lists, in memory (what the reader keeps of a row: see :mod:`.ingest`)."""
        n = len(queries)
        width = 0 if dense is None else int(np.asarray(dense).shape[1])
        traced = origins is not None
        columns: dict[str, Any] = {
            "query": list(queries), "item": list(items), "key": [norm_key(q) for q in queries],
            "label": [label_text(v) for v in labels] if labels is not None else [None] * n,
            "origin": [o or SOURCE for o in origins] if origins is not None else [SOURCE] * n,
            "source_row": list(source_rows) if source_rows is not None else [None] * n,
            "label_rule": list(label_rules) if label_rules is not None else [None] * n,
        }
        target = schema(width)
        arrays = [pa.array(columns[f.name], f.type) for f in schema(0)]
        if width:
            values = np.ascontiguousarray(dense, dtype=np.float32).reshape(-1)
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values), width))
        table = pa.Table.from_arrays(arrays, schema=target)
        part = InMemory(table.to_batches(max_chunksize=BATCH_ROWS), target)
        return cls([part], labelled=labels is not None, traced=traced, dense_width=width)


class TextColumn(Sequence[str]):
    """One text column of a view: ``column[i]``, iteration, or :meth:`chunks` in view order."""

    def __init__(self, store: RowStore, name: str, rows: NDArray[np.int64] | None) -> None:
        self.store, self.name, self.rows = store, name, rows

    def __len__(self) -> int:
        return self.store.rows if self.rows is None else len(self.rows)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = i if self.rows is None else int(self.rows[i])
        return str(self.store.gather(self.name, np.asarray([row], dtype=np.int64))[0].as_py())

    def arrays(self, chunk: int = CHUNK_ROWS) -> Iterator[pa.Array]:
        """The values as Arrow arrays, a chunk at a time, in view order."""
        return self.store.arrays(self.name, self.rows, chunk)

    def chunks(self, chunk: int = CHUNK_ROWS) -> Iterator[list[str]]:
        """The values as lists of ``chunk`` strings, in view order."""
        for array in self.arrays(chunk):
            yield array.to_pylist()

    def __iter__(self) -> Iterator[str]:
        for values in self.chunks():
            yield from values


class LabelColumn(Sequence[Any]):
    """The raw labels of a view, decoded as they were in the file (``2``, ``"2"``, ``2.0``)."""

    def __init__(self, store: RowStore, rows: NDArray[np.int64] | None) -> None:
        self.store, self.rows = store, rows

    def __len__(self) -> int:
        return self.store.rows if self.rows is None else len(self.rows)

    @overload
    def __getitem__(self, i: int) -> Any: ...

    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = i if self.rows is None else int(self.rows[i])
        text = self.store.gather("label", np.asarray([row], dtype=np.int64))[0].as_py()
        return None if text is None else json.loads(text)

    def chunks(self, chunk: int = CHUNK_ROWS) -> Iterator[list[Any]]:
        """The labels in view order, ``chunk`` at a time; each distinct text is decoded once."""
        for array in self.store.arrays("label", self.rows, chunk):
            encoded = pc.dictionary_encode(array)
            decoded = [json.loads(t) for t in encoded.dictionary.to_pylist()]
            yield [None if i is None else decoded[i] for i in encoded.indices.to_pylist()]

    def __iter__(self) -> Iterator[Any]:
        for values in self.chunks():
            yield from values

    def distinct(self) -> list[Any]:
        """Each distinct label once (as first met), for learning the label space."""
        seen: dict[str, None] = {}
        for array in self.store.arrays("label", self.rows):
            seen.update(dict.fromkeys(t for t in pc.unique(array).to_pylist() if t is not None))
        return [json.loads(t) for t in seen]


class Examples:
    """Rows ready for a task: query text, item text (attributes appended), raw label, dense
    features, and the provenance of rows an augmentation run wrote; a view of a :class:`RowStore`.

    Built from lists it holds them in memory: ``Examples(queries, items, labels, dense=...,
    origins=..., source_rows=..., label_rules=...)``.
    """

    def __init__(self, queries: Sequence[str], items: Sequence[str], labels: Sequence[Any] | None,
                 dense: NDArray[np.float32] | None = None, origins: Sequence[str | None] | None = None,
                 source_rows: Sequence[int | None] | None = None,
                 label_rules: Sequence[str | None] | None = None) -> None:
        store = RowStore.from_lists(queries, items, labels, dense, origins, source_rows, label_rules)
        self._set(store, None, store.dense)

    def _set(self, store: RowStore, rows: NDArray[np.int64] | None, dense: NDArray[np.float32] | None) -> None:
        self.store = store
        #: The store's rows this view holds, in order; None for all of them in store order.
        self.rows = rows
        self.dense = dense

    @classmethod
    def view(cls, store: RowStore, rows: NDArray[np.int64] | None = None,
             dense: NDArray[np.float32] | None = None) -> Examples:
        """A view of ``store`` (``dense`` aligned with the view; the store's own when None)."""
        examples = cls.__new__(cls)
        if dense is None and store.dense is not None:
            dense = store.dense if rows is None else store.dense[rows]
        examples._set(store, rows, dense)
        return examples

    def __len__(self) -> int:
        return self.store.rows if self.rows is None else len(self.rows)

    @property
    def queries(self) -> TextColumn:
        return TextColumn(self.store, "query", self.rows)

    @property
    def items(self) -> TextColumn:
        return TextColumn(self.store, "item", self.rows)

    @property
    def keys(self) -> TextColumn:
        """Each row's query, normalised (:func:`~sampleforge.jobs.common.text.norm_key`)."""
        return TextColumn(self.store, "key", self.rows)

    @property
    def labels(self) -> LabelColumn | None:
        """The raw labels; None when a file had no label column (twoTower may train without)."""
        return LabelColumn(self.store, self.rows) if self.store.labelled else None

    @property
    def origins(self) -> TextColumn | None:
        """sf_origin per row ("source" or "generated"); None when no file carried provenance."""
        return TextColumn(self.store, "origin", self.rows) if self.store.traced else None

    @property
    def label_rules(self) -> list[str | None] | None:
        """sf_label_rule per row (None for source rows), as a list; None without provenance. Only
        for inspection: nothing in training reads it."""
        if not self.store.traced:
            return None
        return [v for array in self.store.arrays("label_rule", self.rows) for v in array.to_pylist()]

    @property
    def source_rows(self) -> NDArray[np.int64] | None:
        """sf_source_row per row: the global index of the source row the row is or derives from,
        -1 where there is none; None when no file carried provenance."""
        return self.store.int_column("source_row", self.rows) if self.store.traced else None

    def generated(self) -> NDArray[np.bool_]:
        """Which rows an augmenter made (all False without provenance)."""
        return self.store.generated if self.rows is None else self.store.generated[self.rows]

    def take(self, indices: Sequence[int] | NDArray[np.int64]) -> Examples:
        """The view's rows at ``indices`` (positions in this view), as a new view."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        rows = index if self.rows is None else self.rows[index]
        return Examples.view(self.store, rows, None if self.dense is None else self.dense[index])

    def with_dense(self, dense: NDArray[np.float32]) -> Examples:
        """The same rows with other dense features (one row per row of this view)."""
        return Examples.view(self.store, self.rows, dense)
