"""Quality filters for generated rows, from ``spec.filters``. Source rows are filtered by the
leakage guard only.

Each filter looks at a list of :class:`Candidate` s and returns, per candidate, None (keep) or the
reason it is dropped; the pipeline counts drops per filter and reason. They run cheapest first, and
the dedup filters last, because they remember what they keep: a row dropped by a later filter must
not make a later copy of itself look like a duplicate.

1. ``length`` and ``charset``: on the texts the augmenter changed.
2. ``evalSplit``, the leakage guard (:mod:`.leakage`): a row whose query (or item, per
   ``evalSplitMatch``) equals or near-duplicates one the evaluation split holds out is dropped;
   source rows are judged alike.
3. ``similarity``: for label-keeping rows only (a hard negative is meant to differ from its source),
   each changed text's similarity to the source's must lie in ``[min, max]``: cosine of sentence
   embeddings when ``model`` is set, otherwise cosine of character 3-gram counts.
4. ``labelConsistency``: a classifier (``model``) must give the row's label at least ``minAgreement``.
   Without a model the check is skipped and the manifest says so: training a teacher inside the job
   is not implemented.
5. ``dedup``: exact duplicates of a source row (anywhere in the source) or of a generated row kept
   earlier in the shard, on the normalised (query, item + attributes) pair; with ``minhash`` also
   near duplicates of the row's own source row or of kept generated rows of the shard.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from sampleforge.api.augmentation import Filters

from .dedup import HashSet, NearDuplicateIndex, item_repr, minhashes, norm_key, pair_hash
from .embedding import PairClassifier, TextEncoder
from .errors import ConfigError
from .labels import Labels
from .leakage import EvalSplit, LeakageGuard
from .modelcache import ModelCache
from .rows import ColumnRoles

log = logging.getLogger(__name__)

__all__ = ["Candidate", "Filter", "build_filters", "char_ngram_cosine", "script_of"]


@dataclass
class Candidate:
    """A generated row on its way to the output."""

    row: dict[str, Any]
    source: dict[str, Any]
    augmenter: str
    label_rule: str
    source_row: int
    variant: int
    #: What differs from the source: "query", "item" (item text or any attribute), "dense", "image",
    #: "label". Text filters look at "query" and "item" only.
    changed: tuple[str, ...]


class Filter(Protocol):
    name: str

    def check(self, candidates: Sequence[Candidate]) -> list[str | None]: ...


def _text(c: Candidate, field: str, roles: ColumnRoles, source: bool = False) -> str:
    row = c.source if source else c.row
    if field == "query":
        return str(row[roles.query] or "")
    return str(row[roles.item] or "")


def _texts_changed(c: Candidate) -> tuple[str, ...]:
    return tuple(f for f in c.changed if f in ("query", "item"))


def _item_text(row: dict[str, Any], roles: ColumnRoles) -> str:
    return item_repr(str(row[roles.item] or ""), {a: row[a] for a in roles.attributes})


# --- length and charset ---------------------------------------------------------------------------


class LengthFilter:
    name = "length"

    def __init__(self, roles: ColumnRoles, minimum: int, maximum: int | None) -> None:
        self.roles, self.minimum, self.maximum = roles, minimum, maximum

    def check(self, candidates: Sequence[Candidate]) -> list[str | None]:
        out: list[str | None] = []
        for c in candidates:
            reason = None
            for field in _texts_changed(c):
                n = len(_text(c, field, self.roles))
                if n < self.minimum:
                    reason = f"{field} shorter than {self.minimum} characters"
                elif self.maximum is not None and n > self.maximum:
                    reason = f"{field} longer than {self.maximum} characters"
                if reason:
                    break
            out.append(reason)
        return out


_SCRIPT_PREFIXES = (("LATIN", "latin"), ("CJK", "han"), ("HIRAGANA", "hiragana"), ("KATAKANA", "katakana"),
                    ("HANGUL", "hangul"), ("CYRILLIC", "cyrillic"), ("ARABIC", "arabic"))


@lru_cache(maxsize=1 << 16)
def script_of(ch: str) -> str:
    """The charset class of one character, in the vocabulary of ``spec.filters.charset.scripts``."""
    if ch.isspace():
        return "space"
    category = unicodedata.category(ch)
    if category == "Nd":
        return "digit"
    if category.startswith("P"):
        return "punctuation"
    if category.startswith("S"):
        return "symbol"
    name = unicodedata.name(ch, "")
    for prefix, script in _SCRIPT_PREFIXES:
        if name.startswith(prefix):
            return script
    if "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or ch >= "\U00020000":
        return "han"
    return "other"


class CharsetFilter:
    name = "charset"

    def __init__(self, roles: ColumnRoles, scripts: Sequence[str], max_other_fraction: float) -> None:
        self.roles = roles
        self.allowed = frozenset(scripts) | {"space"}
        self.max_other = max_other_fraction
        self.label = "+".join(sorted(scripts))

    def check(self, candidates: Sequence[Candidate]) -> list[str | None]:
        out: list[str | None] = []
        for c in candidates:
            reason = None
            for field in _texts_changed(c):
                text = _text(c, field, self.roles)
                letters = [ch for ch in text if not ch.isspace()]
                if not letters:
                    continue
                other = sum(1 for ch in letters if script_of(ch) not in self.allowed)
                if other / len(letters) > self.max_other:
                    reason = f"{field} has characters outside {self.label}"
                    break
            out.append(reason)
        return out


# --- similarity to the source row -----------------------------------------------------------------


def _ngram_counts(text: str, n: int = 3) -> Counter[str]:
    key = norm_key(text)
    if len(key) <= n:
        return Counter([key]) if key else Counter()
    return Counter(key[i : i + n] for i in range(len(key) - n + 1))


def char_ngram_cosine(a: str, b: str) -> float:
    """Cosine similarity of character 3-gram counts (1.0 for equal texts, 0.0 for disjoint ones)."""
    ca, cb = _ngram_counts(a), _ngram_counts(b)
    if not ca or not cb:
        return 1.0 if norm_key(a) == norm_key(b) else 0.0
    dot = sum(v * cb.get(k, 0) for k, v in ca.items())
    return dot / math.sqrt(sum(v * v for v in ca.values()) * sum(v * v for v in cb.values()))


class SimilarityFilter:
    name = "similarity"

    def __init__(self, roles: ColumnRoles, minimum: float, maximum: float, encoder: TextEncoder | None) -> None:
        self.roles, self.minimum, self.maximum, self.encoder = roles, minimum, maximum, encoder

    def check(self, candidates: Sequence[Candidate]) -> list[str | None]:
        pairs: list[tuple[int, str, str]] = []
        for k, c in enumerate(candidates):
            if c.label_rule != "keep":
                continue
            for field in _texts_changed(c):
                if field == "query":
                    pairs.append((k, _text(c, "query", self.roles, source=True), _text(c, "query", self.roles)))
                else:
                    pairs.append((k, _item_text(c.source, self.roles), _item_text(c.row, self.roles)))
        out: list[str | None] = [None] * len(candidates)
        if not pairs:
            return out
        if self.encoder is not None:
            sims = self.encoder.similarity([p[1] for p in pairs], [p[2] for p in pairs]).tolist()
        else:
            sims = [char_ngram_cosine(a, b) for _, a, b in pairs]
        for (k, _, _), sim in zip(pairs, sims, strict=True):
            if out[k] is not None:
                continue
            if sim < self.minimum - 1e-6:
                out[k] = f"less similar than {self.minimum:g} to its source"
            elif sim > self.maximum + 1e-6:
                out[k] = f"more similar than {self.maximum:g} to its source"
        return out


# --- label consistency ----------------------------------------------------------------------------


class LabelConsistencyFilter:
    name = "labelConsistency"

    def __init__(self, roles: ColumnRoles, classifier: PairClassifier, min_agreement: float) -> None:
        self.roles, self.classifier, self.min_agreement = roles, classifier, min_agreement

    def check(self, candidates: Sequence[Candidate]) -> list[str | None]:
        if not candidates:
            return []
        probs = self.classifier.probabilities([_text(c, "query", self.roles) for c in candidates],
                                              [_item_text(c.row, self.roles) for c in candidates])
        out: list[str | None] = []
        for c, p in zip(candidates, probs, strict=True):
            index = self.classifier.class_index(c.row[self.roles.label])
            if index is None:
                out.append("label unknown to the teacher model")
            elif float(p[index]) < self.min_agreement:
                out.append(f"teacher agrees less than {self.min_agreement:g}")
            else:
                out.append(None)
        return out


# --- dedup ------------------------------------------------------------------------------------------


class ExactDedup:
    name = "dedup"

    def __init__(self, roles: ColumnRoles, source_pairs: HashSet) -> None:
        self.roles = roles
        self.source_pairs = source_pairs
        self.generated = HashSet()

    def key(self, c: Candidate) -> int:
        """The pair's hash; a row that changed dense features or the image is a new sample even with
        the same texts, so those values join the key then. Public because a shard writes the keys of
        the rows it keeps beside its parts, where the reduce step finds duplicates across shards by
        the same key (:mod:`.crossdedup`)."""
        roles = self.roles
        item = _item_text(c.row, roles)
        if "dense" in c.changed:
            item += "\x1e" + ",".join(repr(c.row[d]) for d in roles.dense)
        if "image" in c.changed and roles.image:
            item += "\x1e" + str(c.row[roles.image])
        return pair_hash(_text(c, "query", roles), item)

    def check(self, candidates: Sequence[Candidate]) -> list[str | None]:
        keys = np.fromiter((self.key(c) for c in candidates), dtype=np.uint64, count=len(candidates))
        in_source = self.source_pairs.contains(keys)
        out: list[str | None] = [None] * len(candidates)
        fresh = [k for k in range(len(candidates)) if not in_source[k]]
        for k in range(len(candidates)):
            if in_source[k]:
                out[k] = "duplicates a source row"
        if fresh:
            new = self.generated.add_new(keys[fresh])
            for k, is_new in zip(fresh, new.tolist(), strict=True):
                if not is_new:
                    out[k] = "duplicates a generated row"
        return out


class NearDedup:
    name = "nearDedup"

    def __init__(self, roles: ColumnRoles, threshold: float, num_perm: int) -> None:
        self.roles = roles
        self.index = NearDuplicateIndex(threshold, num_perm)

    def check(self, candidates: Sequence[Candidate]) -> list[str | None]:
        roles, index = self.roles, self.index
        texts = sorted({t for c in candidates for t in (
            _text(c, "query", roles), _item_text(c.row, roles),
            _text(c, "query", roles, source=True), _item_text(c.source, roles))})
        signatures = dict(zip(texts, minhashes(texts, index.num_perm), strict=True))
        out: list[str | None] = []
        for c in candidates:
            q, i = signatures[_text(c, "query", roles)], signatures[_item_text(c.row, roles)]
            sq, si = signatures[_text(c, "query", roles, source=True)], signatures[_item_text(c.source, roles)]
            if q.jaccard(sq) >= index.threshold and i.jaccard(si) >= index.threshold:
                out.append("near-duplicates its source row")
            elif index.similar(q, i):
                out.append("near-duplicates a generated row")
            else:
                index.add(q, i)
                out.append(None)
        return out


# --- the chain ----------------------------------------------------------------------------------------


def build_filters(filters: Filters, roles: ColumnRoles, labels: Labels, source_pairs: HashSet, models: ModelCache,
                  split: EvalSplit | None) -> tuple[list[Filter], dict[str, str]]:
    """The configured filters in the order they run, and notes on the ones skipped (for the manifest)."""
    chain: list[Filter] = []
    notes: dict[str, str] = {}
    if filters.length is not None:
        chain.append(LengthFilter(roles, filters.length.min, filters.length.max))
    if filters.charset is not None:
        chain.append(CharsetFilter(roles, filters.charset.scripts, filters.charset.max_other_fraction))
    if split is not None:
        chain.append(LeakageGuard(roles, split))
    if filters.similarity is not None:
        sim = filters.similarity
        encoder = models.encoder(sim.model, "spec.filters.similarity.model") if sim.model else None
        chain.append(SimilarityFilter(roles, sim.min, sim.max, encoder))
    if filters.label_consistency is not None:
        lc = filters.label_consistency
        if lc.model is None:
            notes["labelConsistency"] = "skipped: no teacher model given (spec.filters.labelConsistency.model)"
            log.warning("label-consistency check skipped: spec.filters.labelConsistency.model is not set")
        else:
            classifier = models.classifier(lc.model, "spec.filters.labelConsistency.model")
            unknown = [label for label in labels.counts if classifier.class_index(label) is None]
            if unknown:
                raise ConfigError(f"spec.filters.labelConsistency.model has classes {classifier.class_names}, which "
                                  f"do not cover the source labels {unknown}; use a classifier trained on these "
                                  "labels (its id2label names, or class indices for integer labels)")
            chain.append(LabelConsistencyFilter(roles, classifier, lc.min_agreement))
    dedup = filters.dedup
    method = "exact" if dedup is None else dedup.method
    if method in ("exact", "minhash"):
        chain.append(ExactDedup(roles, source_pairs))
    if method == "minhash":
        assert dedup is not None and dedup.method == "minhash"
        chain.append(NearDedup(roles, dedup.threshold, dedup.num_permutations))
    return chain, notes
