"""A real MinIO server on a loopback port, with credentials made for this testbed only."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from minio import Minio

from sampleforge.testbed._health import http_ok
from sampleforge.testbed._paths import binary
from sampleforge.testbed._ports import free_port
from sampleforge.testbed._process import ManagedProcess


@dataclass(frozen=True)
class MinioServer:
    process: ManagedProcess
    endpoint: str  # host:port, the form the minio client and the CR's spec.storage.endpoint take
    access_key: str
    secret_key: str

    def client(self) -> Minio:
        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)


def start_minio(workdir: Path, logs: Path, timeout: float) -> MinioServer:
    port, console = free_port(), free_port()
    access_key = "testbed-" + secrets.token_hex(4)
    secret_key = secrets.token_urlsafe(24)
    env = dict(os.environ, MINIO_ROOT_USER=access_key, MINIO_ROOT_PASSWORD=secret_key,
               MINIO_BROWSER="off", MINIO_UPDATE="off", CI="true")
    data = workdir / "minio-data"
    data.mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess("minio", [
        binary("minio"), "server", data, f"--address=127.0.0.1:{port}", f"--console-address=127.0.0.1:{console}",
        "--quiet",
    ], logs / "minio.log", env=env).start()
    proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/minio/health/ready"), timeout, "ready")
    return MinioServer(proc, f"127.0.0.1:{port}", access_key, secret_key)
