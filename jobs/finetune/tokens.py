"""Token ids in memory-mapped Arrow files: tokenised once, a chunk at a time, read back by row.

Tokenising still happens once, up front, with the fast tokenizer's batch call, so the data
loader only slices and pads integer arrays (``bench/bench_finetune.py`` checks it never starves
the step). What changed is where the ids go: each chunk of rows becomes an Arrow record batch of a
``list<int32>`` column (and ``list<int8>`` token types) written straight to disk, so tokenising
ten million rows holds one chunk of them. The length of every row is all that stays in memory
(for the length-bucketing samplers, 4 bytes a row).

The rows are cut into as many contiguous parts as the pod has training processes; each process
tokenises its own part (:class:`.team.Team`) and maps the others'. Files are named by what they
hold (tokenizer, maximum length, the texts' identity), so a restarted pod, or a rank that finds the
file already there, does not tokenise again.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from .examples import TextColumn
from .mapped import MappedFile, Scratch, release_heap, write_ipc
from .team import Team

__all__ = ["ENCODE_ROWS", "MappedTokens", "RaggedColumn", "encode", "tokenize_to_files"]

#: Rows per tokenizer call (and per record batch).
ENCODE_ROWS: Final = 4096
#: Random reads after which the mapped pages are handed back. A read maps more than its own page:
#: the kernel maps the cached pages around a fault too (``fault_around_bytes``, 64 KiB by default),
#: so each read of a row can add 64 KiB per column to the resident set until it is released.
RELEASE_EVERY: Final = 64


def encode(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None,
           max_length: int) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token ids (and token types, when the tokenizer makes them) of ``texts`` (or ``(texts, pairs)``
    for a cross-encoder), truncated to ``max_length``. For pairs, the longer side is cut first, so a
    long product description never pushes out the query."""
    encoded = tokenizer(list(texts), list(pairs) if pairs is not None else None,
                        truncation="longest_first" if pairs is not None else True, max_length=max_length,
                        padding=False)
    return encoded["input_ids"], encoded.get("token_type_ids")


def _schema(types: bool) -> pa.Schema:
    fields = [pa.field("input_ids", pa.list_(pa.int32()), False)]
    if types:
        fields.append(pa.field("token_type_ids", pa.list_(pa.int8()), False))
    return pa.schema(fields)


class RaggedColumn:
    """One ``list<int>`` column of mapped token files: row ``i`` as a numpy array (a view of the map)."""

    def __init__(self, tokens: MappedTokens, name: str) -> None:
        self.tokens, self.name = tokens, name

    def __len__(self) -> int:
        return len(self.tokens.lengths)

    def __getitem__(self, i: int) -> NDArray[Any]:
        return self.tokens.row(self.name, int(i))


class MappedTokens:
    """Token ids of rows, in mapped Arrow files; ``input_ids[i]``, ``token_type_ids[i]`` (None when
    the tokenizer makes none) and ``lengths`` as :class:`.batches.Tokenized` has them."""

    def __init__(self, files: Sequence[MappedFile], keep: Scratch | None = None) -> None:
        self.files = list(files)
        #: The directory of files made for this object alone, removed with it.
        self._keep = keep
        batches = [b for f in self.files for b in f.batches]
        self.has_types = "token_type_ids" in self.files[0].schema.names
        lengths = [np.diff(b.column("input_ids").offsets.to_numpy()).astype(np.int32) for b in batches]
        self.lengths: NDArray[np.int32] = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int32)
        #: First row of each record batch (a list: a data loader looks rows up one at a time).
        self._starts = list(itertools.accumulate((b.num_rows for b in batches), initial=0))
        self.input_ids = RaggedColumn(self, "input_ids")
        self.token_type_ids = RaggedColumn(self, "token_type_ids") if self.has_types else None
        self._views: dict[tuple[str, int], tuple[NDArray[np.int32], NDArray[Any]]] = {}
        self._pid = os.getpid()
        self._reads = 0
        self.release()

    def row(self, name: str, i: int) -> NDArray[Any]:
        if self._pid != os.getpid():  # a forked DataLoader worker: map the files in this process
            self._views, self._pid = {}, os.getpid()
        batch = bisect.bisect_right(self._starts, i) - 1
        view = self._views.get((name, batch))
        if view is None:
            column = [b for f in self.files for b in f.batches][batch].column(name)
            view = self._views[name, batch] = (column.offsets.to_numpy(), column.values.to_numpy())
        offsets, values = view
        j = i - self._starts[batch]
        self._reads += 1
        if self._reads == RELEASE_EVERY:
            self._reads = 0
            self.release()
        return values[offsets[j]:offsets[j + 1]]

    def release(self) -> None:
        for file in self.files:
            file.release()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_views"] = {}  # views of this process's maps; a worker maps the files again
        state["_keep"] = None  # the parent keeps (and removes) the directory
        return state


def _texts(texts: Sequence[str], start: int, stop: int) -> Iterator[list[str]]:
    if isinstance(texts, TextColumn):
        rows = np.arange(start, stop, dtype=np.int64) if texts.rows is None else texts.rows[start:stop]
        yield from TextColumn(texts.store, texts.name, rows).chunks(ENCODE_ROWS)
    else:
        for first in range(start, stop, ENCODE_ROWS):
            yield list(texts[first:min(stop, first + ENCODE_ROWS)])


def _identity(texts: Sequence[str] | None) -> bytes:
    """What a sequence of texts is, for the file name: the mapped files and rows of a column, or the texts."""
    digest = hashlib.sha256()
    if texts is None:
        return b"none"
    if isinstance(texts, TextColumn) and all(isinstance(p, MappedFile) for p in texts.store.parts):
        digest.update(texts.name.encode())
        for part in texts.store.parts:
            assert isinstance(part, MappedFile)
            digest.update(str(part.path).encode() + b"\0")
        digest.update(b"all" if texts.rows is None else np.ascontiguousarray(texts.rows).data)
    else:
        for chunk in _texts(texts, 0, len(texts)):
            for text in chunk:
                digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.digest()


def _tokenizer_identity(tokenizer: Any) -> bytes:
    """The tokenizer's vocabulary and pipeline; not the truncation and padding its last call left set,
    which differ between processes that have tokenised different things."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        document = json.loads(backend.to_str())
        document.pop("truncation", None)
        document.pop("padding", None)
        described = json.dumps(document, sort_keys=True)
    else:
        described = repr(sorted(tokenizer.get_vocab().items()))
    return f"{type(tokenizer).__name__}\0{getattr(tokenizer, 'name_or_path', '')}\0{described}".encode()


def tokenize_to_files(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int,
                      directory: Path | None = None, team: Team | None = None) -> MappedTokens:
    """Tokenise ``texts`` (with ``pairs``) into Arrow files under ``directory`` (a temporary one,
    removed with the result, when None), this process's part of them, and map them all."""
    team = team or Team()
    keep = None
    if directory is None:
        keep = Scratch("sampleforge-tokens-")
        directory, team = keep.path, Team()
    n = len(texts)
    digest = hashlib.sha256()
    for piece in (_tokenizer_identity(tokenizer), str(max_length).encode(), _identity(texts), _identity(pairs)):
        digest.update(hashlib.sha256(piece).digest())
    key = digest.hexdigest()[:32]
    count = team.size
    bounds = [n * k // count for k in range(count + 1)]
    files = [directory / f"tokens-{key}-{k}of{count}.arrow" for k in range(count)]
    probe = tokenizer(texts[0] if n else "a", pairs[0] if pairs is not None and n else None)
    schema = _schema("token_type_ids" in probe)

    def build(part: int, path: Path) -> None:
        def batches() -> Iterator[pa.RecordBatch]:
            start, stop = bounds[part], bounds[part + 1]
            others = _texts(pairs, start, stop) if pairs is not None else None
            for chunk in _texts(texts, start, stop):
                ids, types = encode(tokenizer, chunk, next(others) if others is not None else None, max_length)
                arrays = [pa.array(ids, pa.list_(pa.int32()))]
                if schema.get_field_index("token_type_ids") >= 0:
                    arrays.append(pa.array(types, pa.list_(pa.int8())))
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)

        write_ipc(path, schema, batches())

    team.make(files, build)
    release_heap()
    return MappedTokens([MappedFile(p) for p in files], keep)
