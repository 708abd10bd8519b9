"""The augmenter types this job image can build: spec type -> factory and the whole-source facts it needs.

A family registers its factories with :func:`register_row_augmenter` when its module is imported
(:mod:`.catalog` imports them all). A factory is registered for its spec class (``api/augmenters.py``),
not a type string, so mypy checks that it takes that class's entries and returns a
:class:`~.protocol.RowAugmenter`; the map itself holds one :class:`Registration` per ``type`` value,
whose :meth:`~Registration.build` checks at run time what the types promised.

**Prepared state.** A family whose augmenter holds expensive whole-source state (a trained model, a
retrieval index) registers with ``prepares=True``: a run of several shards builds it once, in the
analysis step (:func:`~.catalog.prepare_states` builds the augmenter and calls its
:meth:`~.protocol.WholeSourceState.export_state`), and each shard's factory finds the bytes in
:attr:`BuildContext.prepared` and loads them instead of training or indexing again. The bytes are a
sealed envelope (:func:`seal_state`, opened by :meth:`BuildContext.prepared_payload`): a magic
string, a JSON header naming the state's kind and format version, the payload's length and SHA-256,
and metadata the factory uses to check the state was made from the same data and settings; then the
payload in the family's own format (``torch.save`` tensors, a faiss index, ``np.savez`` arrays). A
blob of another kind or version, or a damaged one, is refused with an error that names the spec
entry and says to rerun the analysis step.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from sampleforge.api.augmentation import AugmentationRunSpec
from sampleforge.api.augmenters import AUGMENTER_UNION, AugmenterSpec

from .errors import ConfigError
from .labels import Labels
from .protocol import RowAugmenter
from .rows import ColumnRoles

if TYPE_CHECKING:  # only for annotations: these modules import the families' building blocks
    from sampleforge.jobs.common.storage import ObjectStore

    from .knowledge import DatasetKnowledge
    from .modelcache import ModelCache

__all__ = [
    "STATE_MAGIC",
    "BuildContext",
    "Factory",
    "Need",
    "PreparedPayload",
    "Registration",
    "open_state",
    "register_row_augmenter",
    "registered_types",
    "registration",
    "seal_state",
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
    #: This entry's state as the analysis step prepared it (:func:`seal_state`), for a factory
    #: registered with ``prepares=True``: load it instead of training or indexing. None: build it.
    prepared: bytes | None = None

    @property
    def field_path(self) -> str:
        return f"spec.augmenters[{self.index}]"

    def prepared_payload(self, kind: str, version: int) -> PreparedPayload | None:
        """The payload and metadata of :attr:`prepared` (None when there is none), after checking that
        it is intact and is state of ``kind`` in format ``version``; :class:`ConfigError` otherwise."""
        if self.prepared is None:
            return None
        return open_state(self.prepared, kind, version, self.field_path)

    def stale_state(self, what: str) -> ConfigError:
        """The error for prepared state that is intact but was made from other data or settings."""
        return ConfigError(f"{self.field_path}: the prepared state from the analysis step was built from {what}; "
                           "it belongs to another run or configuration. Rerun the analysis step")


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
    #: Whether its augmenters hold whole-source state that the analysis step builds once (see the
    #: module docstring); their augmenters follow :class:`~.protocol.WholeSourceState`.
    prepares: bool = False


_TYPE_NAMES: dict[type[object], str] = {model: tag for tag, model in AUGMENTER_UNION.by_tag.items()}
_REGISTRY: dict[str, Registration] = {}


def register_row_augmenter(spec_type: type[S], *, needs: Sequence[Need] = (), prepares: bool = False
                           ) -> Callable[[Factory[S, A]], Factory[S, A]]:
    """Register the decorated factory for the entries of ``spec_type`` (one ``type`` value).

    ``prepares``: its augmenters hold whole-source state (module docstring) that the factory loads
    from :attr:`BuildContext.prepared` when given, and export with ``export_state``.
    """
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

        _REGISTRY[type_name] = Registration(type_name, frozenset(needs), build, prepares)
        return factory

    return decorate


def registration(type_name: str) -> Registration | None:
    return _REGISTRY.get(type_name)


def registered_types() -> list[str]:
    return sorted(_REGISTRY)


# --- prepared state: the envelope -----------------------------------------------------------------

#: First bytes of every prepared state; the format's own version is in the header that follows.
STATE_MAGIC = b"SFSTATE\n"
_HEADER_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class PreparedPayload:
    """An opened prepared state: the family's bytes and the metadata sealed with them."""

    #: A view into the blob, not a copy: an ANN index of millions of items is gigabytes.
    payload: memoryview
    meta: Mapping[str, Any]


def seal_state(kind: str, version: int, payload: bytes, meta: Mapping[str, Any] | None = None) -> bytes:
    """``payload`` (a family's state of ``kind``, format ``version``) in the self-describing envelope.

    Deterministic: the header is JSON with sorted keys, so the same state gives the same bytes.
    ``meta`` must be JSON-serialisable; it is what a factory checks before trusting the payload.
    """
    header = json.dumps({"kind": kind, "version": version, "bytes": len(payload),
                         "sha256": hashlib.sha256(payload).hexdigest(), "meta": dict(meta or {})},
                        sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return STATE_MAGIC + _HEADER_LENGTH.pack(len(header)) + header + payload


def open_state(blob: bytes, kind: str, version: int, field_path: str) -> PreparedPayload:
    """The payload of ``blob`` if it is intact state of ``kind`` in format ``version``.

    Why so strict: a shard that loaded another augmenter's state, an older format or a truncated
    object would write different rows than the run promises, silently; refusing is the only safe answer.
    """
    rerun = "rerun the analysis step (it prepares this state again)"
    where = f"{field_path}: the prepared state from the analysis step"
    if not blob.startswith(STATE_MAGIC) or len(blob) < len(STATE_MAGIC) + _HEADER_LENGTH.size:
        raise ConfigError(f"{where} is not prepared augmenter state (it is damaged or another kind of file); {rerun}")
    start = len(STATE_MAGIC) + _HEADER_LENGTH.size
    (length,) = _HEADER_LENGTH.unpack_from(blob, len(STATE_MAGIC))
    try:
        header = json.loads(blob[start : start + length].decode("utf-8"))
        found_kind, found_version = str(header["kind"]), int(header["version"])
        size, checksum, meta = int(header["bytes"]), str(header["sha256"]), header["meta"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{where} has a damaged header ({err}); {rerun}") from err
    if found_kind != kind:
        raise ConfigError(f"{where} is state of kind {found_kind!r}, not {kind!r} as this entry needs (the spec "
                          f"changed since the analysis, or the states were mixed up); {rerun}")
    if found_version != version:
        raise ConfigError(f"{where} is in format version {found_version} of {kind!r}; this job image reads "
                          f"version {version}; {rerun} with this image")
    payload = memoryview(blob)[start + length :].toreadonly()
    if len(payload) != size or hashlib.sha256(payload).hexdigest() != checksum or not isinstance(meta, dict):
        raise ConfigError(f"{where} is damaged ({len(payload)} payload bytes, the header says {size}, or their "
                          f"checksum differs); {rerun}")
    return PreparedPayload(payload, meta)
