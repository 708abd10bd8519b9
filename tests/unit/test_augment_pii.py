"""PII redaction: what is masked, what product text must survive, and the checksums that decide."""

from __future__ import annotations

import pytest

from sampleforge.jobs.augment.pii import PiiRedactor, id_checksum_ok, luhn_ok


@pytest.mark.parametrize("number", ["4111111111111111", "5500005555555559", "378282246310005", "6011111111111117",
                                    "79927398713"])
def test_luhn_accepts_valid_numbers(number: str) -> None:
    assert luhn_ok(number)


@pytest.mark.parametrize("number", ["4111111111111112", "1234567812345678", "79927398710", "", "12a4"])
def test_luhn_rejects_invalid_numbers(number: str) -> None:
    assert not luhn_ok(number)


def test_chinese_id_checksum() -> None:
    assert id_checksum_ok("11010519491231002X")
    assert id_checksum_ok("11010519491231002x")
    assert not id_checksum_ok("110105194912310021")
    assert not id_checksum_ok("11010519491231002")


@pytest.mark.parametrize(("text", "expected", "kind"), [
    ("write to jane.doe+shop@example.co.uk today", "write to [EMAIL] today", "email"),
    ("card 4111 1111 1111 1111 exp 12/29", "card [CARD] exp 12/29", "card"),
    ("card 4111-1111-1111-1111", "card [CARD]", "card"),
    ("卡号6222021234567890128", "卡号[CARD]", "card"),
    ("身份证11010519491231002X号", "身份证[ID]号", "id"),
    ("ssn 123-45-6789 on file", "ssn [ID] on file", "id"),
    ("联系电话13912345678谢谢", "联系电话[PHONE]谢谢", "phone"),
    ("call +86 138-1234-5678", "call [PHONE]", "phone"),
    ("call +44 20 7946 0958 now", "call [PHONE] now", "phone"),
    ("store (305) 555-0100", "store [PHONE]", "phone"),
    ("call 1-800-555-0199", "call [PHONE]", "phone"),
])
def test_pii_is_masked_and_counted(text: str, expected: str, kind: str) -> None:
    redactor = PiiRedactor()
    assert redactor.redact(text) == expected
    assert redactor.counts == {kind: 1}


@pytest.mark.parametrize("text", [
    "sony wh-1000xm4 wireless headphones",
    "elite screens r85wh1-wide 85 diagonal",
    "barcode 4006381333931 pack",           # EAN-13 that fails Luhn
    "upc 012345678905",
    "size 120-240-1000 cable",              # not a North American number plan
    "iphone 13 128gb 6.1 inch",
    "price 409.0 usd",
    "order 2024-05-17 delivered",
    "1234567812345678 serial",              # 16 digits, no valid Luhn
    "ssn 000-12-3456",                      # never assigned
    "英雄大作战v0.65无敌版",
])
def test_product_text_is_left_alone(text: str) -> None:
    redactor = PiiRedactor()
    assert redactor.redact(text) == text
    assert not redactor.counts


def test_counts_accumulate_over_texts() -> None:
    redactor = PiiRedactor()
    for text in ("a@b.io x", "c@d.io", "13812345678"):
        redactor.redact(text)
    assert redactor.counts == {"email": 2, "phone": 1}
