"""Parsing the text formats (JSON lines and CSV) into records, for both jobs.

Both jobs read the same files, so what counts as a row, and why a row is set aside, is decided
here once:

* **Strict UTF-8.** A record whose bytes are not valid UTF-8 is set aside as ``invalid UTF-8``
  with its line (JSONL) or row (CSV) and the offending bytes shown as ``\\x..`` escapes. It is
  never decoded with replacement characters: a model trained on ``U+FFFD`` learns noise, and the
  user never hears that the file was in another encoding. A JSON string escape that decodes to a
  lone surrogate (``"\\ud800"``) is not Unicode text either and is set aside the same way.
* **Lines end at ``\\n`` only.** JSON allows U+2028, U+2029, U+0085, form feeds and other
  characters that :meth:`str.splitlines` treats as line breaks inside strings; a row holding one
  must stay one row. A ``\\r`` before the ``\\n`` is JSON whitespace and needs no special case.
* **Per-reason counts.** :attr:`BadRecord.reason` is one of a few fixed classes
  (:data:`REASONS`), so counts group; where it happened and the parser's words are in
  :attr:`BadRecord.where` and :attr:`BadRecord.detail`.

Everything reads from a binary stream in bounded chunks, so the augmentation job can stream a
multi-gigabyte object and the fine-tune job can hand over the bytes it has verified.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Final

import pyarrow as pa
import pyarrow.csv as pacsv

__all__ = [
    "INVALID_JSON",
    "INVALID_UTF8",
    "MALFORMED_CSV",
    "NOT_AN_OBJECT",
    "READ_CHUNK",
    "REASONS",
    "BadRecord",
    "CsvBlock",
    "CsvHeaderError",
    "csv_blocks",
    "jsonl_records",
    "jsonl_records_at",
    "lines",
    "reason_class",
]

READ_CHUNK: Final = 1 << 20
#: How much of a bad record is kept for the rejects file.
MAX_RECORD_TEXT: Final = 2000
_HEADER_PEEK: Final = 1 << 16
_BOM: Final = codecs.BOM_UTF8

INVALID_UTF8: Final = "invalid UTF-8"
INVALID_JSON: Final = "invalid JSON"
NOT_AN_OBJECT: Final = "not a JSON object"
MALFORMED_CSV: Final = "malformed CSV row"
#: Every reason a record can be set aside for here.
REASONS: Final = (INVALID_UTF8, INVALID_JSON, NOT_AN_OBJECT, MALFORMED_CSV)


@dataclass(frozen=True)
class BadRecord:
    """A record that is not a row, and why."""

    #: One of :data:`REASONS`; what counts are grouped by.
    reason: str
    #: ``line N`` (JSONL, CSV rows the CSV parser refused) or ``row N`` (the N-th CSV record).
    where: str
    #: The parser's explanation, or "".
    detail: str
    #: The record's text, clipped; bytes that are not UTF-8 appear as ``\\x..`` escapes.
    text: str

    @property
    def message(self) -> str:
        """``invalid JSON (line 7): Expecting value``: the reason with where and why."""
        return f"{self.reason} ({self.where})" + (f": {self.detail}" if self.detail else "")


def reason_class(message: str) -> str:
    """The reason of a :attr:`BadRecord.message`-shaped text (other texts are returned as they are)."""
    for reason in REASONS:
        if message.startswith(reason + " (") or message == reason:
            return reason
    return message


def _shown(data: bytes | str) -> str:
    text = data.decode("utf-8", "backslashreplace") if isinstance(data, bytes) else data
    return text[:MAX_RECORD_TEXT]


def lines(stream: IO[bytes], chunk: int = READ_CHUNK) -> Iterator[bytes]:
    """Lines of a byte stream without their ``\\n``, read ``chunk`` bytes at a time; ``\\n`` is the
    only line end (see the module docstring)."""
    rest = b""
    while True:
        data = stream.read(chunk)
        if not data:
            break
        data = rest + data
        parts = data.split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def jsonl_records(stream: IO[bytes], chunk: int = READ_CHUNK) -> Iterator[dict[str, Any] | BadRecord]:
    """Every non-blank line of a JSON-lines stream as a dict, or as a :class:`BadRecord`."""
    for number, line in enumerate(lines(stream, chunk), start=1):
        record = _jsonl_record(line, number)
        if record is not None:
            yield record


def jsonl_records_at(stream: IO[bytes], chunk: int = READ_CHUNK, *, offset: int = 0,
                     line: int = 1) -> Iterator[tuple[dict[str, Any] | BadRecord, int, int]]:
    """:func:`jsonl_records` of a stream that starts at byte ``offset`` of its file, on line number
    ``line`` (a line start), each record with the file offset just past its line and the number of
    the line after it: where a reader can later start again without missing anything that follows.

    Line numbers go on from ``line`` so that a :class:`BadRecord` found by a reader that entered the
    file in the middle says the same as one found by a reader that parsed it from its first byte.
    """
    end = offset
    for number, (text, ended) in enumerate(_ended_lines(stream, chunk), start=line):
        end += len(text) + ended
        record = _jsonl_record(text, number)
        if record is not None:
            yield record, end, number + 1


def _ended_lines(stream: IO[bytes], chunk: int) -> Iterator[tuple[bytes, bool]]:
    """:func:`lines`, each with whether a ``\\n`` ended it (the last line of a file may lack one)."""
    rest = b""
    while True:
        data = stream.read(chunk)
        if not data:
            break
        parts = (rest + data).split(b"\n")
        rest = parts.pop()
        for part in parts:
            yield part, True
    if rest:
        yield rest, False


def _jsonl_record(line: bytes, number: int) -> dict[str, Any] | BadRecord | None:
    """Line ``number`` (1-based) as a record, a :class:`BadRecord`, or None for a blank line."""
    if number == 1:
        line = line.removeprefix(_BOM)
    if not line.strip():
        return None
    where = f"line {number}"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadRecord(INVALID_UTF8, where, f"byte {err.start} ({line[err.start:err.start + 1]!r})", _shown(line))
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return BadRecord(INVALID_JSON, where, err.msg, _shown(text))
    if not isinstance(record, dict):
        return BadRecord(NOT_AN_OBJECT, where, "", _shown(text))
    if ("\\u" in text or "\\U" in text) and _has_lone_surrogate(record):
        return BadRecord(INVALID_UTF8, where, "a \\u escape decodes to a lone surrogate", _shown(text))
    return record


# --- CSV --------------------------------------------------------------------------------------------


class CsvHeaderError(ValueError):
    """The CSV header itself cannot be read; no row of the file can be, so the caller fails the file."""


@dataclass
class CsvBlock:
    """Consecutive CSV records: each column as text (None for a column the file lacks), and the
    records set aside since the previous block."""

    columns: dict[str, list[str | None]]
    rows: int
    bad: list[BadRecord] = field(default_factory=list)


def _header(stream: io.BufferedReader[Any]) -> list[str]:
    """Column names from the first record. Peeks, so the stream still starts at the header."""
    head = stream.peek(_HEADER_PEEK)[:_HEADER_PEEK]
    if not head:
        return []
    start = len(_BOM) if head.startswith(_BOM) else 0
    end = start
    # The header ends at the first newline outside quotes (a quoted name may hold a newline).
    while True:
        found = head.find(b"\n", end)
        if found < 0:
            end = len(head)
            break
        end = found + 1
        if head[start:end].count(b'"') % 2 == 0:
            break
    try:
        text = head[start:end].decode("utf-8")
    except UnicodeDecodeError as err:
        raise CsvHeaderError(f"the CSV header is not valid UTF-8 (byte {start + err.start}); save the file as "
                             "UTF-8") from err
    return next(csv.reader(io.StringIO(text)), [])


def _decoded(column: pa.Array | pa.ChunkedArray) -> tuple[list[str | None], list[int]]:
    """The column's values as text, and the rows whose bytes are not UTF-8 (their value is None)."""
    try:
        return column.cast(pa.string()).to_pylist(), []
    except pa.ArrowInvalid:
        pass
    values: list[str | None] = []
    bad: list[int] = []
    for i, raw in enumerate(column.to_pylist()):
        if raw is None:
            values.append(None)
            continue
        try:
            values.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            values.append(None)
            bad.append(i)
    return values, bad


def csv_blocks(stream: io.BufferedReader[Any], columns: Sequence[str] | None = None,
               block_size: int = READ_CHUNK) -> tuple[list[str], Iterator[CsvBlock]]:
    """The header's names, and the records as :class:`CsvBlock` s.

    ``columns`` limits what is parsed (absent ones come back as None); every column of the file
    when None. Values are read as bytes and decoded here, strictly, so that one record in another
    encoding is set aside on its own instead of failing the file (pyarrow's own UTF-8 check is per
    column chunk). Quoted values may hold newlines. Raises :class:`CsvHeaderError` for a header
    that is not UTF-8, and pyarrow's errors for a file it cannot parse at all.
    """
    header = _header(stream)
    if not header:
        return header, iter(())
    pending: list[BadRecord] = []

    def invalid(row: Any) -> str:
        pending.append(BadRecord(MALFORMED_CSV, f"line {row.number}",
                                 f"expected {row.expected_columns} fields, got {row.actual_columns}",
                                 _shown(row.text or "")))
        return "skip"

    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(block_size=block_size, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.binary()),
            include_columns=list(columns) if columns is not None else None,
            include_missing_columns=columns is not None, strings_can_be_null=False,
            quoted_strings_can_be_null=False),
    )

    def blocks() -> Iterator[CsvBlock]:
        record = 0
        for batch in reader:
            names = batch.schema.names
            decoded: dict[str, list[str | None]] = {}
            bad_rows: dict[int, str] = {}
            for name in names:
                values, bad = _decoded(batch.column(name))
                decoded[name] = values
                for i in bad:
                    bad_rows.setdefault(i, name)
            bad_records = pending[:]
            pending.clear()
            if bad_rows:
                raw = {name: batch.column(name).to_pylist() for name in names}
                for i, name in sorted(bad_rows.items()):
                    text = ",".join(_shown(v) if v is not None else "" for v in (raw[n][i] for n in names))
                    bad_records.append(BadRecord(INVALID_UTF8, f"row {record + i + 1}", f"column {name!r}",
                                                 _shown(text)))
                keep = [i for i in range(batch.num_rows) if i not in bad_rows]
                decoded = {name: [values[i] for i in keep] for name, values in decoded.items()}
            record += batch.num_rows
            yield CsvBlock(decoded, batch.num_rows - len(bad_rows), bad_records)
        if pending:
            yield CsvBlock({name: [] for name in (columns if columns is not None else header)}, 0, pending[:])
            pending.clear()

    return header, blocks()
