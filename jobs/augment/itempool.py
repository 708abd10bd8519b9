"""The item pool: every distinct item of the source, stored column-wise so millions of them fit.

Hard negatives are drawn from the *whole* catalog, so the pool has no cap. A list of Python objects
(a dataclass, a dict of attributes and several ``str`` per item) costs about 600 bytes per item even
for short titles; here each text column is one UTF-8 buffer with an offset array, so an item costs
its text bytes plus 8 bytes per text column and 24 bytes of keys and ids (about 150 bytes for a
title with two attributes: 0.75 GB at 5 million items). :class:`PoolItem` objects are made on access.

Order: by each item's key (the 64-bit hash of its normalised text with attributes), so the pool is
in random order, does not depend on reading order, and is identical in every shard; the first row
that brings a key wins (its row id, image and attribute spelling).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from .dedup import HashSet, item_repr

__all__ = ["ItemPool", "ItemPoolBuilder", "PoolItem"]


@dataclass(frozen=True)
class PoolItem:
    """A distinct item of the source: what a hard negative takes from it."""

    row_id: int
    item: str
    attributes: dict[str, str | None]
    image: str | None


class _Texts:
    """Optional strings appended in chunks, then frozen into one UTF-8 buffer with offsets."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._lengths: list[NDArray[np.int64]] = []
        self._buffer = b""
        self._offsets: NDArray[np.int64] = np.zeros(1, dtype=np.int64)
        self._null: NDArray[np.bool_] = np.zeros(0, dtype=bool)

    def extend(self, values: Sequence[str | None]) -> None:
        encoded = [v.encode("utf-8") if v is not None else None for v in values]
        self._chunks.append(b"".join(e for e in encoded if e is not None))
        self._lengths.append(np.fromiter((len(e) if e is not None else -1 for e in encoded), dtype=np.int64,
                                         count=len(encoded)))

    def freeze(self) -> None:
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        self._buffer = b"".join(self._chunks)
        self._chunks.clear()
        self._lengths.clear()
        self._null = lengths < 0
        self._offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(np.maximum(lengths, 0), out=self._offsets[1:])

    def get(self, i: int) -> str | None:
        if self._null[i]:
            return None
        return self._buffer[int(self._offsets[i]) : int(self._offsets[i + 1])].decode("utf-8")

    @property
    def nbytes(self) -> int:
        return len(self._buffer) + int(self._offsets.nbytes) + int(self._null.nbytes)

    def to_arrow(self) -> pa.Array:
        """Every value as one Arrow ``large_string`` array over this object's own buffers (no copy)."""
        n = len(self._null)
        nulls = int(self._null.sum())
        validity = pa.py_buffer(np.packbits(~self._null, bitorder="little")) if nulls else None
        return pa.Array.from_buffers(pa.large_string(), n,
                                     [validity, pa.py_buffer(self._offsets), pa.py_buffer(self._buffer)], nulls)

    @classmethod
    def from_arrow(cls, column: pa.ChunkedArray) -> _Texts:
        """Frozen texts holding the values of ``column`` (string or large_string chunks): one copy of
        the UTF-8 bytes, never a Python ``str`` per value."""
        pieces: list[pa.Buffer] = []
        offsets = [np.zeros(1, dtype=np.int64)]
        nulls = [np.zeros(0, dtype=bool)]
        size = 0
        for chunk in column.chunks:
            chunk = chunk.cast(pa.large_string())
            _, offset_buffer, data = chunk.buffers()
            if offset_buffer is None:  # an empty chunk may come without buffers
                continue
            ends = np.frombuffer(offset_buffer, dtype=np.int64)[chunk.offset : chunk.offset + len(chunk) + 1]
            start, stop = int(ends[0]), int(ends[-1])
            if data is not None and stop > start:
                pieces.append(data[start:stop])
            offsets.append(ends[1:] - start + size)
            nulls.append(chunk.is_null().to_numpy(zero_copy_only=False))
            size += stop - start
        texts = cls()
        texts._buffer = b"".join(pieces)
        texts._offsets = np.concatenate(offsets)
        texts._null = np.concatenate(nulls)
        return texts


class ItemPool(Sequence[PoolItem]):
    """The distinct items, in key order (see the module docstring); ``pool[i]`` is a :class:`PoolItem`."""

    def __init__(self, attributes: tuple[str, ...], keys: NDArray[np.uint64], row_ids: NDArray[np.int64],
                 items: _Texts, columns: dict[str, _Texts], images: _Texts | None) -> None:
        self.attributes = attributes
        self._order: NDArray[np.int64] = np.argsort(keys, kind="stable").astype(np.int64)
        #: Key of each pool item (in pool order): the 64-bit hash of ``norm_key(item_repr(...))``.
        self.keys: NDArray[np.uint64] = keys[self._order]
        self._row_ids = row_ids
        self._items = items
        self._columns = columns
        self._images = images

    @classmethod
    def of(cls, items: Sequence[PoolItem], keys: Sequence[int], attributes: tuple[str, ...] = ()) -> ItemPool:
        """A pool of ``items`` with their ``keys`` (tests, and callers that already hold items)."""
        builder = ItemPoolBuilder(attributes, image=any(p.image is not None for p in items))
        builder.add(np.asarray(keys, dtype=np.uint64), [p.row_id for p in items], [p.item for p in items],
                    {a: [p.attributes.get(a) for p in items] for a in attributes}, [p.image for p in items])
        return builder.build()

    def __len__(self) -> int:
        return len(self._order)

    @overload
    def __getitem__(self, index: int) -> PoolItem: ...

    @overload
    def __getitem__(self, index: slice) -> list[PoolItem]: ...

    def __getitem__(self, index: int | slice) -> PoolItem | list[PoolItem]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        p = int(self._order[index])
        title = self._items.get(p)
        return PoolItem(int(self._row_ids[p]), title if title is not None else "",
                        {a: self._columns[a].get(p) for a in self.attributes},
                        self._images.get(p) if self._images is not None else None)

    def __iter__(self) -> Iterator[PoolItem]:
        for i in range(len(self)):
            yield self[i]

    def title(self, index: int) -> str:
        """The item text of ``pool[index]`` (what embeddings are computed from)."""
        title = self._items.get(int(self._order[index]))
        return title if title is not None else ""

    def titles(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Item texts of ``pool[start:stop]``."""
        return [self.title(i) for i in range(start, len(self) if stop is None else min(stop, len(self)))]

    def text(self, index: int) -> str:
        """``item_repr`` of ``pool[index]``: the item with its attribute values (what BM25 indexes)."""
        p = int(self._order[index])
        title = self._items.get(p)
        return item_repr(title if title is not None else "", {a: self._columns[a].get(p) for a in self.attributes})

    def texts(self) -> Iterator[str]:
        """``text(i)`` of every item, in pool order, made one at a time."""
        for i in range(len(self)):
            yield self.text(i)

    @property
    def nbytes(self) -> int:
        """Bytes held (buffers and arrays; not the Python object headers)."""
        texts = [self._items, *self._columns.values(), *([self._images] if self._images is not None else [])]
        return int(self._order.nbytes + self.keys.nbytes + self._row_ids.nbytes) + sum(t.nbytes for t in texts)

    def arrow_schema(self) -> pa.Schema:
        """The columns :meth:`record_batches` gives: ``key``, ``row_id``, ``item``, one
        ``attribute:<name>`` per attribute and ``image`` when the source has images (the prefix keeps a
        column named like a fixed one apart); the attribute names, in order, are in the metadata."""
        fields = [pa.field("key", pa.uint64(), nullable=False), pa.field("row_id", pa.int64(), nullable=False),
                  pa.field("item", pa.large_string())]
        fields += [pa.field(f"attribute:{name}", pa.large_string()) for name in self.attributes]
        if self._images is not None:
            fields.append(pa.field("image", pa.large_string()))
        return pa.schema(fields, metadata={"attributes": json.dumps(list(self.attributes), ensure_ascii=False)})

    def record_batches(self, rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """The pool in pool order, ``rows`` items at a time: each batch copies only its own items, so
        writing a pool of millions holds one batch beside it, not a second pool."""
        schema = self.arrow_schema()
        texts = [self._items, *(self._columns[name] for name in self.attributes),
                 *([self._images] if self._images is not None else [])]
        whole = [t.to_arrow() for t in texts]
        for start in range(0, len(self), rows):
            order = self._order[start : start + rows]
            picked = pa.array(order)
            yield pa.RecordBatch.from_arrays(
                [pa.array(self.keys[start : start + rows]), pa.array(self._row_ids[order]),
                 *(column.take(picked) for column in whole)], schema=schema)

    @classmethod
    def from_arrow(cls, schema: pa.Schema, column: Callable[[str], pa.ChunkedArray]) -> ItemPool:
        """The pool :meth:`record_batches` wrote, given its ``schema`` and a reader of one column by
        name (called once per column, so a caller reading from a file holds one column's Arrow data
        at a time beside the pool being built)."""
        attributes = tuple(json.loads((schema.metadata or {})[b"attributes"]))
        keys = column("key").to_numpy().astype(np.uint64, copy=False)
        row_ids = column("row_id").to_numpy().astype(np.int64, copy=False)
        items = _Texts.from_arrow(column("item"))
        columns = {name: _Texts.from_arrow(column(f"attribute:{name}")) for name in attributes}
        images = _Texts.from_arrow(column("image")) if "image" in schema.names else None
        return cls(attributes, keys, row_ids, items, columns, images)


class ItemPoolBuilder:
    """Collects distinct items batch by batch: the first row with a key wins; memory per distinct item."""

    def __init__(self, attributes: tuple[str, ...], image: bool) -> None:
        self.attributes = attributes
        self._seen = HashSet()
        self._keys: list[NDArray[np.uint64]] = []
        self._row_ids: list[NDArray[np.int64]] = []
        self._items = _Texts()
        self._columns = {a: _Texts() for a in attributes}
        self._images = _Texts() if image else None

    def add(self, keys: NDArray[np.uint64], row_ids: Sequence[int] | NDArray[np.int64], items: Sequence[str],
            attributes: dict[str, list[str | None]], images: Sequence[str | None] | None) -> None:
        """Offer one batch: ``keys[i]`` is the key of row ``i`` (see :class:`ItemPool`)."""
        fresh = np.flatnonzero(self._seen.add_new(keys))
        if not fresh.size:
            return
        picked = fresh.tolist()
        self._keys.append(keys[fresh])
        self._row_ids.append(np.asarray(row_ids, dtype=np.int64)[fresh])
        self._items.extend([items[i] for i in picked])
        for name, column in self._columns.items():
            values = attributes[name]
            column.extend([values[i] for i in picked])
        if self._images is not None:
            self._images.extend([images[i] for i in picked] if images is not None else [None] * len(picked))

    def merge(self, other: ItemPoolBuilder) -> None:
        """Add ``other``'s items (``other`` is used up), as if its batches had come after this one's:
        its winner of a key this builder has not seen is the row one pass over both would keep."""
        pool = other.build()
        items = list(pool)
        self.add(pool.keys, [p.row_id for p in items], [p.item for p in items],
                 {a: [p.attributes[a] for p in items] for a in self.attributes}, [p.image for p in items])

    def __len__(self) -> int:
        return sum(len(k) for k in self._keys)

    def build(self) -> ItemPool:
        keys = np.concatenate(self._keys) if self._keys else np.zeros(0, dtype=np.uint64)
        row_ids = np.concatenate(self._row_ids) if self._row_ids else np.zeros(0, dtype=np.int64)
        self._keys.clear()
        self._row_ids.clear()
        self._seen = HashSet()
        for texts in (self._items, *self._columns.values(), *([self._images] if self._images is not None else [])):
            texts.freeze()
        return ItemPool(self.attributes, keys, row_ids, self._items, self._columns, self._images)
