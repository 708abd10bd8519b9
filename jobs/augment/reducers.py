"""The first pass's reducers: one per fact :class:`~.knowledge.DatasetKnowledge` holds.

Each reducer takes the cleaned batches of the source one at a time (``add``) and gives its fact
(``result``). ``merge(other)`` folds in a reducer of the same kind and configuration that read other
batches, as if they had come after this one's, so several readers of one source can each reduce
their part and have the parts combined; ``other`` is used up. Merging is exact for every reducer
here (bottom-k samples, counts, histograms, hash sets, the item pool) except the dense sums, which
differ from one reducer over all the batches by floating-point summation order only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol, Self

import numpy as np
from numpy.typing import NDArray

from sampleforge.api.augmentation import AugmentationRunSpec, Preprocess
from sampleforge.jobs.common.hashing import splitmix64

from .dedup import HashSet, hash64, item_repr, norm_key, pair_hashes
from .itempool import ItemPool, ItemPoolBuilder
from .labels import Labels
from .preprocess import DenseStats, fit_dense_stats, label_kind
from .randomness import RowRandomness
from .rows import ColumnRoles, RowBatch

__all__ = [
    "ATTRIBUTE_VALUES",
    "HISTOGRAM_BINS",
    "SAMPLE_ROWS",
    "AttributeValues",
    "BottomK",
    "CleanBatch",
    "DenseColumns",
    "ItemPoolReducer",
    "LabelCounts",
    "MaxRowsHistogram",
    "Reducer",
    "RowSample",
    "SelectionBudget",
    "SelectionHistograms",
    "SourcePairs",
    "selection_budget",
]

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
        """Offer ``payload`` under ``key``; a callable payload is called only when the entry is kept."""
        if self._rejects(key):
            return
        self._keep(key, payload() if callable(payload) else payload)

    def merge(self, other: BottomK) -> None:
        """Offer ``other``'s entries: the first payload of a key stays this one's, as in one pass."""
        for key, payload in other.result():
            if not self._rejects(key):
                self._keep(key, payload)

    def _rejects(self, key: int) -> bool:
        return (self._cutoff is not None and key > self._cutoff) or key in self._items

    def _keep(self, key: int, payload: Any) -> None:
        self._items[key] = payload
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


class CleanBatch:
    """A cleaned batch of source rows, with the item texts two reducers key on made once."""

    def __init__(self, rows: RowBatch) -> None:
        self.rows = rows

    @cached_property
    def item_reprs(self) -> Sequence[str]:
        """Each row's item with its attribute values (:func:`~.dedup.item_repr`): what a source pair
        and a pool item are identified by."""
        rows = self.rows
        if not rows.roles.attributes:
            return rows.items
        return [item_repr(rows.items[i], rows.attributes(i)) for i in range(len(rows))]


class Reducer(Protocol):
    """What every reducer of a cleaned batch does (each also has a ``result()`` of its own type)."""

    def add(self, batch: CleanBatch) -> None: ...

    def merge(self, other: Self) -> None: ...


class LabelCounts:
    """Rows per label value, and the Python types seen, which decide the label type."""

    def __init__(self) -> None:
        self._counts: Counter[Any] = Counter()
        self._types: set[type] = set()

    def add(self, batch: CleanBatch) -> None:
        for value in batch.rows.labels:
            self._counts[value] += 1
            self._types.add(type(value))

    def merge(self, other: LabelCounts) -> None:
        self._counts.update(other._counts)
        self._types |= other._types

    def result(self) -> Labels:
        """The label type and the rows per label, counted by each label's string form."""
        kind = label_kind(self._types)
        codec = Labels(kind)
        out: Counter[str] = Counter()
        for value, n in self._counts.items():
            if kind == "int":
                value = int(value)
            elif kind == "float":
                value = float(value)
            out[codec.key(value)] += n
        return Labels(kind, dict(sorted(out.items())))


class DenseColumns:
    """Exact running sums, squares, minima and maxima of the dense features, and a bottom-k row
    sample of them (for quantiles): what :func:`~.preprocess.fit_dense_stats` fits on."""

    def __init__(self, names: Sequence[str], options: Preprocess) -> None:
        self.names = tuple(names)
        self.options = options
        dims = len(self.names)
        self.rows = 0
        self.total = np.zeros(dims)
        self.total_sq = np.zeros(dims)
        self.low = np.full(dims, np.inf)
        self.high = np.full(dims, -np.inf)
        self.sample = BottomK(max(1000, min(DENSE_SAMPLE_ROWS, DENSE_SAMPLE_VALUES // max(dims, 1))))

    def add(self, batch: CleanBatch) -> None:
        rows = batch.rows
        matrix = np.column_stack([np.asarray(rows.columns[d], dtype=np.float64) for d in self.names])
        self.rows += len(rows)
        self.total += matrix.sum(axis=0)
        self.total_sq += (matrix * matrix).sum(axis=0)
        self.low = np.minimum(self.low, matrix.min(axis=0))
        self.high = np.maximum(self.high, matrix.max(axis=0))
        for i in range(len(rows)):
            self.sample.offer(splitmix64(int(rows.row_ids[i]) ^ _DENSE_SALT),
                              lambda i=i, m=matrix: m[i].copy())  # type: ignore[misc]

    def merge(self, other: DenseColumns) -> None:
        self.rows += other.rows
        self.total += other.total
        self.total_sq += other.total_sq
        self.low = np.minimum(self.low, other.low)
        self.high = np.maximum(self.high, other.high)
        self.sample.merge(other.sample)

    def result(self) -> DenseStats:
        picked = [row for _, row in self.sample.result()]
        sample = np.vstack(picked) if picked else np.zeros((0, len(self.names)))
        return fit_dense_stats(self.names, self.options, self.rows, self.total, self.total_sq, self.low, self.high,
                               sample)


class AttributeValues:
    """Up to :data:`ATTRIBUTE_VALUES` distinct values per attribute column (a bottom-k sample by the
    hash of the normalised value; the first spelling of a value wins)."""

    def __init__(self, attributes: Sequence[str]) -> None:
        self._values = {name: BottomK(ATTRIBUTE_VALUES) for name in attributes}

    def add(self, batch: CleanBatch) -> None:
        for name, bottom in self._values.items():
            for value in batch.rows.columns[name]:
                if value:
                    bottom.offer(hash64(norm_key(value)), value)

    def merge(self, other: AttributeValues) -> None:
        for name, bottom in self._values.items():
            bottom.merge(other._values[name])

    def result(self) -> dict[str, list[str]]:
        return {name: [value for _, value in bottom.result()] for name, bottom in self._values.items()}


class RowSample:
    """A uniform sample of up to :data:`SAMPLE_ROWS` whole rows (bottom-k by a hash of the row id)."""

    def __init__(self, roles: ColumnRoles) -> None:
        self.roles = roles
        self._rows = BottomK(SAMPLE_ROWS)

    def add(self, batch: CleanBatch) -> None:
        rows = batch.rows
        for i in range(len(rows)):
            self._rows.offer(splitmix64(int(rows.row_ids[i]) ^ _SAMPLE_SALT),
                             lambda i=i, b=rows: (int(b.row_ids[i]), b.row(i)))  # type: ignore[misc]

    def merge(self, other: RowSample) -> None:
        self._rows.merge(other._rows)

    def result(self) -> RowBatch:
        """The sampled rows, in row order."""
        picked = sorted(payload for _, payload in self._rows.result())
        ids = np.asarray([row_id for row_id, _ in picked], dtype=np.int64)
        return RowBatch(self.roles, ids, {c: [row[c] for _, row in picked] for c in self.roles.all})


class ItemPoolReducer:
    """Every distinct item of the source (:mod:`.itempool`), the first row of an item winning."""

    def __init__(self, roles: ColumnRoles) -> None:
        self.roles = roles
        self._builder = ItemPoolBuilder(roles.attributes, roles.image is not None)

    def add(self, batch: CleanBatch) -> None:
        rows, roles = batch.rows, self.roles
        keys = np.fromiter((hash64(norm_key(r)) for r in batch.item_reprs), dtype=np.uint64, count=len(rows))
        self._builder.add(keys, rows.row_ids, rows.items, {a: rows.columns[a] for a in roles.attributes},
                          rows.columns[roles.image] if roles.image else None)

    def merge(self, other: ItemPoolReducer) -> None:
        self._builder.merge(other._builder)

    def result(self) -> ItemPool:
        return self._builder.build()


class SourcePairs:
    """The 64-bit hash of every source (query, item with attributes) pair, for exact dedup and for
    keeping known positives out of hard negatives (8 bytes per row)."""

    def __init__(self) -> None:
        self._chunks: list[NDArray[np.uint64]] = []

    def add(self, batch: CleanBatch) -> None:
        self._chunks.append(pair_hashes(batch.rows.queries, batch.item_reprs))

    def merge(self, other: SourcePairs) -> None:
        self._chunks.extend(other._chunks)
        other._chunks = []

    def result(self) -> HashSet:
        pairs = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.uint64)
        self._chunks.clear()  # the chunks and their concatenation must not coexist with the sort in HashSet
        return HashSet(pairs)


@dataclass(frozen=True)
class SelectionBudget:
    """Which rows an augmenter may work on: rows whose selection number is below ``threshold``."""

    fraction: float
    threshold: float
    max_rows: int | None
    per_row: int | None


def selection_budget(entry: Any) -> tuple[float, int | None, int | None]:
    """(fraction, maxRows, rows-per-selected-row) of an augmenter spec entry."""
    per_row = getattr(entry, "per_row", None) or getattr(entry, "per_query", None)
    return float(entry.fraction), entry.max_rows, per_row


class MaxRowsHistogram:
    """How many rows fall in each of :data:`HISTOGRAM_BINS` bins of the selection numbers below
    ``fraction``: the threshold that selects at most ``maxRows / perRow`` rows of the whole source."""

    def __init__(self, randomness: RowRandomness, fraction: float, max_rows: int, per_row: int | None) -> None:
        self.randomness = randomness
        self.fraction = fraction
        self.max_rows = max_rows
        self.per_row = per_row
        self.counts: NDArray[np.int64] = np.zeros(HISTOGRAM_BINS, dtype=np.int64)

    def add(self, row_ids: NDArray[np.int64]) -> None:
        u = self.randomness.uniform(row_ids, "select")
        u = u[u < self.fraction]
        if u.size:
            bins = np.minimum((u / self.fraction * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
            self.counts += np.bincount(bins, minlength=HISTOGRAM_BINS)

    def merge(self, other: MaxRowsHistogram) -> None:
        self.counts += other.counts

    def threshold(self) -> float:
        rows_cap = max(1, self.max_rows // max(self.per_row or 1, 1))
        cumulative = np.cumsum(self.counts)  # cumulative[j]: rows with bin <= j
        if cumulative[-1] <= rows_cap:
            return self.fraction
        within = int(np.searchsorted(cumulative, rows_cap, side="right"))  # bins [0, within) fit
        return self.fraction * within / HISTOGRAM_BINS


class SelectionHistograms:
    """The selection budget of every augmenter: its fraction, lowered to a threshold that keeps it
    within ``maxRows`` over all shards together where it has one (a :class:`MaxRowsHistogram` each).

    ``rebalance`` gets no histogram: it is bounded through its rates instead
    (:func:`~.rebalance.rebalance_rates` with ``maxRows``), which need the label counts, not a threshold.
    """

    def __init__(self, spec: AugmentationRunSpec) -> None:
        self._budgets = {entry.display_name(): selection_budget(entry) for entry in spec.augmenters}
        self._histograms = {
            entry.display_name(): MaxRowsHistogram(RowRandomness(spec.seed, entry.display_name()), fraction,
                                                   max_rows, per_row)
            for entry in spec.augmenters
            for fraction, max_rows, per_row in [selection_budget(entry)]
            if max_rows is not None and entry.type != "rebalance"
        }

    def add(self, batch: CleanBatch) -> None:
        for histogram in self._histograms.values():
            histogram.add(batch.rows.row_ids)

    def merge(self, other: SelectionHistograms) -> None:
        for name, histogram in self._histograms.items():
            histogram.merge(other._histograms[name])

    def result(self) -> dict[str, SelectionBudget]:
        found = {}
        for name, (fraction, max_rows, per_row) in self._budgets.items():
            histogram = self._histograms.get(name)
            threshold = histogram.threshold() if histogram is not None else fraction
            found[name] = SelectionBudget(fraction, threshold, max_rows, per_row)
        return found
