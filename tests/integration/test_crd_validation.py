"""The generated CRDs on a real kube-apiserver: what it accepts, what it rejects, and why.

The unit tests check the OpenAPI half of the CRDs without a server; only a real API server runs the
CEL rules (including the transition rules that make fields immutable) and enforces their cost
limits. ``kube_api`` (tests/conftest.py) is an ApiClient for a server that has the generated CRDs
installed, and ``namespace`` a fresh namespace for each test.

Invalid manifests are sent with ``dryRun=All``: full validation, nothing stored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sampleforge.api import AugmentationRunSpec, FineTuneRunSpec, FineTuneRunStatus
from sampleforge.api.constants import GROUP, PLURALS, VERSION, Kind

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
FIXTURES = sorted((REPO / "tests/fixtures/invalid").glob("*.yaml"))
SPEC_MODELS = {Kind.AUGMENTATION_RUN.value: AugmentationRunSpec, Kind.FINE_TUNE_RUN.value: FineTuneRunSpec}


def plural(body: dict[str, Any]) -> str:
    name: str = PLURALS[Kind(str(body["kind"]))]
    return name


def expected_message(path: Path) -> str:
    match = re.search(r"^#\s*expect:\s*(.+)$", path.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{path.name} has no '# expect:' header"
    return match[1].strip()


def rejection(call: Any) -> tuple[int, str]:
    """Run an API call that must fail; return its HTTP status and the server's message."""
    with pytest.raises(ApiException) as err:
        call()
    body = json.loads(err.value.body or "{}")
    return int(err.value.status), str(body.get("message", ""))


@pytest.fixture
def objects(kube_api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_invalid_manifest_is_rejected_naming_the_field(
    objects: client.CustomObjectsApi, namespace: str, path: Path
) -> None:
    body = yaml.safe_load(path.read_text(encoding="utf-8"))
    status, message = rejection(
        lambda: objects.create_namespaced_custom_object(GROUP, VERSION, namespace, plural(body), body, dry_run="All")
    )
    assert status == 422, message
    assert expected_message(path) in message


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted_and_server_defaults_agree_with_the_models(
    objects: client.CustomObjectsApi, namespace: str, path: Path
) -> None:
    body = yaml.safe_load(path.read_text(encoding="utf-8"))
    created = cast(
        dict[str, Any], objects.create_namespaced_custom_object(GROUP, VERSION, namespace, plural(body), body)
    )
    model = SPEC_MODELS[body["kind"]]
    assert model.model_validate(created["spec"]) == model.model_validate(body["spec"])


def finetune_run(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((REPO / "examples/finetunerun-baseline.yaml").read_text(encoding="utf-8"))
    body["metadata"] = {"name": name}
    return body


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": "org/another-encoder"}, "model"),
        ({"task": "ctr"}, "task"),
        ({"data": {"evalFraction": 0.1, "eval": None}}, "data"),
        ({"output": {"uri": "s3://models/elsewhere/"}}, "output"),
    ],
    ids=["model", "task", "data", "output"],
)
def test_finetune_inputs_and_outputs_are_immutable(
    objects: client.CustomObjectsApi, namespace: str, change: dict[str, Any], field: str
) -> None:
    name = f"immutable-{field}"
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetuneruns", finetune_run(name))
    status, message = rejection(
        lambda: objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "finetuneruns", name, {"spec": change}
        )
    )
    assert status == 422
    assert f"spec.{field}: Invalid value" in message
    assert f"{field} is immutable once created; create a new run" in message


def test_augmentation_source_and_augmenters_are_immutable(objects: client.CustomObjectsApi, namespace: str) -> None:
    body = yaml.safe_load((REPO / "examples/augmentationrun.yaml").read_text(encoding="utf-8"))
    body["metadata"] = {"name": "immutable-augmentation"}
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, "augmentationruns", body)
    for change, field in (
        ({"source": {"uri": "s3://datasets/other.parquet"}}, "source"),
        ({"augmenters": [{"type": "typo"}]}, "augmenters"),
    ):
        status, message = rejection(
            lambda change=change: objects.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "augmentationruns", "immutable-augmentation", {"spec": change}
            )
        )
        assert status == 422 and f"{field} is immutable once created" in message


def test_scheduling_fields_stay_mutable(objects: client.CustomObjectsApi, namespace: str) -> None:
    name = "mutable-scheduling"
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetuneruns", finetune_run(name))
    patched: Any = objects.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "finetuneruns",
        name,
        {"spec": {"suspend": True, "training": {"epochs": 5}, "resources": {"memory": "64Gi"}}},
    )
    assert patched["spec"]["suspend"] is True and patched["spec"]["training"]["epochs"] == 5


def test_status_written_by_the_operator_is_stored_unpruned(objects: client.CustomObjectsApi, namespace: str) -> None:
    name = "status-round-trip"
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetuneruns", finetune_run(name))
    status = FineTuneRunStatus.model_validate(
        {
            "phase": "Running",
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "observedGeneration": 1,
                    "lastTransitionTime": "2026-11-28T01:02:03Z",
                    "reason": "JobRunning",
                    "message": "training",
                }
            ],
            "startTime": "2026-11-28T01:02:03Z",
            "jobName": f"{name}-train",
            "progress": {"done": 10, "total": 100, "percent": 10, "rate": 1.5, "etaSeconds": 60, "eta": "1m"},
            "outputs": {"uri": "s3://models/out/", "modelUri": "s3://models/out/model/"},
            "results": {
                "step": 10,
                "epoch": 0.5,
                "loss": 0.7,
                "latestMetrics": {"ndcg@10": 0.61},
                "bestMetric": {"name": "ndcg@10", "value": 0.612, "step": 10},
                "checkpointUri": "s3://models/out/checkpoints/10/",
            },
        }
    )
    stored: Any = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "finetuneruns", name, {"status": status.to_kube()}
    )
    assert stored["status"] == status.to_kube()
    assert FineTuneRunStatus.model_validate(stored["status"]) == status
