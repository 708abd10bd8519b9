"""The training losses: what each task minimises, and the grouped (pairwise, listwise) ranking
losses that training.loss adds over the queries of a batch.

Kept apart from the models (:mod:`.modeling`) because the evaluation computes the same losses on
held-out rows, and a loss is easier to check against its formula when it stands alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sampleforge.api.finetune import Task


def info_nce_loss(queries: torch.Tensor, items: torch.Tensor, query_keys: torch.Tensor, item_keys: torch.Tensor,
                  temperature: float, negatives: torch.Tensor | None = None,
                  negative_keys: torch.Tensor | None = None) -> torch.Tensor:
    """In-batch negatives: row i's positive is item i, every other item in the batch a negative,
    except items that are not negatives at all: the same item text again, or an item paired with the
    same query elsewhere in the batch (a second positive). Those are masked out.

    ``negatives`` (twoTower.hardNegatives: judged-irrelevant items of the batch's queries) join the
    softmax of every row, as sentence-transformers' MultipleNegativesRankingLoss does with hard
    negatives, except where a negative is the same item as a positive of the row's query in the batch.
    """
    logits = queries @ items.T / temperature
    same_query = query_keys[None, :] == query_keys[:, None]
    same = (item_keys[None, :] == item_keys[:, None]) | same_query
    diagonal = torch.eye(len(queries), dtype=torch.bool, device=queries.device)
    logits = logits.masked_fill(same & ~diagonal, torch.finfo(logits.dtype).min)
    if negatives is not None and len(negatives):
        assert negative_keys is not None, "pass the negatives' item keys with them"
        hard = queries @ negatives.T / temperature
        is_positive = (item_keys[:, None] == negative_keys[None, :]).to(hard.dtype)  # (rows, negatives)
        blocked = (same_query.to(hard.dtype) @ is_positive) > 0
        logits = torch.cat([logits, hard.masked_fill(blocked, torch.finfo(hard.dtype).min)], dim=1)
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


def task_loss(task: Task, outputs: torch.Tensor, targets: torch.Tensor,
              class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The cross-encoder loss of each task, computed in fp32 for stability under mixed precision.

    ``class_weights`` (training.classWeights; relevance and ctr) multiply each row's loss by its
    class's weight, and the mean is over rows, as scikit-learn weighs samples. Not torch's
    ``cross_entropy(weight=...)``, which divides by the batch's summed weights: a batch of one class
    would then weigh as much as a balanced one, and the weighting would fade with small batches.
    """
    logits = outputs.float()
    if task == Task.RELEVANCE:
        if class_weights is None:
            return F.cross_entropy(logits, targets.long())
        per_row = F.cross_entropy(logits, targets.long(), reduction="none")
        return (per_row * class_weights.to(per_row)[targets.long()]).mean()
    if task == Task.RELEVANCE_REGRESSION:
        return F.mse_loss(logits.squeeze(-1), targets.float())
    if task == Task.CTR:
        if class_weights is None:
            return F.binary_cross_entropy_with_logits(logits.squeeze(-1), targets.float())
        per_row = F.binary_cross_entropy_with_logits(logits.squeeze(-1), targets.float(), reduction="none")
        return (per_row * class_weights.to(per_row)[targets.long()]).mean()
    raise ValueError(f"task {task} has no cross-encoder loss")


def ranking_scores(task: Task, outputs: torch.Tensor, class_grades: torch.Tensor | None) -> torch.Tensor:
    """The score the grouped losses rank by, the same one the ranking metrics use: the expected grade
    under the class probabilities (relevance), the prediction (regression) or the click logit (ctr)."""
    logits = outputs.float()
    if task == Task.RELEVANCE:
        assert class_grades is not None, "grouped losses need ordered labels (checked at setup)"
        return torch.softmax(logits, dim=-1) @ class_grades.to(logits)
    return logits[:, 0]


def grouped_loss(kind: str, scores: torch.Tensor, grades: torch.Tensor, query_keys: torch.Tensor) -> torch.Tensor:
    """training.loss pairwise or listwise over the queries of one batch.

    * pairwise (RankNet): for every pair (i, j) of one query with grade_i > grade_j,
      ``log(1 + exp(-(s_i - s_j)))``, averaged over the pairs.
    * listwise (ListNet, top-one): for every query with at least two rows and unequal grades, the
      cross-entropy between ``softmax(grades)`` and ``softmax(scores)`` over its rows, averaged over
      those queries.

    A batch with no such pair or query (only single-row or equal-grade queries) gives 0, still
    attached to the graph so that every rank runs the same backward.
    """
    scores = scores.float()
    grades = grades.to(scores)
    same = query_keys[:, None] == query_keys[None, :]
    if kind == "pairwise":
        better = same & (grades[:, None] > grades[None, :])
        if not bool(better.any()):
            return scores.sum() * 0.0
        differences = scores[:, None] - scores[None, :]
        return F.softplus(-differences[better]).mean()
    if kind == "listwise":
        losses = []
        for key in torch.unique(query_keys):
            rows = query_keys == key
            if int(rows.sum()) < 2 or bool((grades[rows] == grades[rows][0]).all()):
                continue
            target = torch.softmax(grades[rows], dim=0)
            losses.append(-(target * torch.log_softmax(scores[rows], dim=0)).sum())
        return torch.stack(losses).mean() if losses else scores.sum() * 0.0
    raise ValueError(f"training.loss {kind!r} is not a grouped loss")
