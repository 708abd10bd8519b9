"""Tokenisation for English, Chinese and mixed shopping text, reversible to the exact input.

Word-level edits need word boundaries, but they must not damage what a search team cares about:
model numbers ("WH-1000XM4", "13.3in"), prices ("$19.99") and brands have to survive as single
tokens, and the untouched parts of a text must come back byte for byte. So a text is split into
tokens plus the whitespace *before* each token (``gaps``) and the whitespace after the last
(``tail``); ``render`` joins them back. English words are whitespace chunks with punctuation peeled
off their edges only; runs of Han characters are segmented by jieba, whose dictionary is loaded
once per process on first use (about a second) and never for pure-ASCII text.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

__all__ = [
    "Doc",
    "contains_han",
    "is_han_char",
    "render",
    "segment_han",
    "tokenize",
]

# Han ideographs: CJK Unified (basic, extension A, extensions B-F and G-H), compatibility ideographs.
_HAN_CLASS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef\U00030000-\U000323af"
_HAN_RE = re.compile(f"[{_HAN_CLASS}]")
_HAN_SPLIT_RE = re.compile(f"([{_HAN_CLASS}]+)")
_GAP_RE = re.compile(r"(\s*)(\S+)")
# ASCII character classes for the fast paths, as a bytes translation table: letters -> "a",
# digits -> "0", the space kept, other whitespace -> "_", anything else -> "#". A shape without "_",
# without two spaces in a row and without a space at either end is a single-spaced text; if it also
# has no "#" next to a space or at either end, every whitespace chunk is one word token and
# tokenising needs no per-word Python code at all. The shape is kept on the Doc: it also tells which
# words contain digits without looking at each word.
_SHAPE = bytes(
    ord("0")
    if chr(c).isdigit()
    else ord("a")
    if chr(c).isalpha()
    else ord(" ")
    if c == 32
    else ord("_")
    if chr(c).isspace()
    else ord("#")
    for c in range(256)
)
_SIMPLE_GAPS = [""] + [" "] * 511

# Punctuation peeled off the edges of a whitespace chunk. Characters that belong to prices, sizes and
# model numbers ($ % # + & / _ @ = ^ \) are deliberately absent, and inner punctuation is never split,
# so "WH-1000XM4", "13.3in", "8-35lbs", "men's" and "$19.99" stay whole.
EDGE_PUNCT = (
    "!\"'()*,.:;<>?[]{}`~|-\u2013\u2014\u2026"  # ASCII and dashes / ellipsis
    "\u3000\u3001\u3002\u300a\u300b\u300c\u300d\u300e\u300f\u3010\u3011\u3008\u3009"  # CJK punctuation
    "\uff01\uff08\uff09\uff0c\uff0e\uff1a\uff1b\uff1f\uff3b\uff3d\uff5b\uff5d\uff5e"  # full-width forms
    "\u2018\u2019\u201c\u201d\u00b7"  # curly quotes, middle dot
)


def is_han_char(ch: str) -> bool:
    """Whether one character is a Han ideograph (cheaper than a regex for a single character)."""
    o = ord(ch)
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0xF900 <= o <= 0xFAFF
        or 0x20000 <= o <= 0x2EBEF
        or 0x30000 <= o <= 0x323AF
    )


def contains_han(text: str) -> bool:
    """Whether ``text`` contains a Han character; this is how Chinese text is detected."""
    return not text.isascii() and _HAN_RE.search(text) is not None


_jieba_lock = threading.Lock()
_jieba_tokenizer: Any = None


def _jieba() -> Any:
    """The process's own jieba tokenizer, created on first use.

    A private ``jieba.Tokenizer`` (not the module-level default) keeps segmentation, and therefore
    the augmented output, independent of words other code may add to jieba's global dictionary.
    jieba 0.42 has invalid escape sequences that Python reports as SyntaxWarning when it compiles
    the module; they are silenced here so that warnings-as-errors settings do not break the import.
    """
    global _jieba_tokenizer
    if _jieba_tokenizer is None:
        with _jieba_lock:
            if _jieba_tokenizer is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    import jieba

                    tok = jieba.Tokenizer()
                    tok.initialize()
                _jieba_tokenizer = tok
    return _jieba_tokenizer


@lru_cache(maxsize=1 << 16)
def segment_han(run: str) -> tuple[str, ...]:
    """jieba words of a run of Han characters (cached: queries repeat across many rows)."""
    return tuple(_jieba().lcut(run, HMM=True))


class Doc:
    """A tokenised text: ``render(doc.tokens, doc.gaps, doc.tail) == doc.text`` always holds.

    ``words`` lists the indices of tokens that carry letters, digits or Han characters; only those
    are edited. Punctuation tokens stay where they are.

    ``simple`` means the text is its tokens joined by single spaces, so edits that keep the gaps can
    render with one ``" ".join``. ``shape`` is set when, in addition, every token is a word and the
    text is ASCII: its character classes (see ``_SHAPE``), aligned with the text.
    """

    __slots__ = ("gaps", "has_han", "shape", "simple", "tail", "text", "tokens", "words")

    def __init__(
        self,
        text: str,
        tokens: list[str],
        gaps: list[str],
        tail: str,
        words: Sequence[int],
        has_han: bool,
        simple: bool = False,
        shape: str | None = None,
    ) -> None:
        self.text = text
        self.tokens = tokens
        self.gaps = gaps
        self.tail = tail
        self.words = words
        self.has_han = has_han
        self.simple = simple
        self.shape = shape

    def render(self, tokens: list[str]) -> str:
        """Text of ``tokens`` (same length as ``self.tokens``) with this text's gaps."""
        if self.simple:
            return " ".join(tokens)
        return render(tokens, self.gaps, self.tail)


def render(tokens: list[str], gaps: list[str], tail: str) -> str:
    """Join tokens back into text, each preceded by its gap (``map`` with a C function: no bytecode per token)."""
    return "".join(map(str.__add__, gaps, tokens)) + tail


def _add_latin_chunk(chunk: str, gap: str, tokens: list[str], gaps: list[str], words: list[int]) -> None:
    """Append one whitespace-free, Han-free chunk: edge punctuation split off, the core kept whole."""
    if chunk[0].isalnum() and chunk[-1].isalnum():
        words.append(len(tokens))
        tokens.append(chunk)
        gaps.append(gap)
        return
    left = chunk.lstrip(EDGE_PUNCT)
    core = left.rstrip(EDGE_PUNCT)
    if not core:
        tokens.append(chunk)
        gaps.append(gap)
        return
    if len(left) != len(chunk):
        tokens.append(chunk[: len(chunk) - len(left)])
        gaps.append(gap)
        gap = ""
    if core[0].isalnum() or core[-1].isalnum():
        words.append(len(tokens))
    tokens.append(core)
    gaps.append(gap)
    if len(core) != len(left):
        tokens.append(left[len(core) :])
        gaps.append("")


def _add_mixed_chunk(chunk: str, gap: str, tokens: list[str], gaps: list[str], words: list[int], segment: bool) -> None:
    """Append a chunk with Han characters: jieba for the Han runs, the Latin rules for the rest."""
    for i, piece in enumerate(_HAN_SPLIT_RE.split(chunk)):
        if not piece:
            continue
        if i % 2:
            for word in segment_han(piece) if segment else (piece,):
                words.append(len(tokens))
                tokens.append(word)
                gaps.append(gap)
                gap = ""
        else:
            _add_latin_chunk(piece, gap, tokens, gaps, words)
            gap = ""


def tokenize(text: str, *, segment: bool = True) -> Doc:
    """Split ``text`` into a :class:`Doc`.

    This runs once per row for every augmenter, so single-spaced ASCII text (nearly all English
    queries and titles) avoids per-word Python code: without edge punctuation the chunks are the
    tokens; with some, only the chunks that have it are split.
    ``segment=False`` keeps each Han run as one token instead of calling jieba; lexicon keys use it,
    since Han words are joined without spaces and so the key does not depend on the segmentation.
    """
    chunks = text.split()
    n = len(chunks)
    if 0 < n < len(_SIMPLE_GAPS) and text.isascii():
        # bytes.translate is several times faster than str.translate; str tests are faster than bytes
        shape = text.encode("ascii").translate(_SHAPE).decode("ascii")
        # Single-spaced: no whitespace but spaces, and exactly one space between the n chunks (so none
        # at either end). Two C-level tests instead of four substring scans.
        if "_" not in shape and shape.count(" ") == n - 1:
            if "#" not in shape or (shape[0] != "#" and shape[-1] != "#" and " #" not in shape and "# " not in shape):
                return Doc(text, chunks, _SIMPLE_GAPS[:n], "", range(n), False, True, shape)
            return _tokenize_single_spaced(text, chunks, shape)
    single_spaced = " ".join(chunks) == text
    tokens: list[str] = []
    gaps: list[str] = []
    words: list[int] = []
    has_han = False
    if single_spaced:
        chunk_gaps: list[str] | None = None
        tail = ""
    else:
        pairs = _GAP_RE.findall(text)
        chunk_gaps = [g for g, _ in pairs]
        consumed = sum(len(g) + len(c) for g, c in pairs)
        tail = text[consumed:]
    gap = ""
    for i, chunk in enumerate(chunks):
        if chunk_gaps is not None:
            gap = chunk_gaps[i]
        elif i:
            gap = " "
        if chunk.isascii() or _HAN_RE.search(chunk) is None:
            _add_latin_chunk(chunk, gap, tokens, gaps, words)
        else:
            has_han = True
            _add_mixed_chunk(chunk, gap, tokens, gaps, words, segment)
    return Doc(text, tokens, gaps, tail, words, has_han, single_spaced and len(tokens) == len(chunks))


def _tokenize_single_spaced(text: str, chunks: list[str], shape: str) -> Doc:
    """Single-spaced ASCII text where some chunks carry edge punctuation ("Diapers,", "(Black)").

    Those few chunks are found by scanning the shape in C (``str.find``/``str.count``); runs of
    ordinary chunks between them are copied in bulk, and only the marked chunks go through
    :func:`_add_latin_chunk`.
    """
    n = len(chunks)
    marks = set()
    if shape[0] == "#":
        marks.add(0)
    if shape[-1] == "#":
        marks.add(n - 1)
    for pattern, shift in ((" #", 1), ("# ", 0)):
        pos = shape.find(pattern)
        while pos >= 0:
            marks.add(shape.count(" ", 0, pos + shift))
            pos = shape.find(pattern, pos + 1)
    tokens: list[str] = []
    gaps: list[str] = []
    words: list[int] = []
    prev = 0
    for i in sorted(marks):
        if i > prev:
            base = len(tokens)
            tokens.extend(chunks[prev:i])
            gaps.extend(_SIMPLE_GAPS[:i] if prev == 0 else _SIMPLE_GAPS[1 : i - prev + 1])
            words.extend(range(base, base + i - prev))
        _add_latin_chunk(chunks[i], " " if i else "", tokens, gaps, words)
        prev = i + 1
    if prev < n:
        base = len(tokens)
        tokens.extend(chunks[prev:])
        gaps.extend(_SIMPLE_GAPS[:n] if prev == 0 else _SIMPLE_GAPS[1 : n - prev + 1])
        words.extend(range(base, base + n - prev))
    return Doc(text, tokens, gaps, "", words, False, len(tokens) == n)
