"""etcd + kube-apiserver started the way controller-runtime's envtest does, plus the optional
kube-controller-manager and kube-scheduler that make Jobs, garbage collection and TTLs real.

Readiness is always a real health endpoint answering, never a sleep: etcd's ``/health``, the API
server's ``/readyz`` over TLS with the admin certificate, the controllers' ``/healthz``.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from pathlib import Path

import yaml

from sampleforge.testbed._certs import ControlPlanePKI
from sampleforge.testbed._health import http_ok, self_signed_tls
from sampleforge.testbed._paths import binary
from sampleforge.testbed._ports import free_port
from sampleforge.testbed._process import ManagedProcess

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


def start_etcd(workdir: Path, logs: Path, timeout: float) -> tuple[ManagedProcess, str]:
    client_port, peer_port = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    proc = ManagedProcess("etcd", [
        binary("etcd"), "--name=testbed", f"--data-dir={workdir / 'etcd'}",
        f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=testbed={peer_url}", "--unsafe-no-fsync=true", "--log-level=warn",
        "--quota-backend-bytes=4294967296",
    ], logs / "etcd.log").start()
    proc.wait_ready(lambda: http_ok(f"{client_url}/health"), timeout, "healthy")
    return proc, client_url


@dataclass(frozen=True)
class ApiServer:
    process: ManagedProcess
    url: str
    kubeconfig: Path


def start_apiserver(workdir: Path, logs: Path, pki: ControlPlanePKI, etcd_url: str, timeout: float) -> ApiServer:
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    proc = ManagedProcess("kube-apiserver", [
        binary("kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        f"--cert-dir={workdir / 'apiserver-certs'}",
        f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
        f"--secure-port={port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--allow-privileged=true",
        # No ServiceAccount admission: pods need no token volume, as in envtest.
        "--disable-admission-plugins=ServiceAccount",
        "--authorization-mode=RBAC",
        f"--client-ca-file={pki.client_ca}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.service_account_pub}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        "--endpoint-reconciler-type=none",
    ], logs / "kube-apiserver.log").start()
    kubeconfig = write_kubeconfig(workdir / "kubeconfig", url, pki.serving_ca, pki.admin_cert, pki.admin_key)
    context = admin_tls(pki)
    proc.wait_ready(lambda: http_ok(f"{url}/readyz", context), timeout, "ready (/readyz)")
    return ApiServer(proc, url, kubeconfig)


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path | None = None, key: Path | None = None,
                     token: str | None = None, user: str = "admin") -> Path:
    """A self-contained kubeconfig (certificates inlined) that kubectl, helm and Python all read."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    credentials: dict[str, str] = {}
    if cert is not None and key is not None:
        credentials = {"client-certificate-data": b64(cert), "client-key-data": b64(key)}
    if token is not None:
        credentials["token"] = token
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": user}}],
        "current-context": "testbed",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def start_controller_manager(workdir: Path, logs: Path, pki: ControlPlanePKI, kubeconfig: Path,
                             timeout: float) -> ManagedProcess:
    port = free_port()
    proc = ManagedProcess("kube-controller-manager", [
        binary("kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        f"--root-ca-file={pki.serving_ca}",
        f"--service-account-private-key-file={pki.service_account_key}",
        "--leader-elect=false", "--use-service-account-credentials=false",
        f"--secure-port={port}", "--bind-address=127.0.0.1", f"--cert-dir={workdir / 'kcm-certs'}",
        # Fast feedback for tests: check node health and GC often.
        "--node-monitor-period=2s", "--concurrent-gc-syncs=5",
    ], logs / "kube-controller-manager.log").start()
    proc.wait_ready(lambda: http_ok(f"https://127.0.0.1:{port}/healthz", self_signed_tls()), timeout, "healthy")
    return proc


def start_scheduler(workdir: Path, logs: Path, kubeconfig: Path, timeout: float) -> ManagedProcess:
    port = free_port()
    proc = ManagedProcess("kube-scheduler", [
        binary("kube-scheduler"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=false",
        f"--secure-port={port}", "--bind-address=127.0.0.1", f"--cert-dir={workdir / 'scheduler-certs'}",
    ], logs / "kube-scheduler.log").start()
    proc.wait_ready(lambda: http_ok(f"https://127.0.0.1:{port}/healthz", self_signed_tls()), timeout, "healthy")
    return proc


def admin_tls(pki: ControlPlanePKI) -> ssl.SSLContext:
    """TLS that trusts the serving CA and presents the admin certificate."""
    context = ssl.create_default_context(cafile=str(pki.serving_ca))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return context
