"""Evaluation: run the model over the evaluation rows on every rank, gather the outputs
(``accelerator.gather_for_metrics``), and compute the declared metrics from them.

Every rank computes the same metrics from the same gathered outputs, so early-stopping decisions
agree without another collective. Outputs are re-ordered by row index (batches are sorted by
length), and the predictions are kept so they can be published and checked independently.

* Cross-encoders (relevance, relevanceRegression, ctr): one score per (query, item) row; ranking
  metrics group rows by query.
* Two-tower: the distinct evaluation queries are scored against every distinct evaluation item
  (the corpus); an item is relevant to a query when they share a row with a grade > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from numpy.typing import NDArray
from torch.utils.data import DataLoader

from sampleforge.api.finetune import Task

from . import metrics as M
from .errors import SpecError
from .labels import LabelSpace
from .losses import task_loss
from .modeling import TwoTower

_CLASSIFICATION = {"accuracy", "f1", "macroF1", "logLoss"}
_REGRESSION = {"mse", "rmse", "mae", "pearson", "spearman"}
#: How many top items per query the two-tower predictions keep (at least the largest k asked for).
TOP_ITEMS = 100


def check_metrics(task: Task, space: LabelSpace, names: tuple[str, ...]) -> None:
    """Refuse, before any training, metrics that do not apply to this task or these labels."""
    for name in names:
        parsed = M.MetricName.parse(name)
        family = parsed.family
        problem = None
        if parsed.is_ranking and not space.ordered:
            problem = (f"needs ordered labels, but the label classes {list(space.classes)} are names without an "
                       "order; use numeric grades (or ESCI names) in the label column, or remove it")
        elif family in _CLASSIFICATION and task not in (Task.RELEVANCE, Task.CTR):
            problem = f"is a classification metric and task is {task}"
        elif family in _REGRESSION and task != Task.RELEVANCE_REGRESSION:
            problem = f"is a regression metric and task is {task}"
        elif family == "auc" and (task == Task.TWO_TOWER or not space.ordered):
            problem = "needs a score per row with ordered labels (ctr, relevanceRegression, or graded relevance)"
        if problem:
            raise SpecError(f"evaluation.metrics: {name} {problem}")


@dataclass(frozen=True)
class CrossEvalSet:
    """Cross-encoder evaluation rows and their loader (already through ``accelerator.prepare``)."""

    loader: DataLoader[dict[str, Any]]
    queries: list[str]
    items: list[str]
    raw_labels: list[Any]
    targets: NDArray[Any]
    grades: NDArray[np.float64]


@dataclass(frozen=True)
class TowerEvalSet:
    """Two-tower evaluation: distinct queries, the corpus of distinct items, and relevance."""

    query_loader: DataLoader[dict[str, Any]]
    item_loader: DataLoader[dict[str, Any]]
    queries: list[str]
    corpus: list[str]
    #: (queries, corpus) grades; 0 where a pair is not judged relevant.
    relevance: NDArray[np.float64]


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]
    #: Column name -> values, one entry per evaluation row (cross) or query (two-tower).
    predictions: dict[str, list[Any]]
    #: How many queries the ranking metrics rest on; None when no ranking metric is evaluated.
    ranking: M.RankingCoverage | None = None


def _gather_rows(accelerator: Accelerator, loader: DataLoader[dict[str, Any]],
                 forward: Any) -> NDArray[np.float32]:
    """Run ``forward`` over every batch, gather across ranks, return outputs in row order."""
    rows, outputs = [], []
    with torch.no_grad(), accelerator.autocast():
        for batch in loader:
            out = forward(batch)
            r, o = accelerator.gather_for_metrics((batch["row"], out.float()))
            rows.append(r.cpu())
            outputs.append(o.cpu())
    index = torch.cat(rows).numpy()
    values = torch.cat(outputs).numpy()
    # Padding rows added to even out the last batch across ranks repeat earlier rows: keep one.
    unique, first = np.unique(index, return_index=True)
    ordered = np.empty((int(unique.max()) + 1, *values.shape[1:]), dtype=np.float32)
    ordered[unique] = values[first]
    return ordered


def evaluate_cross(accelerator: Accelerator, model: torch.nn.Module, data: CrossEvalSet, task: Task,
                   space: LabelSpace, names: tuple[str, ...]) -> EvalResult:
    """Metrics and per-row predictions of a cross-encoder."""
    model.eval()
    logits = _gather_rows(accelerator, data.loader, lambda b: model(b["inputs"], b.get("dense")))
    model.train()
    targets = data.targets
    loss = float(task_loss(task, torch.from_numpy(logits), torch.from_numpy(np.asarray(targets))))
    predictions: dict[str, list[Any]] = {"query": data.queries, "item": data.items,
                                         "label": [None if v is None else str(v) for v in data.raw_labels],
                                         "grade": data.grades.tolist()}
    if task == Task.RELEVANCE:
        probs = torch.softmax(torch.from_numpy(logits.astype(np.float64)), dim=-1).numpy()
        predicted = probs.argmax(axis=1)
        score = probs @ np.asarray(space.class_grades) if space.class_grades is not None else probs.max(axis=1)
        predictions.update(target=targets.tolist(), predicted=predicted.tolist(),
                           predictedLabel=[space.classes[i] for i in predicted], probabilities=probs.tolist())
    elif task == Task.CTR:
        probs = 1.0 / (1.0 + np.exp(-logits[:, 0].astype(np.float64)))
        predicted = (probs >= 0.5).astype(np.int64)
        score = probs
        predictions.update(target=targets.tolist(), predicted=predicted.tolist(), probability=probs.tolist())
    else:
        predicted = logits[:, 0].astype(np.float64)
        score = predicted
        predictions.update(target=targets.tolist(), predicted=predicted.tolist())
    predictions["score"] = score.tolist()
    results: dict[str, float] = {}
    ranking = [n for n in names if M.MetricName.parse(n).is_ranking]
    coverage = None
    if ranking:
        query_ids = np.asarray(data.queries, dtype=object)
        results.update(M.ranking_metrics(query_ids, data.grades, score, ranking))
        coverage = M.ranking_coverage(query_ids, data.grades)
    for name in names:
        family = M.MetricName.parse(name).family
        if family in M.RANKING_FAMILIES:
            continue
        if family == "loss":
            results[name] = loss
        elif family == "accuracy":
            results[name] = M.accuracy(targets, predicted)
        elif family == "macroF1":
            results[name] = M.macro_f1(targets, predicted)
        elif family == "f1":
            results[name] = (M.binary_f1(targets, predicted) if task == Task.CTR or len(space.classes) == 2
                             else M.macro_f1(targets, predicted))
        elif family == "auc":
            results[name] = M.roc_auc(data.grades > 0, score)
        elif family == "logLoss":
            results[name] = M.log_loss(targets, probs)
        else:
            results[name] = getattr(M, family)(targets, predicted)
    return EvalResult(results, predictions, coverage)


def evaluate_towers(accelerator: Accelerator, model: torch.nn.Module, data: TowerEvalSet,
                    names: tuple[str, ...]) -> EvalResult:
    """Retrieval metrics of a two-tower model over the evaluation corpus, and each query's top items."""
    tower = accelerator.unwrap_model(model)
    assert isinstance(tower, TwoTower)
    model.eval()
    q = _gather_rows(accelerator, data.query_loader, lambda b: tower.encode_queries(b["inputs"]))
    c = _gather_rows(accelerator, data.item_loader, lambda b: tower.encode_items(b["inputs"]))
    model.train()
    scores = q.astype(np.float64) @ c.astype(np.float64).T
    results = M.retrieval_metrics(scores, data.relevance, [n for n in names if n != "loss"])
    if "loss" in names:
        # Cross-entropy of each relevant pair against the whole corpus, at the training temperature.
        logits = scores / tower.config.temperature
        log_softmax = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        results["loss"] = float(-log_softmax[data.relevance > 0].mean())
    ks = [M.MetricName.parse(n).k or 0 for n in names]
    top = min(max([TOP_ITEMS, *ks]), scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")
    first_relevant = [int(np.flatnonzero(data.relevance[i, order[i]] > 0)[0]) + 1 if (data.relevance[i] > 0).any()
                      else None for i in range(len(order))]
    predictions: dict[str, list[Any]] = {
        "query": data.queries,
        "relevantItems": [[data.corpus[j] for j in np.flatnonzero(row > 0)] for row in data.relevance],
        "relevantGrades": [row[row > 0].tolist() for row in data.relevance],
        "topItems": [[data.corpus[j] for j in order[i, :top]] for i in range(len(order))],
        "topScores": [scores[i, order[i, :top]].tolist() for i in range(len(order))],
        "firstRelevantRank": first_relevant,
    }
    coverage = M.retrieval_coverage(data.relevance) if any(M.MetricName.parse(n).is_ranking for n in names) else None
    return EvalResult(results, predictions, coverage)
