"""Fixtures shared by every tier.

Integration tests run against ONE real testbed per session (etcd, kube-apiserver, the controllers,
kwok GPU nodes, MinIO) and isolate themselves with a fresh namespace or bucket each. Where the
testbed's binaries are missing, integration tests are skipped with the list of what is missing,
except in CI (or with SAMPLEFORGE_REQUIRE_TESTBED=1), where a missing binary is an error: CI must
never go green by skipping the tests that matter.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from minio import Minio

from sampleforge.testbed import (
    LlamaCppServer,
    Testbed,
    TestbedOptions,
    kueue_missing,
    llamacpp_missing,
    missing_binaries,
    start_llamacpp,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CRD_DIR = REPO_ROOT / "crds"
_SERVER_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "minio")
_FAILED = pytest.StashKey[bool]()


def _testbed_required() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("SAMPLEFORGE_REQUIRE_TESTBED") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = missing_binaries(_SERVER_BINARIES)
    if not missing:
        return
    integration = [item for item in items if item.get_closest_marker("integration")]
    if not integration:
        return
    message = (f"testbed binaries missing from the cache: {', '.join(missing)} "
               "(build them with `make testbed`)")
    if _testbed_required():
        raise pytest.UsageError(f"{message}; CI never skips integration tests")
    skip = pytest.mark.skip(reason=message)
    for item in integration:
        item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed:
        item.session.stash[_FAILED] = True
    return report


@pytest.fixture(scope="session")
def testbed(request: pytest.FixtureRequest) -> Iterator[Testbed]:
    """The full testbed, started once; its logs are kept when any test of the session failed."""
    tb = Testbed(TestbedOptions(controllers=True, minio=True, gpu_nodes=2)).start()
    try:
        _install_crds(tb)
        yield tb
    finally:
        tb.stop(keep_workdir=request.session.stash.get(_FAILED, False))


def _install_crds(tb: Testbed) -> None:
    if CRD_DIR.is_dir() and any(CRD_DIR.glob("*.yaml")):
        tb.kubectl("apply", "--server-side", "-f", str(CRD_DIR))
        tb.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRD_DIR))


@pytest.fixture(scope="session")
def kueue_testbed(request: pytest.FixtureRequest) -> Iterator[Testbed]:
    """A testbed of its own with Kueue's manager beside the controllers and kwok GPU nodes (the
    shared one does not pay for Kueue). Skipped when Kueue is not built, except where the testbed
    is required."""
    missing = kueue_missing()
    if missing:
        if _testbed_required():
            pytest.fail(f"{missing}; CI never skips integration tests")
        pytest.skip(missing)
    tb = Testbed(TestbedOptions(controllers=True, kueue=True, minio=True, gpu_nodes=2)).start()
    try:
        _install_crds(tb)
        yield tb
    finally:
        tb.stop(keep_workdir=request.session.stash.get(_FAILED, False))


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[LlamaCppServer]:
    """llama.cpp's OpenAI-compatible server serving SmolLM2-135M-Instruct, demanding an API key, started
    once per session. Skipped when it is not built, except where the testbed is required."""
    missing = llamacpp_missing()
    if missing:
        if _testbed_required():
            pytest.fail(f"{missing}; CI never skips integration tests")
        pytest.skip(missing)
    logs = tmp_path_factory.mktemp("llama-cpp-server")
    server = start_llamacpp(logs, api_key="testbed-" + secrets.token_hex(12))
    try:
        yield server
    finally:
        server.stop()
        if request.session.stash.get(_FAILED, False):
            print(f"llama.cpp server log kept in {logs}")


@pytest.fixture
def kube_api(testbed: Testbed) -> Iterator[client.ApiClient]:
    """An admin ApiClient on the shared testbed, with the project's CRDs installed."""
    with testbed.api_client() as api:
        yield api


@pytest.fixture
def namespace(testbed: Testbed, kube_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for it to go)."""
    core = client.CoreV1Api(kube_api)
    name = f"t-{secrets.token_hex(4)}"
    core.create_namespace({"metadata": {"name": name, "labels": {"sampleforge.io/test": "true"}}})
    testbed.wait_for_default_service_account(name)
    yield name
    core.delete_namespace(name)


@pytest.fixture
def s3(testbed: Testbed) -> Minio:
    return testbed.minio_client()


@pytest.fixture
def bucket(s3: Minio) -> Iterator[str]:
    """A fresh, empty bucket per test, removed with its objects afterwards."""
    name = f"t-{secrets.token_hex(6)}"
    s3.make_bucket(name)
    yield name
    for obj in s3.list_objects(name, recursive=True):
        s3.remove_object(name, obj.object_name or "")
    s3.remove_bucket(name)
