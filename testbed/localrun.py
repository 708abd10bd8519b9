"""Running a job outside Kubernetes (a test, a benchmark, a laptop): what its pod would get.

Both jobs are configured only by their environment, so a run here gets the variables the operator
renders, from the same builder (:func:`sampleforge.api.jobenv.pod_environment`), with local paths
and MinIO's keys given literally, and runs the pod's command::

    env = job_environment(Kind.FINE_TUNE_RUN, spec, name="try-1", minio=testbed.minio, cache_dir=Path("/tmp/sf"))
    subprocess.run(JOB_COMMAND, env={**os.environ, **env})
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from sampleforge.api import jobenv
from sampleforge.api.constants import Kind
from sampleforge.testbed._minio import MinioServer

#: The pod's command (``sampleforge-job``, which picks the job by RUN_KIND), with this interpreter.
JOB_COMMAND: Final = (sys.executable, "-m", "sampleforge.jobs")


def job_environment(kind: Kind, spec: Mapping[str, Any], *, name: str, minio: MinioServer, cache_dir: Path,
                    namespace: str = "default", uid: str = "", input_uri: str | None = None, shard: int = 0,
                    shards: int = 1, step: str | None = None, llm_api_keys: Mapping[int, str] | None = None,
                    heartbeat_url: str | None = None,
                    heartbeat_token_file: Path | None = None,
                    heartbeat_interval: float | None = None) -> dict[str, str]:
    """The variables a pod of a ``kind`` run with ``spec`` (camelCase, as in the manifest) gets, signed
    in to ``minio`` with its keys. An AugmentationRun's pod is shard ``shard`` of ``shards``, in
    ``step`` (a :class:`~sampleforge.api.constants.Step`; None: every step in one pod); a FineTuneRun
    runs on one node. What is not given here is left to the job's defaults."""
    augmentation = kind is Kind.AUGMENTATION_RUN
    environment = jobenv.JobEnvironment(
        kind=kind, name=name, namespace=namespace, uid=uid, spec=spec, input_uri=input_uri,
        storage=jobenv.StorageAccess(minio.endpoint, keys=jobenv.StorageKeys(minio.access_key, minio.secret_key)),
        llm_api_keys=dict(llm_api_keys or {}), heartbeat_url=heartbeat_url,
        heartbeat_interval_seconds=heartbeat_interval,
        heartbeat_token_file=None if heartbeat_token_file is None else str(heartbeat_token_file),
        cache_dir=str(cache_dir), shard_count=shards if augmentation else None,
        completion_index=shard if augmentation else None, step=step if augmentation else None)
    return {key: _literal(key, value) for key, value in jobenv.pod_environment(environment)}


def _literal(name: str, value: jobenv.EnvValue) -> str:
    if isinstance(value, jobenv.SecretRef):
        raise TypeError(f"{name} would come from Secret {value.name!r}: a run outside Kubernetes gives it literally")
    return value
