"""The train/evaluation split by query group, on every rank the same, for any number of rows.

Everything here works on integer arrays: a query's normalised text is turned into its number once
(:func:`.ranks.ranks`, in sorted order, so the numbering does not depend on row order), and lineage
(``sf_source_row``) joins numbers with a connected-components pass over a sparse graph. Lists of
strings work as before (:func:`query_groups`, :func:`split_by_query`); a view read from files is
split without its text ever being held (:func:`split_examples`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from sampleforge.jobs.common.text import norm_key

from .errors import DatasetError
from .examples import Examples
from .mapped import release_heap
from .ranks import ranks

__all__ = ["QuerySplit", "group_numbers", "query_groups", "split_by_query", "split_examples"]


def group_numbers(key_of_row: NDArray[np.int64], source_rows: NDArray[np.int64] | None) -> NDArray[np.int64]:
    """Groups from each row's query number (numbered in sorted order of the normalised queries)
    and its source row (-1: none): two rows share a group when their numbers are equal or they
    share a source row, transitively. Groups are numbered in the order of their smallest query."""
    if len(key_of_row) == 0:
        return np.zeros(0, dtype=np.int64)
    keys = int(key_of_row.max()) + 1
    if source_rows is None or not (source_rows >= 0).any():
        return key_of_row.astype(np.int64, copy=False)
    traced = np.flatnonzero(source_rows >= 0)
    by_source = traced[np.argsort(source_rows[traced], kind="stable")]
    sources, their_keys = source_rows[by_source], key_of_row[by_source]
    starts = np.concatenate([[True], sources[1:] != sources[:-1]])
    # Each row joins the first row (in row order) of its source row: a star per source row.
    anchor = their_keys[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
    joined = anchor != their_keys
    graph = coo_array((np.ones(int(joined.sum()), dtype=np.int8), (anchor[joined], their_keys[joined])),
                      shape=(keys, keys))
    _, component = connected_components(graph, directed=False)
    smallest = np.full(int(component.max()) + 1, keys, dtype=np.int64)
    np.minimum.at(smallest, component, np.arange(keys, dtype=np.int64))
    _, group_of_key = np.unique(smallest[component], return_inverse=True)
    return group_of_key[key_of_row].astype(np.int64, copy=False)


def query_groups(queries: Sequence[str], source_rows: Sequence[int | None] | None = None) -> NDArray[np.int64]:
    """A group number per row: rows that must be on the same side of a train/eval split.

    Two rows are in one group when their queries are equal once normalised (NFKC, case and
    whitespace, :func:`~sampleforge.jobs.common.text.norm_key`) or when they share a source row
    (``sf_source_row``), and so on transitively. A generated row therefore follows its source
    row's query whatever its own query became (a typo, a paraphrase), and a generated query that
    happens to equal another row's query joins that row's group too: either way no text that is
    evaluated is trained on. Groups are numbered in the order of their smallest normalised query,
    so the numbering does not depend on the order of the rows.
    """
    keys = pa.array([norm_key(q) for q in queries], pa.string())
    sources = None if source_rows is None else np.asarray([-1 if s is None else s for s in source_rows],
                                                          dtype=np.int64).reshape(-1)
    return group_numbers(ranks(lambda: iter([keys])), sources)


@dataclass(frozen=True)
class QuerySplit:
    """Row indices of a split by query group (see :func:`split_by_query`)."""

    train: NDArray[np.int64]
    eval: NDArray[np.int64]
    #: Generated rows of the evaluation groups: variants of evaluated rows, so never trained on, and
    #: not evaluated either unless synthetic rows are (evaluation.includeSynthetic).
    held_out: NDArray[np.int64]


def split_groups(groups: NDArray[np.int64], fraction: float, seed: int, *,
                 generated: Sequence[bool] | NDArray[np.bool_] | None = None,
                 include_synthetic: bool = False) -> QuerySplit:
    """:func:`split_by_query` given each row's group."""
    n = len(groups)
    made = np.zeros(n, dtype=bool) if generated is None else np.asarray(generated, dtype=bool)
    if made.shape != (n,):
        raise ValueError("generated must have one flag per row")
    count = int(groups.max()) + 1 if n else 0
    if count < 2:
        raise DatasetError("the training data has a single query (counting the generated variants of each source "
                           "row's query as that query), so no evaluation split by query is possible; set data.eval "
                           "to a separate evaluation set")
    eligible = ~made if not include_synthetic else np.ones(n, dtype=bool)
    sizes = np.bincount(groups[eligible], minlength=count)
    permutation = np.random.default_rng(seed).permutation(count)
    order = permutation[sizes[permutation] > 0]
    if not len(order):
        raise DatasetError("the training data has no source row to evaluate on (every row is generated); set "
                           "data.eval to a separate evaluation set, or evaluation.includeSynthetic: true")
    if len(order) == count:
        order = order[:-1]  # never every group: something must be left to train on
    # Groups are drawn in order until the rows drawn reach the target (at least one group).
    target = fraction * int(eligible.sum())
    before = np.concatenate([[0], np.cumsum(sizes[order])[:-1]])
    drawn = order[(before < target) | (np.arange(len(order)) == 0)]
    taken = np.zeros(count, dtype=bool)
    taken[drawn] = True
    in_eval_group = taken[groups]
    return QuerySplit(train=np.flatnonzero(~in_eval_group), eval=np.flatnonzero(in_eval_group & eligible),
                      held_out=np.flatnonzero(in_eval_group & ~eligible))


def split_by_query(queries: Sequence[str], fraction: float, seed: int, *,
                   source_rows: Sequence[int | None] | None = None,
                   generated: Sequence[bool] | NDArray[np.bool_] | None = None,
                   include_synthetic: bool = False) -> QuerySplit:
    """Rows for training and for evaluation, such that no query group (:func:`query_groups`) has
    rows on both sides.

    Whole groups are drawn in a seeded random order until the evaluation side holds ``fraction``
    of the rows it can hold (at least one group, and never every group), so the split is the same
    on every rank and every restart. Evaluation holds the source rows of the drawn groups; their
    generated rows (``generated``) are held out of both sides unless ``include_synthetic``, in
    which case they are evaluated too. ``fraction`` is counted over the rows evaluation may hold.
    A group of generated rows only (their source row was set aside) is never drawn: it has no row
    to evaluate.
    """
    return split_groups(query_groups(queries, source_rows), fraction, seed, generated=generated,
                        include_synthetic=include_synthetic)


def split_examples(examples: Examples, fraction: float, seed: int, include_synthetic: bool) -> QuerySplit:
    """:func:`split_by_query` of a view, from its stored normalised queries and provenance."""
    groups = group_numbers(ranks(lambda: examples.keys.arrays()), examples.source_rows)
    release_heap()
    return split_groups(groups, fraction, seed, generated=examples.generated(), include_synthetic=include_synthetic)
