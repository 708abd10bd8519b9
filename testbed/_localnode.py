"""A node whose Pods run as local processes: the smallest kubelet that lets a laptop (or CI) run the
product's real Jobs end to end, with no container runtime.

It registers a Node, keeps it Ready, and for each Pod the scheduler binds to it: resolves the
container's environment (literal values, Secret keys, the downward API), stands in for the volumes
the pods use (a projected ServiceAccount token minted with TokenRequest and bound to the Pod, a
ConfigMap's keys as files, the emptyDirs as temporary directories; environment values that point
into a mount are rewritten to the local path), runs the container's command and arguments, and reports Running, then Succeeded or
Failed with the exit code back to the API server. Deleting a Pod stops its process. The operator
cannot tell the difference: this is development tooling, and never part of the operator.

Slightly over 400 lines on purpose: a minimal kubelet's loop (register, bind, start, report, stop)
is checked against the real kubelet's contract more easily in one place.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from sampleforge.testbed._process import ManagedProcess

log = logging.getLogger(__name__)
NODE_LABEL = "sampleforge.io/local-node"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Pod:
    """A Pod bound to this node, with what the API server always sets (name, namespace, uid, spec)
    checked once, here, instead of at every use."""

    namespace: str
    name: str
    uid: str
    meta: client.V1ObjectMeta
    spec: client.V1PodSpec
    phase: str | None

    @classmethod
    def of(cls, pod: client.V1Pod) -> _Pod:
        meta, spec = pod.metadata, pod.spec
        if meta is None or spec is None or not (meta.namespace and meta.name and meta.uid):
            raise ValueError(f"a Pod without its name, namespace, uid or spec: {pod.metadata}")
        return cls(meta.namespace, meta.name, meta.uid, meta, spec, pod.status.phase if pod.status else None)


@dataclass
class _LocalPod:
    namespace: str
    name: str
    uid: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    grace: int


class LocalNode:
    """Run with ``start()``; ``stop()`` kills every pod process and removes the Node."""

    def __init__(self, api: client.ApiClient, name: str, workdir: Path, cpu: str = "2", memory: str = "16Gi",
                 path_prepend: str | None = None) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.name = name
        self.workdir = workdir
        self.cpu, self.memory = cpu, memory
        self.path_prepend = path_prepend
        self._pods: dict[str, _LocalPod] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- node ------------------------------------------------------------------------------

    def _node_status(self) -> dict[str, Any]:
        now = _now()
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": "32", "ephemeral-storage": "100Gi"}
        ready = {"type": "Ready", "status": "True", "reason": "LocalNodeReady",
                 "message": "pods run as local processes", "lastHeartbeatTime": now, "lastTransitionTime": now}
        return {"capacity": resources, "allocatable": dict(resources), "conditions": [ready],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
                "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "local-process",
                             "containerRuntimeVersion": "local-process://1", "kernelVersion": os.uname().release,
                             "osImage": "local", "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                             "bootID": ""}}

    def register(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": {"kubernetes.io/hostname": self.name, NODE_LABEL: "true",
                                                           "kubernetes.io/os": "linux"}},
                "status": self._node_status()}
        try:
            self.core.create_node(client.V1Node.model_validate(body))
        except client.ApiException as err:
            if err.status != 409:
                raise
        self.core.patch_node_status(self.name, {"status": self._node_status()})

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(10):
            try:
                self.core.patch_node_status(self.name, {"status": {"conditions": self._node_status()["conditions"]}})
            except client.ApiException as err:
                log.warning("node heartbeat failed: %s", err.reason)

    # -- pods ------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self.name}"
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(self.core.list_pod_for_all_namespaces, field_selector=selector,
                                      timeout_seconds=10):
                    if self._stop.is_set():
                        w.stop()
                        break
                    pod = _Pod.of(event["object"])
                    if event["type"] == "DELETED":
                        self._kill(pod.uid, grace=0)
                    elif pod.meta.deletion_timestamp is not None:
                        self._terminate(pod)
                    elif pod.phase == "Pending" and pod.uid not in self._pods:
                        self._start(pod)
            except Exception as err:  # noqa: BLE001 - the watch restarts; a dead runtime would hang the demo
                if not self._stop.is_set():
                    log.warning("pod watch restarted: %s", err)
                    time.sleep(1)

    def _secret_value(self, namespace: str, name: str, key: str) -> str:
        import base64

        secret = self.core.read_namespaced_secret(name, namespace)
        return base64.b64decode((secret.data or {})[key]).decode()

    def _field(self, pod: _Pod, path: str) -> str:
        if path == "metadata.name":
            return pod.name
        if path == "metadata.namespace":
            return pod.namespace
        if path == "metadata.uid":
            return pod.uid
        if path == "spec.nodeName":
            return self.name
        if path == "spec.serviceAccountName":
            return str(pod.spec.service_account_name or "default")
        if path in ("status.podIP", "status.hostIP"):
            return "127.0.0.1"
        for prefix, source in (("metadata.annotations", pod.meta.annotations),
                               ("metadata.labels", pod.meta.labels)):
            if path.startswith(prefix + "['") and path.endswith("']"):
                return str((source or {}).get(path[len(prefix) + 2:-2], ""))
        raise ValueError(f"unsupported fieldRef {path}")

    def _volumes(self, pod: _Pod, workdir: Path) -> dict[str, Path]:
        """Local stand-ins for the pod's volumes, by volume name."""
        local: dict[str, Path] = {}
        for volume in pod.spec.volumes or []:
            path = workdir / "volumes" / volume.name
            path.mkdir(parents=True, exist_ok=True)
            if volume.projected is not None:
                for source in volume.projected.sources or []:
                    token = source.service_account_token
                    if token is None:
                        continue
                    request = client.AuthenticationV1TokenRequest.model_validate({"spec": {
                        "audiences": [token.audience] if token.audience else None,
                        "expirationSeconds": token.expiration_seconds or 3600,
                        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.name, "uid": pod.uid}}})
                    minted = self.core.create_namespaced_service_account_token(
                        pod.spec.service_account_name or "default", pod.namespace, request)
                    if minted.status is None or not minted.status.token:
                        raise RuntimeError(f"the TokenRequest for pod {pod.namespace}/{pod.name} returned no token")
                    (path / token.path).write_text(minted.status.token)
            if volume.config_map is not None:
                self._config_map_files(pod.namespace, volume.config_map, path)
            local[volume.name] = path
        return local

    def _config_map_files(self, namespace: str, source: client.V1ConfigMapVolumeSource, path: Path) -> None:
        """A ConfigMap volume: each key (or each listed item) as a read-only file, as the kubelet
        writes it. The kubelet waits for a ConfigMap that does not exist yet; so does this, briefly."""
        if not source.name:
            raise ValueError("a configMap volume without the ConfigMap's name")
        deadline = time.monotonic() + 30
        while True:
            try:
                config_map = self.core.read_namespaced_config_map(source.name, namespace)
                break
            except client.ApiException as err:
                if err.status != 404 or source.optional or time.monotonic() > deadline:
                    if err.status == 404 and source.optional:
                        return
                    raise
                time.sleep(1)
        data = config_map.data or {}
        items = [(i.key, i.path) for i in source.items] if source.items else [(k, k) for k in sorted(data)]
        for key, rel in items:
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            target.write_text(data[key], encoding="utf-8")
            target.chmod(0o444)

    def _environment(self, pod: _Pod, container: client.V1Container, mounts: dict[str, Path]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR",
                                                           "SAMPLEFORGE_SHARED_DATA", "HF_HUB_OFFLINE")}
        if self.path_prepend:
            env["PATH"] = f"{self.path_prepend}:{env.get('PATH', '/usr/bin:/bin')}"
        env.update(HOSTNAME=pod.spec.hostname or pod.name, KUBERNETES_NODE_NAME=self.name,
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        for item in container.env or []:
            if item.value is not None:
                value = item.value
            elif item.value_from and item.value_from.secret_key_ref:
                ref = item.value_from.secret_key_ref
                if not ref.name:
                    raise ValueError(f"variable {item.name}: a secretKeyRef without the Secret's name")
                value = self._secret_value(pod.namespace, ref.name, ref.key)
            elif item.value_from and item.value_from.field_ref:
                value = self._field(pod, item.value_from.field_ref.field_path)
            else:
                value = ""
            env[item.name] = value
        # Values that point into a mounted volume point at its local stand-in instead: each value once,
        # by the deepest mount that holds it (a rewritten value may itself lie under a mount path such
        # as /tmp, where the local stand-ins live, and must not be rewritten again).
        targets = sorted(((m.mount_path.rstrip("/") or "/", mounts[m.name]) for m in container.volume_mounts or []
                          if m.name in mounts), key=lambda t: len(t[0]), reverse=True)
        for key, value in list(env.items()):
            for mount_path, local in targets:
                if value == mount_path or value.startswith(mount_path + "/"):
                    env[key] = str(local) + value[len(mount_path):]
                    break
        return env

    def _start(self, pod: _Pod) -> None:
        container = pod.spec.containers[0]
        workdir = self.workdir / f"{pod.namespace}_{pod.name}"
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "container.log"
        try:
            env = self._environment(pod, container, self._volumes(pod, workdir))
            argv = [*(container.command or []), *(container.args or [])]
            executable = shutil.which(argv[0], path=env.get("PATH")) if argv else None
            if not executable:
                raise FileNotFoundError(f"command {argv[:1]} not found on the local node's PATH")
            with log_path.open("ab") as sink:
                process = subprocess.Popen([executable, *argv[1:]], env=env, cwd=workdir, stdout=sink,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        except Exception as err:  # noqa: BLE001 - any failure to start is the pod's failure, reported as such
            log.error("cannot start pod %s/%s: %s", pod.namespace, pod.name, err)
            self._report_exit(pod, 128, "ContainerCannotRun", str(err))
            return
        local = _LocalPod(pod.namespace, pod.name, pod.uid, process, workdir, log_path,
                          int(pod.spec.termination_grace_period_seconds or 30))
        with self._lock:
            self._pods[pod.uid] = local
        self._report_running(pod)
        threading.Thread(target=self._wait, args=(pod, local), daemon=True).start()

    def _report_running(self, pod: _Pod) -> None:
        now = _now()
        container = pod.spec.containers[0]
        status = {"phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": now,
                  "podIPs": [{"ip": "127.0.0.1"}],
                  "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                                 for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
                  "containerStatuses": [{"name": container.name, "image": container.image, "imageID": "",
                                         "ready": True, "started": True, "restartCount": 0,
                                         "state": {"running": {"startedAt": now}}}]}
        self.core.patch_namespaced_pod_status(pod.name, pod.namespace, {"status": status})

    def _report_exit(self, pod: _Pod, code: int, reason: str, message: str) -> None:
        now = _now()
        container = pod.spec.containers[0]
        status = {"phase": "Succeeded" if code == 0 else "Failed",
                  "conditions": [{"type": t, "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}
                                 for t in ("ContainersReady", "Ready")],
                  "containerStatuses": [{"name": container.name, "image": container.image, "imageID": "",
                                         "ready": False, "started": False, "restartCount": 0,
                                         "state": {"terminated": {"exitCode": code, "reason": reason,
                                                                  "message": message[-2000:], "finishedAt": now}}}]}
        try:
            self.core.patch_namespaced_pod_status(pod.name, pod.namespace, {"status": status})
        except client.ApiException as err:
            if err.status != 404:
                raise

    def _wait(self, pod: _Pod, local: _LocalPod) -> None:
        code = local.process.wait()
        with self._lock:
            self._pods.pop(local.uid, None)
        if self._stop.is_set():
            return
        tail = local.log_path.read_text(errors="replace").splitlines()[-20:] if local.log_path.exists() else []
        reason = "Completed" if code == 0 else ("Error" if code > 0 else "Killed")
        self._report_exit(pod, code if code >= 0 else 128 - code, reason, "\n".join(tail))

    def _terminate(self, pod: _Pod) -> None:
        """Graceful deletion: SIGTERM, the grace period, SIGKILL; then let the Pod go."""
        self._kill(pod.uid, grace=int(pod.meta.deletion_grace_period_seconds or 0))
        if not pod.meta.finalizers:
            try:
                self.core.delete_namespaced_pod(pod.name, pod.namespace, grace_period_seconds=0)
            except client.ApiException as err:
                if err.status != 404:
                    raise

    def _kill(self, uid: str, grace: int) -> None:
        with self._lock:
            local = self._pods.get(uid)
        if local is None or local.process.poll() is not None:
            return
        try:
            os.killpg(local.process.pid, signal.SIGTERM)
            local.process.wait(timeout=max(grace, 1))
        except subprocess.TimeoutExpired:
            os.killpg(local.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalNode:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.register()
        for target in (self._heartbeat_loop, self._watch_loop):
            thread = threading.Thread(target=target, daemon=True, name=f"localnode-{target.__name__}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            running = list(self._pods.values())
        for local in running:
            self._kill(local.uid, grace=5)
        for thread in self._threads:
            thread.join(timeout=15)
        try:
            self.core.delete_node(self.name)
        except client.ApiException:
            pass

    def pod_log(self, namespace: str, name: str) -> Path:
        return self.workdir / f"{namespace}_{name}" / "container.log"


LOCAL_NODE_NAME = "local-0"


def start_local_node(kubeconfig: Path, workdir: Path, logs: Path, timeout: float) -> ManagedProcess:
    """Run the local node as its own process (like a kubelet): it can outlive the interpreter that
    started it (``up --keep``) and is stopped like every other testbed server."""
    import sys

    from kubernetes import config

    proc = ManagedProcess("local-node", [sys.executable, "-m", "sampleforge.testbed", "local-node",
                                         f"--kubeconfig={kubeconfig}", f"--workdir={workdir}",
                                         f"--name={LOCAL_NODE_NAME}"], logs / "local-node.log").start()
    api = config.new_client_from_config(config_file=str(kubeconfig))

    def ready() -> bool:
        node = client.CoreV1Api(api).read_node(LOCAL_NODE_NAME)
        conditions = (node.status.conditions if node.status else None) or []
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    try:
        proc.wait_ready(ready, timeout, "Ready")
    finally:
        api.close()
    return proc


def serve(kubeconfig: Path, workdir: Path, name: str) -> int:
    """The ``local-node`` process: run until SIGTERM, then stop every pod process."""
    import sys

    from kubernetes import config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    api = config.new_client_from_config(config_file=str(kubeconfig))
    node = LocalNode(api, name, workdir, path_prepend=str(Path(sys.executable).parent)).start()
    stop.wait()
    node.stop()
    return 0
