"""Specs at the edges of what the API server accepts, on the real API server and operator.

* A spec far above Linux's 128 KiB limit on one environment string, but within every bound of the
  schema: the operator still makes its Job (the spec reaches the pods as a ConfigMap file), kopf's
  bookkeeping stays small (a copy of the spec would exceed the 256 KiB annotation limit and every
  status patch would fail with 422), the update handler still sees spec changes, and deleting the
  run is not held up by its finalizer.
* The admission rules of s3:// URIs and of input/output prefixes: the API server and pydantic
  accept and refuse the same values, naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_helpers import (
    FAST,
    create_credentials,
    create_run,
    example,
    get_run,
    jobs_of,
    patch_run,
    running_operator,
    wait_for,
    wait_phase,
)
from pydantic import ValidationError

from sampleforge.api import AugmentationRunSpec, FineTuneRunSpec, jobenv
from sampleforge.api.augmentation import MAX_AUGMENTERS
from sampleforge.api.constants import ANNOTATION_PREFIX, GROUP, PLURALS, VERSION, Kind
from sampleforge.testbed import HOLD_KEY, Testbed
from sampleforge.testbed._operator import OperatorProcess

pytestmark = pytest.mark.integration
AR, FT = Kind.AUGMENTATION_RUN, Kind.FINE_TUNE_RUN
LAST_HANDLED = f"{ANNOTATION_PREFIX}/last-handled-configuration"


@pytest.fixture(scope="module")
def operator_proc(testbed: Testbed) -> Iterator[OperatorProcess]:
    with running_operator(testbed, "operator-spec-limits.log", FAST) as proc:
        yield proc


def large_run() -> dict[str, Any]:
    """A valid AugmentationRun of over 128 KiB: many long dense feature names and augmenters with
    long model URIs and prompts, each within its field's bounds."""
    doc = example("augmentationrun.yaml")
    doc["metadata"] = {"name": "large-spec", "labels": {HOLD_KEY: "true"}}
    doc["spec"]["source"]["columns"]["denseFeatures"] = [f"feature_{i:03d}_" + "x" * 116 for i in range(512)]
    doc["spec"]["source"]["columns"]["attributes"] = [f"attribute_{i:02d}_" + "a" * 100 for i in range(32)]
    doc["spec"]["augmenters"] = [
        {"type": "paraphrase", "name": f"paraphrase{i}", "model": f"s3://models/{'m' * 1000}/v{i}/",
         "promptTemplate": "Rewrite this search query: {text} " + "Keep the brand. " * 125}
        for i in range(MAX_AUGMENTERS)
    ]
    return doc


def test_a_large_spec_runs_without_copies_in_the_environment_or_annotations(
        operator_proc: OperatorProcess, kube_api: client.ApiClient, namespace: str) -> None:
    create_credentials(kube_api, namespace)
    doc = large_run()
    assert len(json.dumps(doc["spec"]).encode()) > 128 * 1024
    run = create_run(kube_api, namespace, doc)
    name, uid = run["metadata"]["name"], run["metadata"]["uid"]

    job = wait_for(lambda: jobs_of(kube_api, namespace, uid), timeout=90, what="the Job")[0]
    container = job.spec.template.spec.containers[0]
    env = {e.name: e.value for e in container.env}
    assert jobenv.RUN_SPEC not in env
    assert max(len(v or "") for v in env.values()) < 1024
    assert container.security_context.read_only_root_filesystem is True
    volume = next(v for v in job.spec.template.spec.volumes if v.name == "run-spec")
    config_map = client.CoreV1Api(kube_api).read_namespaced_config_map(volume.config_map.name, namespace)
    assert json.loads(config_map.data["spec.json"]) == get_run(kube_api, AR, namespace, name)["spec"]

    # Status patches work, and kopf's record of the handled spec is a digest, not a copy.
    wait_phase(kube_api, AR, namespace, name, "Running", timeout=90)
    meta = wait_for(lambda: (m := get_run(kube_api, AR, namespace, name)["metadata"]).get("annotations") and m,
                    timeout=30, what="kopf's annotations")
    annotations = meta["annotations"]
    assert LAST_HANDLED in annotations and len(annotations[LAST_HANDLED]) < 512, meta
    assert sum(len(k) + len(v) for k, v in annotations.items()) < 4096

    # A spec change still reaches the update handler (which suspends the Job).
    patch_run(kube_api, AR, namespace, name, {"spec": {"suspend": True}})
    wait_for(lambda: jobs_of(kube_api, namespace, uid)[0].spec.suspend is True, timeout=60,
             what="the Job to be suspended after the spec change")

    # Deletion goes through: the finalizer is removed.
    client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[AR], name)

    def gone() -> bool:
        try:
            get_run(kube_api, AR, namespace, name)
        except ApiException as err:
            return err.status == 404
        return False

    wait_for(gone, timeout=60, what="the run to be deleted")


def _dry_run(api: client.ApiClient, namespace: str, kind: Kind, spec: dict[str, Any]) -> str | None:
    """None when the API server accepts ``spec``, else its message."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind.value, "metadata": {"name": "probe"}, "spec": spec}
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], body,
                                                                     dry_run="All")
    except ApiException as err:
        assert err.status == 422, err.body
        return str(json.loads(err.body)["message"])
    return None


def _pydantic(kind: Kind, spec: dict[str, Any]) -> str | None:
    model = AugmentationRunSpec if kind is AR else FineTuneRunSpec
    try:
        model.model_validate(spec)
    except ValidationError as err:
        return str(err)
    return None


AUG: dict[str, Any] = {"storage": {"endpoint": "minio.data:9000", "credentialsSecret": "minio-creds"},
                       "source": {"uri": "s3://datasets/shoes/train.parquet"}, "augmenters": [{"type": "typo"}],
                       "output": {"uri": "s3://datasets/out/"}}
FT_SPEC: dict[str, Any] = {"storage": {"endpoint": "minio.data:9000", "credentialsSecret": "minio-creds"},
                           "model": "org/encoder", "task": "relevance",
                           "data": {"uri": "s3://datasets/shoes/train.parquet"}, "output": {"uri": "s3://models/out/"}}


@pytest.mark.parametrize(("source", "output", "overlap"), [
    ("s3://datasets/shoes/", "s3://datasets/shoes/augmented/", True),
    ("s3://datasets/shoes/train.parquet", "s3://datasets/shoes/", True),
    ("s3://datasets/shoes/", "s3://datasets/shoes/", True),
    ("s3://datasets/shoes/train.parquet", "s3://datasets/shoes/train.parquet/out/", True),
    ("s3://datasets/shoes/", "s3://datasets/shoes-augmented/", False),
    ("s3://datasets/shoes/train.parquet", "s3://datasets/shoes/train.parquet2/", False),
    ("s3://datasets/shoes/train.parquet", "s3://datasets/augmented/", False),
    ("s3://datasets/shoes/", "s3://other-bucket/shoes/", False),
])
def test_the_api_server_and_pydantic_agree_on_overlapping_prefixes(
        kube_api: client.ApiClient, namespace: str, source: str, output: str, overlap: bool) -> None:
    aug = {**AUG, "source": {"uri": source, "format": "parquet"}, "output": {"uri": output}}
    server, python = _dry_run(kube_api, namespace, AR, aug), _pydantic(AR, aug)
    assert (server is not None, python is not None) == (overlap, overlap), (server, python)
    if overlap:
        assert server is not None and "spec.output.uri: Invalid value" in server
        assert "output.uri and source.uri overlap" in server
    ft = {**FT_SPEC, "data": {"uri": source, "format": "parquet"}, "output": {"uri": output}}
    server, python = _dry_run(kube_api, namespace, FT, ft), _pydantic(FT, ft)
    assert (server is not None, python is not None) == (overlap, overlap), (server, python)
    if overlap:
        assert server is not None and "output.uri and data.uri overlap" in server


@pytest.mark.parametrize(("uri", "refused"), [
    ("s3://datasets/a/../train.parquet", True),
    ("s3://datasets/./train.parquet", True),
    ("s3://datasets/a/..", True),
    ("s3://datasets/a/./", True),
    ("s3://datasets/.hidden/train.parquet", False),
    ("s3://datasets/a/.../x..y/train.parquet", False),
    ("s3://datasets/v1.0/train.parquet", False),
])
def test_dot_segments_are_refused_in_every_uri_field_naming_it(kube_api: client.ApiClient, namespace: str,
                                                               uri: str, refused: bool) -> None:
    prefix = uri if uri.endswith("/") else uri + "/"
    cases = [
        (AR, {**AUG, "source": {"uri": uri, "format": "parquet"}}, "spec.source.uri"),
        (AR, {**AUG, "filters": {"evalSplit": uri}}, "spec.filters.evalSplit"),
        (AR, {**AUG, "augmenters": [{"type": "synonym", "lexicon": uri}]}, "spec.augmenters[0].lexicon"),
        (AR, {**AUG, "augmenters": [{"type": "paraphrase", "model": prefix}]}, "spec.augmenters[0].model"),
        (AR, {**AUG, "output": {"uri": prefix.replace("s3://datasets/", "s3://outputs/")}}, "spec.output.uri"),
        (FT, {**FT_SPEC, "data": {"uri": uri, "format": "parquet"}}, "spec.data.uri"),
        (FT, {**FT_SPEC, "data": {"uri": "s3://datasets/train.parquet", "eval": uri}}, "spec.data.eval"),
        (FT, {**FT_SPEC, "model": prefix}, "spec.model"),
        (FT, {**FT_SPEC, "output": {"uri": prefix.replace("s3://datasets/", "s3://outputs/")}}, "spec.output.uri"),
    ]
    for kind, spec, field in cases:
        server, python = _dry_run(kube_api, namespace, kind, spec), _pydantic(kind, spec)
        assert (server is not None, python is not None) == (refused, refused), (field, server, python)
        if refused:
            assert server is not None and f"{field}: Invalid value" in server, (field, server)
            assert "must not contain '.' or '..' path segments" in server


def test_the_augmenters_lists_are_bounded_in_total_naming_the_field(kube_api: client.ApiClient,
                                                                    namespace: str) -> None:
    columns = {"denseFeatures": [f"f{i}" for i in range(100)]}
    augmenters = [{"type": "gan", "name": f"gan{i}", "samples": 10, "features": [f"f{j}" for j in range(32)]}
                  for i in range(4)]
    fits = {**AUG, "source": {"uri": "s3://datasets/train.parquet", "columns": columns}, "augmenters": augmenters}
    assert _dry_run(kube_api, namespace, AR, fits) is None
    too_many = {**fits, "augmenters": augmenters + [{"type": "mixup", "features": ["f1"]}]}
    message = _dry_run(kube_api, namespace, AR, too_many)
    assert message is not None and "spec.augmenters: Invalid value" in message
    assert "may add up to at most 128" in message
    assert _pydantic(AR, too_many) is not None
