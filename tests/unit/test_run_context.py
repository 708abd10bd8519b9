"""How a job learns its run: the spec from the file the operator mounts (or the variable runs by hand
use), refused with the place named when it cannot be read or validated, and an output that would
overwrite the upstream run's data refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sampleforge.api import AugmentationRunSpec, FineTuneRunSpec, jobenv
from sampleforge.jobs.common.context import ConfigurationError, RunContext

AUG: dict[str, Any] = {
    "storage": {"endpoint": "minio.data:9000", "credentialsSecret": "minio-creds"},
    "source": {"uri": "s3://datasets/train.parquet"},
    "augmenters": [{"type": "typo"}],
    "output": {"uri": "s3://datasets/out/"},
}
FT: dict[str, Any] = {
    "storage": {"endpoint": "minio.data:9000", "credentialsSecret": "minio-creds"},
    "model": "org/encoder",
    "task": "relevance",
    "data": {"fromAugmentationRun": "shoes"},
    "output": {"uri": "s3://models/ranker/"},
}
IDENTITY = {jobenv.RUN_KIND: "AugmentationRun", jobenv.RUN_NAME: "r", jobenv.RUN_NAMESPACE: "ns"}


def test_the_spec_is_read_from_the_mounted_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(AUG), encoding="utf-8")
    ctx = RunContext.from_env(AugmentationRunSpec, {**IDENTITY, jobenv.RUN_SPEC_FILE: str(path)})
    assert ctx.spec == AugmentationRunSpec.model_validate(AUG)


def test_the_file_wins_over_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**AUG, "seed": 5}), encoding="utf-8")
    env = {**IDENTITY, jobenv.RUN_SPEC_FILE: str(path), jobenv.RUN_SPEC: json.dumps({**AUG, "seed": 9})}
    assert RunContext.from_env(AugmentationRunSpec, env).spec.seed == 5


def test_the_variable_still_works_for_runs_by_hand() -> None:
    ctx = RunContext.from_env(AugmentationRunSpec, {**IDENTITY, jobenv.RUN_SPEC: json.dumps(AUG)})
    assert ctx.spec.output.uri == "s3://datasets/out/"


def test_a_missing_spec_names_both_ways_to_give_it() -> None:
    with pytest.raises(ConfigurationError, match=f"{jobenv.RUN_SPEC_FILE} \\(or {jobenv.RUN_SPEC}\\)"):
        RunContext.from_env(AugmentationRunSpec, dict(IDENTITY))


def test_an_unreadable_or_invalid_file_is_named(tmp_path: Path) -> None:
    absent = tmp_path / "nope.json"
    with pytest.raises(ConfigurationError, match=f"cannot read the run spec from {jobenv.RUN_SPEC_FILE}"):
        RunContext.from_env(AugmentationRunSpec, {**IDENTITY, jobenv.RUN_SPEC_FILE: str(absent)})
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=f"{jobenv.RUN_SPEC_FILE} \\({broken}\\) is not valid JSON"):
        RunContext.from_env(AugmentationRunSpec, {**IDENTITY, jobenv.RUN_SPEC_FILE: str(broken)})
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({**AUG, "parallelism": 0}), encoding="utf-8")
    with pytest.raises(ConfigurationError, match="parallelism"):
        RunContext.from_env(AugmentationRunSpec, {**IDENTITY, jobenv.RUN_SPEC_FILE: str(invalid)})


@pytest.mark.parametrize(("input_uri", "refused"), [
    ("s3://models/ranker/data/", True),     # the upstream output lies under this run's output
    ("s3://models/", True),                  # this run's output lies under the upstream output
    ("s3://models/ranker/", True),
    ("s3://datasets/shoes/augmented/", False),
    ("s3://models/ranker-data/", False),
])
def test_an_output_overlapping_the_upstream_runs_output_is_refused(input_uri: str, refused: bool) -> None:
    env = {**IDENTITY, jobenv.RUN_KIND: "FineTuneRun", jobenv.RUN_SPEC: json.dumps(FT), jobenv.INPUT_URI: input_uri}
    if refused:
        with pytest.raises(ConfigurationError, match="spec.output.uri s3://models/ranker/ overlaps"):
            RunContext.from_env(FineTuneRunSpec, env)
    else:
        assert RunContext.from_env(FineTuneRunSpec, env).input_uri == input_uri
