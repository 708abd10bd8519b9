"""Metrics and statistics of the quality benchmark (bench_quality.py), pure numpy: what a model's test
predictions score, and how sure a lift over a baseline is.

Primary metrics are threshold-free and do not move when only the label prior moves:

* graded relevance (QBQTC, grades 0/1/2): ``meanAUC``, the mean over the grades of the one-vs-rest
  ROC-AUC of that grade's probability; and ``ndcg@10`` per query (score = expected grade) over the
  queries with at least two titles and at least one relevant one (the job's convention);
* binary matching (Walmart-Amazon): ``ap``, the average precision (area under the precision-recall
  curve, step-wise as scikit-learn's ``average_precision_score``) of the match class, and ``auc``.

``macroF1`` (the decision the run tuned on its validation split, applied to the test rows) is
secondary: a decision metric moves with the prior and the threshold.

The lift of an arm over a baseline has a paired bootstrap 95 % interval: each draw resamples the
seeds (arm and baseline share a seed) and the test units (rows, or whole queries when the dataset
groups rows by query) with replacement, and recomputes the mean-over-seeds difference on the same
draw for both arms.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sampleforge.jobs.finetune import metrics as M

#: One seed's test predictions: ``labels`` (class index per row), ``probabilities`` (rows x classes),
#: ``queries`` (query per row), ``predicted`` (class index per row, the validation-tuned decision),
#: ``grades`` (grade per row).
Predictions = dict[str, Any]
MetricFn = Callable[[Predictions, NDArray[np.int64]], float]


def average_precision(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Average precision of the positive class: sum over distinct score thresholds (descending) of
    (recall gained) x (precision there), as scikit-learn's ``average_precision_score``. NaN without
    positives."""
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(t.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    # the last row of each run of tied scores is where that threshold's counts are read
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(t)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall_gain = np.diff(np.r_[0, tp]) / positives
    return float(np.sum(recall_gain * precision))


def mean_ovr_auc(labels: ArrayLike, probabilities: ArrayLike) -> float:
    """Mean over the classes present (with both members and non-members) of the ROC-AUC of
    ``probabilities[:, c]`` for ``label == c``."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    aucs = [M.roc_auc(y == c, p[:, c]) for c in range(p.shape[1]) if 0 < int((y == c).sum()) < len(y)]
    return float(np.mean(aucs)) if aucs else float("nan")


def ndcg_per_query(queries: Sequence[str], grades: ArrayLike, scores: ArrayLike, k: int = 10) -> dict[str, float]:
    """NDCG@k of every query with at least two rows and at least one relevant row (grade > 0)."""
    q = np.asarray(queries, dtype=object)
    g = np.asarray(grades, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    out: dict[str, float] = {}
    for query in dict.fromkeys(q.tolist()):
        rows = np.nonzero(q == query)[0]
        if len(rows) < 2 or not (g[rows] > 0).any():
            continue
        out[query] = M.ranking_metrics(np.zeros(len(rows)), g[rows], s[rows], [f"ndcg@{k}"])[f"ndcg@{k}"]
    return out


def expected_grade(probabilities: ArrayLike, class_grades: Sequence[float]) -> NDArray[np.float64]:
    return np.asarray(probabilities, dtype=np.float64) @ np.asarray(class_grades, dtype=np.float64)


# --- metrics on a subset of rows (what the bootstrap calls) --------------------------------------------


def _rows(p: Predictions, rows: NDArray[np.int64] | None) -> NDArray[np.int64]:
    return np.arange(len(p["labels"])) if rows is None else rows


def metric_mean_auc(p: Predictions, rows: NDArray[np.int64] | None = None) -> float:
    r = _rows(p, rows)
    return mean_ovr_auc(np.asarray(p["labels"])[r], np.asarray(p["probabilities"])[r])


def metric_auc(p: Predictions, rows: NDArray[np.int64] | None = None) -> float:
    r = _rows(p, rows)
    return M.roc_auc(np.asarray(p["labels"])[r] == 1, np.asarray(p["probabilities"])[r, 1])


def metric_ap(p: Predictions, rows: NDArray[np.int64] | None = None) -> float:
    r = _rows(p, rows)
    return average_precision(np.asarray(p["labels"])[r] == 1, np.asarray(p["probabilities"])[r, 1])


def metric_macro_f1(p: Predictions, rows: NDArray[np.int64] | None = None) -> float:
    r = _rows(p, rows)
    return M.macro_f1(np.asarray(p["labels"])[r], np.asarray(p["predicted"])[r])


def metric_ndcg10(p: Predictions, rows: NDArray[np.int64] | None = None) -> float:
    """Mean NDCG@10 over the eligible queries among ``rows`` (a resampled query counts as often as it
    was drawn)."""
    per_query = p.get("_ndcg10")
    if per_query is None:
        per_query = ndcg_per_query(p["queries"], p["grades"], expected_grade(p["probabilities"], p["classGrades"]))
        p["_ndcg10"] = per_query
    r = _rows(p, rows)
    queries = np.asarray(p["queries"], dtype=object)[r]
    # a drawn query contributes once per draw: a draw's rows are consecutive rows of one query, so a
    # new draw starts where the query changes or the row numbers stop running on
    values = [per_query[q] for i, q in enumerate(queries)
              if q in per_query and (i == 0 or queries[i - 1] != q or r[i] != r[i - 1] + 1)]
    return float(np.mean(values)) if values else float("nan")


METRICS: dict[str, MetricFn] = {"meanAUC": metric_mean_auc, "ndcg@10": metric_ndcg10, "ap": metric_ap,
                                "auc": metric_auc, "macroF1": metric_macro_f1}


# --- statistics --------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def units_of(p: Predictions, by_query: bool) -> list[NDArray[np.int64]]:
    """Resampling units of a test set: single rows, or the rows of each query (in order)."""
    n = len(p["labels"])
    if not by_query:
        return [np.array([i]) for i in range(n)]
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(p["queries"]):
        groups.setdefault(q, []).append(i)
    return [np.asarray(v, dtype=np.int64) for v in groups.values()]


def paired_bootstrap(arm: Sequence[Predictions], baseline: Sequence[Predictions], metric: MetricFn,
                     units: list[NDArray[np.int64]], *, draws: int = 1000, seed: int = 0,
                     scale: float = 100.0) -> tuple[float, tuple[float, float]]:
    """Lift of ``arm`` over ``baseline`` (mean over seeds, x ``scale``) and its paired bootstrap 95 %
    percentile interval. ``arm[i]`` and ``baseline[i]`` are the same seed on the same test rows."""
    if len(arm) != len(baseline) or not arm:
        raise ValueError(f"paired bootstrap needs the same seeds on both sides ({len(arm)} vs {len(baseline)})")
    point = scale * (float(np.mean([metric(a, None) for a in arm])) - float(np.mean([metric(b, None) for b in baseline])))
    rng = np.random.default_rng(seed)
    lifts = np.empty(draws)
    for d in range(draws):
        seeds = rng.integers(0, len(arm), len(arm))
        rows = np.concatenate([units[u] for u in rng.integers(0, len(units), len(units))])
        lifts[d] = scale * float(np.mean([metric(arm[s], rows) - metric(baseline[s], rows) for s in seeds]))
    lo, hi = np.nanpercentile(lifts, [2.5, 97.5])
    return point, (float(lo), float(hi))


def summarize_slice(per_arm: dict[str, list[float]], baselines: Sequence[str], validation: dict[str, float],
                    ci: dict[str, tuple[float, float]] | None = None,
                    lifts: dict[str, float] | None = None) -> dict[str, Any]:
    """One slice of quality.json: per arm mean, std and per-seed values (x 100, test split); the best
    baseline (highest test mean: the strongest competitor, so the choice can only make the lift
    smaller); the best sampleforge arm (highest *validation* mean, never the test split); its lift
    and interval. ``lifts`` / ``ci`` map each sampleforge arm to its lift and interval over the best
    baseline."""
    arms = {a: {"mean": round(mean_std(v)[0], 3), "std": round(mean_std(v)[1], 3), "seeds": [round(x, 3) for x in v]}
            for a, v in per_arm.items()}
    present = [b for b in baselines if b in arms]
    best_baseline = max(present, key=lambda a: arms[a]["mean"]) if present else None
    candidates = [a for a in arms if a not in baselines and a in validation]
    best_sf = max(candidates, key=lambda a: validation[a]) if candidates else None
    out: dict[str, Any] = {"arms": arms, "bestBaseline": best_baseline, "bestSampleforge": best_sf,
                           "lift": None, "liftCI95": None}
    if best_sf is not None and best_baseline is not None:
        lift = (lifts or {}).get(best_sf, arms[best_sf]["mean"] - arms[best_baseline]["mean"])
        out["lift"] = round(lift, 3)
        interval = (ci or {}).get(best_sf)
        out["liftCI95"] = [round(interval[0], 3), round(interval[1], 3)] if interval else None
    return out


def target_met(slice_summary: dict[str, Any], points: float = 2.0) -> bool:
    lift, interval = slice_summary.get("lift"), slice_summary.get("liftCI95")
    return lift is not None and interval is not None and lift >= points and interval[0] > 0
