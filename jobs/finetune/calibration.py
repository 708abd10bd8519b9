"""Decision calibration (evaluation.calibration): how a classifier's probabilities become a class,
tuned on the evaluation split after training.

Why: a model trained on a skewed label prior (or on augmented data that moved the prior) ranks
well but decides badly at argmax / 0.5. A baseline that cannot correct its prior then loses on
macro-F1 to any run that happened to shift it, which says nothing about which model is better.
Tuning the decision on validation rows puts every run on the same footing.

* Two classes (ctr, or relevance with two labels): a threshold on the probability of the
  positive class (ctr: a click; relevance: the second class in label order, the higher grade).
  Every cut between two distinct probabilities is tried; ties in the objective go to the threshold
  nearest 0.5, the uncalibrated decision.
* More classes (graded relevance): an offset per class added to the log-probabilities before
  the argmax, which is what correcting the label prior (p(c|x) * target(c) / train(c)) amounts to.
  Found by coordinate ascent from zero offsets (class 0 stays at 0), accepting only strict gains,
  so the tuned decision is never worse than argmax on the rows it was tuned on.

The rows are the job's only evaluation split (data.eval, or the share data.evalFraction holds
out), the one early stopping watches; the job never sees a test split, so a claim needs one kept
outside it. The decision travels with the published model (``sampleforge_model.json``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sampleforge.api.finetune import Calibration

from . import metrics as M
from .errors import SpecError

#: Candidate offsets tried per class and round (quantiles of the breakpoints), and rounds.
_PRIOR_CANDIDATES = 256
_PRIOR_ROUNDS = 4
_LOG_FLOOR = 1e-12


@dataclass(frozen=True)
class Decision:
    """How probabilities become a predicted class index."""

    #: argmax (no calibration), threshold or prior.
    method: str = "argmax"
    #: threshold: P(positive) >= threshold predicts the positive class (index 1).
    threshold: float | None = None
    #: prior: per-class offsets added to log-probabilities before the argmax.
    offsets: tuple[float, ...] | None = None

    def predict(self, probabilities: ArrayLike) -> NDArray[np.int64]:
        """Class index per row. ``probabilities`` is (rows, classes), or (rows,) for P(positive)."""
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim == 1:
            if self.method == "argmax":
                return (p >= 0.5).astype(np.int64)  # ctr's uncalibrated decision
            p = np.stack([1.0 - p, p], axis=1)
        if self.method == "threshold":
            assert self.threshold is not None
            return (p[:, 1] >= self.threshold).astype(np.int64)
        if self.method == "prior":
            assert self.offsets is not None
            adjusted = np.log(np.clip(p, _LOG_FLOOR, None)) + np.asarray(self.offsets)
            return np.asarray(np.argmax(adjusted, axis=1), dtype=np.int64)
        return np.asarray(np.argmax(p, axis=1), dtype=np.int64)

    def to_json(self, classes: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        if self.threshold is not None:
            out.update(threshold=self.threshold, positiveLabel=classes[1])
        if self.offsets is not None:
            out["offsets"] = dict(zip(classes, self.offsets, strict=True))
        return out

    @classmethod
    def from_json(cls, document: dict[str, Any] | None, classes: tuple[str, ...]) -> Decision:
        if not document:
            return cls()
        offsets = document.get("offsets")
        return cls(document["method"], document.get("threshold"),
                   tuple(float(offsets[c]) for c in classes) if offsets is not None else None)


def objective_value(objective: str, targets: NDArray[np.int64], predicted: NDArray[np.int64], classes: int) -> float:
    """The calibration objective: macroF1, f1 (positive class with two classes) or accuracy."""
    if objective == "accuracy":
        return M.accuracy(targets, predicted)
    if objective == "f1" and classes == 2:
        return M.binary_f1(targets, predicted)
    return M.macro_f1(targets, predicted)


def decision_metrics(targets: ArrayLike, predicted: ArrayLike, classes: int) -> dict[str, float]:
    """The decision metrics calibration changes, as the evaluation reports them."""
    t, p = np.asarray(targets).astype(np.int64), np.asarray(predicted).astype(np.int64)
    out = {"accuracy": M.accuracy(t, p), "macroF1": M.macro_f1(t, p)}
    if classes == 2:
        out["f1"] = M.binary_f1(t, p)
    return out


def resolve_method(config: Calibration, classes: tuple[str, ...]) -> str:
    """threshold or prior for these labels; a method that does not fit them is a spec error."""
    if config.method == "auto":
        return "threshold" if len(classes) == 2 else "prior"
    if config.method == "threshold" and len(classes) != 2:
        raise SpecError(f"evaluation.calibration.method threshold needs two labels, but the training labels are "
                        f"{list(classes)}; use prior (or auto) for graded labels")
    return str(config.method)


def _threshold_in(low: float, high: float) -> float:
    """A threshold t with low < t <= high: 0.5 (the uncalibrated decision) when it lies there, else
    midway, so that unseen rows near a tuning row's probability fall as that row did."""
    if low < 0.5 <= high:
        return 0.5
    if math.isinf(high):
        return (low + 1.0) / 2.0 if low < 1.0 else math.nextafter(low, math.inf)
    return (low + high) / 2.0


def _binary_objective(objective: str, tp: NDArray[np.float64], fp: NDArray[np.float64], positives: float,
                      negatives: float) -> NDArray[np.float64]:
    """``objective`` for every cut at once, from its true and false positive counts; the same values
    as :func:`objective_value` (macro-F1 over the classes in the truth or the predictions)."""
    fn, tn = positives - tp, negatives - fp
    rows = positives + negatives
    if objective == "accuracy":
        return np.asarray((tp + tn) / rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_pos = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        f1_neg = np.where(2 * tn + fn + fp > 0, 2 * tn / (2 * tn + fn + fp), 0.0)
    if objective == "f1":
        return np.asarray(f1_pos)
    has_pos = (positives > 0) | (tp + fp > 0)
    has_neg = (negatives > 0) | (fn + tn > 0)
    count = has_pos.astype(np.float64) + has_neg.astype(np.float64)
    return np.asarray((np.where(has_pos, f1_pos, 0.0) + np.where(has_neg, f1_neg, 0.0)) / count)


def tune_threshold(positive: ArrayLike, targets: ArrayLike, objective: str) -> float:
    """The threshold on P(positive) (positive when p >= threshold) that maximises ``objective`` on
    these rows; among equally good ones, the one nearest 0.5. One pass over the sorted rows."""
    p = np.asarray(positive, dtype=np.float64)
    y = np.asarray(targets).astype(np.int64)
    distinct, inverse = np.unique(-p, return_inverse=True)  # ascending -p: descending p
    distinct = -distinct
    # Every decision these rows can tell apart: nobody positive, then p >= each distinct value.
    tp = np.concatenate([[0.0], np.cumsum(np.bincount(inverse, weights=(y == 1).astype(np.float64),
                                                      minlength=len(distinct)))])
    fp = np.concatenate([[0.0], np.cumsum(np.bincount(inverse, weights=(y != 1).astype(np.float64),
                                                      minlength=len(distinct)))])
    values = _binary_objective(objective, tp, fp, float(np.sum(y == 1)), float(np.sum(y != 1)))
    lows = [float(distinct[0]), *(float(v) for v in distinct[1:]), min(0.0, float(distinct[-1])) - 1e-9]
    highs = [math.inf, *(float(v) for v in distinct)]
    thresholds = np.asarray([_threshold_in(low, high) for low, high in zip(lows, highs, strict=True)])
    best = float(values.max())
    tied = np.flatnonzero(values >= best - 1e-12)
    return float(thresholds[tied[np.argmin(np.abs(thresholds[tied] - 0.5))]])


def tune_offsets(probabilities: ArrayLike, targets: ArrayLike, objective: str) -> tuple[float, ...]:
    """Per-class log-offsets that maximise ``objective`` on these rows (coordinate ascent from 0)."""
    log_p = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _LOG_FLOOR, None))
    y = np.asarray(targets).astype(np.int64)
    classes = log_p.shape[1]
    offsets = np.zeros(classes)

    def score(candidate: NDArray[np.float64]) -> float:
        return objective_value(objective, y, np.argmax(log_p + candidate, axis=1), classes)

    best = score(offsets)
    for _ in range(_PRIOR_ROUNDS):
        improved = False
        for c in range(1, classes):
            others = np.delete(log_p + offsets, c, axis=1).max(axis=1)
            # Row i switches to class c when offset_c exceeds others_i - log_p[i, c].
            breaks = np.unique(others - log_p[:, c])
            if len(breaks) > _PRIOR_CANDIDATES:
                breaks = np.unique(np.quantile(breaks, np.linspace(0.0, 1.0, _PRIOR_CANDIDATES)))
            values = np.concatenate([[breaks[0] - 1.0], (breaks[:-1] + breaks[1:]) / 2.0, [breaks[-1] + 1.0]])
            for value in values:
                trial = offsets.copy()
                trial[c] = value
                got = score(trial)
                if got > best + 1e-12:
                    best, offsets, improved = got, trial, True
        if not improved:
            break
    return tuple(float(v) for v in offsets)


def query_folds(queries: Sequence[str]) -> NDArray[np.int64]:
    """Fold 0 or 1 per row, by query (a stable hash of its text), so no query is in both halves."""
    return np.asarray([zlib.crc32(q.encode("utf-8")) % 2 for q in queries], dtype=np.int64)


def cross_fit(config: Calibration, classes: tuple[str, ...], probabilities: ArrayLike, targets: ArrayLike,
              queries: Sequence[str]) -> NDArray[np.int64] | None:
    """Each row's class under a decision tuned on the other half of the queries (evaluation.calibration
    estimate crossFit); None when all queries fall in one half."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(targets).astype(np.int64)
    folds = query_folds(queries)
    if len(np.unique(folds)) < 2:
        return None
    predicted = np.zeros(len(y), dtype=np.int64)
    for fold in (0, 1):
        rows = folds == fold
        decision = calibrate(config, classes, p[~rows], y[~rows])
        predicted[rows] = decision.predict(p[rows])
    return predicted


def calibrate(config: Calibration, classes: tuple[str, ...], probabilities: ArrayLike,
              targets: ArrayLike) -> Decision:
    """The decision tuned on these rows (probabilities (rows, classes), or (rows,) for ctr)."""
    method = resolve_method(config, classes)
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(targets).astype(np.int64)
    if method == "threshold":
        positive = p if p.ndim == 1 else p[:, 1]
        return Decision("threshold", threshold=tune_threshold(positive, y, config.objective))
    return Decision("prior", offsets=tune_offsets(p, y, config.objective))
