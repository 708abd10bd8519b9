"""QWERTY key neighbours, derived from the physical key positions rather than typed in by hand.

A typo augmenter is only realistic if it substitutes keys a finger can actually slip onto. Deriving
the neighbour sets from the row stagger of a standard ANSI keyboard (each row shifted right of the
one above) makes the table checkable: two keys are neighbours when they touch, i.e. they are in the
same row one key apart, or in adjacent rows less than one key width apart horizontally.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["KEY_POSITIONS", "QWERTY_ROWS", "keyboard_neighbours", "letter_neighbour_table"]

# Rows of a US QWERTY keyboard and the horizontal offset of each row, in key widths.
QWERTY_ROWS: tuple[tuple[str, float], ...] = (
    ("1234567890-=", 0.0),
    ("qwertyuiop[]", 0.5),
    ("asdfghjkl;'", 0.75),
    ("zxcvbnm,./", 1.25),
)

KEY_POSITIONS: Mapping[str, tuple[int, float]] = MappingProxyType(
    {key: (row, offset + col) for row, (keys, offset) in enumerate(QWERTY_ROWS) for col, key in enumerate(keys)}
)


def keyboard_neighbours(key: str) -> frozenset[str]:
    """Keys that touch ``key`` (lower-case / unshifted) on a QWERTY keyboard."""
    if key not in KEY_POSITIONS:
        return frozenset()
    row, x = KEY_POSITIONS[key]
    out = set()
    for other, (other_row, other_x) in KEY_POSITIONS.items():
        if other == key:
            continue
        if other_row == row and abs(other_x - x) <= 1.0 or abs(other_row - row) == 1 and abs(other_x - x) < 1.0:
            out.add(other)
    return frozenset(out)


def letter_neighbour_table(*, letters_only: bool = True) -> dict[str, str]:
    """Character -> string of replacement characters, for both cases, precomputed once.

    An upper-case letter gets upper-case neighbours (a shifted finger stays shifted). With
    ``letters_only`` a letter only slips onto letters: a digit or ';' inside a word would change a
    query's meaning (sizes, model numbers) more than a realistic typo does.
    """
    table: dict[str, str] = {}
    for key in KEY_POSITIONS:
        if not key.isalpha():
            continue
        near = sorted(keyboard_neighbours(key))
        if letters_only:
            near = [k for k in near if k.isalpha()]
        table[key] = "".join(near)
        table[key.upper()] = "".join(k.upper() for k in near)
    return table
