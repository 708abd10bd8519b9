"""How an augmentation run can fail, and what each failure means for the Job.

Two kinds matter to the operator: a configuration problem that no retry can fix (the spec names a
column the data lacks, the source cannot be read, a model does not load) ends the pod with
:data:`~sampleforge.api.jobenv.EXIT_INVALID_CONFIG`, so the Job's podFailurePolicy fails the run at
once with the message; anything else is an ordinary failure that the Job retries, resuming from the
shards already committed.
"""

from __future__ import annotations

from sampleforge.api.constants import Reason


class AugmentError(RuntimeError):
    """Base class of the job's own failures."""


class ConfigError(AugmentError):
    """The run cannot work as configured; the message names the spec field and what to do.

    ``reason`` is the condition reason the operator can show (InvalidSpec, DatasetUnreadable, ...).
    """

    def __init__(self, message: str, reason: Reason = Reason.INVALID_SPEC) -> None:
        super().__init__(message)
        self.reason = reason


class SourceError(ConfigError):
    """A dataset (spec.source or spec.filters.evalSplit) cannot be listed, opened or parsed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Reason.DATASET_UNREADABLE)


class ModelError(ConfigError):
    """A model named in the spec cannot be downloaded or loaded."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Reason.MODEL_UNAVAILABLE)
