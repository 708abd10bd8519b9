"""Evaluation metrics in plain numpy: classification, regression and per-query ranking.

Why not scikit-learn at run time: the job image stays small, and the ranking metrics search teams
use (NDCG@k per query, MRR, Recall@k over a retrieval corpus) are not what scikit-learn computes
anyway. The unit tests check every function here against scikit-learn and against hand-computed
cases, so the two cannot drift apart silently.

Conventions (each one is a choice someone reading a dashboard should be able to look up):

* Ranking metrics are computed per query and averaged over queries (macro average), the way search
  teams report them. A query counts only when it has at least two candidates and at least one
  relevant one: with no relevant item NDCG, MRR and recall are undefined, and a single candidate
  scores 1 whatever the model does, so on a set where most queries have one title an average over
  every query says nothing about ranking. :class:`RankingCoverage` says how many queries the
  averages rest on and how many were left out, and why; metrics.json records it.
* A row is *relevant* when its grade is > 0. NDCG uses the grade itself as the gain (linear gain,
  as scikit-learn's ``ndcg_score``); ``log2(rank + 1)`` discount.
* Items are ranked by descending score; ties keep the input order (a stable sort).
* ``precision@k`` divides by k even when a query has fewer than k items.
* ``map`` is mean average precision; ``map@k`` divides by min(k, number of relevant items).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: Ranking metric families and whether they need a cut-off k.
RANKING_FAMILIES = frozenset({"ndcg", "mrr", "map", "recall", "precision", "hitRate"})
_NAME = re.compile(r"^(?P<family>[A-Za-z][A-Za-z0-9]*)(@(?P<k>[1-9][0-9]*))?$")
_EPS = 1e-15


@dataclass(frozen=True)
class MetricName:
    """A parsed metric name such as ``ndcg@10`` (family ``ndcg``, k 10) or ``auc`` (k None)."""

    family: str
    k: int | None

    @classmethod
    def parse(cls, name: str) -> MetricName:
        match = _NAME.match(name)
        if not match:
            raise ValueError(f"unknown metric {name!r}")
        k = match.group("k")
        return cls(match.group("family"), int(k) if k else None)

    @property
    def is_ranking(self) -> bool:
        return self.family in RANKING_FAMILIES


def _arr(values: ArrayLike, dtype: type = np.float64) -> NDArray[np.float64]:
    return np.asarray(values, dtype=dtype)


# --- classification ---------------------------------------------------------------------------


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Share of rows whose predicted class equals the true class."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(t == p)) if t.size else float("nan")


def _f1_per_class(t: NDArray[np.int64], p: NDArray[np.int64], classes: Iterable[int]) -> list[float]:
    scores = []
    for c in classes:
        tp = float(np.sum((t == c) & (p == c)))
        fp = float(np.sum((t != c) & (p == c)))
        fn = float(np.sum((t == c) & (p != c)))
        denominator = 2 * tp + fp + fn
        scores.append(2 * tp / denominator if denominator else 0.0)
    return scores


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Unweighted mean F1 over every class that occurs in the truth or the predictions
    (scikit-learn's ``f1_score(average="macro")``): rare classes such as ESCI's Complement count as
    much as frequent ones, which is the point of reporting it next to accuracy."""
    t, p = np.asarray(y_true).astype(np.int64), np.asarray(y_pred).astype(np.int64)
    classes = np.union1d(t, p)
    return float(np.mean(_f1_per_class(t, p, classes))) if classes.size else float("nan")


def binary_f1(y_true: ArrayLike, y_pred: ArrayLike, positive: int = 1) -> float:
    """F1 of the positive class."""
    t, p = np.asarray(y_true).astype(np.int64), np.asarray(y_pred).astype(np.int64)
    return _f1_per_class(t, p, [positive])[0]


def _average_ranks(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """1-based ranks, ties sharing the mean of their ranks (as scipy.stats.rankdata 'average')."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    # Boundaries of runs of equal values.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve through the Mann-Whitney U statistic (ties count one half), which
    equals scikit-learn's trapezoidal ``roc_auc_score``. NaN when only one class is present."""
    t = np.asarray(y_true).astype(bool)
    s = _arr(scores)
    positives, negatives = int(t.sum()), int((~t).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _average_ranks(s)
    u = ranks[t].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def log_loss(y_true: ArrayLike, probabilities: ArrayLike) -> float:
    """Cross-entropy: binary when ``probabilities`` is 1-D (probability of class 1), categorical
    when it is (rows, classes) and ``y_true`` holds class indices. Clipped like scikit-learn."""
    p = _arr(probabilities)
    t = np.asarray(y_true).astype(np.int64)
    if p.ndim == 1:
        p = np.clip(p, _EPS, 1 - _EPS)
        return float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))
    p = np.clip(p, _EPS, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(len(t)), t])))


# --- regression -------------------------------------------------------------------------------


def mse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    return float(np.mean((_arr(y_true) - _arr(y_pred)) ** 2))


def rmse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    return float(np.sqrt(mse(y_true, y_pred)))


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    return float(np.mean(np.abs(_arr(y_true) - _arr(y_pred))))


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation; NaN when either side is constant."""
    a, b = _arr(x), _arr(y)
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator else float("nan")


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation: Pearson on average ranks (ties handled as scipy does)."""
    return pearson(_average_ranks(_arr(x)), _average_ranks(_arr(y)))


# --- ranking ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankingCoverage:
    """How many queries the ranking metrics are averaged over, and how many were left out and why."""

    #: Queries with at least two candidates and at least one relevant one: the averages rest on these.
    queries: int = 0
    #: Queries with one candidate (whatever its grade): any model ranks it first.
    single_candidate: int = 0
    #: Queries with several candidates, none relevant: the metrics are undefined for them.
    no_relevant: int = 0

    def add(self, grades: NDArray[np.float64]) -> RankingCoverage:
        """This coverage with one more query whose candidates have ``grades``."""
        if len(grades) < 2:
            return RankingCoverage(self.queries, self.single_candidate + 1, self.no_relevant)
        if not np.any(grades > 0):
            return RankingCoverage(self.queries, self.single_candidate, self.no_relevant + 1)
        return RankingCoverage(self.queries + 1, self.single_candidate, self.no_relevant)

    def to_json(self) -> dict[str, Any]:
        return {"rankingQueries": self.queries,
                "rankingQueriesSkipped": {"singleCandidate": self.single_candidate, "noRelevant": self.no_relevant}}


def _counts(grades: NDArray[np.float64]) -> bool:
    """Whether a query with these candidates' grades enters the ranking averages."""
    return len(grades) >= 2 and bool(np.any(grades > 0))


def _query_metrics(grades: NDArray[np.float64], scores: NDArray[np.float64],
                   names: Sequence[MetricName]) -> dict[MetricName, float] | None:
    """Every ranking metric for one query; None when the query does not count (see the module)."""
    if not _counts(grades):
        return None
    relevant_total = int(np.sum(grades > 0))
    order = np.argsort(-scores, kind="stable")
    ranked = grades[order]
    hits = ranked > 0
    out: dict[MetricName, float] = {}
    for name in names:
        k = name.k if name.k is not None else len(ranked)
        top = hits[:k]
        if name.family == "ndcg":
            discounts = 1.0 / np.log2(np.arange(2, k + 2))
            dcg = float(np.sum(ranked[:k] * discounts[: len(ranked[:k])]))
            ideal = np.sort(grades)[::-1][:k]
            idcg = float(np.sum(ideal * discounts[: len(ideal)]))
            out[name] = dcg / idcg
        elif name.family == "mrr":
            first = np.flatnonzero(top)
            out[name] = 1.0 / (first[0] + 1) if first.size else 0.0
        elif name.family == "recall":
            out[name] = float(top.sum()) / relevant_total
        elif name.family == "precision":
            out[name] = float(top.sum()) / k
        elif name.family == "hitRate":
            out[name] = float(top.any())
        elif name.family == "map":
            precision_at_hit = np.cumsum(top) / np.arange(1, len(top) + 1)
            denominator = min(k, relevant_total) if name.k is not None else relevant_total
            out[name] = float(np.sum(precision_at_hit[top])) / denominator
        else:
            raise ValueError(f"{name.family} is not a ranking metric")
    return out


def _query_rows(query_ids: ArrayLike) -> list[NDArray[np.int64]]:
    """Row indices of each distinct query, rows in input order."""
    q = np.asarray(query_ids)
    if q.size == 0:
        return []
    _, inverse = np.unique(q, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    boundaries = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, boundaries)


def ranking_coverage(query_ids: ArrayLike, grades: ArrayLike) -> RankingCoverage:
    """Which queries :func:`ranking_metrics` averages over, counted."""
    g = _arr(grades)
    coverage = RankingCoverage()
    for rows in _query_rows(query_ids):
        coverage = coverage.add(g[rows])
    return coverage


def retrieval_coverage(relevance: ArrayLike) -> RankingCoverage:
    """Which queries :func:`retrieval_metrics` averages over, counted (every corpus item is a candidate)."""
    coverage = RankingCoverage()
    for row in _arr(relevance):
        coverage = coverage.add(row)
    return coverage


def ranking_metrics(query_ids: ArrayLike, grades: ArrayLike, scores: ArrayLike,
                    names: Iterable[str]) -> dict[str, float]:
    """Per-query ranking metrics averaged over queries with at least two candidates and at least
    one relevant row (:func:`ranking_coverage` counts them; NaN when there is none).

    ``query_ids`` groups the rows (any hashable values), ``grades`` are graded relevance labels
    (0 = irrelevant) and ``scores`` the model's scores; higher ranks first.
    """
    labels = list(names)
    parsed = [MetricName.parse(n) for n in labels]
    g, s = _arr(grades), _arr(scores)
    sums = dict.fromkeys(parsed, 0.0)
    counted = 0
    for rows in _query_rows(query_ids):
        result = _query_metrics(g[rows], s[rows], parsed)
        if result is None:
            continue
        counted += 1
        for name, value in result.items():
            sums[name] += value
    return {label: (sums[n] / counted if counted else float("nan")) for label, n in zip(labels, parsed, strict=True)}


def retrieval_metrics(scores: ArrayLike, relevance: ArrayLike, names: Iterable[str]) -> dict[str, float]:
    """Ranking metrics for a retrieval evaluation: row q of ``scores`` scores every corpus item for
    query q, and row q of ``relevance`` holds those items' grades (0 for items not judged relevant).
    Averaged over queries with at least one relevant item (and a corpus of at least two items)."""
    labels = list(names)
    parsed = [MetricName.parse(n) for n in labels]
    s, r = _arr(scores), _arr(relevance)
    if s.shape != r.shape or s.ndim != 2:
        raise ValueError(f"scores {s.shape} and relevance {r.shape} must be (queries, corpus) matrices")
    sums = dict.fromkeys(parsed, 0.0)
    counted = 0
    for row_scores, row_grades in zip(s, r, strict=True):
        result = _query_metrics(row_grades, row_scores, parsed)
        if result is None:
            continue
        counted += 1
        for name, value in result.items():
            sums[name] += value
    return {label: (sums[n] / counted if counted else float("nan")) for label, n in zip(labels, parsed, strict=True)}
