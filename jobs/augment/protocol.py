"""The row-augmenter protocol: what every augmenter of an AugmentationRun receives and returns.

An augmenter is handed one batch of cleaned source rows at a time and returns new rows derived from
them. Everything that the run's guarantees depend on is decided *outside* the augmenter, by the
pipeline, so that every augmenter (text edits, attribute edits, hard negatives, and later model-based
generation, GANs, mixup or image edits) gets them for free:

* **Budget.** The pipeline decides which rows an augmenter works on (``spec.augmenters[].fraction``
  and ``maxRows``) and how many rows it may add per row (``perRow`` / ``perQuery``); the augmenter sees
  the result as :attr:`BatchPlan.selected` and :attr:`BatchPlan.per_row`, and the pipeline drops
  (and counts) anything beyond it.
* **Randomness.** All random numbers come from :class:`RowRandomness`: a stream per
  ``(seed, augmenter name, global row id)``. The global row id is the row's index in the whole source
  (see :mod:`.source`), not its position in a shard or batch, so a row gets the same variants whatever
  the shard count, batch size, or retry.
* **Provenance.** An augmenter returns :class:`GeneratedRow` objects: the source row they derive
  from, only the columns they change, and the label rule they applied. The pipeline merges them with
  the source row, stamps the augmenter's name, filters them, and writes provenance columns.

To add an augmenter type (the ``type`` values of ``api/augmenters.py``), write a class with a
``name``, ``label_rule`` and ``augment(batch, plan)`` (see :class:`RowAugmenter`), and a factory
registered with :func:`register_row_augmenter`; import its module from :mod:`.catalog`. Example (a
simplified :mod:`.mixup`)::

    @register_row_augmenter("mixup", needs=("sample",))
    def _build_mixup(spec: MixupAugmenter, build: BuildContext) -> RowAugmenter:
        return Mixup(spec.display_name(), spec, build.knowledge.sample, build.roles)

    class Mixup:
        label_rule = "dominant"
        def __init__(self, name, spec, sample, roles): ...
        def augment(self, batch: RowBatch, plan: BatchPlan) -> list[GeneratedRow]:
            out = []
            for i in plan.selected_indices():
                rng = plan.random.generator(int(batch.row_ids[i]))
                partner = self.sample.row(int(rng.integers(len(self.sample))))
                lam = float(rng.beta(self.spec.alpha, self.spec.alpha))
                dense = {c: lam * batch.value(c, i) + (1 - lam) * partner[c] for c in batch.roles.dense}
                out.append(GeneratedRow(source_row=int(batch.row_ids[i]), changes=dense, label_rule="dominant"))
            return out

How the families that need more than a batch are built:

* **Model-based generation** (paraphrase, doc2query, backTranslation, :mod:`.generation`): models
  come from ``build.models.generator`` (:class:`~.modelcache.ModelCache` resolves ``s3://``
  directories offline; a directory holds a transformers model or one ``*.gguf`` file). The selected
  rows are batched by token length inside ``augment``; sampling draws each sequence's tokens from its
  own ``torch.Generator`` seeded from ``plan.random.row_key(row)`` (with the field and variant), so
  a row's text does not depend on its batch, the batch size or the shard count. Answers that are
  empty, identical to their source or lose an attribute value are dropped there and counted in the
  job log. A new model-based type reuses :class:`~.generation.TextGenerator` and its ``generate``.
* **GAN / mixup** (dense features, :mod:`.gan`, :mod:`.mixup`): declare ``needs=("sample",)`` and fit
  on ``build.knowledge.sample`` (a uniform sample of whole source rows, identical in every shard) in
  the factory, so every shard trains the same model. The sample holds the first pass's values: dense
  features *before* clipping and normalisation, labels as read; apply
  ``build.knowledge.dense.transform`` and ``build.labels.coerce`` to put them in the space of the
  batches. A synthetic row still names a ``source_row``: the selected row whose other columns
  (texts, image) it keeps; set the label with a rule other than ``keep`` (``condition``, ``mix``,
  ``dominant``). Facts about the fitted model that hold for the whole run (fidelity metrics,
  training time) go in :meth:`AugmenterSummary.summary`, which the manifest and report carry.
* **Images** (:mod:`.image`): write new image objects under ``spec.output.uri`` with keys derived
  from ``(augmenter name, source_row, variant)`` (deterministic, so a retried shard overwrites rather
  than duplicates) via ``build.store``, and return the new key as the image column's change.
* **A row the augmenter cannot work on** (its image is missing or undecodable): return a
  :class:`GeneratedRow` with ``unusable`` set to a short reason. Nothing is written for it; the
  pipeline counts it as dropped (filter ``notGenerated``, per reason) in the manifest and report,
  so a broken input shows up instead of silently producing fewer rows.
* **Source-row selection** (undersampling): also implement :class:`SourceRowSelector`.

This module imports neither torch nor the text augmenters: it is the contract, nothing else.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from sampleforge.jobs.common.hashing import (
    fnv1a64,
    row_key,
    row_keys,
    splitmix64,
    splitmix64_array,
    stream_base,
    unit_floats,
)

if TYPE_CHECKING:  # only for annotations: keeps this module free of import cycles
    from sampleforge.api.augmentation import AugmentationRunSpec
    from sampleforge.jobs.common.storage import ObjectStore

    from .knowledge import DatasetKnowledge
    from .modelcache import ModelCache

__all__ = [
    "PROVENANCE_COLUMNS",
    "AugmenterSummary",
    "BatchPlan",
    "BuildContext",
    "ColumnRoles",
    "GeneratedRow",
    "Labels",
    "Registration",
    "RowAugmenter",
    "RowBatch",
    "RowRandomness",
    "SourceRowSelector",
    "register_row_augmenter",
    "registered_types",
    "registration",
]

# --- provenance columns written next to the source's own columns --------------------------------

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

class RowRandomness:
    """Random numbers for one augmenter, keyed by ``(seed, name, global row id)``.

    Why not one generator per augmenter: its numbers would depend on which rows came before in the
    same process, so a shard, a retry or another batch size would change the output. Here row ``r``'s
    numbers depend on nothing but the seed, the augmenter's name and ``r``.
    """

    def __init__(self, seed: int, name: str) -> None:
        self.seed = seed
        self.name = name
        self._base = stream_base(seed, fnv1a64(name))

    def row_key(self, row: int) -> int:
        """The 64-bit key of row ``row``."""
        return row_key(self._base, row)

    def uniform(self, rows: Sequence[int] | NDArray[np.int64], stream: str = "") -> NDArray[np.float64]:
        """One float in [0, 1) per row, for the named ``stream`` (vectorised: a batch at a time)."""
        ids = np.asarray(rows, dtype=np.int64).astype(np.uint64)  # negative ids wrap, as row_key's do
        if ids.size == 0:
            return np.zeros(0, dtype=np.float64)
        keys = row_keys(self._base, ids)
        keys ^= np.uint64(fnv1a64(stream))
        return unit_floats(splitmix64_array(keys))

    def generator(self, row: int, stream: str = "") -> np.random.Generator:
        """A numpy Generator for row ``row`` (about 20 us to create: fine per row, not per word)."""
        return np.random.Generator(np.random.PCG64([self.row_key(row), fnv1a64(stream)]))

    def derived_seed(self, purpose: str = "") -> int:
        """A non-negative 63-bit seed for libraries that take one seed and key rows themselves (the
        text-edit augmenters key by row index, so giving each augmenter name its own seed keeps two
        augmenters of the same type from producing the same edits)."""
        return splitmix64(self._base ^ fnv1a64(purpose)) >> 1


# --- column roles and batches -------------------------------------------------------------------


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


@dataclass(frozen=True)
class GeneratedRow:
    """One new row: which source row it derives from, what it changes, and how its label was set.

    ``changes`` maps column names (as in :class:`ColumnRoles`) to new values; columns it leaves out are
    copied from the source row. ``label_rule`` is ``"keep"`` when the label is the source row's (then
    ``changes`` must not set the label column), otherwise a short rule name (``"assign"``,
    ``"lowest"``, ...) and ``changes`` sets the label. ``variant`` numbers the rows an augmenter makes
    from one source row (0, 1, ...), which keeps generated ids unique.
    """

    source_row: int
    changes: Mapping[str, Any]
    label_rule: str = "keep"
    variant: int = 0
    #: Set (to a short, countable reason such as "image not found") when the augmenter could not make
    #: the row from its source row: the row is not written, and the pipeline counts it as dropped.
    unusable: str | None = None


@dataclass(frozen=True)
class BatchPlan:
    """What the pipeline allows one augmenter to do with one batch."""

    #: Rows (batch positions) the augmenter is applied to, from its fraction / maxRows budget.
    selected: NDArray[np.bool_]
    #: Most rows it may add per selected row (perRow / perQuery); None when the augmenter decides
    #: per row itself (rebalance).
    per_row: int | None
    #: The augmenter's random numbers.
    random: RowRandomness

    def selected_indices(self) -> list[int]:
        return np.flatnonzero(self.selected).tolist()


@runtime_checkable
class RowAugmenter(Protocol):
    """An augmenter as the pipeline sees it.

    ``augment`` must be a pure function of its arguments and of what the augmenter was built with:
    no state carried between batches (a shard may start at any batch), no global random state, no
    clock. It may return fewer rows than allowed (a row with nothing to edit); it must not return
    rows for unselected rows or more than ``plan.per_row`` rows per source row.
    """

    #: The augmenter's name (``spec.augmenters[].name`` or its type): reports, RNG, provenance.
    name: str
    #: The label rule its rows follow (``keep``, ``assign``, ``lowest``, ...), for the report.
    label_rule: str

    def augment(self, batch: RowBatch, plan: BatchPlan) -> Sequence[GeneratedRow]: ...


@runtime_checkable
class AugmenterSummary(Protocol):
    """Optional extension: facts about the augmenter that hold for the whole run (a fitted model's
    fidelity metrics and training time), for the manifest (``augmenters.<name>.summary``) and report.

    Why not per-batch counts: those the pipeline keeps itself. A summary is computed once, when the
    augmenter is built, from what every shard builds identically; the manifest takes shard 0's (an
    engine's figures, a summary with an ``engine`` key, are per pod: the manifest combines every shard's). It
    must be JSON-serialisable (str, int, float, bool, None, lists and string-keyed mappings).
    """

    def summary(self) -> Mapping[str, Any]: ...


@runtime_checkable
class SourceRowSelector(Protocol):
    """Optional extension: an augmenter that also decides which *source* rows stay (undersampling).

    Source rows are otherwise never removed; the pipeline asks every augmenter that has this method,
    with the augmenter's own budget plan, and drops a source row when any of them says no.
    """

    def keep_source_rows(self, batch: RowBatch, plan: BatchPlan) -> NDArray[np.bool_]: ...


# --- labels -------------------------------------------------------------------------------------


class LabelError(ValueError):
    """A declared label cannot be expressed in the source's label type; the message names the field."""


@dataclass(frozen=True)
class Labels:
    """The source's labels: their type (decided once over the whole source) and their counts.

    Labels are compared by their string form (``targetDistribution`` keys are strings, and a CSV
    source has only strings), and written in the source's own type.
    """

    kind: str  # "int", "float" or "string"
    counts: Mapping[str, int] = field(default_factory=dict)

    def key(self, value: Any) -> str:
        """The string form a label is counted and matched by (``1.0`` and ``1`` differ only for floats)."""
        if isinstance(value, float) and value.is_integer() and self.kind != "float":
            return str(int(value))
        return str(value)

    def coerce(self, value: Any, field_path: str) -> Any:
        """``value`` (from the spec) in the source's label type."""
        if self.kind == "string":
            return str(value)
        try:
            number = float(value)
        except (TypeError, ValueError) as err:
            raise LabelError(f"{field_path} is {value!r} but the source labels are numbers ({self.kind}); "
                             "give a numeric label") from err
        if self.kind == "int":
            if not number.is_integer():
                raise LabelError(f"{field_path} is {value!r} but the source labels are integers")
            return int(number)
        return number

    def lowest(self, field_path: str) -> Any:
        """The lowest label seen in the source (the default label of hard negatives)."""
        if not self.counts:
            raise LabelError(f"{field_path} is unset and the source has no labelled rows to take the lowest from")
        try:
            values = sorted(self.counts, key=float)
        except ValueError as err:
            raise LabelError(f"{field_path} is unset and the source labels ({', '.join(sorted(self.counts)[:5])}) are "
                             "not numbers, so there is no lowest label; set the label explicitly") from err
        return self.coerce(values[0], field_path)


# --- building augmenters from the spec ----------------------------------------------------------


@dataclass(frozen=True)
class BuildContext:
    """What a factory gets besides its own spec entry."""

    spec: AugmentationRunSpec
    #: Position of the entry in spec.augmenters (for error messages: spec.augmenters[index]).
    index: int
    roles: ColumnRoles
    labels: Labels
    #: Whole-source facts, identical in every shard (see :mod:`.knowledge`).
    knowledge: DatasetKnowledge
    store: ObjectStore | None
    #: Loads models once per run (embedding encoders, classifiers).
    models: ModelCache

    @property
    def field_path(self) -> str:
        return f"spec.augmenters[{self.index}]"


Factory = Callable[[Any, BuildContext], RowAugmenter]


@dataclass(frozen=True)
class Registration:
    """A registered augmenter type: how to build it and which whole-source facts it needs.

    ``needs`` may contain ``"itemPool"`` (distinct items to draw candidates from),
    ``"attributeValues"`` (values seen per attribute column) and ``"sample"`` (a uniform sample of
    whole source rows, to fit a model on); the first pass over the source collects only what some
    configured augmenter needs.
    """

    type: str
    factory: Factory
    needs: frozenset[str]


_REGISTRY: dict[str, Registration] = {}
KNOWN_NEEDS = frozenset({"itemPool", "attributeValues", "sample"})


def register_row_augmenter(type_name: str, *, needs: Sequence[str] = ()) -> Callable[[Factory], Factory]:
    """Register ``factory(spec_entry, build_context) -> RowAugmenter`` for ``type_name``."""
    unknown = set(needs) - KNOWN_NEEDS
    if unknown:
        raise ValueError(f"unknown needs {sorted(unknown)} for {type_name}; known: {sorted(KNOWN_NEEDS)}")

    def decorate(factory: Factory) -> Factory:
        if type_name in _REGISTRY and _REGISTRY[type_name].factory is not factory:
            raise ValueError(f"augmenter type {type_name!r} is registered twice")
        _REGISTRY[type_name] = Registration(type_name, factory, frozenset(needs))
        return factory

    return decorate


def registration(type_name: str) -> Registration | None:
    return _REGISTRY.get(type_name)


def registered_types() -> list[str]:
    return sorted(_REGISTRY)
