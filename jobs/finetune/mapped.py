"""Arrow IPC files on local disk, read through a memory map whose resident pages can be handed back.

The fine-tune job keeps its rows and token ids in such files (:mod:`.examples`, :mod:`.tokens`)
so that what a rank holds does not grow with the dataset. Two details make that true:

* The file is mapped with :mod:`mmap` and read by Arrow without copying (``pa.py_buffer``), so
  reading a column costs no heap memory, only the pages touched.
* Pages touched in a mapping count in the process's resident set (``RssFile``) until it unmaps
  them, so a pass over every row would still grow the peak with the file. :meth:`MappedFile.release`
  drops them with ``madvise(MADV_DONTNEED)``: the data stays in the kernel's page cache (and on
  disk), the next access maps it again. Readers release after each chunk of a pass and every few
  thousand random reads.

Files are written under a temporary name and renamed into place, so a file that exists is whole:
its existence is the "done" mark another process (or a restarted pod) relies on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

__all__ = ["InMemory", "MappedFile", "Part", "Scratch", "release_heap", "write_ipc"]


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None under another C library."""
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return getattr(library, "malloc_trim", None)


_TRIM = _malloc_trim()


def release_heap() -> None:
    """Give freed heap memory back to the system after a phase that allocated and freed a lot
    (reading files, ranking texts, tokenising): Arrow's allocator and glibc's keep freed pages for
    reuse, and each keeps its own, so without this the next phase's peak stacks on the last one's."""
    pa.default_memory_pool().release_unused()
    if _TRIM is not None:
        _TRIM(0)


class Scratch:
    """A temporary directory for files made for one object alone (no data directory was given),
    removed when the last object holding it is gone."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        weakref.finalize(self, shutil.rmtree, self.path, True)


class MappedFile:
    """The record batches of one Arrow IPC file, memory-mapped (opened lazily, and again in a
    DataLoader worker that received this object pickled)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._map: mmap.mmap | None = None
        self._batches: list[pa.RecordBatch] | None = None
        self._pid = -1

    def _open(self) -> list[pa.RecordBatch]:
        if self._batches is None or self._pid != os.getpid():
            with open(self.path, "rb") as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            reader = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(self._map)))
            self._batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            self._schema = reader.schema
            self._pid = os.getpid()
        return self._batches

    @property
    def batches(self) -> list[pa.RecordBatch]:
        """Zero-copy views of the file's record batches."""
        return self._open()

    @property
    def schema(self) -> pa.Schema:
        self._open()
        return self._schema

    def release(self) -> None:
        """Hand back the pages read so far (they stay valid: the next read maps them again)."""
        if self._map is not None and self._pid == os.getpid():
            self._map.madvise(mmap.MADV_DONTNEED)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


class InMemory:
    """Record batches already in memory (rows given as lists, small evaluation sets, tests)."""

    def __init__(self, batches: list[pa.RecordBatch], schema: pa.Schema) -> None:
        self.batches = batches
        self.schema = schema

    def release(self) -> None:
        """Nothing is mapped."""


#: Where rows or token ids live: a mapped file, or batches in memory.
Part = MappedFile | InMemory


def write_ipc(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
    """Write ``batches`` to ``path`` as an Arrow IPC file, atomically; the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    rows = 0
    try:
        with pa.OSFile(str(staging), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for batch in batches:
                if batch.num_rows:
                    writer.write_batch(batch)
                    rows += batch.num_rows
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return rows
