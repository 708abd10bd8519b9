"""Who this pod works for and on what: read once from the environment the operator rendered.

The spec is validated with the shared schema before anything else runs, so a pod started by hand
with a wrong configuration fails at once with the field named, not an hour into training. It comes
from the file the operator mounts (``RUN_SPEC_FILE``), or from ``RUN_SPEC`` for runs by hand.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from sampleforge.api import jobenv
from sampleforge.api.fields import s3_locations_overlap
from sampleforge.api.heartbeat import PodIdentity

SpecT = TypeVar("SpecT", bound=BaseModel)


class ConfigurationError(RuntimeError):
    """The pod's environment or the run spec is unusable; the message names what and how to fix it."""


@dataclass(frozen=True)
class RunContext(Generic[SpecT]):
    kind: str
    name: str
    namespace: str
    uid: str
    spec: SpecT
    shard: int
    shards: int
    input_uri: str | None

    @classmethod
    def from_env(cls, spec_model: type[SpecT], env: Mapping[str, str] | None = None) -> RunContext[SpecT]:
        env = os.environ if env is None else env
        missing = [v for v in (jobenv.RUN_KIND, jobenv.RUN_NAME, jobenv.RUN_NAMESPACE) if not env.get(v)]
        if not env.get(jobenv.RUN_SPEC_FILE) and not env.get(jobenv.RUN_SPEC):
            missing.append(f"{jobenv.RUN_SPEC_FILE} (or {jobenv.RUN_SPEC})")
        if missing:
            raise ConfigurationError(f"environment variables {', '.join(missing)} are not set; a sampleforge job "
                                     "runs in a pod rendered by the operator, or with them set by hand")
        text, where = read_spec(env)
        try:
            spec = spec_model.model_validate(json.loads(text))
        except json.JSONDecodeError as err:
            raise ConfigurationError(f"{where} is not valid JSON: {err}") from err
        except ValidationError as err:
            raise ConfigurationError(f"the run spec in {where} is invalid:\n{err}") from err
        input_uri = env.get(jobenv.INPUT_URI) or None
        _check_input_output(spec, input_uri)
        ctx = cls(
            kind=env[jobenv.RUN_KIND],
            name=env[jobenv.RUN_NAME],
            namespace=env[jobenv.RUN_NAMESPACE],
            uid=env.get(jobenv.RUN_UID, ""),
            spec=spec,
            shard=int(env.get(jobenv.JOB_COMPLETION_INDEX, "0")),
            shards=int(env.get(jobenv.SHARD_COUNT, "1")),
            input_uri=input_uri,
        )
        ctx.pod_identity()  # the names a heartbeat carries: refused here, naming the variable, not later
        return ctx

    def pod_identity(self, shard: int | None = None, shards: int | None = None) -> PodIdentity:
        """Who this pod reports progress as: its shard by default; a fine-tune node passes its rank."""
        try:
            return PodIdentity.model_validate({
                "kind": self.kind, "namespace": self.namespace, "name": self.name, "uid": self.uid or "local",
                "shard": self.shard if shard is None else shard, "shards": self.shards if shards is None else shards})
        except ValidationError as err:
            raise ConfigurationError(
                f"the run's identity ({jobenv.RUN_KIND}, {jobenv.RUN_NAME}, {jobenv.RUN_NAMESPACE}, {jobenv.RUN_UID}, "
                f"{jobenv.JOB_COMPLETION_INDEX}, {jobenv.SHARD_COUNT}) is invalid: {err}") from err


def read_spec(env: Mapping[str, str]) -> tuple[str, str]:
    """The spec's JSON text, and where it came from (for messages): the file the operator mounts
    (``RUN_SPEC_FILE``), else the ``RUN_SPEC`` variable that runs by hand may use."""
    path = env.get(jobenv.RUN_SPEC_FILE)
    if not path:
        return env[jobenv.RUN_SPEC], jobenv.RUN_SPEC
    where = f"{jobenv.RUN_SPEC_FILE} ({path})"
    try:
        return Path(path).read_text(encoding="utf-8"), where
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigurationError(f"cannot read the run spec from {where}: {err}; the operator mounts it from the "
                                 "run's spec ConfigMap") from err


def _check_input_output(spec: BaseModel, input_uri: str | None) -> None:
    """The output must not overlap the upstream run's committed output it reads (the admission rules
    can only compare URIs written in the spec; this one is known at run time only)."""
    output = getattr(getattr(spec, "output", None), "uri", None)
    if input_uri and isinstance(output, str) and s3_locations_overlap(input_uri, output):
        raise ConfigurationError(
            f"spec.output.uri {output} overlaps {input_uri}, the committed output of the AugmentationRun named in "
            "spec.data.fromAugmentationRun: writing there would change the data this run trains on; choose an "
            "output.uri outside it")
