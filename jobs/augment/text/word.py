"""EDA word edits (Wei & Zou, 2019): synonym replacement, random insertion, swap and deletion.

They follow the paper's definitions with two changes a search data set needs: synonyms come from a
domain lexicon (WordNet knows "apple" the fruit, not Apple the brand, and has no Chinese), and
protected tokens (brands, model numbers) are never replaced, moved or deleted. Words are tokens from
:mod:`.tokens`, so Chinese edits are word-level (jieba words), not character-level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Any

from sampleforge.jobs.augment.text.base import (
    BlindEditParams,
    EditParams,
    TextAugmenter,
    eligible_words,
    sample_indices,
)
from sampleforge.jobs.augment.text.lexicon import Lexicon, default_lexicon
from sampleforge.jobs.augment.text.rng import RowRandom
from sampleforge.jobs.augment.text.tokens import Doc, is_han_char, render

__all__ = [
    "RandomDeletion",
    "RandomInsertion",
    "RandomSwap",
    "SynonymParams",
    "SynonymReplacement",
    "WordEditParams",
    "find_synonym_spans",
    "match_case",
]

Span = tuple[int, int, tuple[str, ...]]


@dataclass(frozen=True)
class SynonymParams(EditParams):
    """Parameters of ``synonym`` and ``randomInsert`` (which only touch lexicon words)."""


@dataclass(frozen=True)
class WordEditParams(BlindEditParams):
    """Parameters of ``randomSwap`` and ``randomDelete``; for deletion ``alpha`` is a per-word probability."""


def match_case(source: str, replacement: str) -> str:
    """Carry the capitalisation of the replaced text over ("Cheap" -> "Affordable", "CHEAP" -> "AFFORDABLE").

    An all-caps abbreviation replaced by a longer phrase ("XL" -> "extra large") becomes title case
    rather than shouting.
    """
    if len(source) > 1 and source.isupper():
        if len(source) <= 4 and (len(replacement) > 4 or " " in replacement):
            return " ".join(w[:1].upper() + w[1:] for w in replacement.split(" "))
        return replacement.upper()
    if source[:1].isupper() and replacement[:1].islower():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def find_synonym_spans(doc: Doc, lexicon: Lexicon, protected: frozenset[str]) -> list[Span]:
    """Longest lexicon matches starting at each word: ``(first token, end token, alternatives)``.

    A span runs over consecutive word tokens only (never across punctuation), and its key is built
    like :func:`.lexicon.normalize_term` builds term keys. Spans may overlap ("cell phone", "phone");
    the augmenters resolve that per variant. Lower-casing the whole text once and testing starts
    with a comprehension keeps the per-word Python work to the few words that can start a term.
    """
    tokens, gaps, words = doc.tokens, doc.gaps, doc.words
    prefixes = lexicon.prefixes
    lookup = lexicon.lookup
    is_word: set[int] | None
    if doc.simple and len(words) == len(tokens) and doc.text.isascii():
        # every token is a word, so token i is word i: test the lower-cased chunks directly
        lower = doc.text.lower().split()
        is_word = None
        starts = compress(words, map(prefixes.__contains__, lower))
    else:
        lower = [t.lower() for t in tokens]
        is_word = set(words)
        starts = compress(words, map(prefixes.__contains__, map(lower.__getitem__, words)))
    n_tokens = len(tokens)
    spans: list[Span] = []
    for i in starts:
        key = lower[i]
        if protected and key in protected:
            continue
        best: Span | None = None
        j = i
        while True:
            alts = lookup(key)
            if alts:
                best = (i, j + 1, alts)
            j += 1
            if j >= n_tokens or (is_word is not None and j not in is_word):
                break
            nxt = lower[j]
            if protected and nxt in protected:
                break
            key = key + (" " if gaps[j] else "") + nxt
            if key not in prefixes:
                break
        if best is not None:
            spans.append(best)
    return spans


def _joiner(left: str, right: str) -> str:
    """The gap between two adjacent tokens that had none before: none between Han characters."""
    return "" if is_han_char(left[-1]) and is_han_char(right[0]) else " "


class SynonymReplacement(TextAugmenter[SynonymParams]):
    """``synonym``: replace up to ``edits_for(n)`` lexicon words or phrases with a synonym.

    State per text: ``(doc, spans, k)``.
    """

    name = "synonym"

    def __init__(self, params: SynonymParams = SynonymParams(), lexicon: Lexicon | None = None) -> None:
        super().__init__(params)
        self.lexicon = lexicon if lexicon is not None else default_lexicon()

    def _prepare(self, doc: Doc, protected: frozenset[str]) -> tuple[Any, int] | None:
        spans = find_synonym_spans(doc, self.lexicon, protected)
        if not spans:
            return None
        k = self._edits(len(doc.words))
        return (doc, spans, k), (2 if k == 1 else 2 * k + len(spans))

    def _variant(self, state: Any, rnd: RowRandom) -> str:
        doc: Doc
        spans: list[Span]
        k: int
        doc, spans, k = state
        below = rnd.below
        if k == 1 or len(spans) == 1:
            start, end, alts = spans[below(len(spans))]
            chosen = [(start, end, alts[below(len(alts))])]
        else:
            used: set[int] = set()
            chosen = []
            for s in sample_indices(rnd, len(spans), len(spans)):
                start, end, alts = spans[s]
                if not used.isdisjoint(range(start, end)):
                    continue
                used.update(range(start, end))
                chosen.append((start, end, alts[below(len(alts))]))
                if len(chosen) == k:
                    break
        tokens = doc.tokens.copy()
        if all(end - start == 1 for start, end, _ in chosen):
            for start, _, alt in chosen:
                tokens[start] = match_case(tokens[start], alt)
            return doc.render(tokens)
        gaps = doc.gaps.copy()
        for start, end, alt in sorted(chosen, reverse=True):
            tokens[start:end] = [match_case(tokens[start], alt)]
            gaps[start:end] = [gaps[start]]
        return render(tokens, gaps, doc.tail)


class RandomInsertion(TextAugmenter[SynonymParams]):
    """``randomInsert``: insert a synonym of a lexicon word of the text at a random word boundary.

    As in EDA the inserted word is a synonym of a word already present, so the text stays on topic;
    a text with no lexicon word cannot be augmented this way and gets no variants. Insertion slots
    are before each word and after the last, never inside a protected phrase ("Elite cheap
    Screens" would break the brand). State per text: ``(doc, spans, slots, k)``.
    """

    name = "randomInsert"

    def __init__(self, params: SynonymParams = SynonymParams(), lexicon: Lexicon | None = None) -> None:
        super().__init__(params)
        self.lexicon = lexicon if lexicon is not None else default_lexicon()

    def _prepare(self, doc: Doc, protected: frozenset[str]) -> tuple[Any, int] | None:
        spans = find_synonym_spans(doc, self.lexicon, protected)
        if not spans:
            return None
        n = len(doc.words)
        slots: Sequence[int] = range(n + 1)
        if protected:
            tokens, words = doc.tokens, doc.words
            guarded = [tokens[w].lower() in protected for w in words]
            slots = [s for s in slots if not (0 < s < n and guarded[s - 1] and guarded[s])]
        k = self._edits(n)
        return (doc, spans, slots, k), 3 * k

    def _variant(self, state: Any, rnd: RowRandom) -> str:
        doc: Doc
        spans: list[Span]
        slots: Sequence[int]
        k: int
        doc, spans, slots, k = state
        words = doc.words
        below = rnd.below
        inserts: list[tuple[int, int, str]] = []
        for order in range(k):
            alts = spans[below(len(spans))][2]
            alt = alts[below(len(alts))]
            slot = slots[below(len(slots))]
            pos = words[slot] if slot < len(words) else words[-1] + 1
            inserts.append((pos, order, alt))
        tokens = doc.tokens.copy()
        if doc.simple and not doc.has_han:
            for pos, _, alt in sorted(inserts, reverse=True):
                tokens.insert(pos, alt)
            return " ".join(tokens)
        gaps = doc.gaps.copy()
        for pos, _, alt in sorted(inserts, reverse=True):
            if pos < len(tokens):
                nxt = tokens[pos]
                if pos == 0:
                    new_gap = gaps[0]
                elif gaps[pos]:
                    new_gap = gaps[pos]
                else:
                    prev = tokens[pos - 1]
                    new_gap = _joiner(prev, alt) if prev[-1].isalnum() else ""
                gaps[pos] = _joiner(alt, nxt)
                tokens.insert(pos, alt)
                gaps.insert(pos, new_gap)
            else:
                gaps.append(_joiner(tokens[-1], alt))
                tokens.append(alt)
        return render(tokens, gaps, doc.tail)


class RandomSwap(TextAugmenter[WordEditParams]):
    """``randomSwap``: swap two unprotected words, ``edits_for(n)`` times; protected words stay put.

    State per text: ``(doc, eligible token indices, k)``.
    """

    name = "randomSwap"

    def __init__(self, params: WordEditParams = WordEditParams()) -> None:
        super().__init__(params)

    def _prepare(self, doc: Doc, protected: frozenset[str]) -> tuple[Any, int] | None:
        eligible = eligible_words(doc, protected, self.params.protect_numbers)
        if len(eligible) < 2:
            return None
        tokens = doc.tokens
        if tokens[eligible[0]] == tokens[eligible[1]] and len(set(map(tokens.__getitem__, eligible))) < 2:
            return None
        k = self._edits(len(doc.words))
        return (doc, eligible, k), 2 * k

    def _variant(self, state: Any, rnd: RowRandom) -> str:
        doc: Doc
        eligible: Sequence[int]
        k: int
        doc, eligible, k = state
        m = len(eligible)
        tokens = doc.tokens.copy()
        draws = rnd.take(2 * k)
        for n in range(0, 2 * k, 2):
            a = int(draws[n] * m)
            b = int(draws[n + 1] * (m - 1))
            if b >= a:
                b += 1
            ia, ib = eligible[a], eligible[b]
            tokens[ia], tokens[ib] = tokens[ib], tokens[ia]
        return doc.render(tokens)


class RandomDeletion(TextAugmenter[WordEditParams]):
    """``randomDelete``: delete each unprotected word with probability ``alpha``.

    At least one word is deleted (so the variant differs) and at least one word always remains (so
    it is never empty); at most ``max_edits`` words go, chosen uniformly when more were drawn.
    State per text: ``(doc, eligible token indices, most deletions)``.
    """

    name = "randomDelete"

    def __init__(self, params: WordEditParams = WordEditParams()) -> None:
        super().__init__(params)

    def _prepare(self, doc: Doc, protected: frozenset[str]) -> tuple[Any, int] | None:
        if len(doc.words) < 2:
            return None
        eligible = eligible_words(doc, protected, self.params.protect_numbers)
        if not eligible:
            return None
        return (doc, eligible, min(self.params.max_edits, len(doc.words) - 1)), len(eligible) + 2

    def _variant(self, state: Any, rnd: RowRandom) -> str:
        doc: Doc
        eligible: Sequence[int]
        limit: int
        doc, eligible, limit = state
        alpha = self.params.alpha
        # alpha > u for each eligible word's draw u: a Bernoulli(alpha) per word, evaluated in C
        drop = list(compress(eligible, map(alpha.__gt__, rnd.take(len(eligible)))))
        if not drop:
            drop = [eligible[rnd.below(len(eligible))]]
        elif len(drop) > limit:
            drop = [drop[j] for j in sample_indices(rnd, len(drop), limit)]
        keep = [True] * len(doc.tokens)
        for i in drop:
            keep[i] = False
        if doc.simple:
            return " ".join(compress(doc.tokens, keep))
        gaps = list(compress(doc.gaps, keep))
        gaps[0] = doc.gaps[0]
        return render(list(compress(doc.tokens, keep)), gaps, doc.tail)
