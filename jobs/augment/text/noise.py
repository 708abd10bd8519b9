"""Shopper noise: the misspellings real search queries contain, so a ranker learns to tolerate them.

``typo`` slips a key onto a QWERTY neighbour. ``charNoise`` does what fast typing does at the
character level: adjacent characters swapped, a character dropped or doubled, the space between two
words missed, and (in Chinese text, where input methods produce them) full-width instead of
half-width letters and digits. For Chinese words the character edits act on Han characters (a
doubled or swapped character is a common input-method slip); keyboard typos do not apply to them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from operator import itemgetter
from typing import Any

from sampleforge.jobs.augment.text.base import BlindEditParams, TextAugmenter, eligible_words, sample_indices
from sampleforge.jobs.augment.text.keyboard import letter_neighbour_table
from sampleforge.jobs.augment.text.rng import RowRandom
from sampleforge.jobs.augment.text.tokens import Doc, is_han_char, render

__all__ = [
    "CHAR_NOISE_ACTIONS",
    "CharNoise",
    "CharNoiseParams",
    "KeyboardTypo",
    "TypoParams",
    "to_full_width",
    "to_half_width",
]

CHAR_NOISE_ACTIONS = ("swap", "drop", "duplicate", "space", "width")

# ASCII '!'..'~' <-> full-width U+FF01..U+FF5E; only letters and digits are switched, since a
# full-width hyphen or dot inside a model number is what an input method rarely produces.
_FULL = {c: chr(ord(c) + 0xFEE0) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"}
_TO_FULL = str.maketrans(_FULL)
_TO_HALF = str.maketrans({v: k for k, v in _FULL.items()})
_NO_WORDS: frozenset[int] = frozenset()


def to_full_width(text: str) -> str:
    """ASCII letters and digits as their full-width forms ("iPhone13" -> "ｉＰｈｏｎｅ１３")."""
    return text.translate(_TO_FULL)


def to_half_width(text: str) -> str:
    """Full-width letters and digits back to ASCII."""
    return text.translate(_TO_HALF)


@dataclass(frozen=True)
class _CharParams(BlindEditParams):
    """Word choice as in :class:`BlindEditParams`, plus how many characters of a chosen word change.

    A chosen word gets ``max(1, int(char_alpha * len(word)))`` character edits, at most
    ``max_chars_per_word``; words shorter than ``min_word_len`` are left alone (for Latin words;
    Chinese words are usually 2 characters and are always eligible).
    """

    char_alpha: float = 0.0
    max_chars_per_word: int = 1
    min_word_len: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.char_alpha <= 1.0:
            raise ValueError(f"char_alpha must be in [0, 1], got {self.char_alpha!r}")
        for name in ("max_chars_per_word", "min_word_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def chars_for(self, length: int) -> int:
        return min(self.max_chars_per_word, max(1, int(self.char_alpha * length)))


@dataclass(frozen=True)
class TypoParams(_CharParams):
    """Parameters of ``typo``; ``letters_only`` keeps letters from slipping onto digits or symbols."""

    letters_only: bool = True


@dataclass(frozen=True)
class CharNoiseParams(_CharParams):
    """Parameters of ``charNoise``; ``actions`` is the subset of :data:`CHAR_NOISE_ACTIONS` to draw from."""

    actions: tuple[str, ...] = CHAR_NOISE_ACTIONS

    def __post_init__(self) -> None:
        super().__post_init__()
        actions = tuple(self.actions)
        object.__setattr__(self, "actions", actions)
        unknown = [a for a in actions if a not in CHAR_NOISE_ACTIONS]
        if unknown or not actions or len(set(actions)) != len(actions):
            raise ValueError(f"actions must be distinct values from {list(CHAR_NOISE_ACTIONS)}, got {list(actions)}")


class KeyboardTypo(TextAugmenter[TypoParams]):
    """``typo``: in some words, replace characters with a QWERTY neighbour of the same case.

    State per text: ``(doc, editable word token indices, k)``. Which characters to change is worked
    out only for the ``k`` words a variant picks, since most words of a title are never picked.
    """

    name = "typo"

    def __init__(self, params: TypoParams = TypoParams()) -> None:
        super().__init__(params)
        self._hint_chars = params.chars_for(8)
        self._table = letter_neighbour_table(letters_only=params.letters_only)
        self._keys = frozenset(self._table)

    def _prepare(self, doc: Doc, protected: frozenset[str]) -> tuple[Any, int] | None:
        p = self.params
        tokens = doc.tokens
        min_len = p.min_word_len
        no_key = self._keys.isdisjoint
        targets = [
            i
            for i in eligible_words(doc, protected, p.protect_numbers)
            if len(tokens[i]) >= min_len and ((tokens[i].isalpha() and tokens[i].isascii()) or not no_key(tokens[i]))
        ]
        if not targets:
            return None
        k = self._edits(len(targets))
        return (doc, targets, k), k * (1 + 2 * self._hint_chars)

    def _variant(self, state: Any, rnd: RowRandom) -> str:
        doc: Doc
        targets: list[int]
        k: int
        doc, targets, k = state
        table = self._table
        char_alpha, max_chars = self.params.char_alpha, self.params.max_chars_per_word
        below = rnd.below
        tokens = doc.tokens.copy()
        for t in sample_indices(rnd, len(targets), k):
            i = targets[t]
            word = tokens[i]
            positions: Sequence[int]
            if word.isascii() and word.isalpha():
                positions = range(len(word))
            else:
                positions = [pos for pos, ch in enumerate(word) if ch in table]
            c = min(max_chars, max(1, int(char_alpha * len(positions))))
            if c == 1:
                pos = positions[below(len(positions))]
                near = table[word[pos]]
                tokens[i] = word[:pos] + near[below(len(near))] + word[pos + 1 :]
                continue
            chars = list(word)
            for j in sample_indices(rnd, len(positions), c):
                pos = positions[j]
                near = table[chars[pos]]
                chars[pos] = near[below(len(near))]
            tokens[i] = "".join(chars)
        return doc.render(tokens)


_DOUBLED = re.compile(r"(.)\1", re.DOTALL).search


def _swappable(word: str) -> Sequence[int]:
    """Positions p where swapping characters p and p+1 changes the word.

    Most words have no doubled letter, and then that is every position: one C-level regex search
    decides it instead of a comparison per character.
    """
    if _DOUBLED(word) is None:
        return range(len(word) - 1)
    return [p for p in range(len(word) - 1) if word[p] != word[p + 1]]


class CharNoise(TextAugmenter[CharNoiseParams]):
    """``charNoise``: per chosen word, one action drawn from those that can change it.

    State per text: ``(doc, editable word token indices, k, eligible indices for "space")``.
    """

    name = "charNoise"

    def __init__(self, params: CharNoiseParams = CharNoiseParams()) -> None:
        super().__init__(params)
        self._hint_chars = params.chars_for(8)
        acts = params.actions
        self._swap, self._drop, self._dup = "swap" in acts, "drop" in acts, "duplicate" in acts
        self._space, self._width = "space" in acts, "width" in acts
        self._swap_only = acts == ("swap",)
        # with one action enabled, every target (see _changeable) takes it: no per-word action list
        self._only_action = acts[0] if len(acts) == 1 else None

    def _actions_for(self, doc: Doc, i: int, eligible: frozenset[int]) -> list[str]:
        """The enabled actions that change token ``i``, in a fixed order."""
        tok = doc.tokens[i]
        out: list[str] = []
        # a word whose characters are all equal ("zzz") cannot be changed by a swap
        if self._swap and tok.count(tok[0]) != len(tok):
            out.append("swap")
        if self._drop and len(tok) >= 2:
            out.append("drop")
        if self._dup:
            out.append("duplicate")
        if self._space and i + 1 in eligible and doc.gaps[i + 1]:
            out.append("space")
        if (
            self._width
            and doc.has_han
            and not is_han_char(tok[0])
            and (to_full_width(tok) != tok or to_half_width(tok) != tok)
        ):
            out.append("width")
        return out

    def _changeable(self, doc: Doc, targets: list[int], eligible: frozenset[int]) -> list[int]:
        """The targets that some enabled action changes (what ``_actions_for`` would find non-empty).

        Asking ``_actions_for`` word by word is the general answer; the common settings are decided
        without it: "duplicate" changes every word, "drop" every word of 2+ characters (all Latin
        targets when ``min_word_len >= 2``), and "swap" alone every word whose characters are not all
        equal, which C-level ``map`` checks for the whole list.
        """
        if self._dup or (self._drop and self.params.min_word_len >= 2 and not doc.has_han):
            return targets
        if self._swap_only:
            words = list(map(doc.tokens.__getitem__, targets))
            uniform = map(int.__eq__, map(str.count, words, map(itemgetter(0), words)), map(len, words))
            return list(compress(targets, map(True.__xor__, uniform)))
        return [i for i in targets if self._actions_for(doc, i, eligible)]

    def _prepare(self, doc: Doc, protected: frozenset[str]) -> tuple[Any, int] | None:
        p = self.params
        tokens = doc.tokens
        min_len = p.min_word_len
        eligible = eligible_words(doc, protected, p.protect_numbers)
        if doc.has_han:
            targets = [i for i in eligible if len(tokens[i]) >= min_len or is_han_char(tokens[i][0])]
        else:
            targets = [i for i in eligible if len(tokens[i]) >= min_len]
        eligible_set = frozenset(eligible) if self._space else _NO_WORDS
        targets = self._changeable(doc, targets, eligible_set)
        if not targets:
            return None
        k = self._edits(len(targets))
        return (doc, targets, k, eligible_set), k * (2 + self._hint_chars)

    def _variant(self, state: Any, rnd: RowRandom) -> str:
        doc: Doc
        targets: list[int]
        k: int
        eligible: frozenset[int]
        doc, targets, k, eligible = state
        char_alpha, max_chars = self.params.char_alpha, self.params.max_chars_per_word
        below = rnd.below
        tokens = doc.tokens.copy()
        new_gaps: list[str] | None = None
        for t in sample_indices(rnd, len(targets), k):
            i = targets[t]
            action = self._only_action
            if action is None:
                possible = self._actions_for(doc, i, eligible)
                action = possible[below(len(possible))] if len(possible) > 1 else possible[0]
            word = tokens[i]
            if action == "space":
                if new_gaps is None:
                    new_gaps = doc.gaps.copy()
                new_gaps[i + 1] = ""
                continue
            if action == "width":
                full = to_full_width(word)
                tokens[i] = full if full != word else to_half_width(word)
                continue
            for _ in range(min(max_chars, max(1, int(char_alpha * len(word))))):
                if action == "swap":
                    spots = _swappable(word)
                    if not spots:
                        break
                    pos = spots[below(len(spots))]
                    word = word[:pos] + word[pos + 1] + word[pos] + word[pos + 2 :]
                elif action == "drop":
                    if len(word) < 2:
                        break
                    pos = below(len(word))
                    word = word[:pos] + word[pos + 1 :]
                else:
                    pos = below(len(word))
                    word = word[: pos + 1] + word[pos:]
            tokens[i] = word
        if new_gaps is None:
            return doc.render(tokens)
        return render(tokens, new_gaps, doc.tail)
