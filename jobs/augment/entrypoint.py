"""``python -m sampleforge.jobs.augment``: one pod of an AugmentationRun, configured only by the
environment the operator renders (:mod:`sampleforge.api.jobenv`), the same in a pod and on a laptop.
A run of several shards sets ``SAMPLEFORGE_STEP`` (analysis, shards, reduce: :mod:`.pipeline`); without
it the pod does every step for its shard::

    SAMPLEFORGE_RUN_KIND=AugmentationRun SAMPLEFORGE_RUN_NAME=shoes SAMPLEFORGE_RUN_NAMESPACE=search-ml \\
    SAMPLEFORGE_RUN_SPEC="$(yq -o json .spec run.yaml)" SAMPLEFORGE_S3_ENDPOINT=localhost:9000 \\
    SAMPLEFORGE_S3_ACCESS_KEY=... SAMPLEFORGE_S3_SECRET_KEY=... \\
    JOB_COMPLETION_INDEX=0 SAMPLEFORGE_SHARD_COUNT=1 python -m sampleforge.jobs.augment

Exit status (:class:`~sampleforge.api.jobenv.ExitCode`, the same codes as the fine-tune job): 0 when
the shard (and, if it was the last, the run) is committed or was already; 4 when a dataset cannot be
read or holds no rows (DatasetUnreadable), 3 when a model does not load (ModelUnavailable), 2 when
the configuration cannot work otherwise (invalid spec, missing column, unknown augmenter type), none
of which the Job retries; 143 after SIGTERM; 1 for anything else, which the Job retries, resuming
from the shards already committed. MinIO down or busy for longer than the storage calls retry
(:mod:`sampleforge.jobs.common.storage`) is "anything else", even while a dataset or a model is
read. In a pod the reason and message also go to ``/dev/termination-log``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from sampleforge.api import jobenv
from sampleforge.api.augmentation import AugmentationRunSpec
from sampleforge.api.constants import Reason, Step
from sampleforge.api.logs import redact, setup_logging
from sampleforge.jobs.common.context import ConfigurationError, RunContext
from sampleforge.jobs.common.heartbeat import HeartbeatSender
from sampleforge.jobs.common.outage import StorageError, caused_by_outage
from sampleforge.jobs.common.storage import ObjectStore

from .errors import AugmentError, ConfigError
from .pipeline import ShardJob

log = logging.getLogger("sampleforge.jobs.augment")

__all__ = ["EXIT_FAILED", "main"]

TERMINATION_LOG = Path("/dev/termination-log")
#: Any failure a retry may fix (MinIO unavailable, a node problem, a bug).
EXIT_FAILED = jobenv.EXIT_FAILED
#: Set to 0 to turn the progress bar off (it goes to stderr, next to the JSON log lines).
PROGRESS_ENV = "SAMPLEFORGE_PROGRESS"


class Terminated(Exception):
    """SIGTERM arrived (preemption, eviction, deletion): stop; committed shards survive."""


def _terminate(code: int, reason: Reason, message: str) -> int:
    message = redact(message)
    (log.info if code == 0 else log.error)("finished", extra={"exit_code": code, "reason": str(reason),
                                                              "detail": message})
    if TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK):
        TERMINATION_LOG.write_text(json.dumps({"exitCode": code, "reason": str(reason), "message": message[:3500]}))
    return code


def cache_dir(env: Mapping[str, str]) -> Path:
    """Scratch space for part files and downloaded models (an emptyDir in a pod)."""
    return Path(env.get(jobenv.CACHE_DIR) or Path.home() / ".cache" / "sampleforge" / "jobs")


def _quiet_libraries() -> None:
    """jieba (Chinese word segmentation, used by the text edits) logs its dictionary loading at DEBUG
    through its own stderr handler, which would put plain-text lines among the JSON ones. (Its source
    also has invalid escape sequences that Python warns about when it compiles it.)"""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DeprecationWarning on 3.11, SyntaxWarning from 3.12
            import jieba
    except ImportError:  # pragma: no cover - jieba is a dependency of the job image
        return
    jieba.setLogLevel(logging.WARNING)
    logging.getLogger("jieba").handlers.clear()


def step_of(env: Mapping[str, str]) -> Step | None:
    """The step this pod carries out (``SAMPLEFORGE_STEP``); None, all of them, when it is unset."""
    value = env.get(jobenv.STEP) or None
    if value is None:
        return None
    try:
        return Step(value)
    except ValueError:
        raise ValueError(f"{jobenv.STEP}={value!r} is not a step of an AugmentationRun; use one of "
                         f"{', '.join(s.value for s in Step)}, or leave it unset to run them all in this pod") from None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def main(env: Mapping[str, str] | None = None) -> int:
    """Run this pod's shard of the AugmentationRun the environment describes; the exit status."""
    env = os.environ if env is None else env
    setup_logging()
    logging.captureWarnings(True)
    _quiet_libraries()
    try:
        ctx = RunContext.from_env(AugmentationRunSpec, env)
        step = step_of(env)
    except (ConfigurationError, ValueError) as err:
        return _terminate(jobenv.EXIT_INVALID_CONFIG, Reason.INVALID_SPEC, str(err))
    try:
        store = ObjectStore.from_env(env)
    except StorageError as err:
        return _terminate(jobenv.EXIT_INVALID_CONFIG, Reason.INVALID_SPEC, str(err))
    # The analysis and reduce pods are the whole of their step: they report as one shard of one, so
    # the run shows their progress (the operator adds shards' reports up over ``shards``).
    single = step in (Step.ANALYSIS, Step.REDUCE)
    identity = ctx.pod_identity(shard=0, shards=1) if single else ctx.pod_identity()
    heartbeat = HeartbeatSender.from_env(identity, env).start()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        job = ShardJob(ctx, store, cache_dir(env), heartbeat, show_progress=env.get(PROGRESS_ENV, "1") != "0")
        outcome = job.run(step)
        return _terminate(0, Reason.SUCCEEDED, outcome.message)
    except ConfigError as err:
        if caused_by_outage(err):
            # A dataset or model that could not be read because MinIO was down or busy for longer
            # than the storage calls retry: a retry of the pod may well succeed.
            return _terminate(EXIT_FAILED, Reason.FAILED, f"{type(err).__name__}: {err}")
        return _terminate(err.exit_code, err.reason, str(err))
    except Terminated:
        return _terminate(jobenv.EXIT_TERMINATED, Reason.FAILED, "terminated by SIGTERM; committed shards are kept")
    except (AugmentError, StorageError, OSError) as err:
        log.exception("shard failed")
        return _terminate(EXIT_FAILED, Reason.FAILED, f"{type(err).__name__}: {err}")
    except Exception as err:
        log.exception("shard failed unexpectedly")
        return _terminate(EXIT_FAILED, Reason.FAILED, f"{type(err).__name__}: {err}")
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        heartbeat.stop()
