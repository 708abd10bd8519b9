"""How an augmentation run can fail, and what each failure means for the Job.

Two kinds matter to the operator: a problem that no retry can fix ends the pod with a do-not-retry
code of :class:`~sampleforge.api.jobenv.ExitCode`, the same codes the fine-tune job uses, so the
Job's podFailurePolicy fails the run at once and the run's condition says which input is at fault:
a dataset that cannot be read (DATASET_UNREADABLE, reason DatasetUnreadable), a model that does not
load (MODEL_UNAVAILABLE, reason ModelUnavailable), anything else about the configuration
(CONFIGURATION, reason InvalidSpec). Anything else is an ordinary failure that the Job retries,
resuming from the shards already committed.
"""

from __future__ import annotations

from sampleforge.api.constants import Reason
from sampleforge.api.jobenv import ExitCode


class AugmentError(RuntimeError):
    """Base class of the job's own failures."""


class ConfigError(AugmentError):
    """The run cannot work as configured; the message names the spec field and what to do.

    ``reason`` is the condition reason the operator can show (InvalidSpec, DatasetUnreadable, ...).
    """

    def __init__(self, message: str, reason: Reason = Reason.INVALID_SPEC) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def exit_code(self) -> ExitCode:
        """The pod's exit status for this failure (the operator maps it back to ``reason``)."""
        return ExitCode.for_reason(self.reason)


class SourceError(ConfigError):
    """A dataset (spec.source or spec.filters.evalSplit) cannot be listed, opened or parsed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Reason.DATASET_UNREADABLE)


class ModelError(ConfigError):
    """A model named in the spec cannot be downloaded or loaded."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Reason.MODEL_UNAVAILABLE)
