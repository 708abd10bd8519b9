"""What can end a fine-tune pod, and the exit code each ending gets.

Exit codes are the pod's only reliable channel to the Job controller: a Job's ``podFailurePolicy``
matches them, so the operator can retry a preempted pod without counting it against
``backoffLimit`` and fail the run at once on input that no retry will fix. Each code is therefore
distinct and stable, and each error carries the condition reason the operator shows to users.
"""

from __future__ import annotations

from enum import IntEnum

from sampleforge.api import jobenv
from sampleforge.api.constants import Reason


class ExitCode(IntEnum):
    """Process exit statuses of ``python -m sampleforge.jobs.finetune``."""

    #: Trained, evaluated and published; the output manifest is committed.
    SUCCESS = 0
    #: Anything unexpected (a bug, an out-of-memory error): worth a retry.
    UNEXPECTED = 1
    #: The environment or the spec is unusable, or a checkpoint belongs to another configuration:
    #: the operator's podFailurePolicy fails the Job at once (jobenv.EXIT_INVALID_CONFIG).
    CONFIGURATION = jobenv.EXIT_INVALID_CONFIG
    #: The base model cannot be loaded (spec.model); the Job is not retried.
    MODEL_UNAVAILABLE = jobenv.EXIT_MODEL_UNAVAILABLE
    #: The training or evaluation data cannot be read or is unusable (spec.data); not retried.
    DATASET_UNREADABLE = jobenv.EXIT_DATA_UNREADABLE
    #: SIGTERM (preemption, eviction, node drain) arrived; a checkpoint was committed first, so a
    #: retried pod resumes from it: 128 + SIGTERM, as jobenv.EXIT_TERMINATED says.
    PREEMPTED = jobenv.EXIT_TERMINATED


class FineTuneError(RuntimeError):
    """A failure whose message names the spec field at fault and what to do about it."""

    exit_code: ExitCode = ExitCode.UNEXPECTED
    reason: Reason = Reason.FAILED


class SpecError(FineTuneError):
    """The spec asks for something this data or model cannot do (found only at run time)."""

    exit_code = ExitCode.CONFIGURATION
    reason = Reason.INVALID_SPEC


class ModelUnavailableError(FineTuneError):
    """spec.model cannot be downloaded or loaded."""

    exit_code = ExitCode.MODEL_UNAVAILABLE
    reason = Reason.MODEL_UNAVAILABLE


class DatasetError(FineTuneError):
    """spec.data (or the upstream run's output) cannot be read, or holds no usable rows."""

    exit_code = ExitCode.DATASET_UNREADABLE
    reason = Reason.DATASET_UNREADABLE


class CheckpointMismatchError(SpecError):
    """The latest committed checkpoint was written for a configuration it cannot be resumed into."""


class Preempted(Exception):
    """Raised after the SIGTERM checkpoint is committed, to unwind to the entry point."""

    exit_code = ExitCode.PREEMPTED

    def __init__(self, step: int, checkpoint_uri: str | None) -> None:
        super().__init__(f"stopped at step {step} on SIGTERM; checkpoint {checkpoint_uri or '(none: no step done)'}")
        self.step = step
        self.checkpoint_uri = checkpoint_uri
