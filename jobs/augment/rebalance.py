"""``rebalance``: move the label distribution toward ``targetDistribution``.

``strategy: oversample`` adds rows to the labels below their target share, and makes them by *text
edits* of that label's rows rather than by copying (a copy teaches nothing new and over-weights a
few rows). The edits are the run's own text-edit augmenters (``synonym``, ``typo``, ... entries of
spec.augmenters, with their parameters and fields), or, when the run has none, ``synonym`` on query
and item plus ``typo`` and ``randomDelete`` on the query, with default parameters. The new rows keep
their source row's label (rule ``keep``).

The plan is computed from the whole source's label counts ``c`` (first pass), so every shard
applies the same rates: with target shares ``t``, the source is scaled to ``M = max(c_l / t_l)``
rows and label ``l`` needs ``t_l * M - c_l`` new rows; each selected row of label ``l`` makes
``floor(r_l)`` rows plus one more with probability ``frac(r_l)`` (a per-row random number), where
``r_l`` is that need over the label's selected rows. ``maxRows`` scales every need down
proportionally. Labels missing from the target are left alone; a target label the source never has
cannot be generated and is reported.

``strategy: undersample`` adds nothing and instead keeps each source row of an over-represented
label with probability ``t_l * M' / c_l`` (``M' = min(c_l / t_l)``): the only case where source
rows leave the output, counted in the manifest as ``rebalance`` rejections of source rows.

Rows of the other augmenters are not counted in the plan; the manifest's "after" distribution shows
where the whole run ended up.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numpy.typing import NDArray

from sampleforge.api.augmenters import RebalanceAugmenter
from sampleforge.jobs.augment.text import create_augmenter

from .errors import ConfigError
from .labels import LabelError, Labels
from .protocol import BatchPlan, GeneratedRow
from .randomness import RowRandomness
from .registry import BuildContext, register_row_augmenter
from .rows import RowBatch
from .textedit import TEXT_EDIT_TYPES, TextEditAugmenter, build_text_augmenter

log = logging.getLogger(__name__)

__all__ = ["Rebalance", "rebalance_rates"]


def rebalance_rates(counts: dict[str, int], target: dict[str, float], strategy: str, fraction: float = 1.0,
                    max_rows: int | None = None) -> tuple[dict[str, float], list[str]]:
    """Per-label rates and the target labels that cannot be reached.

    Oversample: new rows per *selected* source row of each label. Undersample: the probability of
    keeping a source row of each label. Labels absent from ``target`` get no entry (left alone).
    """
    unreachable = [label for label, share in target.items() if share > 0 and counts.get(label, 0) == 0]
    present = {label: share for label, share in target.items() if counts.get(label, 0) > 0}
    if not present:
        return {}, unreachable
    if strategy == "undersample":
        scale = min(counts[label] / share for label, share in present.items() if share > 0)
        return {label: min(1.0, share * scale / counts[label]) for label, share in present.items()}, unreachable
    scale = max(counts[label] / share for label, share in present.items() if share > 0)
    need = {label: max(0.0, share * scale - counts[label]) for label, share in present.items()}
    total = sum(need.values())
    if max_rows is not None and total > max_rows:
        need = {label: n * max_rows / total for label, n in need.items()}
    return {label: need[label] / (counts[label] * fraction) for label in present}, unreachable


class Rebalance:
    """Oversampling by text edits, or undersampling of source rows (see the module docstring)."""

    label_rule = "keep"

    def __init__(self, name: str, strategy: str, rates: dict[str, float], labels: Labels,
                 editors: list[TextEditAugmenter]) -> None:
        self.name = name
        self.strategy = strategy
        self.rates = rates
        self.labels = labels
        self.editors = editors

    def _row_rates(self, batch: RowBatch) -> NDArray[np.float64]:
        return np.asarray([self.rates.get(self.labels.key(v), 0.0) for v in batch.labels], dtype=np.float64)

    def keep_source_rows(self, batch: RowBatch, plan: BatchPlan) -> NDArray[np.bool_]:
        """Undersampling: which source rows stay (all of them when oversampling)."""
        if self.strategy != "undersample" or not len(batch):
            return np.ones(len(batch), dtype=bool)
        keep_probability = np.asarray([self.rates.get(self.labels.key(v), 1.0) for v in batch.labels])
        kept: NDArray[np.bool_] = plan.random.uniform(batch.row_ids, "undersample") < keep_probability
        return kept

    def counts(self, batch: RowBatch, plan: BatchPlan) -> NDArray[np.int64]:
        """New rows wanted for each batch row."""
        rates = self._row_rates(batch)
        base = np.floor(rates)
        extra = plan.random.uniform(batch.row_ids, "count") < (rates - base)
        wanted: NDArray[np.int64] = ((base + extra) * plan.selected).astype(np.int64)
        return wanted

    def augment(self, batch: RowBatch, plan: BatchPlan) -> list[GeneratedRow]:
        """Each row's wanted rows come from its first editor (editor ``row id mod E``); what an editor
        cannot make (a Chinese query has no letters to mistype) is asked of the next one, up to E tries.
        Every call asks an editor for one row count, so a row's variants depend on nothing but the row."""
        if self.strategy != "oversample" or not self.editors or not len(batch):
            return []
        remaining = self.counts(batch, plan)
        editors = len(self.editors)
        made: list[list[GeneratedRow]] = [[] for _ in range(len(batch))]
        seen: list[set[tuple[tuple[str, object], ...]]] = [set() for _ in range(len(batch))]
        turn = batch.row_ids % editors
        position = {int(r): i for i, r in enumerate(batch.row_ids.tolist())}
        for attempt in range(editors):
            for e, editor in enumerate(self.editors):
                mine = ((turn + attempt) % editors == e) & (remaining > 0)
                for n in sorted(set(remaining[mine].tolist())):
                    sub = BatchPlan(mine & (remaining == n), n, RowRandomness(plan.random.seed, editor.name))
                    for row in editor.augment(batch, sub):
                        i = position[row.source_row]
                        key = tuple(sorted(row.changes.items()))
                        if key in seen[i]:
                            continue
                        seen[i].add(key)
                        made[i].append(GeneratedRow(row.source_row, row.changes, "keep", len(made[i])))
            remaining = np.maximum(self.counts(batch, plan) - np.asarray([len(m) for m in made]), 0)
            if not remaining.any():
                break
        return [row for rows in made for row in rows]


#: Editors when the run has no text-edit augmenter: (type, options, fields), the API's defaults.
DEFAULT_EDITORS: tuple[tuple[str, dict[str, float], tuple[str, ...]], ...] = (
    ("synonym", {"alpha": 0.15}, ("query", "item")),
    ("typo", {"charAlpha": 0.05}, ("query",)),
    ("randomDelete", {"alpha": 0.1}, ("query",)),
)


def _editors(build: BuildContext, name: str) -> list[TextEditAugmenter]:
    entries = [e for e in build.spec.augmenters if e.type in TEXT_EDIT_TYPES]
    if entries:
        return [build_text_augmenter(e, build, name=f"{name}/{e.display_name()}") for e in entries]
    return [TextEditAugmenter(f"{name}/{type_name}", create_augmenter(type_name, options), fields)
            for type_name, options, fields in DEFAULT_EDITORS]


@register_row_augmenter(RebalanceAugmenter)
def _build(entry: RebalanceAugmenter, build: BuildContext) -> Rebalance:
    labels = build.labels
    target: dict[str, float] = {}
    for key, share in entry.target_distribution.items():
        try:
            target[labels.key(labels.coerce(key, f"{build.field_path}.targetDistribution"))] = float(share)
        except LabelError as err:
            raise ConfigError(str(err)) from err
    rates, unreachable = rebalance_rates(dict(labels.counts), target, entry.strategy, float(entry.fraction),
                                         entry.max_rows)
    if unreachable:
        log.warning("rebalance cannot reach some target labels: the source has no rows with them",
                    extra={"augmenter": entry.display_name(), "labels": unreachable})
    if not math.isclose(sum(target.values()), 1.0, abs_tol=0.011):
        raise ConfigError(f"{build.field_path}.targetDistribution must add up to 1")
    return Rebalance(entry.display_name(), entry.strategy, rates, labels, _editors(build, entry.display_name()))
