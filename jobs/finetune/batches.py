"""From rows to batches: bucket by length, pad per batch (tokenising is :mod:`.tokens`).

* The data loader only slices and pads integer arrays: token ids were written once, up front
  (:func:`.tokens.tokenize_to_files`), so it never starves the step (``bench/bench_finetune.py``
  measures that). Datasets read them by row, from memory-mapped files or, for small sets and
  tests, from lists (:class:`Tokenized`).
* Length bucketing: rows are shuffled, cut into pools of ``pool_batches`` batches, sorted by length
  inside a pool and cut into batches, whose order is shuffled again. Batches hold rows of similar
  length, so dynamic padding wastes little, while the order stays random across the epoch.
* The order is a pure function of (seed, epoch): every rank computes the same batches, and a
  resumed run skips exactly the batches it had already trained on
  (``accelerator.skip_first_batches``) and continues with the same ones an uninterrupted run sees.
* The samplers hold an epoch's order as numpy arrays and hand out one batch list at a time, so
  their memory is a few bytes per row, not a Python list per batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import DataLoader, Dataset, Sampler


class Ragged(Protocol):
    """Row ``i`` of a tokenised column, unpadded."""

    def __getitem__(self, i: int, /) -> NDArray[Any]: ...

    def __len__(self) -> int: ...


class Tokens(Protocol):
    """Token ids per row and their lengths: :class:`Tokenized` or :class:`.tokens.MappedTokens`."""

    @property
    def input_ids(self) -> Ragged: ...

    @property
    def token_type_ids(self) -> Ragged | None: ...

    @property
    def lengths(self) -> NDArray[Any]: ...


@dataclass(frozen=True)
class Tokenized:
    """Token ids per row, unpadded, in memory, and their lengths."""

    input_ids: list[NDArray[np.int32]]
    token_type_ids: list[NDArray[np.int8]] | None

    @property
    def lengths(self) -> NDArray[np.int64]:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


class PairDataset(Dataset[dict[str, Any]]):
    """Cross-encoder rows: one (query, item) sequence, a target, optional dense features."""

    def __init__(self, tokens: Tokens, targets: NDArray[Any], dense: NDArray[np.float32] | None,
                 use_token_types: bool = True, grades: NDArray[np.float64] | None = None,
                 query_keys: NDArray[np.int64] | None = None) -> None:
        self.tokens = tokens
        self.targets = targets
        self.dense = dense
        self.use_token_types = use_token_types and tokens.token_type_ids is not None
        self.lengths = tokens.lengths
        #: For the losses grouped by query (training.loss pairwise / listwise): each row's grade and query.
        self.grades = grades
        self.query_keys = query_keys

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        inputs: dict[str, NDArray[Any]] = {"input_ids": self.tokens.input_ids[i]}
        if self.use_token_types:
            assert self.tokens.token_type_ids is not None
            inputs["token_type_ids"] = self.tokens.token_type_ids[i]
        item: dict[str, Any] = {"row": i, "target": self.targets[i], "inputs": inputs}
        if self.dense is not None:
            item["dense"] = self.dense[i]
        if self.grades is not None and self.query_keys is not None:
            item["grade"] = self.grades[i]
            item["query_key"] = self.query_keys[i]
        return item


@dataclass(frozen=True)
class HardNegatives:
    """Judged-irrelevant items that train beside the in-batch negatives (twoTower.hardNegatives):
    their tokens and item keys, and which one each dataset row carries (-1: none)."""

    tokens: Tokens
    keys: NDArray[np.int64]
    #: Per dataset row: the index into ``tokens`` of its negative, or -1.
    per_row: NDArray[np.int64]


class TwoTowerDataset(Dataset[dict[str, Any]]):
    """Two-tower rows: a query sequence and an item sequence, with ids of the distinct query and
    item texts so the loss can tell a true in-batch negative from a duplicate positive.

    ``pairs`` maps each dataset row to a positive pair (rows repeat pairs when hard negatives
    outnumber a query's positives); ``negatives`` gives some rows a hard negative, which the
    collator gathers into ``negative`` / ``negative_key`` with ``negative_index`` naming the rows."""

    def __init__(self, queries: Tokens, items: Tokens, query_keys: NDArray[np.int64],
                 item_keys: NDArray[np.int64], pairs: NDArray[np.int64] | None = None,
                 negatives: HardNegatives | None = None) -> None:
        self.queries, self.items = queries, items
        self.query_keys, self.item_keys = query_keys, item_keys
        self.pairs = np.arange(len(query_keys)) if pairs is None else np.asarray(pairs)
        self.negatives = negatives
        lengths = queries.lengths + items.lengths
        self.lengths = lengths[self.pairs]
        if negatives is not None:
            has = negatives.per_row >= 0
            self.lengths = self.lengths + np.where(has, negatives.tokens.lengths[np.maximum(negatives.per_row, 0)], 0)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        p = int(self.pairs[i])
        row = {"row": i, "query": {"input_ids": self.queries.input_ids[p]},
               "item": {"input_ids": self.items.input_ids[p]},
               "query_key": self.query_keys[p], "item_key": self.item_keys[p]}
        if self.negatives is not None and self.negatives.per_row[i] >= 0:
            n = int(self.negatives.per_row[i])
            row["negative"] = {"input_ids": self.negatives.tokens.input_ids[n]}
            row["negative_key"] = self.negatives.keys[n]
        return row


class TextDataset(Dataset[dict[str, Any]]):
    """One text per row (two-tower evaluation encodes queries and the corpus separately)."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens
        self.lengths = tokens.lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"row": i, "inputs": {"input_ids": self.tokens.input_ids[i]}}


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length rows in an order that depends only on (seed, epoch).

    At most one batch is short, and it always comes last: accelerate's ``BatchSamplerShard``
    (which deals batches out to the ranks) assumes so, and completes that last batch with rows from
    the start so every rank gets as many batches; a short batch in the middle would be dropped.
    ``batch_size`` and ``drop_last`` are read by it, too.

    With ``shuffle=False`` (evaluation) rows are simply sorted by length, longest first, so the
    largest batch comes first and an out-of-memory error shows up at once.
    """

    drop_last = False

    def __init__(self, lengths: NDArray[np.int64], batch_size: int, seed: int, shuffle: bool = True,
                 pool_batches: int = 50) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.pool = batch_size * pool_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def _order(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """This epoch's rows in batch order: the rows arranged in batches of ``batch_size`` (the
        last one possibly short), and the order in which the full batches are dealt out."""
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            return np.argsort(-self.lengths, kind="stable"), np.arange(n // size)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        # Sort each pool by length, longest first (stable: ties keep the shuffled order), in place.
        # Pools hold whole batches, so only the last pool's last batch can be short.
        for start in range(0, n, self.pool):
            pool = order[start:start + self.pool]
            pool[:] = pool[np.argsort(-self.lengths[pool], kind="stable")]
        return order, rng.permutation(n // size)

    def __iter__(self) -> Iterator[list[int]]:
        arranged, full = self._order()
        size = self.batch_size
        if not self.shuffle:  # longest first, in order
            for start in range(0, len(arranged), size):
                yield arranged[start:start + size].tolist()
            return
        for k in full:
            yield arranged[k * size:(k + 1) * size].tolist()
        if len(arranged) % size:
            yield arranged[len(full) * size:].tolist()

    def batches(self) -> list[list[int]]:
        """This epoch's batches, as lists of row indices."""
        return list(self)


class QueryBatchSampler(Sampler[list[int]]):
    """Batches that keep each query's rows together, for the losses grouped by query
    (training.loss pairwise / listwise): a pair or a list only exists inside one batch.

    Queries are packed whole, in an order drawn from the seed, into batches of at most
    ``batch_size`` rows (a query with more rows than that is cut into batch-sized pieces, longest
    rows first, so its pieces still hold pairs). The packing is drawn once, so the number of batches
    (and the step count the schedule is built from) is the same every epoch; each epoch shuffles
    the batches' order from (seed, epoch). Batches differ in size, so ``batch_size`` reads None,
    which tells accelerate's ``BatchSamplerShard`` to deal them out to the ranks as they are
    instead of expecting equal ones.

    Packed batches are consecutive runs of one array of rows (queries in drawn order, each query's
    rows longest first), so the packing is that array and where each batch starts.
    """

    drop_last = False
    batch_size = None

    def __init__(self, query_keys: NDArray[np.int64], lengths: NDArray[np.int64], batch_size: int,
                 seed: int) -> None:
        self.rows_per_batch = batch_size
        self.seed = seed
        self.epoch = 0
        keys = np.asarray(query_keys)
        lengths = np.asarray(lengths)
        rng = np.random.default_rng([seed, 2**31])  # apart from the per-epoch streams
        _, group = np.unique(keys, return_inverse=True)
        group = group.reshape(-1)
        count = int(group.max()) + 1 if len(group) else 0
        drawn = np.empty(count, dtype=np.int64)
        drawn[rng.permutation(count)] = np.arange(count)
        # Rows by (query's draw, longest first, row): stable, as the sort of each query's rows was.
        self.rows = np.lexsort((-lengths.astype(np.int64), drawn[group])).astype(np.int64)
        sizes = np.bincount(drawn[group], minlength=count)
        starts: list[int] = []
        filled = batch_size  # rows in the open batch; none is open yet
        position = 0
        for size in sizes.tolist():
            whole, rest = divmod(size, batch_size)
            for piece in [batch_size] * whole + ([rest] if rest else []):
                if filled + piece > batch_size:
                    starts.append(position)
                    filled = 0
                filled += piece
                position += piece
        self.starts = np.asarray([*starts, position], dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for b in rng.permutation(len(self)):
            yield self.rows[self.starts[b]:self.starts[b + 1]].tolist()

    def batches(self) -> list[list[int]]:
        """This epoch's batches, as lists of row indices."""
        return list(self)


class Collator:
    """Pad each batch to its own longest sequence (optionally to a multiple of 8 for tensor cores).

    A dict value in a row is a tokenised sequence: it becomes ``input_ids`` / ``attention_mask``
    (and ``token_type_ids``) tensors. Numbers and arrays are stacked. A key that only some rows
    carry (a two-tower row's hard negative) is stacked over those rows, and for a sequence
    ``<key>_index`` holds their positions in the batch.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def _pad(self, sequences: list[dict[str, NDArray[Any]]]) -> dict[str, torch.Tensor]:
        width = max(len(s["input_ids"]) for s in sequences)
        if self.multiple:
            width = math.ceil(width / self.multiple) * self.multiple
        ids = np.full((len(sequences), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        types = np.zeros((len(sequences), width), dtype=np.int64) if "token_type_ids" in sequences[0] else None
        for row, seq in enumerate(sequences):
            n = len(seq["input_ids"])
            ids[row, :n] = seq["input_ids"]
            mask[row, :n] = 1
            if types is not None:
                types[row, :n] = seq["token_type_ids"]
        out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if types is not None:
            out["token_type_ids"] = torch.from_numpy(types)
        return out

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key in dict.fromkeys(k for r in rows for k in r):
            present = [i for i, r in enumerate(rows) if key in r]
            values = [rows[i][key] for i in present]
            value = values[0]
            if isinstance(value, dict):
                batch[key] = self._pad(values)
                if len(present) != len(rows):
                    batch[f"{key}_index"] = torch.tensor(present, dtype=torch.int64)
            else:
                batch[key] = torch.from_numpy(np.stack(values) if isinstance(value, np.ndarray) else np.asarray(values))
        return batch


def make_loader(dataset: Dataset[dict[str, Any]], sampler: BucketBatchSampler | QueryBatchSampler, collator: Collator,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader[dict[str, Any]]:
    """A DataLoader over ``dataset`` whose batches come from ``sampler`` (to be passed through
    ``accelerator.prepare``, which shards the batches across ranks).

    It gets a generator of its own: without one, every ``iter()`` of a DataLoader draws a seed
    from torch's global RNG, so a resumed run (which starts a fresh iterator mid-epoch) would see
    different dropout masks than an uninterrupted one.
    """
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(sampler.seed))
