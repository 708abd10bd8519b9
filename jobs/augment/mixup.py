"""``mixup``: new rows whose dense features interpolate a selected row and a random partner.

For each selected row and each of its ``perRow`` variants, a partner is drawn uniformly from the
first pass's row sample (``build.knowledge.sample``: whole-source, the same in every shard; never the
row itself) and a weight ``lam ~ Beta(alpha, alpha)``. The selected row gets the larger share,
``w = max(lam, 1 - lam)`` (as MixMatch does), and each feature of ``features`` (all dense features
when empty) becomes ``w * x_row + (1 - w) * x_partner``; the other columns are the selected row's.

Why the selected row dominates: a generated row keeps the selected row's query, item, attributes and
image, so its features must stay mostly that row's, or the row would pair one example's texts with
another's behaviour. The label follows the same reasoning, by label type:

* integer or text labels (clicks, relevance grades, ESCI classes): the label of the dominant
  partner, which is the selected row (rule ``dominant``). A hard label cannot be 0.7 of a click,
  and a recommender trained on the output should not see grades that no annotator gave;
* float labels (a CTR, a graded score already on a continuous scale): the labels interpolated with
  the same weight, ``w * y_row + (1 - w) * y_partner`` (rule ``mix``), the soft label of mixup.

The partner's features are put in the output's space first (the sample holds raw values; the
batches clipped and normalised ones), so mixing happens where the rows are written. Every mixed
value lies between the two rows' values, and nearer the selected row's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sampleforge.api.augmenters import MixupAugmenter

from .errors import ConfigError
from .labels import LabelError, Labels
from .protocol import BatchPlan, GeneratedRow
from .registry import BuildContext, register_row_augmenter
from .rows import RowBatch

__all__ = ["Mixup", "features_of", "sample_matrix"]


def features_of(entry: Any, build: BuildContext) -> tuple[list[str], list[int]]:
    """The dense columns an augmenter works on (``features``, all of them when empty) and their positions."""
    dense = list(build.roles.dense)
    wanted = list(entry.features) or dense
    unknown = [f for f in wanted if f not in dense]
    if unknown:
        raise ConfigError(f"{build.field_path}.features names {', '.join(unknown)}, which "
                          f"{'is' if len(unknown) == 1 else 'are'} not in spec.source.columns.denseFeatures "
                          f"({', '.join(dense) or 'none'}); list dense feature columns only")
    return wanted, [dense.index(f) for f in wanted]


def sample_matrix(build: BuildContext, positions: Sequence[int]) -> tuple[NDArray[np.int64], NDArray[np.float64],
                                                                           list[Any]]:
    """The first pass's row sample as (row ids, features in the output's space, labels in the source's
    label type): the sample holds raw values, the batches cleaned and normalised ones."""
    sample = build.knowledge.sample
    if sample is None or not len(sample):
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(positions))), []
    dense = build.roles.dense
    matrix = np.column_stack([np.asarray(sample.columns[d], dtype=np.float64) for d in dense])
    if build.knowledge.dense is not None and not build.knowledge.dense.is_identity:
        matrix = build.knowledge.dense.transform(matrix)
    labels = []
    for value in sample.labels:
        try:
            labels.append(build.labels.coerce(value, "spec.source.columns.label"))
        except LabelError as err:  # the first pass decided the type from these very values
            raise ConfigError(str(err)) from err
    return sample.row_ids.copy(), matrix[:, list(positions)], labels


class Mixup:
    """Interpolates dense features with partners from the sample (see the module docstring)."""

    def __init__(self, name: str, alpha: float, features: Sequence[str], label_column: str, labels: Labels,
                 partner_ids: NDArray[np.int64], partner_features: NDArray[np.float64],
                 partner_labels: Sequence[Any]) -> None:
        self.name = name
        self.alpha = alpha
        self.features = tuple(features)
        self.label_column = label_column
        self.soft = labels.kind == "float"
        self.label_rule = "mix" if self.soft else "dominant"
        self.partner_ids = partner_ids
        self.partner_features = partner_features
        self.partner_labels = list(partner_labels)

    def _partner(self, rng: np.random.Generator, row: int) -> int | None:
        """A sample position other than ``row`` itself (None when the sample holds only ``row``)."""
        m = len(self.partner_ids)
        if m == 0 or (m == 1 and int(self.partner_ids[0]) == row):
            return None
        k = int(rng.integers(m))
        return (k + 1) % m if int(self.partner_ids[k]) == row else k

    def augment(self, batch: RowBatch, plan: BatchPlan) -> list[GeneratedRow]:
        out: list[GeneratedRow] = []
        per_row = plan.per_row or 1
        for i in plan.selected_indices():
            row = int(batch.row_ids[i])
            rng = plan.random.generator(row, "mixup")
            own = np.asarray([batch.value(c, i) for c in self.features], dtype=np.float64)
            label = batch.labels[i]
            for variant in range(per_row):
                k = self._partner(rng, row)
                if k is None:
                    break
                lam = float(rng.beta(self.alpha, self.alpha))
                weight = max(lam, 1.0 - lam)
                mixed = weight * own + (1.0 - weight) * self.partner_features[k]
                changes: dict[str, Any] = {c: float(v) for c, v in zip(self.features, mixed, strict=True)}
                if self.soft:
                    changes[self.label_column] = weight * float(label) + (1.0 - weight) * float(self.partner_labels[k])
                else:
                    changes[self.label_column] = label
                out.append(GeneratedRow(row, changes, self.label_rule, variant))
        return out


@register_row_augmenter(MixupAugmenter, needs=("sample",))
def _build(entry: MixupAugmenter, build: BuildContext) -> Mixup:
    features, positions = features_of(entry, build)
    row_ids, matrix, labels = sample_matrix(build, positions)
    return Mixup(entry.display_name(), float(entry.alpha), features, build.roles.label, build.labels, row_ids,
                 matrix, labels)
