"""The leakage guard, ``spec.filters.evalSplit``: no output row may leak what the evaluation split
holds out.

A row whose query (or item, per ``evalSplitMatch``) equals (normalised) one the evaluation split
holds out, or near-duplicates one (MinHash Jaccard of character 3-grams at or above the dedup
threshold, 0.85 by default), is dropped; unchanged fields count too, since a row that *contains* an
evaluation query leaks it whoever wrote it. Source rows and generated rows are judged alike
(:meth:`LeakageGuard.check_sources` for the source rows, which the pipeline drops and counts per
reason in the manifest), and a generated row whose source row leaks is dropped too, whatever its own
text became: a typo of an evaluation query that drifted below the near-duplicate threshold is still
its variant.
Items are compared only when the split holds items out (``item`` / ``queryOrItem``): in a split by
query the catalog is shared, and a training row about an evaluated product is not a leak. The two
roles are compared separately (a row's query against evaluation queries, its item against
evaluation items). The split is read with the source's column mapping and held in memory (an
evaluation set, not a corpus).

It runs in the filter chain (:func:`~.filters.build_filters`) and, on source rows, in each batch
(:class:`~.shardbatch.BatchProcessor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .dedup import minhashes, norm_key
from .rows import ColumnRoles

if TYPE_CHECKING:  # the filter chain (filters.py) builds the guard, so filters.py imports this module
    from .filters import Candidate

__all__ = ["EvalSplit", "LeakageGuard", "eval_split"]


@dataclass
class EvalSplit:
    """The evaluation split's normalised queries and items, and LSH indexes over them."""

    uri: str
    rows: int
    queries: set[str]
    items: set[str]
    query_index: Any
    item_index: Any
    num_perm: int
    threshold: float
    #: spec.filters.evalSplitMatch: query, item or queryOrItem.
    match: str = "query"

    @property
    def by_query(self) -> bool:
        return self.match in ("query", "queryOrItem")

    @property
    def by_item(self) -> bool:
        return self.match in ("item", "queryOrItem")

    def holds(self, query: str, item: str) -> bool:
        """Whether a row with this (cleaned) query and item exactly matches what the split holds out."""
        return (self.by_query and norm_key(query) in self.queries) or (self.by_item and norm_key(item) in self.items)

    def reasons(self, queries: Sequence[str], items: Sequence[str]) -> list[str | None]:
        """Per row, why it leaks what the split holds out (equal, then near-duplicate), or None."""
        out: list[str | None] = [None] * len(queries)
        todo = []
        for k, (q, i) in enumerate(zip(queries, items, strict=True)):
            if self.by_query and norm_key(q) in self.queries:
                out[k] = "query in eval split"
            elif self.by_item and norm_key(i) in self.items:
                out[k] = "item in eval split"
            else:
                todo.append(k)
        if todo:
            texts = sorted({queries[k] for k in todo if self.by_query} | {items[k] for k in todo if self.by_item})
            signatures = dict(zip(texts, minhashes(texts, self.num_perm), strict=True))
            for k in todo:
                if self.by_query and _near(signatures[queries[k]], self.query_index, self.threshold):
                    out[k] = "query near-duplicates eval split"
                elif self.by_item and _near(signatures[items[k]], self.item_index, self.threshold):
                    out[k] = "item near-duplicates eval split"
        return out


class LeakageGuard:
    """The evalSplit filter; also judges source rows (:meth:`check_sources`), by the same rule."""

    name = "evalSplit"
    #: Why a generated row is dropped whose own texts pass but whose source row leaks.
    FROM_LEAKING_SOURCE = "generated from a source row in eval split"

    def __init__(self, roles: ColumnRoles, split: EvalSplit) -> None:
        self.roles, self.split = roles, split
        #: Verdicts on the current batch's source rows by row id (replaced batch by batch).
        self._sources: dict[int, str | None] = {}

    def check_sources(self, rows: Sequence[dict[str, Any]], row_ids: Sequence[int]) -> list[str | None]:
        """Why each source row leaks, or None; remembered so the batch's generated rows follow them."""
        reasons = self.split.reasons([str(r[self.roles.query] or "") for r in rows],
                                     [str(r[self.roles.item] or "") for r in rows])
        self._sources = {int(i): reason for i, reason in zip(row_ids, reasons, strict=True)}
        return reasons

    def check(self, candidates: Sequence[Candidate]) -> list[str | None]:
        out = self.split.reasons([_text_of(c.row, "query", self.roles) for c in candidates],
                                 [_text_of(c.row, "item", self.roles) for c in candidates])
        unknown = {c.source_row: c.source for k, c in enumerate(candidates)
                   if out[k] is None and c.source_row not in self._sources}
        if unknown:
            ids = sorted(unknown)
            verdicts = self.split.reasons([_text_of(unknown[i], "query", self.roles) for i in ids],
                                          [_text_of(unknown[i], "item", self.roles) for i in ids])
            self._sources.update(zip(ids, verdicts, strict=True))
        for k, c in enumerate(candidates):
            if out[k] is None and self._sources.get(c.source_row) is not None:
                out[k] = self.FROM_LEAKING_SOURCE
        return out


def _text_of(row: dict[str, Any], field: str, roles: ColumnRoles) -> str:
    return str(row[roles.query if field == "query" else roles.item] or "")


def _near(signature: Any, index: _SignatureLSH, threshold: float) -> bool:
    return any(signature.jaccard(found) >= threshold for found in index.query(signature))


class _SignatureLSH:
    """MinHash LSH that returns the signatures of the candidates it finds (for the Jaccard check)."""

    def __init__(self, threshold: float, num_perm: int, texts: Sequence[str]) -> None:
        from datasketch import MinHashLSH

        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._signatures = minhashes(texts, num_perm)
        for key, signature in enumerate(self._signatures):
            self._lsh.insert(key, signature)

    def query(self, signature: Any) -> list[Any]:
        return [self._signatures[key] for key in sorted(self._lsh.query(signature))]


def eval_split(uri: str, queries: Sequence[str], items: Sequence[str], threshold: float,
               num_perm: int, match: str = "query") -> EvalSplit:
    """Index an evaluation split given its (cleaned) queries and items."""
    distinct_q = sorted({norm_key(q) for q in queries if q})
    distinct_i = sorted({norm_key(i) for i in items if i})
    return EvalSplit(uri, len(queries), set(distinct_q), set(distinct_i),
                     _SignatureLSH(threshold, num_perm, distinct_q), _SignatureLSH(threshold, num_perm, distinct_i),
                     num_perm, threshold, match)
