"""Which data format a file holds, decided once for both jobs.

The augmentation job and the fine-tune job read the same files (one's output is the other's
input), so they must agree on what ``train.JSONL`` or ``part-0.Parquet`` is; a second detector
that compared suffixes case-sensitively once made the fine-tune job skip files the augmentation
job had read.
"""

from __future__ import annotations

from typing import Final

__all__ = ["FORMATS", "SUFFIX_FORMATS", "format_of"]

#: File name endings understood (compared case-insensitively), and the format each means.
SUFFIX_FORMATS: Final = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
                         ".parquet": "parquet"}
#: The formats there are readers for.
FORMATS: Final = ("jsonl", "csv", "parquet")


def format_of(key: str, declared: str | None) -> str | None:
    """The declared format, else the one the name's suffix means, else None (not a data file)."""
    if declared:
        return declared
    lowered = key.lower()
    for suffix, fmt in SUFFIX_FORMATS.items():
        if lowered.endswith(suffix):
            return fmt
    return None
