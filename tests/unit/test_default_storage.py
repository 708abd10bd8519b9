"""The operator's default storage (chart value defaultStorage) for runs whose spec sets none: parsed
and validated at start, filled in when a run is read, refused with a message when neither is set.
No servers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from sampleforge.api import jobenv
from sampleforge.api.common import Storage
from sampleforge.operator.render import RunObject, StorageUnset, render_job
from sampleforge.operator.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEFAULT = Storage.model_validate({"endpoint": "minio.data:9000", "credentialsSecret": "team-minio"})


def body_without_storage() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / "augmentationrun.yaml").read_text())
    body = copy.deepcopy(body)
    del body["spec"]["storage"]
    body["metadata"].update(namespace="search-ml", uid="u-1", generation=1)
    return body


def test_a_run_without_storage_gets_the_operators_default_and_its_pods_use_it() -> None:
    run = RunObject.from_body(body_without_storage(), DEFAULT)
    assert run.storage == DEFAULT
    assert "storage" not in run.raw_spec  # the pods get the spec as stored; only the rendering uses the default
    env = {e["name"]: e for e in render_job(run, Settings(), None)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[jobenv.S3_ENDPOINT]["value"] == "minio.data:9000"
    assert env[jobenv.S3_ACCESS_KEY]["valueFrom"]["secretKeyRef"]["name"] == "team-minio"


def test_the_runs_own_storage_wins_over_the_default() -> None:
    body = yaml.safe_load((REPO / "examples" / "augmentationrun.yaml").read_text())
    body["metadata"].update(namespace="search-ml", uid="u-1")
    assert RunObject.from_body(body, DEFAULT).storage.endpoint == body["spec"]["storage"]["endpoint"]


def test_without_either_the_run_is_refused_naming_both_ways_out() -> None:
    with pytest.raises(StorageUnset, match=r"set spec\.storage, or .* defaultStorage"):
        RunObject.from_body(body_without_storage(), None)


def test_the_setting_is_validated_like_a_spec_and_names_the_chart_value() -> None:
    parsed = Settings.from_env({"SAMPLEFORGE_OPERATOR_DEFAULT_STORAGE": '{"endpoint": "m:9000", "secure": true}'})
    assert parsed.default_storage == Storage(endpoint="m:9000", secure=True)
    assert Settings.from_env({"SAMPLEFORGE_OPERATOR_DEFAULT_STORAGE": "{}"}).default_storage is None
    with pytest.raises(ValueError, match="chart value defaultStorage"):
        Settings.from_env({"SAMPLEFORGE_OPERATOR_DEFAULT_STORAGE": '{"endpoint": "https://m:9000"}'})
