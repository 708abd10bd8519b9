"""The one parser of JSON lines and CSV that both jobs read with: strict UTF-8, lines that end at
``\\n`` only, and a fixed reason per kind of bad record."""

from __future__ import annotations

import io
import json

import pytest

from sampleforge.jobs.common.records import (
    INVALID_JSON,
    INVALID_UTF8,
    MALFORMED_CSV,
    NOT_AN_OBJECT,
    BadRecord,
    CsvHeaderError,
    csv_blocks,
    jsonl_records,
    reason_class,
)


def parse_jsonl(data: bytes, chunk: int = 1 << 20) -> tuple[list[dict[str, object]], list[BadRecord]]:
    good, bad = [], []
    for record in jsonl_records(io.BytesIO(data), chunk):
        (bad if isinstance(record, BadRecord) else good).append(record)
    return good, bad  # type: ignore[return-value]


def parse_csv(data: bytes, columns: list[str] | None = None,
              block_size: int = 1 << 20) -> tuple[list[str], dict[str, list[str | None]], list[BadRecord]]:
    header, blocks = csv_blocks(io.BufferedReader(io.BytesIO(data)), columns, block_size)  # type: ignore[arg-type]
    values: dict[str, list[str | None]] = {}
    bad: list[BadRecord] = []
    for block in blocks:
        bad += block.bad
        for name, column in block.columns.items():
            values.setdefault(name, []).extend(column)
    return header, values, bad


class TestJsonLines:
    def test_unicode_line_breaks_inside_strings_do_not_split_a_row(self) -> None:
        text = "a\u2028b\u2029c\x85d\x0ce\x1cf\r\ng"
        data = json.dumps({"q": text}, ensure_ascii=False).encode() + b"\r\n" + b'{"q": "next"}'
        good, bad = parse_jsonl(data)
        assert bad == [] and good == [{"q": text}, {"q": "next"}]

    @pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1 << 20])
    def test_multibyte_characters_split_across_reads_are_whole(self, chunk: int) -> None:
        rows = [{"q": "红色连衣裙 👗", "i": n} for n in range(5)]
        data = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode()
        assert parse_jsonl(data, chunk) == (rows, [])

    def test_bytes_that_are_not_utf8_reject_their_line_only(self) -> None:
        data = b'{"q": "ok"}\n{"q": "caf\xe9"}\n{"q": "\xff\xfe"}\n{"q": "fine"}\n'
        good, bad = parse_jsonl(data)
        assert good == [{"q": "ok"}, {"q": "fine"}]
        assert [(b.reason, b.where) for b in bad] == [(INVALID_UTF8, "line 2"), (INVALID_UTF8, "line 3")]
        assert "\\xe9" in bad[0].text and "\ufffd" not in bad[0].text

    def test_utf16_is_not_guessed(self) -> None:
        # json.loads(bytes) would sniff UTF-16 and accept it; a job reading UTF-8 must not.
        good, bad = parse_jsonl('{"q": "x"}\n'.encode("utf-16-le") + '{"q": "é"}'.encode("utf-16-le"))
        assert good == [] and len(bad) == 2

    def test_an_escaped_lone_surrogate_is_not_text(self) -> None:
        good, bad = parse_jsonl(b'{"q": "\\ud83d"}\n{"q": "\\ud83d\\udc57"}\n')
        assert good == [{"q": "\U0001f457"}]
        assert [(b.reason, b.where) for b in bad] == [(INVALID_UTF8, "line 1")]

    def test_reasons_are_classes_and_messages_say_where(self) -> None:
        good, bad = parse_jsonl(b'\xef\xbb\xbf{"q": 1}\n\n  \n{oops\n[1]\n"text"\n')
        assert good == [{"q": 1}], "a byte order mark is not part of the first row"
        assert [b.reason for b in bad] == [INVALID_JSON, NOT_AN_OBJECT, NOT_AN_OBJECT]
        assert bad[0].message.startswith("invalid JSON (line 4): ")
        assert bad[1].message == "not a JSON object (line 5)"
        assert {reason_class(b.message) for b in bad} == {INVALID_JSON, NOT_AN_OBJECT}
        assert reason_class("empty query (q)") == "empty query (q)"


class TestCsv:
    def test_a_row_in_another_encoding_is_set_aside_and_the_file_read(self) -> None:
        data = b"q,title\nred,shoe\n" + b"caf\xe9,cr\xe8me\n" + b"\"two\nlines\",bag\n"
        header, values, bad = parse_csv(data)
        assert header == ["q", "title"]
        assert values == {"q": ["red", "two\nlines"], "title": ["shoe", "bag"]}
        assert [(b.reason, b.where, b.detail) for b in bad] == [(INVALID_UTF8, "row 2", "column 'q'")]
        assert bad[0].text == "caf\\xe9,cr\\xe8me"

    def test_rows_across_blocks_and_malformed_rows(self) -> None:
        lines = [f"q{i},t{i}" for i in range(200)]
        lines[50] = "x,y,z"
        data = ("q,title\n" + "\n".join(lines) + "\n").encode()
        _, values, bad = parse_csv(data, block_size=256)
        assert len(values["q"]) == 199 and values["q"][:2] == ["q0", "q1"]
        assert [(b.reason, b.where) for b in bad] == [(MALFORMED_CSV, "line 52")]

    def test_selected_columns_and_a_missing_one(self) -> None:
        _, values, bad = parse_csv("\ufeffq,title,price\na,b,1\n".encode(), columns=["q", "brand"])
        assert values == {"q": ["a"], "brand": [None]} and bad == []

    def test_a_header_in_another_encoding_fails_the_file(self) -> None:
        with pytest.raises(CsvHeaderError, match="not valid UTF-8"):
            parse_csv(b"q,caf\xe9\na,b\n")

    def test_an_empty_file_has_no_header(self) -> None:
        assert parse_csv(b"") == ([], {}, [])
