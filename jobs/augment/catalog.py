"""The augmenter types this job can run, and building them from ``spec.augmenters``.

Each family registers its types with :func:`~.registry.register_row_augmenter` when its module is
imported; importing them here is what makes them available. A new family adds its module to the
imports below.
"""

from __future__ import annotations

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
from .protocol import RowAugmenter
from .registry import BuildContext, Need, registered_types, registration
from .rows import ColumnRoles

if TYPE_CHECKING:  # only for annotations, as in .registry
    from sampleforge.jobs.common.storage import ObjectStore

    from .knowledge import DatasetKnowledge
    from .labels import Labels
    from .modelcache import ModelCache

__all__ = ["build_augmenters", "check_supported", "needs_of"]


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


def build_augmenters(spec: AugmentationRunSpec, *, roles: ColumnRoles, labels: Labels, knowledge: DatasetKnowledge,
                     store: ObjectStore | None, models: ModelCache) -> list[tuple[Any, RowAugmenter]]:
    """``(spec entry, augmenter)`` in spec order, each factory given its :class:`BuildContext`."""
    check_supported(spec)
    built = []
    for index, entry in enumerate(spec.augmenters):
        found = registration(entry.type)
        assert found is not None
        context = BuildContext(spec=spec, index=index, roles=roles, labels=labels, knowledge=knowledge, store=store,
                               models=models)
        augmenter = found.build(entry, context)
        if not isinstance(augmenter, RowAugmenter):
            raise TypeError(f"the factory of {entry.type!r} returned {type(augmenter).__name__}, which does not "
                            "follow the RowAugmenter protocol")
        if augmenter.name != entry.display_name():
            # Budgets, random streams and reports are keyed by the spec's name for the augmenter.
            raise TypeError(f"the factory of {entry.type!r} named its augmenter {augmenter.name!r}; it must use "
                            f"the spec entry's display_name() {entry.display_name()!r}")
        built.append((entry, augmenter))
    return built
