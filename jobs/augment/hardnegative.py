"""``hardNegative``: pair a query with items that look relevant but are not labelled so.

Candidates come from the first pass's item pool (:mod:`.knowledge`): every distinct item of the
source when there are up to 100,000 of them, otherwise a uniform sample of that size, the same in
every shard. Why the whole-source pool rather than the shard's items: a shard's items would make a
row's negatives depend on the shard count, and a small shard would yield weak negatives.

* ``method: bm25`` ranks the pool by BM25 over the item text with its attribute values (brands and
  model numbers are exactly what makes a negative hard); ``method: embedding`` by cosine similarity of
  sentence embeddings of the query and the item titles (the first 50,000 items of the pool, which is
  already in random order, so CPU-only runs stay practical).
* Excluded: the row's own item, and every item the query is paired with anywhere in the source,
  whatever its label (known pairs are not negatives to invent; a known irrelevant pair is already
  in the data). Then ``skipTop`` of the remaining best candidates are skipped (near the top are the
  unlabelled positives) and the next ``perQuery`` become negatives.
* The generated row takes the candidate's item text, attributes and image, keeps the source row's
  query and dense features, and gets ``label`` (or the lowest label of the source: rule ``lowest``).
* Rows with the same query get the same negatives; the exact-dedup filter then keeps one copy.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .bm25 import BM25Index
from .dedup import item_repr, norm_key, normalized_pair_hashes
from .embedding import TextEncoder
from .errors import ConfigError
from .knowledge import PoolItem
from .protocol import BatchPlan, BuildContext, GeneratedRow, LabelError, RowBatch, register_row_augmenter

__all__ = ["EMBEDDING_POOL_SIZE", "HardNegativeMiner"]

EMBEDDING_POOL_SIZE = 50_000
_CACHE_QUERIES = 10_000
_SLACK = 32


class HardNegativeMiner:
    """Ranks pool items for a query and picks negatives (see the module docstring)."""

    def __init__(self, name: str, pool: list[PoolItem], *, method: str, per_query: int, skip_top: int, label: Any,
                 label_rule: str, build: BuildContext, encoder: TextEncoder | None = None) -> None:
        self.name = name
        self.label_rule = label_rule
        self.method = method
        self.per_query = per_query
        self.skip_top = skip_top
        self.label = label
        self.roles = build.roles
        self.known_pairs = build.knowledge.source_pairs
        self.pool = pool if method == "bm25" else pool[:EMBEDDING_POOL_SIZE]
        self._reprs = [item_repr(p.item, p.attributes) for p in self.pool]
        self._repr_keys = [norm_key(r) for r in self._reprs]
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        self._bm25 = BM25Index(self._reprs) if method == "bm25" else None
        self._encoder = encoder
        self._vectors: NDArray[np.float32] | None = None
        if method == "embedding" and encoder is not None:
            self._vectors = encoder.encode([p.item for p in self.pool])

    def _ranked(self, queries: list[str]) -> dict[str, list[int]]:
        """Pool indices by decreasing similarity, enough of them for exclusions, per distinct query."""
        want = self.skip_top + self.per_query + _SLACK
        todo = [q for q in dict.fromkeys(queries) if q not in self._cache]
        if todo:
            if self._bm25 is not None:
                found = {q: [d for d, _ in self._bm25.top(q, want)] for q in todo}
            else:
                assert self._encoder is not None and self._vectors is not None
                qv = self._encoder.encode(todo)
                sims = qv @ self._vectors.T if len(self.pool) else np.zeros((len(todo), 0), dtype=np.float32)
                found = {}
                for j, q in enumerate(todo):
                    row = sims[j]
                    k = min(want, row.size)
                    idx = np.argpartition(-row, k - 1)[:k] if 0 < k < row.size else np.arange(row.size)
                    order = np.lexsort((idx, -row[idx]))
                    found[q] = idx[order].tolist()
            for q, ranked in found.items():
                self._cache[q] = ranked
                if len(self._cache) > _CACHE_QUERIES:
                    self._cache.popitem(last=False)
        return {q: self._cache[q] for q in queries}

    def augment(self, batch: RowBatch, plan: BatchPlan) -> list[GeneratedRow]:
        selected = plan.selected_indices()
        if not selected or not self.pool:
            return []
        per_row = min(plan.per_row or self.per_query, self.per_query)
        roles = self.roles
        ranked = self._ranked([batch.queries[i] for i in selected])
        rows: list[GeneratedRow] = []
        for i in selected:
            query = batch.queries[i]
            own = norm_key(item_repr(batch.items[i], batch.attributes(i)))
            candidates = [d for d in ranked[query] if self._repr_keys[d] != own]
            known = self.known_pairs.contains(
                normalized_pair_hashes(norm_key(query), [self._repr_keys[d] for d in candidates]))
            eligible = [d for d, is_known in zip(candidates, known.tolist(), strict=True) if not is_known]
            for k, d in enumerate(eligible[self.skip_top : self.skip_top + per_row]):
                item = self.pool[d]
                changes: dict[str, Any] = {roles.item: item.item, roles.label: self.label, **item.attributes}
                if roles.image:
                    changes[roles.image] = item.image
                rows.append(GeneratedRow(int(batch.row_ids[i]), changes, self.label_rule, k))
        return rows


@register_row_augmenter("hardNegative", needs=("itemPool",))
def _build(entry: Any, build: BuildContext) -> HardNegativeMiner:
    path = f"{build.field_path}.label"
    try:
        if entry.label is not None:
            label, rule = build.labels.coerce(entry.label, path), "assign"
        else:
            label, rule = build.labels.lowest(path), "lowest"
    except LabelError as err:
        raise ConfigError(str(err)) from err
    encoder = None
    if entry.method == "embedding":
        encoder = build.models.encoder(entry.model, f"{build.field_path}.model")
    return HardNegativeMiner(entry.display_name(), build.knowledge.item_pool, method=entry.method,
                             per_query=entry.per_query, skip_top=entry.skip_top, label=label, label_rule=rule,
                             build=build, encoder=encoder)
