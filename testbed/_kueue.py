"""Kueue's manager as a local process: real job queueing and GPU quota for runs with ``queueName``.

The manager is built by hack/install_testbed.py (``go install sigs.k8s.io/kueue/cmd/kueue``, pinned
in hack/testbed-versions.toml), which also copies the release's CRDs from the module's source into
the cache. Nothing here is a stand-in: the manager watches the testbed's Jobs, creates Workloads,
admits them against ClusterQueue quota and unsuspends the Jobs it admits, as in a cluster.

What differs from a cluster install, because this testbed has no kube-proxy and the API server
cannot reach a webhook behind a Service:

* Kueue's admission webhooks are not registered (no Mutating/ValidatingWebhookConfiguration). The
  operator creates queued Jobs suspended with the queue-name label itself, which is what Kueue's Job
  webhook would have defaulted; queues and flavors are written in full, as the webhooks' defaults
  would have left them.
* No kubelet mounts the webhook certificate Secret into the manager: the starter writes the
  Secret's files into the manager's certificate directory once Kueue's rotator has filled it.
* The CRDs carry the release's conversion-webhook stanza (Service ``kueue-webhook-service``), as its
  manifests do. Kueue's internal certificate management generates the webhook certificates and
  injects its CA there, which it must do before it reports ready. The API server only calls that
  webhook to convert between v1beta1 and v1beta2; everything here speaks v1beta2, the storage
  version, so it is never called.
* Leader election is off, metrics are off and the on-demand visibility API server is disabled
  (it is an aggregated API server that the API server would reach through a Service too).
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client
from urllib3 import BaseHTTPResponse

from sampleforge.testbed._errors import TestbedError
from sampleforge.testbed._health import http_ok
from sampleforge.testbed._paths import binary, cache_dir, pinned_versions
from sampleforge.testbed._ports import free_port
from sampleforge.testbed._process import ManagedProcess

KUEUE_NAMESPACE = "kueue-system"
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
_WEBHOOK_SERVICE = "kueue-webhook-service"
_WEBHOOK_SECRET = "kueue-webhook-server-cert"
#: The CRDs whose release manifests route conversion through the webhook Service (Kueue's
#: config/components/crd/kustomization.yaml patches; its certificate rotator injects a CA into them).
_CONVERTED = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
#: libyaml's loader where PyYAML has it: the Workload CRD alone is 19,000 lines.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def kueue_crd_dir() -> Path:
    return cache_dir() / "kueue" / "crds"


def kueue_missing() -> str | None:
    """Why Kueue cannot start here (for a skip message), or None when it can: the binary and the
    CRDs must both be there, stamped with the pinned version."""
    pinned = str(pinned_versions()["kueue"]["version"])
    problems = []
    for what, stamp, present in (
        ("kueue", "kueue.json", (cache_dir() / "bin" / "kueue").exists()),
        ("Kueue CRDs", "kueue-crds.json", any(kueue_crd_dir().glob("*.yaml"))),
    ):
        try:
            built = json.loads((cache_dir() / "stamps" / stamp).read_text()).get("version")
        except (FileNotFoundError, ValueError):
            built = None
        if not present or built != pinned:
            problems.append(what)
    if problems:
        return (f"{' and '.join(problems)} {pinned} not installed in {cache_dir()}; run `make setup` "
                "(or python3 hack/install_testbed.py --only kueue)")
    return None


def kueue_crds() -> list[dict[str, Any]]:
    """The release's CRDs, with the conversion-webhook stanza its own manifests add."""
    crds = []
    for path in sorted(kueue_crd_dir().glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
            if not doc:
                continue
            if doc["spec"]["names"]["plural"] in _CONVERTED:
                doc["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {
                        "clientConfig": {"service": {"namespace": KUEUE_NAMESPACE, "name": _WEBHOOK_SERVICE,
                                                     "path": "/convert", "port": 443}},
                        "conversionReviewVersions": ["v1"],
                    },
                }
            crds.append(doc)
    return crds


def manager_config(workdir: Path, health_port: int, webhook_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(workdir / "webhook-certs")},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": True, "webhookServiceName": _WEBHOOK_SERVICE,
                                   "webhookSecretName": _WEBHOOK_SECRET},
        "clientConnection": {"qps": 50, "burst": 100},
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": {"VisibilityOnDemand": False},
    }


@dataclass(frozen=True)
class KueueManager:
    process: ManagedProcess
    health_url: str


def install_kueue_crds(api: client.ApiClient, timeout: float) -> None:
    ext = client.ApiextensionsV1Api(api)
    names = []
    for crd in kueue_crds():
        name = crd["metadata"]["name"]
        names.append(name)
        try:  # raw answers: the client's models reject some valid CRD status shapes
            ext.create_custom_resource_definition(client.V1CustomResourceDefinition.model_validate(crd),
                                                  _preload_content=False)
        except client.ApiException as err:
            if err.status != 409:
                raise
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            # Unread, the answer is urllib3's response, not the model the client's annotations promise.
            answer = cast(BaseHTTPResponse, ext.read_custom_resource_definition(name, _preload_content=False))
            conditions = (json.loads(answer.data).get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise TestbedError(f"Kueue CRD {name} not Established after {timeout:.0f}s")
            time.sleep(0.2)


def start_kueue(api: client.ApiClient, kubeconfig: Path, workdir: Path, logs: Path, timeout: float) -> KueueManager:
    """Install Kueue's CRDs and its namespace, start the manager, and wait until ``/readyz``
    answers (its certificates made and injected, its webhook server listening)."""
    install_kueue_crds(api, timeout)
    core = client.CoreV1Api(api)
    # The namespace and the empty Secret that Kueue's release manifests create: its certificate
    # rotator fills the Secret, but will not create it.
    for create in (lambda: core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=KUEUE_NAMESPACE))),
                   lambda: core.create_namespaced_secret(
                       KUEUE_NAMESPACE, client.V1Secret(metadata=client.V1ObjectMeta(name=_WEBHOOK_SECRET)))):
        try:
            create()
        except client.ApiException as err:
            if err.status != 409:
                raise
    workdir.mkdir(parents=True, exist_ok=True)
    health_port, webhook_port = free_port(), free_port()
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(manager_config(workdir, health_port, webhook_port)))
    proc = ManagedProcess("kueue", [binary("kueue"), f"--config={config_path}", "--zap-log-level=2"],
                          logs / "kueue.log", env=dict(os.environ, KUBECONFIG=str(kubeconfig))).start()
    health_url = f"http://127.0.0.1:{health_port}"
    cert_dir = workdir / "webhook-certs"

    def ready() -> bool:
        # The kubelet's part: Kueue's rotator fills the Secret and waits for it to appear,
        # mounted, in its certificate directory.
        if not (cert_dir / "tls.crt").exists():
            data = core.read_namespaced_secret(_WEBHOOK_SECRET, KUEUE_NAMESPACE).data or {}
            if not {"tls.crt", "tls.key"} <= data.keys():
                return False
            cert_dir.mkdir(mode=0o700, exist_ok=True)
            for name in ("tls.key", "ca.crt", "tls.crt"):  # tls.crt last: it is what Kueue waits for
                if name in data:
                    (cert_dir / name).write_bytes(base64.b64decode(data[name]))
                    (cert_dir / name).chmod(0o600)
        return http_ok(f"{health_url}/readyz")

    try:
        proc.wait_ready(ready, timeout, "ready (/readyz)")
    except BaseException:
        proc.stop()
        raise
    return KueueManager(proc, health_url)
