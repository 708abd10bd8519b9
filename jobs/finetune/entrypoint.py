"""``python -m sampleforge.jobs.finetune``: the one entry point, configured only by the environment
the operator renders (:mod:`sampleforge.api.jobenv`), the same in a pod and on a laptop.

It turns every way the run can end into an exit code (:class:`~.errors.ExitCode`) and, in a pod,
a termination message (``/dev/termination-log``, which Kubernetes copies into the container's
status) that carries the condition reason and a message naming the spec field at fault.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from sampleforge.api import jobenv
from sampleforge.api.constants import Reason
from sampleforge.api.finetune import FineTuneRunSpec
from sampleforge.api.logs import redact, setup_logging
from sampleforge.jobs.common.context import ConfigurationError, RunContext
from sampleforge.jobs.common.heartbeat import HeartbeatSender
from sampleforge.jobs.common.outage import StorageError
from sampleforge.jobs.common.storage import ObjectStore

from .errors import ExitCode, FineTuneError, Preempted
from .launch import EXIT_DIR_ENV, launch, needs_launch, node_layout

log = logging.getLogger("sampleforge.jobs.finetune")

TERMINATION_LOG = Path("/dev/termination-log")


def _terminate(code: ExitCode, reason: Reason, message: str) -> int:
    """Log the ending and leave it where Kubernetes and the launcher look for it."""
    message = redact(message)
    (log.info if code == ExitCode.SUCCESS else log.error)(
        "finished", extra={"exit_code": int(code), "reason": str(reason), "detail": message})
    document = json.dumps({"exitCode": int(code), "reason": str(reason), "message": message[:3500]})
    if TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK):
        TERMINATION_LOG.write_text(document)
    exit_dir = os.environ.get(EXIT_DIR_ENV)
    if exit_dir:
        Path(exit_dir, f"rank-{os.environ.get('RANK', '0')}.json").write_text(document)
    return int(code)


def cache_dir(env: Mapping[str, str]) -> Path:
    """Where models and scratch files live; an emptyDir or node-local volume in a pod."""
    return Path(env.get(jobenv.CACHE_DIR) or Path.home() / ".cache" / "sampleforge" / "jobs")


def main(env: Mapping[str, str] | None = None) -> int:
    """Run the FineTuneRun described by the environment; return the process exit status."""
    from .recipe import FineTuneRecipe  # torch, transformers: imported after the cheap checks

    env = os.environ if env is None else env
    setup_logging()
    # Library deprecation notices become JSON log lines too, instead of raw text in the pod log.
    logging.captureWarnings(True)
    try:
        ctx = RunContext.from_env(FineTuneRunSpec, env)
    except ConfigurationError as err:
        return _terminate(ExitCode.CONFIGURATION, Reason.INVALID_SPEC, str(err))
    if needs_launch(ctx.spec, env):
        return launch(ctx.spec, env, cache_dir(env))
    try:
        store = ObjectStore.from_env(env)
    except StorageError as err:
        return _terminate(ExitCode.CONFIGURATION, Reason.INVALID_SPEC, str(err))
    node, nodes = node_layout(env)
    heartbeat = None
    if env.get("LOCAL_RANK", "0") == "0":
        heartbeat = HeartbeatSender.from_env(ctx.pod_identity(node, nodes), env).start()
    recipe = FineTuneRecipe(ctx, store, cache_dir(env), heartbeat)
    try:
        manifest = recipe.run()
        return _terminate(ExitCode.SUCCESS, Reason.SUCCEEDED, f"published {manifest}")
    except Preempted as stop:
        return _terminate(ExitCode.PREEMPTED, Reason.JOB_RUNNING, str(stop))
    except FineTuneError as err:
        # A model or dataset error caused by a busy or failing MinIO is worth a retry; the codes the
        # Job fails on at once are for what a retry would find again.
        transient = isinstance(err.__cause__, StorageError) and err.__cause__.transient
        return _terminate(ExitCode.UNEXPECTED if transient else err.exit_code, err.reason, str(err))
    except ConfigurationError as err:
        return _terminate(ExitCode.CONFIGURATION, Reason.INVALID_SPEC, str(err))
    except StorageError as err:
        return _terminate(ExitCode.UNEXPECTED, Reason.FAILED, f"MinIO: {err}")
    except Exception as err:
        log.exception("unexpected failure")
        return _terminate(ExitCode.UNEXPECTED, Reason.FAILED, f"{type(err).__name__}: {err}")
    finally:
        if heartbeat is not None:
            heartbeat.stop()
