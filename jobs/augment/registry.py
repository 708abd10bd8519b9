"""The augmenter types this job image can build: spec type -> factory and the whole-source facts it needs.

A family registers its factories with :func:`register_row_augmenter` when its module is imported
(:mod:`.catalog` imports them all). A factory is registered for its spec class (``api/augmenters.py``),
not a type string, so mypy checks that it takes that class's entries and returns a
:class:`~.protocol.RowAugmenter`; the map itself holds one :class:`Registration` per ``type`` value,
whose :meth:`~Registration.build` checks at run time what the types promised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar, get_args

from sampleforge.api.augmentation import AugmentationRunSpec
from sampleforge.api.augmenters import AUGMENTER_UNION, AugmenterSpec

from .labels import Labels
from .protocol import RowAugmenter
from .rows import ColumnRoles

if TYPE_CHECKING:  # only for annotations: these modules import the families' building blocks
    from sampleforge.jobs.common.storage import ObjectStore

    from .knowledge import DatasetKnowledge
    from .modelcache import ModelCache

__all__ = [
    "BuildContext",
    "Factory",
    "Need",
    "Registration",
    "register_row_augmenter",
    "registered_types",
    "registration",
]

#: Whole-source facts a factory may need from the first pass (which collects only those some
#: configured augmenter needs): ``itemPool`` (distinct items to draw candidates from),
#: ``attributeValues`` (values seen per attribute column) and ``sample`` (a uniform sample of whole
#: source rows, to fit a model on).
Need = Literal["itemPool", "attributeValues", "sample"]
_KNOWN_NEEDS: frozenset[str] = frozenset(get_args(Need))


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


S = TypeVar("S", bound=AugmenterSpec)
A = TypeVar("A", bound=RowAugmenter)

#: ``factory(spec_entry, build_context) -> augmenter``, for the entries of one spec class.
Factory = Callable[[S, BuildContext], A]


@dataclass(frozen=True)
class Registration:
    """A registered augmenter type: how to build it and which whole-source facts it needs."""

    type: str
    needs: frozenset[Need]
    #: The factory, behind a check that the entry is of the spec class it was registered for.
    build: Callable[[AugmenterSpec, BuildContext], RowAugmenter]


_TYPE_NAMES: dict[type[object], str] = {model: tag for tag, model in AUGMENTER_UNION.by_tag.items()}
_REGISTRY: dict[str, Registration] = {}


def register_row_augmenter(spec_type: type[S], *, needs: Sequence[Need] = ()
                           ) -> Callable[[Factory[S, A]], Factory[S, A]]:
    """Register the decorated factory for the entries of ``spec_type`` (one ``type`` value)."""
    type_name = _TYPE_NAMES.get(spec_type)
    if type_name is None:
        raise ValueError(f"{spec_type.__name__} is not an augmenter of the schema (api/augmenters.py)")
    unknown = set(needs) - _KNOWN_NEEDS
    if unknown:
        raise ValueError(f"unknown needs {sorted(unknown)} for {type_name}; known: {sorted(_KNOWN_NEEDS)}")

    def decorate(factory: Factory[S, A]) -> Factory[S, A]:
        if type_name in _REGISTRY:
            raise ValueError(f"augmenter type {type_name!r} is registered twice")

        def build(entry: AugmenterSpec, context: BuildContext) -> RowAugmenter:
            if not isinstance(entry, spec_type):
                raise TypeError(f"the factory of {type_name!r} builds from {spec_type.__name__}, "
                                f"not {type(entry).__name__}")
            return factory(entry, context)

        _REGISTRY[type_name] = Registration(type_name, frozenset(needs), build)
        return factory

    return decorate


def registration(type_name: str) -> Registration | None:
    return _REGISTRY.get(type_name)


def registered_types() -> list[str]:
    return sorted(_REGISTRY)
