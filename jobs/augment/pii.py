"""PII redaction for shopping text: e-mail addresses, phone numbers, ID numbers and payment cards.

Product titles are full of long digit runs (model numbers, EAN/UPC barcodes, sizes), so each pattern
is deliberately narrow and numbers are checked before they are masked:

* card numbers: 13-19 digits (spaces or dashes allowed between groups), an issuer prefix (2-6) and a
  valid Luhn checksum, so a random barcode passes only by a 1-in-10 coincidence *and* a prefix match;
* Chinese resident ID numbers: 18 characters with a plausible birth date and the ISO 7064 MOD 11-2
  check character; US social security numbers only in their dashed ``AAA-GG-SSSS`` form with the
  number ranges the SSA never assigns excluded;
* phone numbers: Chinese mobiles (11 digits starting 13-19, optional +86), international numbers
  written with a leading ``+``, and North American numbers written with separators (area code and
  exchange starting 2-9, as the numbering plan requires); a bare
  10-digit run is a model number far more often than a phone number and is left alone.

Matches are replaced by ``[EMAIL]``, ``[PHONE]``, ``[ID]`` or ``[CARD]`` and counted by kind.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["PiiRedactor", "id_checksum_ok", "luhn_ok"]

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![\w-])")
_CARD = re.compile(r"(?<![0-9A-Za-z_-])(?:\d[ -]?){12,18}\d(?![0-9A-Za-z_-])")
_CN_ID = re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]"
                    r"(?![0-9A-Za-z])")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_CN_MOBILE = re.compile(r"(?<![0-9A-Za-z_+])(?:\+?86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?![0-9A-Za-z_])")
_INTL_PHONE = re.compile(r"(?<![0-9A-Za-z_+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![0-9A-Za-z_])")
_NANP_PHONE = re.compile(r"(?<![0-9A-Za-z_-])(?:\+?1[ .-])?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-])[2-9]\d{2}[ .-]\d{4}"
                         r"(?![0-9A-Za-z_-])")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) checksum every payment card number carries."""
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def id_checksum_ok(number: str) -> bool:
    """The ISO 7064 MOD 11-2 check character of an 18-character Chinese resident ID number."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(c) * w for c, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


def _card(match: re.Match[str]) -> bool:
    digits = re.sub(r"[ -]", "", match.group(0))
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits)


def _cn_id(match: re.Match[str]) -> bool:
    return id_checksum_ok(match.group(0))


def _always(match: re.Match[str]) -> bool:
    return True


# (kind, pattern, check, replacement): applied in this order, so an e-mail's digits are never a phone
# and a card number is never read as a phone number.
_RULES: tuple[tuple[str, re.Pattern[str], Callable[[re.Match[str]], bool], str], ...] = (
    ("email", _EMAIL, _always, "[EMAIL]"),
    ("card", _CARD, _card, "[CARD]"),
    ("id", _CN_ID, _cn_id, "[ID]"),
    ("id", _SSN, _always, "[ID]"),
    ("phone", _CN_MOBILE, _always, "[PHONE]"),
    ("phone", _INTL_PHONE, _always, "[PHONE]"),
    ("phone", _NANP_PHONE, _always, "[PHONE]"),
)
# Cheap pre-checks: most texts have neither '@' nor a run of 7 digits (with separators), so they skip
# every pattern.
_MAYBE_NUMBER = re.compile(r"\d[\d ().-]{5,}\d")


@dataclass
class PiiRedactor:
    """Masks PII in texts and counts what it masked, by kind (email, phone, id, card)."""

    counts: Counter[str] = field(default_factory=Counter)

    def redact(self, text: str) -> str:
        if "@" not in text and not _MAYBE_NUMBER.search(text):
            return text
        for kind, pattern, check, replacement in _RULES:
            if kind == "email" and "@" not in text:
                continue

            def substitute(match: re.Match[str], check: Callable[[re.Match[str]], bool] = check,
                           kind: str = kind, replacement: str = replacement) -> str:
                if not check(match):
                    return match.group(0)
                self.counts[kind] += 1
                return replacement

            text = pattern.sub(substitute, text)
        return text
