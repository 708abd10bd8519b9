"""From rows to batches: tokenise once, bucket by length, pad per batch.

* Tokenising happens once, up front, with the fast tokenizer's batch call: the data loader then
  only slices and pads integer arrays, so it never starves the step (``bench/bench_finetune.py``
  measures that).
* Length bucketing: rows are shuffled, cut into pools of ``pool_batches`` batches, sorted by length
  inside a pool and cut into batches, whose order is shuffled again. Batches hold rows of similar
  length, so dynamic padding wastes little, while the order stays random across the epoch.
* The order is a pure function of (seed, epoch): every rank computes the same batches, and a
  resumed run skips exactly the batches it had already trained on
  (``accelerator.skip_first_batches``) and continues with the same ones an uninterrupted run sees.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import DataLoader, Dataset, Sampler


@dataclass(frozen=True)
class Tokenized:
    """Token ids per row, unpadded, and their lengths."""

    input_ids: list[NDArray[np.int32]]
    token_type_ids: list[NDArray[np.int8]] | None

    @property
    def lengths(self) -> NDArray[np.int64]:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def tokenize(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int,
             chunk: int = 4096) -> Tokenized:
    """Tokenise ``texts`` (or ``(texts, pairs)`` for a cross-encoder), truncated to ``max_length``.
    For pairs, the longer side is cut first, so a long product description never pushes out the
    query."""
    ids: list[NDArray[np.int32]] = []
    types: list[NDArray[np.int8]] = []
    has_types = True
    for start in range(0, len(texts), chunk):
        encoded = tokenizer(
            list(texts[start:start + chunk]),
            list(pairs[start:start + chunk]) if pairs is not None else None,
            truncation="longest_first" if pairs is not None else True,
            max_length=max_length,
            padding=False,
        )
        ids.extend(np.asarray(x, dtype=np.int32) for x in encoded["input_ids"])
        if "token_type_ids" in encoded:
            types.extend(np.asarray(x, dtype=np.int8) for x in encoded["token_type_ids"])
        else:
            has_types = False
    return Tokenized(ids, types if has_types else None)


class PairDataset(Dataset[dict[str, Any]]):
    """Cross-encoder rows: one (query, item) sequence, a target, optional dense features."""

    def __init__(self, tokens: Tokenized, targets: NDArray[Any], dense: NDArray[np.float32] | None,
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

    tokens: Tokenized
    keys: NDArray[np.int64]
    #: Per dataset row: the index into ``tokens`` of its negative, or -1.
    per_row: NDArray[np.int64]


class TwoTowerDataset(Dataset[dict[str, Any]]):
    """Two-tower rows: a query sequence and an item sequence, with ids of the distinct query and
    item texts so the loss can tell a true in-batch negative from a duplicate positive.

    ``pairs`` maps each dataset row to a positive pair (rows repeat pairs when hard negatives
    outnumber a query's positives); ``negatives`` gives some rows a hard negative, which the
    collator gathers into ``negative`` / ``negative_key`` with ``negative_index`` naming the rows."""

    def __init__(self, queries: Tokenized, items: Tokenized, query_keys: NDArray[np.int64],
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

    def __init__(self, tokens: Tokenized) -> None:
        self.tokens = tokens
        self.lengths = tokens.lengths

    def __len__(self) -> int:
        return len(self.tokens.input_ids)

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

    def batches(self) -> list[list[int]]:
        """This epoch's batches, as lists of row indices."""
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            return [order[i:i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        batches: list[list[int]] = []
        for start in range(0, len(order), self.pool):
            pool = order[start:start + self.pool]
            pool = pool[np.argsort(-self.lengths[pool], kind="stable")]
            batches.extend(pool[i:i + self.batch_size].tolist() for i in range(0, len(pool), self.batch_size))
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) != self.batch_size]
        return [full[i] for i in rng.permutation(len(full))] + short

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())


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
        distinct, inverse = np.unique(keys, return_inverse=True)
        groups: list[list[int]] = [[] for _ in range(len(distinct))]
        for row, group in enumerate(inverse):
            groups[group].append(row)
        packed: list[list[int]] = []
        current: list[int] = []
        for g in rng.permutation(len(groups)):
            rows = sorted(groups[g], key=lambda r: -int(lengths[r]))
            pieces = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
            for piece in pieces:
                if current and len(current) + len(piece) > batch_size:
                    packed.append(current)
                    current = []
                current = current + piece
        if current:
            packed.append(current)
        self.packed = packed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.packed)

    def batches(self) -> list[list[int]]:
        """This epoch's batches, as lists of row indices."""
        rng = np.random.default_rng([self.seed, self.epoch])
        return [list(self.packed[i]) for i in rng.permutation(len(self.packed))]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())


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
