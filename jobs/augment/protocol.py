"""The row-augmenter protocol: what every augmenter of an AugmentationRun receives and returns.

An augmenter is handed one batch of cleaned source rows at a time and returns new rows derived from
them. Everything that the run's guarantees depend on is decided *outside* the augmenter, by the
pipeline, so that every augmenter (text edits, attribute edits, hard negatives, model-based
generation, GANs, mixup, image edits) gets them for free:

* **Budget.** The pipeline decides which rows an augmenter works on (``spec.augmenters[].fraction``
  and ``maxRows``) and how many rows it may add per row (``perRow`` / ``perQuery``); the augmenter sees
  the result as :attr:`BatchPlan.selected` and :attr:`BatchPlan.per_row`, and the pipeline drops
  (and counts) anything beyond it.
* **Randomness.** All random numbers come from :class:`~.randomness.RowRandomness`: a stream per
  ``(seed, augmenter name, global row id)``. The global row id is the row's index in the whole source
  (see :mod:`.source`), not its position in a shard or batch, so a row gets the same variants whatever
  the shard count, batch size, or retry.
* **Provenance.** An augmenter returns :class:`GeneratedRow` objects: the source row they derive
  from, only the columns they change, and the label rule they applied. The pipeline merges them with
  the source row, stamps the augmenter's name, filters them, and writes provenance columns.

To add an augmenter type (the ``type`` values of ``api/augmenters.py``), write a class with a
``name``, ``label_rule`` and ``augment(batch, plan)`` (see :class:`RowAugmenter`), and a factory
registered for its spec class with :func:`~.registry.register_row_augmenter`; import its module from
:mod:`.catalog`. Example (a simplified :mod:`.mixup`)::

    @register_row_augmenter(MixupAugmenter, needs=("sample",))
    def _build_mixup(spec: MixupAugmenter, build: BuildContext) -> Mixup:
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
  job log. A new model-based type reuses :class:`~.transformers_engine.TextGenerator` and its ``generate``.
* **GAN / mixup** (dense features, :mod:`.gan`, :mod:`.mixup`): declare ``needs=("sample",)`` and fit
  on ``build.knowledge.sample`` (a uniform sample of whole source rows, identical in every shard) in
  the factory, so every process that trains gets the same model. The GAN trains once per run: it is
  registered with ``prepares=True``, the analysis step trains it and exports it
  (:class:`WholeSourceState`), and the shards' factories load it from ``build.prepared`` (see
  :mod:`.registry`); a run of one shard trains in its factory as before. The sample holds the first pass's values: dense
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
* **Whole-source state** that is expensive to build (a trained model, a retrieval index over the item
  pool): register with ``prepares=True`` and implement :class:`WholeSourceState`; the factory loads
  ``build.prepared`` when it is given and builds otherwise, and both must give the same rows.

Rows are defined in :mod:`.rows`, labels in :mod:`.labels`, a factory's context in :mod:`.registry`;
this module holds only what passes between the pipeline and an augmenter, and imports neither torch
nor any augmenter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from .randomness import RowRandomness
from .rows import RowBatch

__all__ = ["AugmenterSummary", "BatchPlan", "GeneratedRow", "RowAugmenter", "SourceRowSelector", "WholeSourceState"]


@dataclass(frozen=True)
class GeneratedRow:
    """One new row: which source row it derives from, what it changes, and how its label was set.

    ``changes`` maps column names (as in :class:`~.rows.ColumnRoles`) to new values; columns it leaves
    out are copied from the source row. ``label_rule`` is ``"keep"`` when the label is the source
    row's (then ``changes`` must not set the label column), otherwise a short rule name (``"assign"``,
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


@runtime_checkable
class WholeSourceState(Protocol):
    """Optional extension, required of the augmenters of a type registered with ``prepares=True``:
    the whole-source state it was built with (a trained model, a retrieval index), as bytes.

    Why: that state is the same in every shard and costly to build, so a run of several shards builds
    it once, in the analysis step, and each shard's factory loads these bytes (``build.prepared``)
    instead. They must be a sealed envelope (:func:`~.registry.seal_state`), deterministic where the
    underlying library is, and an augmenter loaded from them must generate exactly the rows of one
    that built the state itself.
    """

    def export_state(self) -> bytes: ...
