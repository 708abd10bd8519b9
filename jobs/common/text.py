"""Text as compared across rows, for duplicates, leakage and evaluation groups.

Both jobs must call two queries "the same" by one rule: the augmentation job's leakage guard
decides which rows may be trained on, and the fine-tune job's split decides which rows are
evaluated; if one compared raw strings and the other normalised ones, ``"Red Shoes"`` could be
held out by one and trained on by the other.
"""

from __future__ import annotations

import unicodedata

__all__ = ["norm_key"]


def norm_key(text: str) -> str:
    """Text as compared for duplicates: NFKC, case-folded, single-spaced."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.casefold().split())
