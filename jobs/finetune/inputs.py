"""The run's inputs: which data and which model, read from where the spec says; and the task's
datasets built from them (train rows, evaluation set).

Kept apart from the recipe so the benchmark can hand the recipe the same inputs read from local
files, and so the recipe reads as a sequence of steps rather than of URI handling.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from numpy.typing import NDArray

from sampleforge.api.finetune import FineTuneRunSpec, Task
from sampleforge.jobs.common.storage import ObjectStore, S3Uri

from .batches import (
    BucketBatchSampler,
    Collator,
    HardNegatives,
    PairDataset,
    QueryBatchSampler,
    TextDataset,
    TwoTowerDataset,
    make_loader,
)
from .data import Dataset, read_committed, read_dataset
from .errors import DatasetError, SpecError
from .evaluate import CrossEvalSet, TowerEvalSet
from .examples import Examples, TextColumn
from .labels import LabelSpace, Targets
from .model_source import ModelSource
from .modeling import DenseTransform
from .ranks import ranks
from .rejected import Rejected
from .split import split_examples
from .team import Team
from .tokens import tokenize_to_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """Everything the run reads before training: the base model and the data."""

    model: ModelSource
    train: Dataset
    #: data.eval when given; None means "hold out part of train, split by query".
    eval: Dataset | None
    #: Which spec field the training rows came from (for messages and the model card).
    train_field: str
    #: The AugmentationRun's dense-feature preprocessing (its preprocess.json), which the model
    #: applies instead of standardising with this run's own rows; None for raw data.
    preprocess: DenseTransform | None = None


def read_inputs(spec: FineTuneRunSpec, input_uri: str | None, store: ObjectStore, model: ModelSource,
                data_dir: Path, team: Team) -> Inputs:
    """Read the data the spec names into Arrow files under ``data_dir`` (each process of ``team``
    its share of the files); errors name the spec field."""
    need_label = spec.task != Task.TWO_TOWER
    if spec.data.uri is not None:
        field = "data.uri"
        train = read_dataset(store, spec.data.uri, spec.data.format, spec.data.columns, field, need_label,
                             data_dir, team)
    else:
        field = "data.fromAugmentationRun"
        if not input_uri:
            raise SpecError(f"data.fromAugmentationRun is {spec.data.from_augmentation_run!r} but "
                            "SAMPLEFORGE_INPUT_URI is not set: the operator sets it to that run's committed output "
                            "once it has succeeded; set it by hand when running the job yourself")
        train = read_committed(store, S3Uri.parse(input_uri), field, need_label, None, data_dir, team)
    train, preprocess = with_raw_dense(train, field)
    evaluation = None
    if spec.data.eval is not None:
        evaluation = read_dataset(store, spec.data.eval, None, train.columns, "data.eval", need_label, data_dir, team)
    return Inputs(model, train, evaluation, field, preprocess)


def with_raw_dense(train: Dataset, field: str) -> tuple[Dataset, DenseTransform | None]:
    """A committed AugmentationRun output holds dense features already clipped and normalised with
    the statistics of its preprocess.json (the manifest's ``preprocess``). Map them back to raw
    values and return that transform, which the model then applies itself: training rows, a raw
    data.eval file and serving requests all go through the same one, and the features are not
    standardised a second time with this run's own statistics."""
    document = train.committed.preprocess if train.committed is not None else None
    if not document or train.examples.dense is None:
        return train, None
    try:
        transform = DenseTransform.from_preprocess(document, train.columns.dense_features)
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{field}: the committed manifest's dense-feature preprocessing (preprocess.json) is "
                           f"unusable: {err}; re-run the AugmentationRun") from err
    if transform is None:
        return train, None
    raw = transform.invert(train.examples.dense).astype(np.float32)
    return replace(train, examples=train.examples.with_dense(raw)), transform


@dataclass(frozen=True)
class Split:
    """Labelled training and evaluation rows, after the label space has read them."""

    train: Examples
    train_targets: Targets
    eval: Examples
    eval_targets: Targets
    rejected: Rejected
    #: Generated rows neither trained nor evaluated on: variants of evaluated rows (see
    #: evaluation.includeSynthetic).
    held_out: int = 0
    #: twoTower: judged-irrelevant training rows that train as hard negatives (twoTower.hardNegatives).
    negatives: Examples | None = None


def split_and_encode(spec: FineTuneRunSpec, inputs: Inputs, space: LabelSpace) -> Split:
    """Hold out evaluation rows by query group (unless data.eval is given) and encode every label.

    Generated rows follow their source row's query group, and are evaluated only with
    evaluation.includeSynthetic (see :func:`.data.split_by_query`)."""
    rejected = Rejected()
    rejected.extend(inputs.train.rejected)
    train, evaluation = inputs.train.examples, None
    synthetic = spec.evaluation.include_synthetic
    if inputs.eval is None:
        fraction = spec.eval_fraction()
        assert fraction is not None
        split = split_examples(train, fraction, spec.training.seed, synthetic)
        train, evaluation = train.take(split.train), train.take(split.eval)
        held_out = len(split.held_out)
    else:
        rejected.extend(inputs.eval.rejected)
        evaluation = inputs.eval.examples
        made = evaluation.generated()
        held_out = 0 if synthetic else int(made.sum())
        if held_out:
            evaluation = evaluation.take(np.flatnonzero(~made))
    if held_out:
        log.info("generated rows held out of evaluation", extra={"rows": held_out})
    train, train_targets = space.encode(train, rejected, inputs.train_field)
    evaluation, eval_targets = space.encode(evaluation, rejected, "data.eval" if inputs.eval else inputs.train_field)
    negatives = None
    if spec.task == Task.TWO_TOWER:
        # Two-tower trains on positive pairs; judged-irrelevant rows (mined by hardNegative, demoted by
        # attributeSwap; with hardNegatives: all, the source's own too) train as hard negatives of their
        # query beside the in-batch ones. In evaluation every judged row counts.
        which = spec.two_tower_options().hard_negatives
        candidates = (train.generated() if which == "generated"
                      else np.full(len(train), which == "all", dtype=bool))
        negatives = train.take(np.flatnonzero(candidates & (train_targets.grades <= 0)))
        positive = np.flatnonzero(train_targets.grades > 0)
        train = train.take(positive)
        train_targets = Targets(train_targets.targets[positive], train_targets.grades[positive])
    if len(train) == 0:
        raise SpecError(f"no usable training rows in {inputs.train.uri} ({inputs.train_field}) after reading labels; "
                        f"rows set aside: {dict(rejected.reasons)}")
    if len(evaluation) == 0 and held_out:
        raise SpecError(f"the evaluation set holds only generated rows ({held_out}, sf_origin: generated); evaluate "
                        "on source rows, or set evaluation.includeSynthetic: true to evaluate on generated ones")
    if len(evaluation) == 0:
        raise SpecError("the evaluation set is empty; set data.eval or a larger data.evalFraction")
    return Split(train, train_targets, evaluation, eval_targets, rejected, held_out, negatives)


def pair_negatives(queries: Sequence[Any] | NDArray[Any],
                   negative_queries: Sequence[Any] | NDArray[Any]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Dataset rows for two-tower training with hard negatives: (positive pair, negative or -1) per
    row. A query with P positives and N negatives gets max(P, N) rows, the j-th pairing positive
    j mod P with negative j mod N, so every negative is used once an epoch; negatives of a query
    without a training positive have no anchor and are left out. Queries come in the order of their
    first positive; they may be texts or keys (:func:`text_keys`)."""
    positives, negatives = np.asarray(queries), np.asarray(negative_queries)
    if len(positives) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    distinct, first, of_positive = np.unique(positives, return_index=True, return_inverse=True)
    appearance = np.empty(len(distinct), dtype=np.int64)
    appearance[np.argsort(first, kind="stable")] = np.arange(len(distinct))
    query = appearance[of_positive.reshape(-1)]
    at = np.clip(np.searchsorted(distinct, negatives), 0, len(distinct) - 1) if len(negatives) else \
        np.zeros(0, dtype=np.int64)
    anchored = np.flatnonzero(distinct[at] == negatives) if len(negatives) else np.zeros(0, dtype=np.int64)
    negative_query = appearance[at[anchored]]
    by_positive = np.argsort(query, kind="stable")
    by_negative = anchored[np.argsort(negative_query, kind="stable")]
    p = np.bincount(query, minlength=len(distinct))
    n = np.bincount(negative_query, minlength=len(distinct))
    rows = np.maximum(p, n)
    owner = np.repeat(np.arange(len(distinct)), rows)
    j = np.arange(int(rows.sum())) - np.repeat(np.cumsum(rows) - rows, rows)
    pairs = by_positive[(np.cumsum(p) - p)[owner] + j % p[owner]]
    has = n[owner] > 0
    chosen = np.full(len(owner), -1, dtype=np.int64)
    chosen[has] = by_negative[(np.cumsum(n) - n)[owner[has]] + j[has] % n[owner[has]]]
    return pairs.astype(np.int64), chosen


def text_keys(*columns: Sequence[str]) -> NDArray[np.int64]:
    """An integer per distinct text over ``columns`` one after the other (the same text, the same
    key), numbered in sorted order; read a chunk at a time (:func:`.ranks.ranks`)."""
    def arrays() -> Iterator[pa.Array]:
        for column in columns:
            if isinstance(column, TextColumn):
                yield from column.arrays()
            elif len(column):
                yield pa.array(list(column), pa.string())

    return ranks(arrays)


@dataclass(frozen=True)
class Loaders:
    """Data loaders before ``accelerator.prepare``, and the sampler whose epoch the loop sets."""

    train: torch.utils.data.DataLoader[dict[str, Any]]
    sampler: BucketBatchSampler | QueryBatchSampler
    eval: CrossEvalSet | TowerEvalSet
    #: twoTower: judged-irrelevant training rows, and how many train as negatives (those of a query
    #: with a training positive); None for other tasks.
    hard_negatives: dict[str, int] | None = None


def build_loaders(spec: FineTuneRunSpec, split: Split, tokenizer: Any, use_token_types: bool,
                  on_gpu: bool, *, directory: Path | None = None, team: Team | None = None) -> Loaders:
    """Tokenise once, into Arrow files under ``directory`` (each process of ``team`` its share;
    temporary files when None), and build the task's training loader and evaluation set."""
    t = spec.training
    collator = Collator(tokenizer.pad_token_id or 0, pad_to_multiple_of=8 if on_gpu else None)
    workers = 2 if on_gpu else 0
    counts: dict[str, int] | None = None

    def tokens(texts: Sequence[str], pairs: Sequence[str] | None = None) -> Any:
        return tokenize_to_files(tokenizer, texts, pairs, t.max_length, directory, team)

    def loader(dataset: Any, shuffle: bool, batch_size: int) -> Any:
        sampler = BucketBatchSampler(dataset.lengths, batch_size, t.seed, shuffle=shuffle)
        return make_loader(dataset, sampler, collator, num_workers=workers if shuffle else 0, pin_memory=on_gpu)

    train, evaluation_rows = split.train, split.eval
    if spec.task == Task.TWO_TOWER:
        negatives = split.negatives
        hard = None
        counts = {"rows": 0, "trained": 0}
        pairs = None
        if negatives is not None and len(negatives):
            # One key space for positive and negative items: the same text is the same item.
            all_items = text_keys(train.items, negatives.items)
            all_queries = text_keys(train.queries, negatives.queries)
            item_keys = all_items[:len(train)]
            pairs, per_row = pair_negatives(all_queries[:len(train)], all_queries[len(train):])
            hard = HardNegatives(tokens(negatives.items), all_items[len(train):], per_row)
            counts = {"rows": len(negatives), "trained": int(np.unique(per_row[per_row >= 0]).size)}
            log.info("two-tower hard negatives", extra=counts)
        else:
            item_keys = text_keys(train.items)
        train_ds: Any = TwoTowerDataset(tokens(train.queries), tokens(train.items), text_keys(train.queries),
                                        item_keys, pairs, hard)
        queries = list(dict.fromkeys(evaluation_rows.queries))
        corpus = list(dict.fromkeys(evaluation_rows.items))
        q_index = {q: i for i, q in enumerate(queries)}
        c_index = {c: i for i, c in enumerate(corpus)}
        relevance = np.zeros((len(queries), len(corpus)))
        for q, item, grade in zip(evaluation_rows.queries, evaluation_rows.items, split.eval_targets.grades,
                                  strict=True):
            relevance[q_index[q], c_index[item]] = max(relevance[q_index[q], c_index[item]], grade)
        evaluation: CrossEvalSet | TowerEvalSet = TowerEvalSet(
            loader(TextDataset(tokens(queries)), False, t.batch_size * 2),
            loader(TextDataset(tokens(corpus)), False, t.batch_size * 2),
            queries, corpus, relevance)
    else:
        grouped = t.loss != "pointwise"  # pairwise / listwise: each row's grade and query travel with it
        train_ds = PairDataset(tokens(train.queries, train.items), split.train_targets.targets, train.dense,
                               use_token_types, grades=split.train_targets.grades if grouped else None,
                               query_keys=text_keys(train.queries) if grouped else None)
        eval_ds = PairDataset(tokens(evaluation_rows.queries, evaluation_rows.items), split.eval_targets.targets,
                              evaluation_rows.dense, use_token_types)
        # The evaluation rows' texts and labels are kept for the predictions (one list each).
        labels = evaluation_rows.labels
        evaluation = CrossEvalSet(loader(eval_ds, False, t.batch_size * 2), list(evaluation_rows.queries),
                                  list(evaluation_rows.items),
                                  list(labels) if labels is not None else [None] * len(evaluation_rows),
                                  split.eval_targets.targets, split.eval_targets.grades)
    sampler: BucketBatchSampler | QueryBatchSampler
    if spec.task != Task.TWO_TOWER and t.loss != "pointwise":
        assert train_ds.query_keys is not None
        sampler = QueryBatchSampler(train_ds.query_keys, train_ds.lengths, t.batch_size, t.seed)
    else:
        sampler = BucketBatchSampler(train_ds.lengths, t.batch_size, t.seed, shuffle=True)
    train_loader = make_loader(train_ds, sampler, collator, num_workers=workers, pin_memory=on_gpu)
    return Loaders(train_loader, sampler, evaluation, counts)


def dense_stats(examples: Examples) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Mean and standard deviation of the training rows' dense features (None without any)."""
    if examples.dense is None or examples.dense.shape[1] == 0:
        return None
    return torch.from_numpy(examples.dense.mean(axis=0)), torch.from_numpy(examples.dense.std(axis=0))
