"""The testbed: the real servers sampleforge runs against, composed and torn down as one.

One implementation serves the pytest fixtures, the local demo and the benchmarks, so a bug in how
the control plane is started shows up everywhere at once instead of in one of three copies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from kubernetes import client, config
from minio import Minio

from sampleforge.testbed._certs import ControlPlanePKI
from sampleforge.testbed._controlplane import (
    ApiServer,
    admin_tls,
    start_apiserver,
    start_controller_manager,
    start_etcd,
    start_scheduler,
)
from sampleforge.testbed._errors import TestbedError
from sampleforge.testbed._health import http_ok
from sampleforge.testbed._kueue import start_kueue
from sampleforge.testbed._kwok import create_cpu_nodes, create_gpu_nodes, start_kwok
from sampleforge.testbed._localnode import start_local_node
from sampleforge.testbed._minio import MinioServer, start_minio
from sampleforge.testbed._paths import binary
from sampleforge.testbed._process import ManagedProcess


@dataclass(frozen=True)
class TestbedOptions:
    """What to start. The API server alone takes seconds; the controllers add Job lifecycles."""

    __test__ = False

    kubernetes: bool = True
    #: kube-controller-manager + kube-scheduler + kwok with fake GPU nodes.
    controllers: bool = False
    gpu_nodes: int = 2
    #: kwok nodes without GPUs (a cluster's CPU pool, where a pod that asks for no GPU goes, such as a
    #: sharded AugmentationRun's reduce step). None: one when there are GPU nodes, else none (a
    #: local-node testbed wants its pods on the local node).
    cpu_nodes: int | None = None
    #: A node whose Pods run as local processes (needs ``controllers``): Jobs really execute.
    local_node: bool = False
    #: Kueue's manager (needs ``controllers``), its CRDs and namespace: runs with ``queueName`` are
    #: admitted against real ClusterQueue quota. Opt-in: it adds a process and seconds to the start.
    kueue: bool = False
    minio: bool = True
    startup_timeout: float = 120.0
    #: Where certificates, data and logs go; a fresh temporary directory when None.
    workdir: Path | None = None


class Testbed:
    """Start with ``with Testbed(TestbedOptions(...)) as tb:``; everything stops on exit.

    On an exception inside the ``with`` block the work directory (with every server's log) is kept
    and its path is printed, so a failure can be read after the fact.
    """

    __test__ = False

    def __init__(self, options: TestbedOptions | None = None) -> None:
        self.options = options or TestbedOptions()
        self.workdir = self.options.workdir or Path(tempfile.mkdtemp(prefix="sampleforge-testbed-"))
        self.logs = self.workdir / "logs"
        self.processes: list[ManagedProcess] = []
        self.pki: ControlPlanePKI | None = None
        self._api: ApiServer | None = None
        self._minio: MinioServer | None = None
        self.gpu_node_names: list[str] = []
        self.cpu_node_names: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        opts = self.options
        timeout = opts.startup_timeout
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            if opts.minio:
                self._minio = start_minio(self.workdir, self.logs, timeout)
                self.processes.append(self._minio.process)
            if opts.kubernetes:
                self.pki = ControlPlanePKI.create(self.workdir / "pki")
                etcd, etcd_url = start_etcd(self.workdir, self.logs, timeout)
                self.processes.append(etcd)
                self._api = start_apiserver(self.workdir, self.logs, self.pki, etcd_url, timeout)
                self.processes.append(self._api.process)
                if opts.controllers:
                    kubeconfig = self._api.kubeconfig
                    self.processes.append(start_controller_manager(self.workdir, self.logs, self.pki, kubeconfig,
                                                                   timeout))
                    self.processes.append(start_scheduler(self.workdir, self.logs, kubeconfig, timeout))
                    self.processes.append(start_kwok(self.logs, kubeconfig, timeout))
                    with self.api_client() as api:
                        self.gpu_node_names = create_gpu_nodes(api, opts.gpu_nodes, timeout)
                        cpu_nodes = opts.cpu_nodes if opts.cpu_nodes is not None else min(opts.gpu_nodes, 1)
                        self.cpu_node_names = create_cpu_nodes(api, cpu_nodes, timeout)
                    if opts.local_node:
                        self.processes.append(start_local_node(self.kubeconfig, self.workdir / "local-node",
                                                               self.logs, timeout))
                    if opts.kueue:
                        with self.api_client() as api:
                            self.processes.append(start_kueue(api, self.kubeconfig, self.workdir / "kueue",
                                                              self.logs, timeout).process)
                    self.wait_for_default_service_account("default", timeout)
        except BaseException:
            self.stop(keep_workdir=True)
            raise
        return self

    def stop(self, keep_workdir: bool = False) -> None:
        # Reverse order: clients of the API server first, etcd and MinIO last.
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        if keep_workdir:
            print(f"sampleforge testbed: logs kept in {self.logs}", flush=True)
        elif self.options.workdir is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(keep_workdir=exc_type is not None)

    # -- what tests and the demo use ---------------------------------------------------------

    @property
    def api(self) -> ApiServer:
        if self._api is None:
            raise TestbedError("this testbed was started without Kubernetes (TestbedOptions.kubernetes=False)")
        return self._api

    @property
    def kubeconfig(self) -> Path:
        return self.api.kubeconfig

    @property
    def minio(self) -> MinioServer:
        if self._minio is None:
            raise TestbedError("this testbed was started without MinIO (TestbedOptions.minio=False)")
        return self._minio

    def minio_client(self) -> Minio:
        return self.minio.client()

    def process(self, name: str) -> ManagedProcess:
        """One of the testbed's servers by name ("etcd", "kube-apiserver", "minio", ...), for tests
        that stop, pause or restart it (a restart reuses its port, data and flags)."""
        for proc in self.processes:
            if proc.name == name:
                return proc
        raise TestbedError(f"this testbed runs no {name!r} (it runs {', '.join(p.name for p in self.processes)})")

    def restart_apiserver(self, timeout: float = 120.0) -> None:
        """Start kube-apiserver again after its process was stopped: same port, certificates and
        etcd, so every kubeconfig and client made before works again once it is ready."""
        if self.pki is None:
            raise TestbedError("this testbed was started without Kubernetes")
        api, context = self.api, admin_tls(self.pki)
        api.process.stop()
        api.process.start()
        api.process.wait_ready(lambda: http_ok(f"{api.url}/readyz", context), timeout, "ready again (/readyz)")

    def restart_minio(self, timeout: float = 60.0) -> None:
        """Start the MinIO server again after its process was stopped or killed: same port, same
        data directory, same keys, so clients made before the outage work again."""
        proc = self.minio.process
        proc.stop()
        proc.start()
        url = f"http://{self.minio.endpoint}/minio/health/ready"
        proc.wait_ready(lambda: http_ok(url), timeout, "ready again")

    def api_client(self) -> client.ApiClient:
        """A fresh client for the admin identity; close it (or use ``with``) when done."""
        api: client.ApiClient = config.new_client_from_config(config_file=str(self.kubeconfig))
        return api

    def env(self) -> dict[str, str]:
        """Environment for child processes (kubectl, helm, the operator) pointed at this testbed."""
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig)) if self._api else dict(os.environ)
        if self._minio is not None:
            env.update(SAMPLEFORGE_TESTBED_MINIO_ENDPOINT=self._minio.endpoint)
        return env

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(binary("kubectl")), *args], env=self.env(), capture_output=True, text=True,
                                input=input, timeout=120, check=False)  # the caller's `check` decides
        if check and result.returncode != 0:
            raise TestbedError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def state(self) -> dict[str, Any]:
        """What ``sampleforge-testbed down`` needs to stop a testbed left running by ``up --keep``."""
        return {
            "workdir": str(self.workdir),
            "pids": {p.name: p.pid for p in self.processes},
            "kubeconfig": str(self.kubeconfig) if self._api else None,
            "minio": {"endpoint": self._minio.endpoint, "accessKey": self._minio.access_key,
                      "secretKey": self._minio.secret_key} if self._minio else None,
        }

    def write_state(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.state(), indent=2))
        path.chmod(0o600)

    def detach(self) -> None:
        """Leave the servers running after this interpreter exits (``up --keep``)."""
        for proc in self.processes:
            proc.detach()

    def wait_for_default_service_account(self, namespace: str, timeout: float = 30.0) -> None:
        """Pods in a new namespace need its "default" ServiceAccount, which the controller-manager
        creates a moment after the namespace; waiting here keeps that race out of every test."""
        deadline = time.monotonic() + timeout
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            while True:
                try:
                    core.read_namespaced_service_account("default", namespace)
                    return
                except client.ApiException as err:
                    if err.status != 404 or time.monotonic() > deadline:
                        raise TestbedError(f"no default ServiceAccount in namespace {namespace!r} "
                                           f"after {timeout:.0f}s (is kube-controller-manager running?)") from err
                time.sleep(0.1)
