"""Synonym lexicons: the shipped e-commerce ones and a user's TSV, parsed strictly.

A lexicon is a list of synonym groups; every term of a group may replace every other one. Terms are
matched on word boundaries of the tokenised text, so "phone" never matches inside "headphones" and a
Chinese term only matches whole jieba words (or a run of them, e.g. "移动" + "电话" for "移动电话").
Multi-word English terms ("cell phone") are matched across whitespace.

The user's file comes from MinIO and is the first thing to go wrong in a run, so every parse error
names the source and line number and says what to change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Literal

from sampleforge.jobs.augment.text.tokens import contains_han, tokenize

__all__ = [
    "LEXICON_DIR",
    "Lexicon",
    "LexiconError",
    "builtin_lexicon",
    "default_lexicon",
    "normalize_term",
    "parse_lexicon",
]

LEXICON_DIR = Path(__file__).resolve().parent.parent / "lexicons"
_BUILTIN_FILES = {"en": "en_ecommerce.tsv", "zh": "zh_ecommerce.tsv"}


class LexiconError(ValueError):
    """A lexicon line that cannot be used; ``line`` is 1-based."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}, line {line}: {message}")
        self.source = source
        self.line = line


def normalize_term(term: str) -> str | None:
    """The matching key of a term, or None when the term has no word to match.

    The key is built exactly the way the augmenters build keys from text spans: word tokens,
    lower-cased, joined by one space where the text had whitespace and by nothing where it had none.
    Returns None when the term contains punctuation that separates words (then it could never match).
    """
    doc = tokenize(term.strip(), segment=False)
    if not doc.tokens or len(doc.words) != len(doc.tokens):
        return None
    parts = []
    for i, tok in enumerate(doc.tokens):
        if i and doc.gaps[i]:
            parts.append(" ")
        parts.append(tok.lower())
    return "".join(parts)


class Lexicon:
    """Synonym groups, indexed for fast span matching.

    ``alternatives(key)`` gives the replacements for a normalised span; ``prefixes`` holds every
    character prefix of every key, so a span being extended token by token can stop as soon as it
    cannot become a term, without a per-token regex.
    """

    __slots__ = ("_alternatives", "groups", "lookup", "max_key_len", "prefixes")

    def __init__(self, groups: Iterable[tuple[str, ...]]) -> None:
        self.groups: tuple[tuple[str, ...], ...] = tuple(tuple(g) for g in groups)
        merged: dict[str, dict[str, None]] = {}
        for group in self.groups:
            keyed = [(normalize_term(term), term) for term in group]
            for key, _ in keyed:
                if key is None:
                    continue
                alts = merged.setdefault(key, {})
                for other_key, other in keyed:
                    if other_key is not None and other_key != key:
                        alts.setdefault(other, None)
        self._alternatives: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in merged.items() if v}
        # The span matcher calls this for every candidate word of every row: a bound ``dict.get``
        # (None when the key has no alternatives) costs no Python frame, unlike ``alternatives``.
        self.lookup: Callable[[str], tuple[str, ...] | None] = self._alternatives.get
        prefixes: set[str] = set()
        for key in self._alternatives:
            for end in range(1, len(key) + 1):
                prefixes.add(key[:end])
        self.prefixes: frozenset[str] = frozenset(prefixes)
        self.max_key_len = max((len(k) for k in self._alternatives), default=0)

    def alternatives(self, key: str) -> tuple[str, ...]:
        """Replacement terms (in lexicon spelling) for a normalised key; empty when it has none."""
        return self._alternatives.get(key, ())

    def synonyms(self, term: str) -> tuple[str, ...]:
        """Replacement terms for a raw term, normalised the same way text spans are."""
        key = normalize_term(term)
        return self._alternatives.get(key, ()) if key is not None else ()

    def __contains__(self, term: object) -> bool:
        return isinstance(term, str) and bool(self.synonyms(term))

    def __len__(self) -> int:
        return len(self.groups)

    def merged(self, other: Lexicon) -> Lexicon:
        """A lexicon with both sets of groups; a term in both gets the union of its synonyms."""
        return Lexicon(self.groups + other.groups)

    def to_mapping(self) -> Mapping[str, tuple[str, ...]]:
        """Key to alternatives, for inspection and manifests."""
        return dict(self._alternatives)


def _strip_comment(line: str) -> str:
    """Drop a full-line comment or a trailing one introduced by whitespace + '#'."""
    if line.lstrip().startswith("#"):
        return ""
    for marker in ("\t#", " #"):
        cut = line.find(marker)
        if cut >= 0:
            line = line[:cut]
    return line


def parse_lexicon(text: str, *, source: str = "<lexicon>") -> Lexicon:
    """Parse a TSV lexicon: one synonym group per line, terms separated by tabs, '#' comments.

    Raises :class:`LexiconError` naming the line for: a line with a single term (with a hint when the
    terms look space-separated), an empty term between tabs, a term repeated within its line, and a
    term made only of punctuation or split by punctuation so that it could never match a text.
    """
    text = text.removeprefix("\ufeff")
    groups: list[tuple[str, ...]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        while fields and not fields[-1].strip():
            fields.pop()
        terms = []
        for column, field in enumerate(fields, start=1):
            term = " ".join(field.split())
            if not term:
                raise LexiconError(source, number, f"empty term in column {column} (two tabs in a row?)")
            terms.append(term)
        if len(terms) < 2:
            hint = ""
            if len(terms) == 1 and ("  " in fields[0] or (" " in terms[0] and contains_han(terms[0]))):
                hint = "; terms must be separated by tabs, spaces only join the words of one term"
            raise LexiconError(source, number, f"a synonym group needs at least two terms, found {len(terms)}{hint}")
        seen: dict[str, str] = {}
        for term in terms:
            key = normalize_term(term)
            if key is None:
                raise LexiconError(
                    source, number, f"term {term!r} has punctuation between or around its words, it cannot match text"
                )
            if key in seen:
                raise LexiconError(source, number, f"term {term!r} repeats {seen[key]!r} in the same group")
            seen[key] = term
        groups.append(tuple(terms))
    return Lexicon(groups)


@cache
def builtin_lexicon(lang: Literal["en", "zh"]) -> Lexicon:
    """The shipped e-commerce lexicon for ``lang`` (parsed once per process)."""
    if lang not in _BUILTIN_FILES:
        raise ValueError(f"no built-in lexicon for language {lang!r}; choose one of {sorted(_BUILTIN_FILES)}")
    path = LEXICON_DIR / _BUILTIN_FILES[lang]
    return parse_lexicon(path.read_text(encoding="utf-8"), source=path.name)


@cache
def default_lexicon() -> Lexicon:
    """English and Chinese built-in lexicons together: what ``synonym`` uses when none is given."""
    return builtin_lexicon("en").merged(builtin_lexicon("zh"))
