"""``kubectl sampleforge logs`` against the real API server's ``pods/log``.

Neither kwok's pods nor the local-process node's serve container logs through the API server (no
kubelet endpoint stands behind them: the last test shows what the plugin says then). So these tests
register a Node of their own whose kubelet endpoint is a small HTTPS server in the test; the
plugin's requests go through the real API server's kubelet proxy to it, exactly as they would to a
kubelet. No operator runs in this module: the test plays the Job controller's part (pods of a run,
found by the run's uid label) and finishes the run itself, so nothing rewrites what it sets.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from kubernetes import client
from operator_helpers import create_run, example, wait_for

from sampleforge.api import GROUP, VERSION
from sampleforge.api.constants import LABEL_RUN_UID, PLURALS, Kind
from sampleforge.testbed import Testbed
from sampleforge.testbed._certs import _Authority, _cert_pem, _key_pem

pytestmark = pytest.mark.integration
PLUGIN = shutil.which("kubectl-sampleforge", path=str(Path(sys.executable).parent))


def plugin(testbed: Testbed, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    assert PLUGIN is not None, "kubectl-sampleforge is not installed: reinstall the project (make setup)"
    return subprocess.run([PLUGIN, *args], env=dict(testbed.env(), COLUMNS="160", NO_COLOR="1"), capture_output=True,
                          text=True, timeout=timeout, check=False)



class _KubeletLogs(BaseHTTPRequestHandler):
    """``GET /containerLogs/<ns>/<pod>/<container>``: the one kubelet endpoint ``pods/log`` proxies to."""

    logs: ClassVar[dict[str, list[str]]] = {}

    def do_GET(self) -> None:
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs" or parts[2] not in self.logs:
            self.send_error(404)
            return
        lines = self.logs[parts[2]]
        tail = parse_qs(url.query).get("tailLines")
        if tail:
            lines = lines[-int(tail[0]):]
        body = "".join(f"{line}\n" for line in lines).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def log_node(kube_api: client.ApiClient, tmp_path: Path) -> Iterator[str]:
    """A Node whose kubelet endpoint (HTTPS, as the API server expects) is served by this test."""
    authority = _Authority.create("test-kubelet-ca")
    key, cert = authority.issue(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubelet")]), server=True,
                                ips=("127.0.0.1",))
    (tmp_path / "kubelet.crt").write_bytes(_cert_pem(cert))
    (tmp_path / "kubelet.key").write_bytes(_key_pem(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "kubelet.crt", tmp_path / "kubelet.key")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KubeletLogs)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    core = client.CoreV1Api(kube_api)
    name = f"log-node-{tmp_path.name[-8:].lower().replace('_', '-')}".strip("-")
    core.create_node({"metadata": {"name": name}, "spec": {"taints": [
        {"key": "test.sampleforge.io/logs-only", "effect": "NoSchedule"}]}})
    core.patch_node_status(name, {"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": server.server_address[1]}}}})
    try:
        yield name
    finally:
        core.delete_node(name)
        server.shutdown()
        server.server_close()


def _pod(run: dict[str, Any], node: str, index: int, suffix: str) -> dict[str, Any]:
    name = f"{run['metadata']['name']}-{index}-{suffix}"
    return {"metadata": {"name": name, "labels": {LABEL_RUN_UID: run["metadata"]["uid"]},
                         "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
            "spec": {"nodeName": node, "containers": [{"name": "job", "image": "sampleforge-job"}],
                     "tolerations": [{"operator": "Exists"}]}}


def _start(core: client.CoreV1Api, ns: str, pod: dict[str, Any]) -> None:
    core.create_namespaced_pod(ns, pod)
    core.patch_namespaced_pod_status(pod["metadata"]["name"], ns, {"status": {"phase": "Running"}})


class TestLogs:
    """No operator here: the test plays the Job controller's part too (pods of a run, by label)."""

    def _run(self, kube_api: client.ApiClient, namespace: str) -> dict[str, Any]:
        doc = example("augmentationrun.yaml", suspend=True)
        return create_run(kube_api, namespace, doc)

    def test_every_shard_prefixed_then_a_retry_followed(self, testbed: Testbed, kube_api: client.ApiClient,
                                                        namespace: str, log_node: str) -> None:
        core = client.CoreV1Api(kube_api)
        run = self._run(kube_api, namespace)
        name = run["metadata"]["name"]
        pods = [_pod(run, log_node, 0, "aaaaa"), _pod(run, log_node, 1, "bbbbb")]
        _KubeletLogs.logs.update({pods[0]["metadata"]["name"]: ["reading shard 0", "shard 0 done"],
                                  pods[1]["metadata"]["name"]: ["reading shard 1", "shard 1 done"]})
        for pod in pods:
            _start(core, namespace, pod)
        pending = _pod(run, log_node, 2, "ccccc")
        core.create_namespaced_pod(namespace, pending)  # never started: no log, said so

        shown = plugin(testbed, "logs", name, "-n", namespace)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines() == ["[shard 0/aaaaa] reading shard 0", "[shard 0/aaaaa] shard 0 done",
                                             "[shard 1/bbbbb] reading shard 1", "[shard 1/bbbbb] shard 1 done"]
        assert "[shard 2/ccccc]" in shown.stderr and "no log yet" in shown.stderr
        tail = plugin(testbed, "logs", name, "-n", namespace, "--tail", "1")
        assert tail.stdout.splitlines() == ["[shard 0/aaaaa] shard 0 done", "[shard 1/bbbbb] shard 1 done"]

        # -f: a retry of shard 1 that starts while following is picked up; the run finishing ends it.
        follower = subprocess.Popen([str(PLUGIN), "logs", name, "-n", namespace, "-f"],
                                    env=dict(testbed.env(), NO_COLOR="1"), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(3)
            retry = _pod(run, log_node, 1, "ddddd")
            _KubeletLogs.logs[retry["metadata"]["name"]] = ["retrying shard 1"]
            _start(core, namespace, retry)
            time.sleep(2)
            client.CustomObjectsApi(kube_api).patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURALS[Kind.AUGMENTATION_RUN], name, {"status": {"phase": "Succeeded"}})
            stdout, stderr = follower.communicate(timeout=60)
        finally:
            follower.kill()
        assert follower.returncode == 0, stderr
        assert "[shard 1/ddddd] retrying shard 1" in stdout.splitlines()
        assert "[shard 0/aaaaa] reading shard 0" in stdout.splitlines()
        assert "following pod " + retry["metadata"]["name"] in stderr

    def test_a_run_without_pods_says_why(self, testbed: Testbed, kube_api: client.ApiClient, namespace: str) -> None:
        run = self._run(kube_api, namespace)
        done = plugin(testbed, "logs", run["metadata"]["name"], "-n", namespace)
        assert done.returncode == 4 and "has no pods in namespace" in done.stderr

    def test_kwok_pods_without_a_log_endpoint_are_named(self, testbed: Testbed, kube_api: client.ApiClient,
                                                        namespace: str) -> None:
        # kwok's fake nodes have no kubelet log endpoint: each pod is named with the server's answer.
        run = self._run(kube_api, namespace)
        pod = _pod(run, "gpu-node-0", 0, "eeeee")
        pod["spec"]["nodeName"] = "gpu-node-0"
        _start(client.CoreV1Api(kube_api), namespace, pod)
        done = wait_for(lambda: (r := plugin(testbed, "logs", run["metadata"]["name"], "-n", namespace)).stderr and r,
                        timeout=30, what="logs to answer")
        assert done.returncode == 4
        assert f"[shard 0/eeeee] cannot read the log of pod {pod['metadata']['name']} (node gpu-node-0)" in done.stderr
        assert "none of the 1 pods" in done.stderr
