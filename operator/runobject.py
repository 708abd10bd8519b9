"""What the operator knows about one run and the shape of its Job: the types that rendering, the
reconciler and the monitor share.

Kept apart from :mod:`.render` and :mod:`._render_pod`, which both use them, so that neither has to
reach back into the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from sampleforge.api import AugmentationRunSpec, FineTuneRunSpec, Kind
from sampleforge.api.common import Storage

#: The spec model of either kind.
RunSpec: TypeAlias = AugmentationRunSpec | FineTuneRunSpec

_SPEC_MODELS: Final[dict[Kind, type[AugmentationRunSpec | FineTuneRunSpec]]] = {
    Kind.AUGMENTATION_RUN: AugmentationRunSpec,
    Kind.FINE_TUNE_RUN: FineTuneRunSpec,
}


@dataclass(frozen=True)
class RunObject:
    """What rendering needs to know about one run: who it is, and its spec twice.

    ``spec`` is the validated model (defaults applied), used to decide what to render;
    ``raw_spec`` is the spec exactly as the API server stores it (camelCase, server defaults
    applied), passed to the pods verbatim (the spec ConfigMap, :func:`render_spec_config_map`) so
    the job validates the very document the API server accepted, with the same schema.
    """

    kind: Kind
    name: str
    namespace: str
    uid: str
    generation: int
    spec: RunSpec
    raw_spec: Mapping[str, Any]
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))
        if not isinstance(self.spec, _SPEC_MODELS[self.kind]):
            raise TypeError(f"a {self.kind} needs a {_SPEC_MODELS[self.kind].__name__}, got {type(self.spec).__name__}")

    @property
    def storage(self) -> Storage:
        """The storage the run uses: its spec's, or the operator's default filled in by from_body."""
        if self.spec.storage is None:
            raise StorageUnset(f"{self.kind} {self.name}: spec.storage is unset")
        return self.spec.storage

    @classmethod
    def from_body(cls, body: Mapping[str, Any], default_storage: Storage | None = None) -> RunObject:
        """Build from a whole object as the API server (or kopf's ``body``) returns it, with
        ``default_storage`` (the operator's) where the spec names none.

        Raises pydantic's ValidationError when the spec does not validate: the API server's schema
        should have stopped it, so this means a schema drift or a hand-edited etcd; StorageUnset
        when neither the spec nor the operator says where the data is.
        """
        kind = Kind(body["kind"])
        meta = body["metadata"]
        raw = _plain(body["spec"])
        spec = _SPEC_MODELS[kind].model_validate(raw)
        if spec.storage is None:
            if default_storage is None:
                raise StorageUnset("spec.storage is unset and the operator has no default storage: set spec.storage, "
                                   "or ask the platform team to set the chart value defaultStorage")
            spec = spec.model_copy(update={"storage": default_storage})
        return cls(
            kind=kind,
            name=str(meta["name"]),
            namespace=str(meta["namespace"]),
            uid=str(meta["uid"]),
            generation=int(meta.get("generation") or 1),
            spec=spec,
            raw_spec=raw,
            labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        )


class StorageUnset(ValueError):
    """A run without spec.storage, served by an operator without a default storage."""


def _plain(value: Any) -> Any:
    """A deep copy made of plain dicts and lists (kopf hands out read-only Mapping views)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Topology:
    """The shape of a run's Job, decided in :func:`sampleforge.operator.render.topology`."""

    #: Pods that run at once, and completions needed (one per shard or node).
    pods: int
    #: Indexed completion mode: each pod gets JOB_COMPLETION_INDEX and the hostname <job>-<index>.
    indexed: bool
    gpus_per_pod: int
    #: Headless Service (= pod subdomain) for multi-node rendezvous; None otherwise.
    service: str | None
