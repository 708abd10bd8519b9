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
* The index is built once per run: the type is registered with ``prepares=True``, so in a run of
  several shards the analysis step builds it and exports it (:meth:`HardNegativeMiner.export_state`:
  faiss's serialised index, or the BM25 matrix as ``np.savez`` arrays), and every shard's factory loads
  it instead of encoding or tokenising the whole catalog again, after checking that it was built
  with the same method, model and seed over the same pool (its size and a digest of its item keys).
  Only the queries are encoded in the shards. A run of one shard builds the index in its factory.
  The summary says which index it is (``index``, ``items``) and ``"prepared": true`` when loaded.
* Excluded: the row's own item, and every item the query is paired with anywhere in the source,
  whatever its label (known pairs are not negatives to invent; a known irrelevant pair is already
  in the data). Then ``skipTop`` of the remaining best candidates are skipped (near the top are the
  unlabelled positives) and the next ``perQuery`` become negatives.
* The generated row takes the candidate's item text, attributes and image, keeps the source row's
  query and dense features, and gets ``label`` (or the lowest label of the source: rule ``lowest``).
* Rows with the same query get the same negatives; the exact-dedup filter then keeps one copy.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from sampleforge.api.augmenters import HardNegativeAugmenter

from .bm25 import BM25Index
from .dedup import hash64, item_repr, norm_key, normalized_pair_hashes
from .embedding import TextEncoder
from .errors import ConfigError
from .itempool import ItemPool
from .labels import LabelError
from .protocol import BatchPlan, GeneratedRow
from .registry import BuildContext, register_row_augmenter, seal_state
from .retrieval import VectorIndex, build_item_index, load_item_index
from .rows import RowBatch

__all__ = ["STATE_VERSION", "HardNegativeMiner", "state_kind"]

_CACHE_QUERIES = 10_000
_SLACK = 32
#: Format version of the prepared state (kind ``hardNegative/<method>``); a change to what
#: :meth:`HardNegativeMiner.export_state` writes must bump it.
STATE_VERSION = 1


class HardNegativeMiner:
    """Ranks pool items for a query and picks negatives (see the module docstring)."""

    def __init__(self, name: str, pool: ItemPool, *, method: str, per_query: int, skip_top: int, label: Any,
                 label_rule: str, build: BuildContext, encoder: TextEncoder | None = None,
                 index: BM25Index | VectorIndex | None = None, identity: Mapping[str, Any] | None = None,
                 prepared: bool = False) -> None:
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
        #: What the index was built from (:func:`_identity`), sealed with it for the shards to check.
        self.identity = dict(identity or {})
        self.prepared = prepared

    def summary(self) -> Mapping[str, Any]:
        """Which index the negatives come from, and whether it was loaded from the analysis step."""
        kind = "bm25" if self._bm25 is not None else self._vectors.kind if self._vectors is not None else "none"
        return {"method": self.method, "index": kind, "items": len(self.pool),
                **({"prepared": True} if self.prepared else {})}

    def export_state(self) -> bytes:
        """The retrieval index for the shards (see the module docstring), sealed with its identity."""
        index = self._bm25 if self._bm25 is not None else self._vectors
        if index is None:
            raise RuntimeError(f"{self.name}: no retrieval index was built, so there is none to export")
        return seal_state(state_kind(self.method), STATE_VERSION, index.to_bytes(), self.identity)

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


def state_kind(method: str) -> str:
    """The prepared state's kind: the method is part of it, so a BM25 index never loads as embeddings."""
    return f"hardNegative/{method}"


@register_row_augmenter(HardNegativeAugmenter, needs=("itemPool",), prepares=True)
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
    identity = _identity(entry, build)
    index = _prepared_index(entry, build, identity)
    return HardNegativeMiner(entry.display_name(), build.knowledge.item_pool, method=entry.method,
                             per_query=entry.per_query, skip_top=entry.skip_top, label=label, label_rule=rule,
                             build=build, encoder=encoder, index=index, identity=identity,
                             prepared=index is not None)


def _identity(entry: HardNegativeAugmenter, build: BuildContext) -> dict[str, Any]:
    """What the index depends on: method, model and seed (IVF training) for embeddings, and the pool
    (its size and a digest of its item keys, which hash each item's normalised text and attributes)."""
    pool = build.knowledge.item_pool
    found: dict[str, Any] = {"method": entry.method, "items": len(pool),
                             "pool": hashlib.sha256(np.ascontiguousarray(pool.keys).tobytes()).hexdigest()}
    if entry.method == "embedding":
        found.update(model=entry.model, seed=build.spec.seed)
    return found


def _prepared_index(entry: HardNegativeAugmenter, build: BuildContext, identity: Mapping[str, Any]
                    ) -> BM25Index | VectorIndex | None:
    """The index the analysis step built, checked against ``identity``; None when there is none."""
    prepared = build.prepared_payload(state_kind(entry.method), STATE_VERSION)
    if prepared is None:
        return None
    if dict(prepared.meta) != dict(identity):
        differs = sorted(k for k in set(prepared.meta) | set(identity) if prepared.meta.get(k) != identity.get(k))
        raise build.stale_state(f"another item pool or settings (differs in {', '.join(differs)})")
    try:
        index = load_item_index(entry.method, prepared.payload)
    except ValueError as err:
        raise ConfigError(f"{build.field_path}: the prepared {entry.method} index does not load ({err}); rerun the "
                          "analysis step") from err
    size = len(index) if isinstance(index, VectorIndex) else index.size
    if size != len(build.knowledge.item_pool):
        raise build.stale_state("an item pool of another size")
    return index
