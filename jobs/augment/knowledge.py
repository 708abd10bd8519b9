"""The first pass: facts about the *whole* source that every shard needs, learnt identically by each.

Several decisions must not depend on which shard a row lands in: the label distribution that
``rebalance`` corrects, the lowest label that hard negatives get, the pool of items hard negatives
are drawn from, the attribute values ``attributeSwap`` swaps in, the statistics dense features are
normalised with, the selection threshold that enforces ``maxRows``, and whether a generated pair
already exists somewhere in the source. So every shard streams the whole source once, with the same
cleaning code as the main pass, and reduces it to :class:`DatasetKnowledge`, one reducer per fact
(:mod:`.reducers`, fed together by :class:`FirstPass`). Each shard computes the same result: no
coordination, no shared state, nothing to go stale when a shard is retried. (The reducers also merge,
so partial results of several readers of the source can be combined.)

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sampleforge.api.augmentation import AugmentationRunSpec

from .dedup import HashSet
from .itempool import ItemPool, PoolItem
from .labels import Labels
from .preprocess import Cleaner, DenseStats
from .reducers import (
    AttributeValues,
    CleanBatch,
    DenseColumns,
    ItemPoolReducer,
    LabelCounts,
    Reducer,
    RowSample,
    SelectionBudget,
    SelectionHistograms,
    SourcePairs,
)
from .rows import ColumnRoles, RowBatch
from .source import Checkpoint, RawBatch

log = logging.getLogger(__name__)

__all__ = ["DatasetKnowledge", "FirstPass", "ItemPool", "PoolItem", "SelectionBudget", "learn"]


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
    #: Per source object, its :data:`~.source.Checkpoint` s (JSONL; empty for CSV and Parquet): where a
    #: shard's ranged read of the object may start instead of at its first byte.
    object_offsets: list[list[Checkpoint]] = field(default_factory=list)

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


class FirstPass:
    """The reducers (:mod:`.reducers`) a run needs, fed together: what one reader of the source learns.

    Label counts, source pairs and selection budgets are always learnt (every run writes labels,
    dedups and selects); dense statistics when the source has dense features; attribute values, the
    row sample and the item pool only when an augmenter ``needs`` them (they cost memory).
    """

    def __init__(self, roles: ColumnRoles, spec: AugmentationRunSpec, needs: frozenset[str]) -> None:
        self.records = 0
        self.valid = 0
        self.rejected = 0
        self.labels = LabelCounts()
        self.pairs = SourcePairs()
        self.selection = SelectionHistograms(spec)
        self.dense = DenseColumns(roles.dense, spec.preprocess) if roles.dense else None
        self.attribute_values = AttributeValues(roles.attributes) if "attributeValues" in needs else None
        self.sample = RowSample(roles) if "sample" in needs else None
        self.item_pool = ItemPoolReducer(roles) if "itemPool" in needs else None

    def add(self, records: int, batch: RowBatch, rejected: int) -> None:
        """One batch of the source: ``records`` read, of which ``batch`` survived cleaning and
        ``rejected`` were set aside."""
        self.records += records
        self.rejected += rejected
        if not len(batch):
            return
        self.valid += len(batch)
        clean = CleanBatch(batch)
        for reducer in self._reducers():
            reducer.add(clean)

    def merge(self, other: FirstPass) -> None:
        """Fold in what another reader of the same run learnt (``other`` is used up)."""
        self.records += other.records
        self.valid += other.valid
        self.rejected += other.rejected
        for mine, theirs in zip(self._reducers(), other._reducers(), strict=True):
            mine.merge(theirs)

    def _reducers(self) -> list[Reducer]:
        optional = (self.dense, self.attribute_values, self.sample, self.item_pool)
        return [self.labels, self.pairs, self.selection, *(r for r in optional if r is not None)]

    def knowledge(self, object_rows: list[int],
                  object_offsets: list[list[Checkpoint]] | None = None) -> DatasetKnowledge:
        """The facts, for a source of ``object_rows`` records per object (this uses the reducers up)."""
        return DatasetKnowledge(
            object_rows=list(object_rows),
            object_offsets=[list(o) for o in object_offsets or []],
            total_rows=self.records,
            valid_rows=self.valid,
            rejected_rows=self.rejected,
            labels=self.labels.result(),
            dense=self.dense.result() if self.dense is not None else None,
            attribute_values=self.attribute_values.result() if self.attribute_values is not None else {},
            item_pool=self.item_pool.result() if self.item_pool is not None else ItemPool.of([], []),
            source_pairs=self.pairs.result(),
            sample=self.sample.result() if self.sample is not None else None,
            selection=self.selection.result(),
        )


def learn(batches: Iterator[RawBatch], object_rows: list[int], roles: ColumnRoles, spec: AugmentationRunSpec,
          needs: frozenset[str], progress: Callable[[int], None] | None = None,
          object_offsets: list[list[Checkpoint]] | None = None) -> DatasetKnowledge:
    """Reduce the whole source (``batches`` from :meth:`~.source.SourceReader.read_all`) to knowledge."""
    started = time.monotonic()
    cleaner = Cleaner(roles, spec.preprocess, spec.filters.pii_redaction)
    first_pass = FirstPass(roles, spec, needs)
    for raw in batches:
        batch, rejects = cleaner.clean(raw)
        first_pass.add(raw.size, batch, len(rejects))
        if progress is not None:
            progress(raw.size)
    knowledge = first_pass.knowledge(object_rows, object_offsets)
    knowledge.seconds = time.monotonic() - started
    log.info("first pass done", extra={"records": knowledge.total_rows, "valid_rows": knowledge.valid_rows,
                                        "rejected_rows": knowledge.rejected_rows, "label_type": knowledge.labels.kind,
                                        "item_pool": len(knowledge.item_pool),
                                        "seconds": round(knowledge.seconds, 2)})
    return knowledge
