"""What a label means for each task: class index, regression target, click, or positive pair,
and the relevance grade ranking metrics use.

The label space is learned from the training rows and stored with the checkpoint and the model,
so evaluation rows, a resumed pod and whoever loads the published model map labels identically.

Numeric labels (``2``, ``"1"``, ``0.5``) are grades: larger is more relevant. Text labels are
class names; the ESCI names (Exact, Substitute, Complement, Irrelevant, or E/S/C/I) carry the
gains of the Amazon KDD Cup 2022 ranking task (1, 0.1, 0.01, 0), so NDCG means the same thing
as in the ESCI literature. Other text labels have no order: classification metrics work, ranking
metrics are refused at setup with a message saying how to fix it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sampleforge.api.finetune import ClassWeights, Task

from .errors import DatasetError, SpecError
from .examples import CHUNK_ROWS, Examples
from .rejected import Rejected

#: ESCI label names (full and one-letter), lower-cased, and their KDD Cup 2022 gains.
ESCI_GRADES: dict[str, float] = {
    "exact": 1.0, "e": 1.0, "substitute": 0.1, "s": 0.1,
    "complement": 0.01, "c": 0.01, "irrelevant": 0.0, "i": 0.0,
}
_TRUE = {"1", "true", "yes", "1.0"}
_FALSE = {"0", "false", "no", "0.0"}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _name(value: Any) -> str:
    number = _number(value)
    if number is not None and number.is_integer():
        return str(int(number))
    return str(value).strip()


@dataclass(frozen=True)
class Targets:
    """Encoded labels of the rows that were kept."""

    #: Class index (relevance), float target (regression, ctr) or 1.0 (twoTower positives).
    targets: NDArray[Any]
    #: Relevance grade per row (0 = irrelevant), for ranking metrics.
    grades: NDArray[np.float64]


@dataclass(frozen=True)
class LabelSpace:
    """How a task reads labels; JSON-serialisable so it travels with checkpoints and models."""

    task: Task
    #: Class names in index order (relevance); empty for the other tasks.
    classes: tuple[str, ...] = ()
    #: Grade of each class, or None when the class names have no order.
    class_grades: tuple[float, ...] | None = None

    @property
    def num_outputs(self) -> int:
        """Width of the model's output: one logit per class, one score, or none (two-tower)."""
        if self.task == Task.RELEVANCE:
            return len(self.classes)
        return 0 if self.task == Task.TWO_TOWER else 1

    @property
    def ordered(self) -> bool:
        """Whether labels carry grades, so ranking metrics mean something."""
        return self.task != Task.RELEVANCE or self.class_grades is not None

    @classmethod
    def learn(cls, task: Task, labels: Iterable[Any] | None) -> LabelSpace:
        """The label space of ``task`` given the training labels (each distinct one is enough)."""
        if task != Task.RELEVANCE:
            return cls(task)
        assert labels is not None  # the reader requires a label column for relevance
        names = sorted({_name(v) for v in labels})
        if len(names) < 2:
            raise DatasetError(f"the label column holds a single value ({names[0]!r}); relevance needs at least two "
                               "classes. Check data.columns.label, or use task relevanceRegression")
        numbers = [_number(n) for n in names]
        if all(x is not None for x in numbers):
            ordered = sorted(zip(numbers, names, strict=True))
            return cls(task, tuple(n for _, n in ordered), tuple(float(x) for x, _ in ordered))  # type: ignore[arg-type]
        if all(n.lower() in ESCI_GRADES for n in names):
            ordered_esci = sorted(names, key=lambda n: ESCI_GRADES[n.lower()])
            return cls(task, tuple(ordered_esci), tuple(ESCI_GRADES[n.lower()] for n in ordered_esci))
        return cls(task, tuple(names), None)

    def encode(self, examples: Examples, rejected: Rejected, source: str) -> tuple[Examples, Targets]:
        """Encode the labels of ``examples``, a chunk at a time; rows whose label this space cannot
        read are set aside."""
        labels = examples.labels
        n = len(examples)
        keep = np.zeros(n, dtype=bool)
        targets = np.zeros(n, dtype=np.float64)
        grades = np.zeros(n, dtype=np.float64)
        index = {name: i for i, name in enumerate(self.classes)}

        def unlabelled() -> Iterator[list[Any]]:
            for start in range(0, n, CHUNK_ROWS):
                yield [None] * min(CHUNK_ROWS, n - start)

        row = 0
        for chunk in (labels.chunks() if labels is not None else unlabelled()):
            for raw in chunk:
                decoded = self._decode(raw, index, labels is None)
                if isinstance(decoded, str):
                    rejected.add(source, decoded, {"query": examples.queries[row], "item": examples.items[row],
                                                   "label": raw if raw is None or isinstance(raw, int | float | str)
                                                   else str(raw)})
                else:
                    keep[row] = True
                    targets[row], grades[row] = decoded
                row += 1
        dtype = np.int64 if self.task == Task.RELEVANCE else np.float32
        return examples.take(np.flatnonzero(keep)), Targets(targets[keep].astype(dtype), grades[keep])

    def _decode(self, raw: Any, index: dict[str, int], unlabelled: bool) -> tuple[float, float] | str:
        """(target, grade) or the reason the label is unusable."""
        if self.task == Task.RELEVANCE:
            name = _name(raw)
            if name not in index:
                return f"label {name!r} is not one of the training classes {list(self.classes)}"
            i = index[name]
            return float(i), (self.class_grades[i] if self.class_grades else float(i))
        if self.task == Task.CTR:
            text = str(raw).strip().lower()
            if text in _TRUE:
                return 1.0, 1.0
            if text in _FALSE:
                return 0.0, 0.0
            return f"click label {raw!r} is not 0/1 or true/false"
        if unlabelled:  # twoTower without a label column: every row is a positive pair
            return 1.0, 1.0
        number = _number(raw)
        if number is None and str(raw).strip().lower() in ESCI_GRADES:
            number = ESCI_GRADES[str(raw).strip().lower()]
        if number is None:
            return f"label {raw!r} is not a number (or an ESCI name)"
        return number, number

    @property
    def decision_classes(self) -> tuple[str, ...]:
        """Names of the classes a decision picks from, by index: the label classes (relevance),
        no click / click (ctr), none for the other tasks."""
        if self.task == Task.CTR:
            return ("0", "1")
        return self.classes

    def _class_index(self, label: str) -> int | None:
        if self.task == Task.CTR:
            text = label.strip().lower()
            return 1 if text in _TRUE else 0 if text in _FALSE else None
        return {name: i for i, name in enumerate(self.classes)}.get(_name(label))

    def class_weights(self, config: ClassWeights | None, targets: NDArray[Any]) -> NDArray[np.float64] | None:
        """Loss weight per class index from training.classWeights, given the training targets.

        balanced is scikit-learn's ``compute_class_weight("balanced")``: rows / (classes x rows of the
        class), so the weights average 1 over the training rows. A class without training rows
        (only possible for ctr) keeps weight 1.
        """
        if config is None:
            return None
        classes = self.decision_classes
        if not classes:
            raise SpecError(f"training.classWeights applies only to tasks relevance and ctr, not {self.task}")
        weights = np.ones(len(classes), dtype=np.float64)
        if config.type == "balanced":
            counts = np.bincount(np.asarray(targets).astype(np.int64), minlength=len(classes))
            present = counts > 0
            weights[present] = counts.sum() / (len(classes) * counts[present])
            return weights
        for label, weight in (config.weights or {}).items():
            index = self._class_index(label)
            if index is None:
                raise SpecError(f"training.classWeights.weights: label {label!r} is not one of the training labels "
                                f"{list(classes)}; key the weights by the labels of the label column")
            weights[index] = weight
        return weights

    def to_json(self) -> dict[str, Any]:
        return {"task": str(self.task), "classes": list(self.classes),
                "classGrades": list(self.class_grades) if self.class_grades is not None else None}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> LabelSpace:
        grades = document.get("classGrades")
        return cls(Task(document["task"]), tuple(document.get("classes", ())),
                   tuple(grades) if grades is not None else None)
