"""How an llmJudge grades: its label scale, the rubric prompt, reading the grade from an answer, the
verdict on a row, and the agreement of the grades with the labels.

Plain functions over text and counts, no model: :mod:`.judge` is the augmenter that asks an engine
and applies the verdicts.

* **The scale** is the source's labels (lowest first when they are numbers) plus the labels the
  spec's augmenters assign; a source with more than :data:`MAX_SCALE` distinct labels (a float score)
  has no scale to grade on, which is a configuration error.
* **Parsing** (:func:`parse_grade`): the first label of the scale the answer names, after its
  preamble ("Grade:", "The answer is") and ranges it echoes ("on a scale of 0 to 2", "1/2") are set
  aside; numbers compare as numbers (``2.0`` is ``2``), names case-, width- and punctuation-insensitively
  (a longer label wins over one it contains: ``no match`` over ``match``). An answer with no label of
  the scale is a failure with a reason (``no grade in the answer``, ``grade off the label scale``),
  as is a request the engine could not answer (``request failed: ...``); a failed row is kept unchanged
  or dropped (``onFailure``), never relabelled, and counted per reason.
* **Agreement** (:func:`judge_rates`): the summed counts get the agreement rate and Cohen's kappa of
  the grades against the labels (:func:`cohens_kappa`), for the manifest.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .labels import LabelError, Labels
from .prompts import MAX_SOURCE_CHARS, normalized
from .rows import ColumnRoles

__all__ = [
    "DISAGREES",
    "EMPTY",
    "MAX_SCALE",
    "NO_GRADE",
    "OFF_SCALE",
    "Scale",
    "Verdict",
    "cohens_kappa",
    "decide",
    "judge_rates",
    "label_scale",
    "pair_item_text",
    "parse_grade",
    "render_rubric",
]

#: Most distinct labels a scale may have: more is a score, not grades a model can name.
MAX_SCALE = 16
#: Why a row is dropped when the judge's grade differs from its label (mode: filter).
DISAGREES = "judge disagrees with the label"
NO_GRADE = "no grade in the answer"
OFF_SCALE = "grade off the label scale"
EMPTY = "empty answer"


# --- the scale ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """The labels a judge may answer with, as their string keys (:meth:`Labels.key`), in order."""

    labels: tuple[str, ...]
    numeric: bool

    def describe(self) -> str:
        """The scale as the prompt's ``{labels}``."""
        if self.numeric and len(self.labels) >= 2:
            return (f"Grade on this scale: {', '.join(self.labels[:-1])} or {self.labels[-1]}, from "
                    f"{self.labels[0]} (not relevant) to {self.labels[-1]} (fully relevant).")
        return f"Grade with one of these labels: {', '.join(self.labels)}."


def _number(text: str) -> float | None:
    """``text`` as a finite number, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if not math.isnan(value) and value not in (float("inf"), float("-inf")) else None


def label_scale(labels: Labels, assigned: Iterable[Any] = (), field_path: str = "spec.augmenters") -> Scale:
    """The run's scale: the source's labels and ``assigned`` (labels the spec's augmenters give)."""
    keys = set(labels.counts)
    for value in assigned:
        try:
            keys.add(labels.key(labels.coerce(value, field_path)))
        except LabelError as err:
            raise ConfigError(str(err)) from err
    if not keys:
        raise ConfigError(f"{field_path}: the source has no labelled rows, so there is no label scale to grade on")
    if len(keys) > MAX_SCALE:
        raise ConfigError(f"{field_path}: the source has {len(keys)} distinct labels; llmJudge grades on a scale of "
                          f"at most {MAX_SCALE} labels (relevance grades, match / no match), not a score; remove it "
                          "or bucket the labels")
    numeric = all(_number(k) is not None for k in keys)
    ordered = sorted(keys, key=float) if numeric else sorted(keys, key=str.casefold)
    return Scale(tuple(ordered), numeric)


# --- the prompt ---------------------------------------------------------------------------------


def pair_item_text(row: Mapping[str, Any], roles: ColumnRoles) -> str:
    """The item as the judge reads it: its title, then its attribute values by column name."""
    attributes = [f"{a.replace('_', ' ')}: {row.get(a)}" for a in roles.attributes if row.get(a)]
    title = str(row.get(roles.item) or "")
    return f"{title} ({'; '.join(attributes)})" if attributes else title


def render_rubric(template: str, query: str, item: str, scale: Scale) -> str:
    """``template`` with ``{labels}``, ``{query}`` and ``{item}`` filled in (literally, like
    :func:`~.prompts.render`: braces elsewhere stay as written; the pair is filled in last, so a
    query that contains ``{labels}`` stays text)."""
    out = template.replace("{labels}", scale.describe())
    marker = "\x00item\x00"
    out = out.replace("{item}", marker).replace("{query}", query[:MAX_SOURCE_CHARS])
    return out.replace(marker, item[:MAX_SOURCE_CHARS])


# --- parsing the answer ---------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w]|\.\d)")
#: Ranges and denominators the answer may echo ("from 0 to 2", "0-2", "1 out of 2", "1/2").
_RANGE = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?\s*(?:-|–|—|to|through)\s*[-+]?\d+(?:\.\d+)?(?![\w]|\.\d)",
                    re.IGNORECASE)
_DENOMINATOR = re.compile(r"(?:\bout\s+of|/)\s*[-+]?\d+(?:\.\d+)?", re.IGNORECASE)


def parse_grade(answer: str, scale: Scale) -> tuple[str | None, str | None]:
    """``(grade, None)`` with the first label of ``scale`` that ``answer`` names, or ``(None, reason)``."""
    text = unicodedata.normalize("NFKC", answer or "").strip()
    if not text:
        return None, EMPTY
    if scale.numeric:
        by_value = {_number(label): label for label in scale.labels}
        stripped = _DENOMINATOR.sub(" ", _RANGE.sub(" ", text))
        numbers = [_number(m.group()) for m in _NUMBER.finditer(stripped)]
        for value in numbers:
            if value is not None and value in by_value:
                return by_value[value], None
        if numbers or _NUMBER.search(text):
            return None, OFF_SCALE
        return None, NO_GRADE
    said = f" {normalized(text)} "
    best: tuple[int, int, str] | None = None
    for label in scale.labels:
        key = normalized(label)
        if not key:
            continue
        at = said.find(f" {key} ")
        if at >= 0 and (best is None or (at, -len(key)) < (best[0], best[1])):
            best = (at, -len(key), label)
    if best is not None:
        return best[2], None
    return None, NO_GRADE


# --- the decision and the agreement -------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the judge made of one candidate row."""

    #: The row's label (its key) when it was graded.
    label: str
    #: The grade (a key of the scale), or None when there is none.
    grade: str | None
    #: Why there is no grade (counted per reason), or None.
    failure: str | None
    #: "keep", "drop" or "relabel".
    action: str
    #: Why the row is dropped (action "drop"), for the filter counts.
    reason: str | None = None

    @property
    def agrees(self) -> bool | None:
        return None if self.grade is None else self.grade == self.label


def decide(label: str, grade: str | None, failure: str | None, mode: str, on_failure: str) -> Verdict:
    """Keep, drop or relabel a row with label ``label`` that the judge graded ``grade`` (or not: ``failure``)."""
    if grade is None:
        reason = failure or NO_GRADE
        if on_failure == "drop":
            return Verdict(label, None, reason, "drop", f"no grade: {reason}")
        return Verdict(label, None, reason, "keep")
    if grade == label:
        return Verdict(label, grade, None, "keep")
    if mode == "relabel":
        return Verdict(label, grade, None, "relabel")
    return Verdict(label, grade, None, "drop", DISAGREES)


def cohens_kappa(confusion: Mapping[str, Mapping[str, int]]) -> float | None:
    """Cohen's kappa of a confusion matrix (first rater -> second rater -> count); None when undefined
    (no rows, or both raters always gave one and the same label)."""
    total = sum(n for row in confusion.values() for n in row.values())
    if total == 0:
        return None
    labels = set(confusion) | {g for row in confusion.values() for g in row}
    observed = sum(confusion.get(label, {}).get(label, 0) for label in labels) / total
    first = {label: sum(confusion.get(label, {}).values()) / total for label in labels}
    second = {label: sum(row.get(label, 0) for row in confusion.values()) / total for label in labels}
    expected = sum(first[label] * second[label] for label in labels)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def judge_rates(counts: Mapping[str, Any]) -> dict[str, Any]:
    """The summed counts of a judge with its agreement rate and kappa (for the manifest)."""
    judged = int(counts.get("judged", 0))
    kappa = cohens_kappa(counts.get("confusion", {}))
    return {**{k: counts[k] for k in sorted(counts) if k != "confusion"},
            "agreementRate": round(int(counts.get("agreed", 0)) / judged, 4) if judged else None,
            "cohensKappa": round(kappa, 4) if kappa is not None else None,
            "confusion": {label: dict(sorted(row.items())) for label, row in sorted(counts.get("confusion", {}).items())}}
