"""Running a FineTuneRun outside Kubernetes: the environment the operator would render.

The job is configured only by its environment, so a laptop run, a CI test and a benchmark all
build the same variables a pod gets (:mod:`sampleforge.api.jobenv`) and call the same entry point::

    env = job_environment(spec, name="try-1", endpoint="127.0.0.1:9000", access_key=..., secret_key=...,
                          cache_dir=Path("/tmp/sf"))
    subprocess.run([sys.executable, "-m", "sampleforge.jobs.finetune"], env={**os.environ, **env})
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sampleforge.api import jobenv
from sampleforge.api.constants import Kind


def job_environment(spec: Mapping[str, Any], *, name: str, endpoint: str, access_key: str, secret_key: str,
                    cache_dir: Path, namespace: str = "default", uid: str = "", input_uri: str | None = None,
                    heartbeat_url: str | None = None, heartbeat_token_file: Path | None = None,
                    heartbeat_interval: float | None = None) -> dict[str, str]:
    """The variables a FineTuneRun's pod gets, for ``spec`` (camelCase, as in the manifest)."""
    env = {
        jobenv.RUN_KIND: str(Kind.FINE_TUNE_RUN), jobenv.RUN_NAME: name, jobenv.RUN_NAMESPACE: namespace,
        jobenv.RUN_UID: uid, jobenv.RUN_SPEC: json.dumps(dict(spec)),
        jobenv.S3_ENDPOINT: endpoint, jobenv.S3_ACCESS_KEY: access_key, jobenv.S3_SECRET_KEY: secret_key,
        jobenv.CACHE_DIR: str(cache_dir),
    }
    if input_uri:
        env[jobenv.INPUT_URI] = input_uri
    if heartbeat_url:
        env[jobenv.HEARTBEAT_URL] = heartbeat_url
    if heartbeat_token_file:
        env[jobenv.HEARTBEAT_TOKEN_FILE] = str(heartbeat_token_file)
    if heartbeat_interval is not None:
        env[jobenv.HEARTBEAT_INTERVAL_SECONDS] = str(heartbeat_interval)
    return env
