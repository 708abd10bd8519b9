"""What can end a fine-tune pod, and the exit code each ending gets.

Exit codes are the pod's only reliable channel to the Job controller: a Job's ``podFailurePolicy``
matches them, so the operator can retry a preempted pod without counting it against
``backoffLimit`` and fail the run at once on input that no retry will fix. Each code is therefore
distinct and stable, and each error carries the condition reason the operator shows to users.
The codes are :class:`sampleforge.api.jobenv.ExitCode`, shared with the augmentation job.
"""

from __future__ import annotations

from sampleforge.api.constants import Reason
from sampleforge.api.jobenv import ExitCode

__all__ = ["CheckpointMismatchError", "DatasetError", "ExitCode", "FineTuneError", "ModelUnavailableError",
           "Preempted", "SpecError"]


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
