"""Who this pod works for and on what: read once from the environment the operator rendered.

The spec is validated with the shared schema before anything else runs, so a pod started by hand
with a wrong configuration fails at once with the field named, not an hour into training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from sampleforge.api import jobenv

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
        missing = [v for v in (jobenv.RUN_KIND, jobenv.RUN_NAME, jobenv.RUN_NAMESPACE, jobenv.RUN_SPEC)
                   if not env.get(v)]
        if missing:
            raise ConfigurationError(f"environment variables {', '.join(missing)} are not set; a sampleforge job "
                                     "runs in a pod rendered by the operator, or with them set by hand")
        try:
            spec = spec_model.model_validate(json.loads(env[jobenv.RUN_SPEC]))
        except json.JSONDecodeError as err:
            raise ConfigurationError(f"{jobenv.RUN_SPEC} is not valid JSON: {err}") from err
        except ValidationError as err:
            raise ConfigurationError(f"the run spec in {jobenv.RUN_SPEC} is invalid:\n{err}") from err
        return cls(
            kind=env[jobenv.RUN_KIND],
            name=env[jobenv.RUN_NAME],
            namespace=env[jobenv.RUN_NAMESPACE],
            uid=env.get(jobenv.RUN_UID, ""),
            spec=spec,
            shard=int(env.get(jobenv.JOB_COMPLETION_INDEX, "0")),
            shards=int(env.get(jobenv.SHARD_COUNT, "1")),
            input_uri=env.get(jobenv.INPUT_URI) or None,
        )
