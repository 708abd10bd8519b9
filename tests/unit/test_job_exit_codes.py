"""Both jobs end with one set of exit codes, and the operator reads each do-not-retry code back as
the condition reason the job's error carried: a data or model problem in an AugmentationRun is
reported as DatasetUnreadable / ModelUnavailable, as for a FineTuneRun, not as InvalidSpec."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from sampleforge.api import Phase, Reason, jobenv
from sampleforge.api.jobenv import ExitCode
from sampleforge.jobs.augment.errors import ConfigError, ModelError, SourceError
from sampleforge.jobs.finetune import errors as finetune_errors
from sampleforge.operator.lifecycle import observe
from sampleforge.operator.render import pod_failure_policy

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def _failed_run_reason(code: int) -> Reason:
    """What the operator reports when the Job's podFailurePolicy failed it on a pod exiting ``code``."""
    died = {"metadata": {"name": "r-aug-0-x"}, "status": {"phase": "Failed", "containerStatuses": [
        {"state": {"terminated": {"exitCode": code, "message": "m", "finishedAt": "2026-11-28T11:59:00Z"}}}]}}
    job: dict[str, Any] = {"metadata": {"name": "r-aug"}, "spec": {"suspend": False},
                           "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}],
                                      "active": 0, "startTime": "2026-11-28T11:00:00Z"}}
    obs = observe(job, [died], suspended=False, last_heartbeat=None, heartbeat_timeout=600.0, now=NOW)
    assert obs.phase is Phase.FAILED
    return obs.reason


class TestOneSetOfCodes:
    def test_the_finetune_job_uses_the_shared_codes(self) -> None:
        assert finetune_errors.ExitCode is ExitCode

    def test_codes_match_the_contract_constants(self) -> None:
        assert (ExitCode.CONFIGURATION, ExitCode.MODEL_UNAVAILABLE, ExitCode.DATASET_UNREADABLE) == \
            jobenv.EXIT_NOT_RETRYABLE
        assert (ExitCode.UNEXPECTED, ExitCode.PREEMPTED) == (jobenv.EXIT_FAILED, jobenv.EXIT_TERMINATED)

    @pytest.mark.parametrize(("reason", "code"), [(Reason.DATASET_UNREADABLE, 4), (Reason.MODEL_UNAVAILABLE, 3),
                                                  (Reason.INVALID_SPEC, 2), (Reason.BUCKET_NOT_FOUND, 2)])
    def test_reason_to_code(self, reason: Reason, code: int) -> None:
        assert ExitCode.for_reason(reason) == code

    def test_every_do_not_retry_code_fails_the_job_at_once(self) -> None:
        fail_job = pod_failure_policy()["rules"][0]
        assert fail_job["action"] == "FailJob"
        assert {int(ExitCode.for_reason(r)) for r in Reason} <= set(fail_job["onExitCodes"]["values"])


class TestAugmentationErrors:
    @pytest.mark.parametrize(
        ("error", "code", "reason"),
        [
            (SourceError("spec.source.uri s3://d/train.parquet holds no rows"), 4, Reason.DATASET_UNREADABLE),
            (ModelError("spec.augmenters[0].model s3://m/x/ has neither config.json"), 3, Reason.MODEL_UNAVAILABLE),
            (ConfigError("spec.augmenters[0] has type 'x'"), 2, Reason.INVALID_SPEC),
        ],
        ids=["data", "model", "config"],
    )
    def test_exit_code_and_the_reason_the_operator_reports(self, error: ConfigError, code: int,
                                                           reason: Reason) -> None:
        assert error.reason is reason
        assert error.exit_code == code
        assert _failed_run_reason(error.exit_code) is reason

    @pytest.mark.parametrize("error", [finetune_errors.DatasetError("x"), finetune_errors.ModelUnavailableError("x"),
                                       finetune_errors.SpecError("x")], ids=["data", "model", "config"])
    def test_the_same_failures_of_a_finetune_give_the_same_codes(self, error: finetune_errors.FineTuneError) -> None:
        assert error.exit_code == ExitCode.for_reason(error.reason)
        assert _failed_run_reason(error.exit_code) is error.reason
