"""A MinIO server that trusts the cluster's ServiceAccount tokens, over TLS from a private CA: the
setup a run's ``spec.storage.webIdentity`` and ``caBundle`` are tested against, with nothing faked.

Like IRSA on EKS: the API server is the OpenID Connect provider (its discovery document and keys
are served to anonymous readers, as clusters publish them for cloud IAM), MinIO's OpenID
configuration names it, and a pod that presents a projected token with MinIO's client id as its
audience gets temporary keys for MinIO's role through STS AssumeRoleWithWebIdentity. MinIO names
that role ``arn:minio:iam:::role/<id>``, the id being SHA-1 of the client id, base64url-encoded.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client
from minio import Minio

from sampleforge.testbed._certs import server_certificate
from sampleforge.testbed._health import http_ok
from sampleforge.testbed._paths import binary
from sampleforge.testbed._ports import free_port
from sampleforge.testbed._process import ManagedProcess

#: The audience the pods' tokens carry for MinIO, and MinIO's OpenID client id.
STS_AUDIENCE = "sampleforge-sts"
#: ClusterRoleBinding that lets MinIO (an anonymous client) read the API server's OpenID discovery.
DISCOVERY_BINDING = "sampleforge-testbed-oidc-discovery"


def minio_role_arn(client_id: str) -> str:
    digest = hashlib.sha1(client_id.encode(), usedforsecurity=False).digest()
    return "arn:minio:iam:::role/" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class StsMinio:
    process: ManagedProcess
    endpoint: str  # host:port; https
    ca_pem: str  # the CA that signed its certificate: what spec.storage.caBundle holds
    role_arn: str
    access_key: str
    secret_key: str

    @property
    def url(self) -> str:
        return f"https://{self.endpoint}"

    def client(self) -> Minio:
        """An administrator's client (the root keys), for setting up and checking data."""
        context = ssl.create_default_context(cadata=self.ca_pem)
        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=True,
                     http_client=urllib3.PoolManager(ssl_context=context))


def start_sts_minio(api: client.ApiClient, api_url: str, api_ca: Path, workdir: Path, logs: Path,
                    timeout: float = 60.0) -> StsMinio:
    """Start it after the API server it trusts; stop it with ``.process.stop()``."""
    binding: Any = {  # the client takes plain dicts at run time; its stubs ask for its model classes
        "metadata": {"name": DISCOVERY_BINDING},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "system:service-account-issuer-discovery"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:unauthenticated"}]}
    client.RbacAuthorizationV1Api(api).create_cluster_role_binding(binding)
    certs = workdir / "sts-minio-certs"
    (certs / "CAs").mkdir(parents=True, exist_ok=True)
    ca_pem, cert_pem, key_pem = server_certificate("sts-minio")
    (certs / "public.crt").write_bytes(cert_pem)
    (certs / "private.key").write_bytes(key_pem)
    (certs / "private.key").chmod(0o600)
    (certs / "CAs" / "kube-apiserver.crt").write_bytes(api_ca.read_bytes())  # to fetch the discovery document
    data = workdir / "sts-minio-data"
    data.mkdir(parents=True, exist_ok=True)
    port, console = free_port(), free_port()
    access_key, secret_key = "sts-root-" + secrets.token_hex(4), secrets.token_urlsafe(24)
    env = dict(os.environ, MINIO_ROOT_USER=access_key, MINIO_ROOT_PASSWORD=secret_key, MINIO_BROWSER="off",
               MINIO_UPDATE="off", CI="true",
               MINIO_IDENTITY_OPENID_CONFIG_URL=f"{api_url}/.well-known/openid-configuration",
               MINIO_IDENTITY_OPENID_CLIENT_ID=STS_AUDIENCE, MINIO_IDENTITY_OPENID_ROLE_POLICY="readwrite")
    proc = ManagedProcess("sts-minio", [
        binary("minio"), "server", data, f"--address=127.0.0.1:{port}", f"--console-address=127.0.0.1:{console}",
        f"--certs-dir={certs}", "--quiet",
    ], logs / "sts-minio.log", env=env).start()
    context = ssl.create_default_context(cadata=ca_pem.decode())
    proc.wait_ready(lambda: http_ok(f"https://127.0.0.1:{port}/minio/health/ready", context), timeout, "ready")
    return StsMinio(proc, f"127.0.0.1:{port}", ca_pem.decode(), minio_role_arn(STS_AUDIENCE), access_key, secret_key)
