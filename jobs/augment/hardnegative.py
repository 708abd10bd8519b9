"""``hardNegative``: pair a query with items that look relevant but are not labelled so.

Candidates come from the first pass's item pool (:mod:`.knowledge`): every distinct item of the
source, the same in every shard, with no cap. Why the whole-source pool rather than the shard's
items: a shard's items would make a row's negatives depend on the shard count, and a small shard
would yield weak negatives.

* ``method: bm25`` ranks the pool by BM25 over the item text with its attribute values (brands and
  model numbers are exactly what makes a negative hard), a sparse matrix over the whole catalog
  (:mod:`.bm25`); ``method: embedding`` by cosine similarity of sentence embeddings of the query and
  the item titles, through a faiss index: exact up to 200,000 items, approximate (IVF) above
  (:mod:`.retrieval`). Both indexes are built by one call, :func:`~.retrieval.build_item_index`.
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

from sampleforge.api.augmenters import HardNegativeAugmenter

from .bm25 import BM25Index
from .dedup import hash64, item_repr, norm_key, normalized_pair_hashes
from .embedding import TextEncoder
from .errors import ConfigError
from .itempool import ItemPool
from .labels import LabelError
from .protocol import BatchPlan, GeneratedRow
from .registry import BuildContext, register_row_augmenter
from .retrieval import VectorIndex, build_item_index
from .rows import RowBatch

__all__ = ["HardNegativeMiner"]

_CACHE_QUERIES = 10_000
_SLACK = 32


class HardNegativeMiner:
    """Ranks pool items for a query and picks negatives (see the module docstring)."""

    def __init__(self, name: str, pool: ItemPool, *, method: str, per_query: int, skip_top: int, label: Any,
                 label_rule: str, build: BuildContext, encoder: TextEncoder | None = None,
                 index: BM25Index | VectorIndex | None = None) -> None:
        self.name = name
        self.label_rule = label_rule
        self.method = method
        self.per_query = per_query
        self.skip_top = skip_top
        self.label = label
        self.roles = build.roles
        self.known_pairs = build.knowledge.source_pairs
        self.pool = pool
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        self._encoder = encoder
        if index is None and (method == "bm25" or encoder is not None):
            index = build_item_index(pool, method, encoder, seed=build.spec.seed)
        self._bm25 = index if isinstance(index, BM25Index) else None
        self._vectors = index if isinstance(index, VectorIndex) else None

    def _repr_key(self, d: int) -> str:
        return norm_key(self.pool.text(d))

    def _ranked(self, queries: list[str]) -> dict[str, list[int]]:
        """Pool indices by decreasing similarity, enough of them for exclusions, per distinct query."""
        want = self.skip_top + self.per_query + _SLACK
        todo = [q for q in dict.fromkeys(queries) if q not in self._cache]
        if todo:
            if self._bm25 is not None:
                tops = self._bm25.top_many(todo, want)
                found = {q: [d for d, _ in top] for q, top in zip(todo, tops, strict=True)}
            else:
                assert self._encoder is not None and self._vectors is not None
                found = dict(zip(todo, self._vectors.search(self._encoder.encode(todo), want), strict=True))
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
            own = hash64(norm_key(item_repr(batch.items[i], batch.attributes(i))))
            keys = self.pool.keys
            candidates = [d for d in ranked[query] if int(keys[d]) != own]
            known = self.known_pairs.contains(
                normalized_pair_hashes(norm_key(query), [self._repr_key(d) for d in candidates]))
            eligible = [d for d, is_known in zip(candidates, known.tolist(), strict=True) if not is_known]
            for k, d in enumerate(eligible[self.skip_top : self.skip_top + per_row]):
                item = self.pool[d]
                changes: dict[str, Any] = {roles.item: item.item, roles.label: self.label, **item.attributes}
                if roles.image:
                    changes[roles.image] = item.image
                rows.append(GeneratedRow(int(batch.row_ids[i]), changes, self.label_rule, k))
        return rows


@register_row_augmenter(HardNegativeAugmenter, needs=("itemPool",))
def _build(entry: HardNegativeAugmenter, build: BuildContext) -> HardNegativeMiner:
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
        if entry.model is None:  # the API server rejects this already; a spec read from elsewhere may not be checked
            raise ConfigError(f"{build.field_path}.model is required when method is embedding")
        encoder = build.models.encoder(entry.model, f"{build.field_path}.model")
    return HardNegativeMiner(entry.display_name(), build.knowledge.item_pool, method=entry.method,
                             per_query=entry.per_query, skip_top=entry.skip_top, label=label, label_rule=rule,
                             build=build, encoder=encoder)
