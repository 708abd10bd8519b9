"""Rows as every stage of a shard passes them on: which column plays which role, and a batch of
cleaned source rows with their global ids.

Preprocessing makes these, the first pass learns from them, augmenters and filters read them and the
output writes them, so they live apart from any one stage (and from the augmenter contract in
:mod:`.protocol`); the provenance columns are here because every written row carries them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["PROVENANCE_COLUMNS", "ColumnRoles", "RowBatch"]

#: Extra columns of every output row: where it came from and how its label was decided.
PROVENANCE_COLUMNS: Mapping[str, str] = {
    "sf_origin": "'source' for a (cleaned) source row, 'generated' for a row an augmenter added",
    "sf_augmenter": "name of the augmenter that generated the row (spec.augmenters[].name or type); null for source",
    "sf_source_row": "global index of the source row the row is (or derives from), counted over the whole source",
    "sf_label_rule": "how the label was set: keep (copied from the source row), assign (spec label), "
    "lowest (the lowest label of the source), condition (gan: the source row's label, which the dense "
    "features were generated conditioned on), dominant (mixup: the label of the partner with the larger "
    "mixing weight, always the source row), mix (mixup of float labels: the labels interpolated with the "
    "features' weight), judge (an llmJudge relabelled the row with its grade); null for source rows",
}


@dataclass(frozen=True)
class ColumnRoles:
    """``spec.source.columns`` resolved to column names; the output keeps these names."""

    query: str
    item: str
    label: str
    attributes: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()
    image: str | None = None
    id: str | None = None

    @property
    def all(self) -> tuple[str, ...]:
        """Every mapped column, in output order (id first, then texts, label, attributes, ...)."""
        head = (self.id,) if self.id else ()
        tail = (self.image,) if self.image else ()
        return (*head, self.query, self.item, self.label, *self.attributes, *self.dense, *tail)

    def field_paths(self) -> list[tuple[str, str]]:
        """(spec field path, column name) for every mapped column, for error messages."""
        paths = [("spec.source.columns.query", self.query), ("spec.source.columns.item", self.item),
                 ("spec.source.columns.label", self.label)]
        paths += [(f"spec.source.columns.attributes[{i}]", a) for i, a in enumerate(self.attributes)]
        paths += [(f"spec.source.columns.denseFeatures[{i}]", d) for i, d in enumerate(self.dense)]
        if self.image:
            paths.append(("spec.source.columns.image", self.image))
        if self.id:
            paths.append(("spec.source.columns.id", self.id))
        return paths


@dataclass(frozen=True)
class RowBatch:
    """Cleaned source rows: column name -> values (Python lists), plus each row's global id.

    Rows are in source order; ``row_ids`` is increasing but may have gaps where a record was set
    aside as malformed. Values are already cleaned (:mod:`.preprocess`): texts are ``str`` (NFKC,
    whitespace-normalised, PII-redacted as configured), attributes ``str`` or None, dense features
    ``float``, labels of the source's label type.
    """

    roles: ColumnRoles
    row_ids: NDArray[np.int64]
    columns: Mapping[str, list[Any]]

    def __len__(self) -> int:
        return len(self.row_ids)

    @property
    def queries(self) -> list[str]:
        return self.columns[self.roles.query]

    @property
    def items(self) -> list[str]:
        return self.columns[self.roles.item]

    @property
    def labels(self) -> list[Any]:
        return self.columns[self.roles.label]

    def value(self, column: str, i: int) -> Any:
        return self.columns[column][i]

    def attributes(self, i: int) -> dict[str, str | None]:
        """Row ``i``'s attribute values by column name."""
        return {a: self.columns[a][i] for a in self.roles.attributes}

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a dict of every mapped column."""
        return {name: values[i] for name, values in self.columns.items()}

    def take(self, indices: Sequence[int]) -> RowBatch:
        """A batch of the rows at ``indices`` (in that order)."""
        idx = list(indices)
        return RowBatch(self.roles, self.row_ids[idx] if idx else self.row_ids[:0],
                        {name: [values[i] for i in idx] for name, values in self.columns.items()})

    def contiguous_runs(self, mask: NDArray[np.bool_] | None = None) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` batch positions of runs whose row ids are consecutive (and, when ``mask``
        is given, which contain at least one selected row): what per-row-indexed libraries such as the
        text augmenters, which take a ``first_row``, need."""
        n = len(self)
        if n == 0:
            return
        breaks = np.flatnonzero(np.diff(self.row_ids) != 1) + 1
        bounds = [0, *breaks.tolist(), n]
        for start, stop in itertools.pairwise(bounds):
            if mask is None or bool(mask[start:stop].any()):
                yield start, stop
