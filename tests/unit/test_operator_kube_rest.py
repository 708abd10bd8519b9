"""The operator's calls for Jobs, ConfigMaps, Secrets, Services, Events and Pods go out as plain
REST calls answered as JSON: the right method, path, content type and timeout, the API server's
refusals translated, and none of the kubernetes client's core/batch model modules imported."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from kubernetes import client

from sampleforge.operator.kube import REQUEST_TIMEOUT, Conflict, Invalid, Kube, Transient


class Response:
    """What urllib3 hands back through the client's REST layer."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.reason = {200: "OK", 201: "Created", 404: "Not Found", 409: "Conflict", 422: "Unprocessable Entity",
                       504: "Gateway Timeout"}.get(status, "")
        self.data = json.dumps(body).encode() if body is not None else b""
        self.headers: dict[str, str] = {}
        self.response = self  # the client's RESTResponse wraps urllib3's; one object plays both here

    def read(self) -> bytes:
        return self.data

    def getheaders(self) -> dict[str, str]:
        return {}


class FakeServer(client.ApiClient):
    """An ApiClient whose requests are recorded and answered from a script."""

    def __init__(self, *answers: tuple[int, Any]) -> None:
        super().__init__()
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def call_api(self, method: str, url: str, header_params: Any = None, body: Any = None, post_params: Any = None,
                 _request_timeout: Any = None) -> Any:
        self.calls.append({"method": method, "url": url, "headers": header_params, "body": body,
                           "timeout": _request_timeout})
        return Response(*self.answers.pop(0))


def test_a_job_is_posted_as_json_and_the_answer_is_its_json() -> None:
    job = {"metadata": {"name": "r-aug", "namespace": "ns", "labels": {}}, "spec": {}}
    server = FakeServer((201, {**job, "metadata": {**job["metadata"], "uid": "j1"}}))
    made, created = Kube(server).ensure_job(job)
    assert created and made["metadata"]["uid"] == "j1"
    call = server.calls[0]
    assert (call["method"], call["url"].split("://", 1)[-1].split("/", 1)[1]) == ("POST", "apis/batch/v1/namespaces/ns/jobs")
    assert call["headers"]["Content-Type"] == "application/json" and call["timeout"] == REQUEST_TIMEOUT
    assert call["body"] == job


def test_an_existing_job_of_the_same_run_is_read_back() -> None:
    job = {"metadata": {"name": "r-aug", "namespace": "ns", "labels": {"sampleforge.io/run-uid": "u"}}}
    server = FakeServer((409, {"message": "exists"}), (200, {**job, "status": {"active": 1}}))
    made, created = Kube(server).ensure_job(job)
    assert not created and made["status"] == {"active": 1}
    assert [c["method"] for c in server.calls] == ["POST", "GET"]
    assert server.calls[1]["url"].endswith("/apis/batch/v1/namespaces/ns/jobs/r-aug")


def test_a_job_of_another_run_is_a_conflict() -> None:
    job = {"metadata": {"name": "r-aug", "namespace": "ns", "labels": {"sampleforge.io/run-uid": "u"}}}
    server = FakeServer((409, {}), (200, {"metadata": {"labels": {"sampleforge.io/run-uid": "other"}}}))
    with pytest.raises(Conflict, match="another run"):
        Kube(server).ensure_job(job)


def test_refusals_are_translated_with_the_servers_message() -> None:
    server = FakeServer((422, {"message": "spec.template.spec.affinity: Invalid value"}), (504, None))
    with pytest.raises(Invalid) as refused:
        Kube(server).ensure_job({"metadata": {"name": "r", "namespace": "ns", "labels": {}}})
    assert "affinity" in refused.value.detail
    with pytest.raises(Transient):
        Kube(server).get_job("ns", "r")


def test_secret_keys_and_missing_secrets() -> None:
    server = FakeServer((200, {"data": {"accessKey": "YQ==", "secretKey": "Yg=="}}), (404, {"message": "nf"}),
                        (200, {"data": {"accessKey": "YQ=="}}))
    kube = Kube(server)
    assert kube.get_secret_keys("ns", "creds") == {"accessKey", "secretKey"}
    assert kube.get_secret_keys("ns", "gone") is None
    assert kube.read_secret_values("ns", "creds", ["accessKey", "secretKey"]) == {"accessKey": "a"}
    assert server.calls[0]["url"].endswith("/api/v1/namespaces/ns/secrets/creds")


def test_a_config_map_of_another_run_is_refused_and_a_vanished_one_is_transient() -> None:
    cm = {"metadata": {"name": "r-spec", "namespace": "ns", "labels": {"sampleforge.io/run-uid": "u"}}, "data": {}}
    server = FakeServer((201, cm), (409, {}), (200, {"metadata": {"labels": {"sampleforge.io/run-uid": "x"}}}),
                        (409, {}), (404, {}))
    kube = Kube(server)
    kube.ensure_config_map(cm)
    assert server.calls[0]["url"].endswith("/api/v1/namespaces/ns/configmaps")
    with pytest.raises(Conflict):
        kube.ensure_config_map(cm)
    with pytest.raises(Transient, match="vanished"):
        kube.ensure_config_map(cm)


def test_patches_are_merge_patches_and_event_listings_use_the_watch_cache() -> None:
    server = FakeServer((200, {}), (200, {}), (200, {"items": [{"reason": "FailedCreate", "message": "quota"}]}))
    kube = Kube(server)
    kube.set_job_suspend("ns", "r-aug", True)
    kube.set_pod_label("ns", "op-0", "sampleforge.io/leader", None)
    events = kube.list_job_events("ns", "FailedCreate")
    assert [c["headers"].get("Content-Type") for c in server.calls[:2]] == ["application/merge-patch+json"] * 2
    assert json.loads(json.dumps(server.calls[1]["body"])) == {"metadata": {"labels": {"sampleforge.io/leader": None}}}
    assert server.calls[1]["timeout"] == 10
    listing = server.calls[2]
    assert "resourceVersion=0" in listing["url"] and "fieldSelector=involvedObject.kind%3DJob%2Creason%3DFailedCreate" in listing["url"]
    assert listing["timeout"] == 15 and events == [{"reason": "FailedCreate", "message": "quota"}]


def test_the_operator_does_not_import_the_core_and_batch_models() -> None:
    """Importing CoreV1Api's and BatchV1Api's modules imported some 270 model modules: 83 MiB resident."""
    code = ("import sys; from kubernetes import client; from sampleforge.operator.kube import Kube; "
            "import sampleforge.operator.__main__; Kube(client.ApiClient()); "
            "print(sum(m.startswith('kubernetes.client.models.') for m in sys.modules))")
    loaded = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert loaded < 40
