"""The augmenter types this job can run, and building them from ``spec.augmenters``.

Each family registers its types with :func:`~.registry.register_row_augmenter` when its module is
imported; importing them here is what makes them available. A new family adds its module to the
imports below.

A run of several shards builds the augmenters' whole-source state (the GAN, hard-negative retrieval
indexes: types registered with ``prepares=True``) once, in the analysis step, with
:func:`prepare_states`; the shards pass its result to :func:`build_augmenters` as ``prepared``, and
those factories load it instead of training or indexing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sampleforge.api.augmentation import AugmentationRunSpec

from . import (  # noqa: F401 -- each family registers its types on import
    attributes,
    gan,
    generation,
    hardnegative,
    image,
    judge,
    mixup,
    rebalance,
    textedit,
)
from .errors import ConfigError
from .protocol import RowAugmenter, WholeSourceState
from .registry import BuildContext, Need, Registration, registered_types, registration
from .rows import ColumnRoles

if TYPE_CHECKING:  # only for annotations, as in .registry
    from sampleforge.jobs.common.storage import ObjectStore

    from .knowledge import DatasetKnowledge
    from .labels import Labels
    from .modelcache import ModelCache

__all__ = ["build_augmenters", "check_supported", "needs_of", "prepare_states"]


def check_supported(spec: AugmentationRunSpec) -> None:
    """Fail before any data is read when the spec asks for a type this job image cannot run."""
    for index, entry in enumerate(spec.augmenters):
        if registration(entry.type) is None:
            raise ConfigError(
                f"spec.augmenters[{index}] has type {entry.type!r}, which this job image does not provide yet "
                f"(available: {', '.join(registered_types())}); remove it or use an image that has it")


def needs_of(spec: AugmentationRunSpec) -> frozenset[Need]:
    """Whole-source facts the configured augmenters need from the first pass."""
    needs: set[Need] = set()
    for entry in spec.augmenters:
        found = registration(entry.type)
        if found is not None:
            needs |= found.needs
    return frozenset(needs)


def prepare_states(spec: AugmentationRunSpec, *, roles: ColumnRoles, labels: Labels, knowledge: DatasetKnowledge,
                   store: ObjectStore | None, models: ModelCache) -> dict[str, bytes]:
    """The whole-source state of each configured augmenter whose type has some (registered with
    ``prepares=True``: the GAN, hard-negative indexes), by display name, for the analysis step.

    Only those augmenters are built (they train or index here, once per run); nothing else is,
    so no generation engine or other model is loaded. ``{}`` when the spec has none.
    """
    check_supported(spec)
    states: dict[str, bytes] = {}
    for index, entry in enumerate(spec.augmenters):
        found = registration(entry.type)
        assert found is not None
        if not found.prepares:
            continue
        context = BuildContext(spec=spec, index=index, roles=roles, labels=labels, knowledge=knowledge, store=store,
                               models=models)
        augmenter = _build_one(found, entry, context)
        if not isinstance(augmenter, WholeSourceState):
            raise TypeError(f"{entry.type!r} is registered with prepares=True but its augmenter "
                            f"{type(augmenter).__name__} has no export_state()")
        name = entry.display_name()
        if name in states:
            raise ConfigError(f"spec.augmenters[{index}] is named {name!r} like an earlier entry; give each "
                              "augmenter its own name")
        states[name] = augmenter.export_state()
    return states


def build_augmenters(spec: AugmentationRunSpec, *, roles: ColumnRoles, labels: Labels, knowledge: DatasetKnowledge,
                     store: ObjectStore | None, models: ModelCache, prepared: Mapping[str, bytes] | None = None
                     ) -> list[tuple[Any, RowAugmenter]]:
    """``(spec entry, augmenter)`` in spec order, each factory given its :class:`BuildContext`.

    ``prepared`` is what :func:`prepare_states` returned in the analysis step: each augmenter with
    whole-source state then loads its entry instead of building it. It must hold exactly those
    augmenters: one missing would be trained or indexed again in every shard, a surplus one means the
    analysis was of another spec; both are refused (rerun the analysis step).
    """
    check_supported(spec)
    if prepared is not None:
        _check_prepared(spec, prepared)
    built = []
    for index, entry in enumerate(spec.augmenters):
        found = registration(entry.type)
        assert found is not None
        state = prepared.get(entry.display_name()) if prepared is not None and found.prepares else None
        context = BuildContext(spec=spec, index=index, roles=roles, labels=labels, knowledge=knowledge, store=store,
                               models=models, prepared=state)
        built.append((entry, _build_one(found, entry, context)))
    return built


def _check_prepared(spec: AugmentationRunSpec, prepared: Mapping[str, bytes]) -> None:
    expected: dict[str, int] = {}
    for index, entry in enumerate(spec.augmenters):
        found = registration(entry.type)
        if found is not None and found.prepares:
            expected[entry.display_name()] = index
    for name, index in expected.items():
        if name not in prepared:
            raise ConfigError(f"spec.augmenters[{index}] ({name!r}) has whole-source state, but the analysis holds "
                              "none for it (it was made for another spec or by an older image); rerun the analysis "
                              "step")
    surplus = sorted(set(prepared) - set(expected))
    if surplus:
        raise ConfigError(f"the analysis holds prepared state for {', '.join(map(repr, surplus))}, which "
                          "spec.augmenters does not configure as an augmenter with such state; it was made for "
                          "another spec: rerun the analysis step")


def _build_one(found: Registration, entry: Any, context: BuildContext) -> RowAugmenter:
    """Run the factory and check what it returned against the protocol and the spec's name for it."""
    augmenter = found.build(entry, context)
    if not isinstance(augmenter, RowAugmenter):
        raise TypeError(f"the factory of {entry.type!r} returned {type(augmenter).__name__}, which does not "
                        "follow the RowAugmenter protocol")
    if augmenter.name != entry.display_name():
        # Budgets, random streams and reports are keyed by the spec's name for the augmenter.
        raise TypeError(f"the factory of {entry.type!r} named its augmenter {augmenter.name!r}; it must use "
                        f"the spec entry's display_name() {entry.display_name()!r}")
    return augmenter
