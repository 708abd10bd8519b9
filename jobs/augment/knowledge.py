"""The first pass: facts about the *whole* source that every shard needs, learnt identically by each.

Several decisions must not depend on which shard a row lands in: the label distribution that
``rebalance`` corrects, the lowest label that hard negatives get, the pool of items hard negatives
are drawn from, the attribute values ``attributeSwap`` swaps in, the statistics dense features are
normalised with, the selection threshold that enforces ``maxRows``, and whether a generated pair
already exists somewhere in the source. So every shard streams the whole source once, with the same
cleaning code as the main pass, and reduces it to :class:`DatasetKnowledge`. Each shard computes the
same result: no coordination, no shared state, nothing to go stale when a shard is retried.

Everything collected is bounded, independent of the source size, except the source pair hashes
(8 bytes per row, for exact dedup and for keeping known positives out of hard negatives) and the
item pool (linear in the distinct items, see below):

* samples are *bottom-k* samples: the k entries with the smallest 64-bit hash among all offered.
  The result does not depend on reading order, is uniform, and for small sources is simply
  everything (10,000 values per attribute; a row sample of up to 100,000 rows of dense features,
  fewer when there are many features);
* the item pool is *every* distinct item (no cap: hard negatives search the whole catalog), stored
  column-wise at about its text size plus 40 bytes per item (:mod:`.itempool`), in key order, so it
  too does not depend on reading order;
* ``maxRows`` becomes a threshold on each row's selection number, from a fixed-size histogram
  (2^20 bins), so "at most maxRows" holds over all shards together without the shards talking.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sampleforge.api.augmentation import AugmentationRunSpec
from sampleforge.jobs.common.hashing import splitmix64

from .dedup import HashSet, hash64, item_repr, norm_key, pair_hashes
from .itempool import ItemPool, ItemPoolBuilder, PoolItem
from .labels import Labels
from .preprocess import Cleaner, DenseStats, fit_dense_stats, label_kind
from .randomness import RowRandomness
from .rows import ColumnRoles, RowBatch
from .source import RawBatch

log = logging.getLogger(__name__)

__all__ = ["BottomK", "DatasetKnowledge", "ItemPool", "PoolItem", "learn", "selection_budget"]

ATTRIBUTE_VALUES = 10_000
SAMPLE_ROWS = 20_000
DENSE_SAMPLE_ROWS = 100_000
DENSE_SAMPLE_VALUES = 4_000_000
HISTOGRAM_BINS = 1 << 20
_SAMPLE_SALT = 0x5A3E_9D21_77C4_01B5
_DENSE_SALT = 0x1C0F_FEE5_D00D_2B7A


class BottomK:
    """The ``k`` entries with the smallest keys among all offered (first payload wins per key)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._items: dict[int, Any] = {}
        self._cutoff: int | None = None

    def offer(self, key: int, payload: Any | Callable[[], Any]) -> None:
        if (self._cutoff is not None and key > self._cutoff) or key in self._items:
            return
        self._items[key] = payload() if callable(payload) else payload
        if len(self._items) >= 2 * self.k:
            self._prune()

    def _prune(self) -> None:
        keys = sorted(self._items)[: self.k]
        self._items = {key: self._items[key] for key in keys}
        self._cutoff = keys[-1] if len(keys) == self.k else None

    def result(self) -> list[tuple[int, Any]]:
        keys = sorted(self._items)[: self.k]
        return [(key, self._items[key]) for key in keys]

    def __len__(self) -> int:
        return min(len(self._items), self.k)


@dataclass(frozen=True)
class SelectionBudget:
    """Which rows an augmenter may work on: rows whose selection number is below ``threshold``."""

    fraction: float
    threshold: float
    max_rows: int | None
    per_row: int | None


@dataclass
class DatasetKnowledge:
    """What the first pass learnt (see the module docstring)."""

    object_rows: list[int]
    total_rows: int
    valid_rows: int
    rejected_rows: int
    labels: Labels
    dense: DenseStats | None
    attribute_values: dict[str, list[str]]
    item_pool: ItemPool
    source_pairs: HashSet
    sample: RowBatch | None
    selection: dict[str, SelectionBudget] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The part of the manifest that describes the first pass."""
        return {
            "records": self.total_rows,
            "validRows": self.valid_rows,
            "rejectedRows": self.rejected_rows,
            "labelType": self.labels.kind,
            "itemPool": len(self.item_pool),
            "attributeValues": {name: len(values) for name, values in self.attribute_values.items()},
            "sampleRows": len(self.sample) if self.sample is not None else 0,
            "selection": {name: {"fraction": b.fraction, "threshold": b.threshold, "maxRows": b.max_rows}
                          for name, b in sorted(self.selection.items()) if b.max_rows is not None},
        }


def selection_budget(entry: Any) -> tuple[float, int | None, int | None]:
    """(fraction, maxRows, rows-per-selected-row) of an augmenter spec entry."""
    per_row = getattr(entry, "per_row", None) or getattr(entry, "per_query", None)
    return float(entry.fraction), entry.max_rows, per_row


@dataclass
class _MaxRowsHistogram:
    randomness: RowRandomness
    fraction: float
    max_rows: int
    per_row: int | None
    counts: NDArray[np.int64] = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, dtype=np.int64))

    def add(self, row_ids: NDArray[np.int64]) -> None:
        u = self.randomness.uniform(row_ids, "select")
        u = u[u < self.fraction]
        if u.size:
            bins = np.minimum((u / self.fraction * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
            self.counts += np.bincount(bins, minlength=HISTOGRAM_BINS)

    def threshold(self) -> float:
        rows_cap = max(1, self.max_rows // max(self.per_row or 1, 1))
        cumulative = np.cumsum(self.counts)  # cumulative[j]: rows with bin <= j
        if cumulative[-1] <= rows_cap:
            return self.fraction
        within = int(np.searchsorted(cumulative, rows_cap, side="right"))  # bins [0, within) fit
        return self.fraction * within / HISTOGRAM_BINS


def learn(batches: Iterator[RawBatch], object_rows: list[int], roles: ColumnRoles, spec: AugmentationRunSpec,
          needs: frozenset[str], progress: Callable[[int], None] | None = None) -> DatasetKnowledge:
    """Reduce the whole source (``batches`` from :meth:`~.source.SourceReader.read_all`) to knowledge."""
    started = time.monotonic()
    cleaner = Cleaner(roles, spec.preprocess, spec.filters.pii_redaction)
    label_counts: Counter[Any] = Counter()
    label_types: set[type] = set()
    pool = ItemPoolBuilder(roles.attributes, roles.image is not None) if "itemPool" in needs else None
    values = {a: BottomK(ATTRIBUTE_VALUES) for a in roles.attributes} if "attributeValues" in needs else {}
    sample = BottomK(SAMPLE_ROWS) if "sample" in needs else None
    dims = len(roles.dense)
    dense_sample = BottomK(max(1000, min(DENSE_SAMPLE_ROWS, DENSE_SAMPLE_VALUES // max(dims, 1)))) if dims else None
    total = np.zeros(dims)
    total_sq = np.zeros(dims)
    low = np.full(dims, np.inf)
    high = np.full(dims, -np.inf)
    pair_chunks: list[NDArray[np.uint64]] = []
    histograms = {}
    for entry in spec.augmenters:
        fraction, max_rows, per_row = selection_budget(entry)
        if max_rows is not None and entry.type != "rebalance":
            histograms[entry.display_name()] = _MaxRowsHistogram(RowRandomness(spec.seed, entry.display_name()),
                                                                 fraction, max_rows, per_row)
    valid = 0
    rejected = 0
    records = 0
    for raw in batches:
        records += raw.size
        batch, rejects = cleaner.clean(raw)
        rejected += len(rejects)
        n = len(batch)
        if progress is not None:
            progress(raw.size)
        if not n:
            continue
        valid += n
        for value in batch.labels:
            label_counts[value] += 1
            label_types.add(type(value))
        reprs = [item_repr(batch.items[i], batch.attributes(i)) for i in range(n)] if roles.attributes \
            else batch.items
        pair_chunks.append(pair_hashes(batch.queries, reprs))
        for hist in histograms.values():
            hist.add(batch.row_ids)
        if pool is not None:
            keys = np.fromiter((hash64(norm_key(r)) for r in reprs), dtype=np.uint64, count=n)
            pool.add(keys, batch.row_ids, batch.items, {a: batch.columns[a] for a in roles.attributes},
                     batch.columns[roles.image] if roles.image else None)
        for name, bottom in values.items():
            for value in batch.columns[name]:
                if value:
                    bottom.offer(hash64(norm_key(value)), value)
        if sample is not None:
            for i in range(n):
                sample.offer(splitmix64(int(batch.row_ids[i]) ^ _SAMPLE_SALT),
                             lambda i=i, b=batch: (int(b.row_ids[i]), b.row(i)))  # type: ignore[misc]
        if dims:
            matrix = np.column_stack([np.asarray(batch.columns[d], dtype=np.float64) for d in roles.dense])
            total += matrix.sum(axis=0)
            total_sq += (matrix * matrix).sum(axis=0)
            low = np.minimum(low, matrix.min(axis=0))
            high = np.maximum(high, matrix.max(axis=0))
            assert dense_sample is not None
            for i in range(n):
                dense_sample.offer(splitmix64(int(batch.row_ids[i]) ^ _DENSE_SALT),
                                   lambda i=i, m=matrix: m[i].copy())  # type: ignore[misc]
    kind = label_kind(label_types)
    labels = Labels(kind, _label_counts(label_counts, kind))
    dense = None
    if dims:
        assert dense_sample is not None
        picked = [row for _, row in dense_sample.result()]
        sample_matrix = np.vstack(picked) if picked else np.zeros((0, dims))
        dense = fit_dense_stats(roles.dense, spec.preprocess, valid, total, total_sq, low, high, sample_matrix)
    pairs = np.concatenate(pair_chunks) if pair_chunks else np.zeros(0, dtype=np.uint64)
    pair_chunks.clear()  # the chunks and their concatenation must not coexist with the sort below
    sample_batch = None
    if sample is not None:
        picked_rows = sorted(payload for _, payload in sample.result())  # in row order
        ids = np.asarray([row_id for row_id, _ in picked_rows], dtype=np.int64)
        sample_batch = RowBatch(roles, ids, {c: [row[c] for _, row in picked_rows] for c in roles.all})
    knowledge = DatasetKnowledge(
        object_rows=list(object_rows),
        total_rows=records,
        valid_rows=valid,
        rejected_rows=rejected,
        labels=labels,
        dense=dense,
        attribute_values={name: [v for _, v in bottom.result()] for name, bottom in values.items()},
        item_pool=pool.build() if pool is not None else ItemPool.of([], []),
        source_pairs=HashSet(pairs),
        sample=sample_batch,
        selection={},
        seconds=time.monotonic() - started,
    )
    for entry in spec.augmenters:
        fraction, max_rows, per_row = selection_budget(entry)
        limit = histograms.get(entry.display_name())
        knowledge.selection[entry.display_name()] = SelectionBudget(
            fraction, limit.threshold() if limit is not None else fraction, max_rows, per_row)
    log.info("first pass done", extra={"records": records, "valid_rows": valid, "rejected_rows": rejected,
                                        "label_type": kind, "item_pool": len(knowledge.item_pool),
                                        "seconds": round(knowledge.seconds, 2)})
    return knowledge


def _label_counts(counts: Counter[Any], kind: str) -> dict[str, int]:
    out: Counter[str] = Counter()
    codec = Labels(kind)
    for value, n in counts.items():
        if kind == "int":
            value = int(value)
        elif kind == "float":
            value = float(value)
        out[codec.key(value)] += n
    return dict(sorted(out.items()))
