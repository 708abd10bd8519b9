"""The protocol every text augmenter follows, and the batch loop they share.

Why one shared loop: the guarantees a run's manifest relies on are the same for every augmenter and
are easy to get subtly wrong per augmenter:

* row ``r`` of a run gets the same variants whether it is processed alone, in a shard starting at
  ``first_row``, or in another process (see :mod:`.rng`);
* a variant is never a copy of its input or of another variant of the same row; when no edit is
  possible (or the edits keep colliding), a row gets fewer variants and :class:`AugmentResult` counts
  the shortfall instead of padding with copies;
* protected tokens (brands, model numbers given per row or for the whole run) are never edited.
"""

from __future__ import annotations

import gc
import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from typing import Any, ClassVar, Generic, SupportsIndex, TypeVar, cast

from sampleforge.jobs.augment.text.rng import BatchRandom, RowRandom
from sampleforge.jobs.augment.text.tokens import Doc, tokenize
from sampleforge.jobs.common.hashing import fnv1a64

__all__ = [
    "AugmentResult",
    "BlindEditParams",
    "EditParams",
    "TextAugmenter",
    "eligible_words",
    "protected_keys",
    "sample_indices",
]

# A token with a digit (any script, full-width included) is a size, price or model number.
_HAS_DIGIT = re.compile(r"\d").search
_BATCH = 4096
_EDITS_TABLE = 256


@dataclass(frozen=True)
class EditParams:
    """Parameters shared by all augmenters.

    ``alpha`` is the fraction of a text's words edited per variant (EDA's alpha; at least one edit is
    made), ``max_edits`` caps the edits per variant so long titles are not rewritten wholesale.
    """

    alpha: float = 0.1
    max_edits: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}")
        if isinstance(self.max_edits, bool) or not isinstance(self.max_edits, int) or self.max_edits < 1:
            raise ValueError(f"max_edits must be an integer >= 1, got {self.max_edits!r}")

    def edits_for(self, n_words: int) -> int:
        """Edits per variant for a text of ``n_words`` words: EDA's ``max(1, int(alpha * n))``, capped."""
        return min(self.max_edits, max(1, int(self.alpha * n_words)))


@dataclass(frozen=True)
class BlindEditParams(EditParams):
    """Parameters of edits that do not look words up (swap, delete, typos, character noise).

    ``protect_numbers`` treats every token with a digit as protected: "iphone 13" and "iphone 14" are
    different products, so blindly editing sizes, prices or model numbers would corrupt the labels.
    """

    protect_numbers: bool = True


P = TypeVar("P", bound=EditParams)


@dataclass(frozen=True)
class AugmentResult:
    """Variants per input row, plus the counts a run reports.

    ``variants[i]`` holds between 0 and ``requested_per_text`` distinct strings, none equal to
    ``texts[i]``.
    """

    augmenter: str
    requested_per_text: int
    variants: list[list[str]] = field(default_factory=list)

    @property
    def produced(self) -> int:
        """Variants produced over all rows."""
        return sum(len(v) for v in self.variants)

    @property
    def missing(self) -> int:
        """Variants asked for but not produced (no edit possible, or edits kept colliding)."""
        return len(self.variants) * self.requested_per_text - self.produced

    @property
    def rows_without_variants(self) -> int:
        """Rows for which no variant at all could be made."""
        return sum(1 for v in self.variants if not v)


def protected_keys(phrases: Collection[str]) -> frozenset[str]:
    """Lower-cased word tokens of protected phrases ("Elite Screens" protects "elite" and "screens").

    Protecting each word of a phrase wherever it occurs errs on the safe side: a brand word is left
    alone even where it is not part of the brand, which costs a little diversity and never a label.
    """
    keys: set[str] = set()
    for phrase in phrases:
        doc = tokenize(phrase)
        keys.update(doc.tokens[i].lower() for i in doc.words)
    return frozenset(keys)


def eligible_words(doc: Doc, protected: frozenset[str], protect_numbers: bool) -> Sequence[int]:
    """Indices of word tokens that blind edits may touch.

    Runs once per row for every blind augmenter, so the per-token work is done by C code: the text's
    shape tells which words have digits, and ``map``/``compress`` with C-level predicates do the rest
    without bytecode per token.
    """
    tokens = doc.tokens
    words = doc.words
    if protect_numbers:
        if doc.shape is not None:
            # token i is chunk i of the shape; with "#" made a letter, a chunk is alphabetic iff it has no digit
            out: Sequence[int] = (
                list(compress(words, map(str.isalpha, doc.shape.replace("#", "a").split(" "))))
                if "0" in doc.shape
                else words
            )
        else:
            word_tokens = list(map(tokens.__getitem__, words))
            alpha = list(map(str.isalpha, word_tokens))
            if all(alpha):
                out = words
            else:
                # keep a word that is alphabetic or has no digit: "x or not y" as C-level bool ops
                has_digit = map(bool, map(_HAS_DIGIT, word_tokens))
                out = list(compress(words, map(bool.__or__, alpha, map(True.__xor__, has_digit))))
    else:
        out = words
    if protected and out:
        guarded = map(protected.__contains__, map(str.lower, map(tokens.__getitem__, out)))
        out = list(compress(out, map(True.__xor__, guarded)))
    return out


def sample_indices(rnd: RowRandom, n: int, k: int) -> list[int]:
    """``k`` distinct indices from ``range(n)`` in random order (partial Fisher-Yates)."""
    if k == 1:
        return [rnd.below(n)]
    pool = list(range(n))
    k = min(k, n)
    for i in range(k):
        j = i + rnd.below(n - i)
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:k]


class TextAugmenter(ABC, Generic[P]):
    """Base class: subclasses analyse a tokenised text once and then draw variants from it.

    ``_prepare`` returns None when no edit is possible for the text (then the row gets no variants
    and no random numbers are spent), otherwise ``(state, draws)``: whatever the variants of that
    text share, and how many random numbers one variant is likely to need (a speed hint for
    precomputing them, never a limit). ``_variant(state, rnd)`` makes one edited text, which the
    shared loop rejects if it equals the input or an earlier variant. Plain tuples rather than
    objects keep the per-row overhead low: it is paid for every row of a data set.
    """

    name: ClassVar[str]

    def __init__(self, params: P) -> None:
        self.params: P = params
        self._salt = fnv1a64(self.name)
        # edits per variant by word count, looked up per row instead of recomputed
        self._edits_table = tuple(params.edits_for(n) for n in range(_EDITS_TABLE))

    def _edits(self, n_words: int) -> int:
        """``params.edits_for(n_words)``, from the precomputed table when it fits."""
        return self._edits_table[n_words] if n_words < _EDITS_TABLE else self.params.edits_for(n_words)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    @abstractmethod
    def _prepare(self, doc: Doc, protected: frozenset[str]) -> tuple[Any, int] | None:
        """Per-text analysis shared by all variants of that text; None when no edit is possible."""

    @abstractmethod
    def _variant(self, state: Any, rnd: RowRandom) -> str:
        """One edited text."""

    def augment(
        self,
        texts: Sequence[str],
        *,
        seed: SupportsIndex,
        n_per_text: int = 1,
        first_row: int = 0,
        protected: Collection[str] = (),
        row_protected: Sequence[Collection[str]] | None = None,
    ) -> AugmentResult:
        """Up to ``n_per_text`` distinct edited variants of each text.

        ``texts[i]`` is row ``first_row + i`` of the run: pass the shard's offset so that a row's
        output does not depend on how the data set was split. ``protected`` applies to every row,
        ``row_protected[i]`` (e.g. the row's brand and model number) to row ``i`` only.
        """
        if isinstance(n_per_text, bool) or not isinstance(n_per_text, int) or n_per_text < 1:
            raise ValueError(f"n_per_text must be an integer >= 1, got {n_per_text!r}")
        # any integer type (numpy's too, as a job may derive seeds with numpy), but not a bool
        seed_value = -1 if isinstance(seed, bool) or not hasattr(seed, "__index__") else seed.__index__()
        if seed_value < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if row_protected is not None and len(row_protected) != len(texts):
            raise ValueError(f"row_protected has {len(row_protected)} entries for {len(texts)} texts")
        shared = protected_keys(protected) if protected else frozenset()
        # The loop allocates many short-lived containers but never a reference cycle, so reference
        # counting frees all of it. With the cyclic collector on, those allocations trigger
        # collections that also walk everything else the process holds (a job process holds torch's
        # and transformers' hundreds of thousands of objects): 15-20 % of the time. Pause it.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._augment(texts, seed_value, n_per_text, first_row, shared, row_protected)
        finally:
            if collecting:
                gc.enable()

    def _augment(
        self,
        texts: Sequence[str],
        seed: int,
        n_per_text: int,
        first_row: int,
        shared: frozenset[str],
        row_protected: Sequence[Collection[str]] | None,
    ) -> AugmentResult:
        variants: list[list[str]] = []
        attempts = 3 * n_per_text + 2
        prepare, variant = self._prepare, self._variant
        for start in range(0, len(texts), _BATCH):
            batch = texts[start : start + _BATCH]
            if row_protected is None:
                states = list(map(prepare, map(tokenize, batch), repeat(shared)))
            else:
                states = [
                    prepare(tokenize(text), shared | protected_keys(extra) if extra else shared)
                    for text, extra in zip(batch, row_protected[start : start + _BATCH])
                ]
            # rows with an edit possible, and their states (compress: no bytecode per row)
            live = list(compress(range(len(batch)), states))
            live_states = cast("list[tuple[Any, int]]", list(compress(states, states)))
            streams = BatchRandom(
                seed,
                self._salt,
                [first_row + start + i for i in live],
                [st[1] * n_per_text for st in live_states],
            )
            select = streams.select
            out: list[list[str]] = [[] for _ in batch]
            for pos, i in enumerate(live):
                rnd = select(pos)
                state = live_states[pos][0]
                original = batch[i]
                if n_per_text == 1:
                    # Nearly always the first attempt differs from the input: no loop set up for it.
                    text = variant(state, rnd)
                    tries = 1
                    while (text == original or not text) and tries < attempts:
                        text = variant(state, rnd)
                        tries += 1
                    if text != original and text:
                        out[i].append(text)
                    continue
                seen = {original}
                found = out[i]
                for _ in range(attempts):
                    text = variant(state, rnd)
                    if text not in seen and text:
                        seen.add(text)
                        found.append(text)
                        if len(found) == n_per_text:
                            break
            variants.extend(out)
        return AugmentResult(self.name, n_per_text, variants)

    def augment_text(
        self, text: str, *, seed: SupportsIndex, n: int = 1, row: int = 0, protected: Collection[str] = ()
    ) -> list[str]:
        """Variants of a single text, as row ``row`` of a run: the same as ``augment`` would give it."""
        return self.augment([text], seed=seed, n_per_text=n, first_row=row, protected=protected).variants[0]
