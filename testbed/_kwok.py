"""kwok and its fake GPU nodes: Pods that the real scheduler places and the real Job controller
finishes, without a kubelet or a container runtime.

The nodes look like a typical GPU pool: ``nvidia.com/gpu`` in capacity and allocatable, the GPU
product label that NVIDIA's feature discovery sets, and the ``nvidia.com/gpu:NoSchedule`` taint that
GPU pools carry so that only Pods asking for GPUs (and tolerating it) land there.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kubernetes import client

from sampleforge.api.constants import GPU_TYPE_NODE_LABEL
from sampleforge.testbed._errors import TestbedError
from sampleforge.testbed._health import http_ok
from sampleforge.testbed._paths import binary
from sampleforge.testbed._ports import free_port
from sampleforge.testbed._process import ManagedProcess

STAGES_FILE = Path(__file__).with_name("kwok-stages.yaml")
MANAGED_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = GPU_TYPE_NODE_LABEL  # what the operator matches spec.resources.gpuType against
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
#: Pod label/annotation that keeps a kwok Pod Running until removed (see kwok-stages.yaml).
HOLD_KEY = "testbed.sampleforge.io/hold"
#: Pod label that makes a kwok Pod report ImagePullBackOff instead of starting.
IMAGE_PULL_ERROR_LABEL = "testbed.sampleforge.io/image-pull-error"
#: Pod annotation that makes a Running kwok Pod terminate with this exit code.
EXIT_CODE_ANNOTATION = "testbed.sampleforge.io/exit-code"


def start_kwok(logs: Path, kubeconfig: Path, timeout: float) -> ManagedProcess:
    port = free_port()
    key, value = MANAGED_ANNOTATION
    proc = ManagedProcess("kwok", [
        binary("kwok"), f"--kubeconfig={kubeconfig}", f"--config={STAGES_FILE}",
        "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={key}={value}",
        f"--server-address=127.0.0.1:{port}", "--node-ip=127.0.0.1", "--cidr=10.244.0.0/16",
    ], logs / "kwok.log").start()
    proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout, "healthy")
    return proc


def gpu_node_manifest(name: str, gpus: int = 8, product: str = "NVIDIA-H100-80GB-HBM3") -> dict[str, Any]:
    return _node_manifest(name, gpus, {GPU_PRODUCT_LABEL: product, "nvidia.com/gpu.count": str(gpus)}, [GPU_TAINT])


def cpu_node_manifest(name: str) -> dict[str, Any]:
    """A node of the cluster's CPU pool: no GPUs, no taint; where pods that ask for no GPU go."""
    return _node_manifest(name, 0, {}, [])


def _node_manifest(name: str, gpus: int, labels: dict[str, str], taints: list[dict[str, str]]) -> dict[str, Any]:
    resources = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    if gpus:
        resources[GPU_RESOURCE] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {MANAGED_ANNOTATION[0]: MANAGED_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                       "type": "kwok", **labels},
        },
        "spec": {"taints": taints},
        "status": {"capacity": resources, "allocatable": dict(resources)},
    }


def create_gpu_nodes(api: client.ApiClient, count: int, timeout: float) -> list[str]:
    """Create ``count`` fake GPU nodes and wait until kwok reports each one Ready."""
    return create_nodes(api, {f"gpu-node-{i}": gpu_node_manifest(f"gpu-node-{i}") for i in range(count)}, timeout)


def create_cpu_nodes(api: client.ApiClient, count: int, timeout: float) -> list[str]:
    """Create ``count`` fake CPU nodes and wait until kwok reports each one Ready."""
    return create_nodes(api, {f"cpu-node-{i}": cpu_node_manifest(f"cpu-node-{i}") for i in range(count)}, timeout)


def create_nodes(api: client.ApiClient, manifests: dict[str, dict[str, Any]], timeout: float) -> list[str]:
    """Create the nodes (by name) and wait until kwok reports each one Ready."""
    core = client.CoreV1Api(api)
    names = list(manifests)
    for name in names:
        core.create_node(client.V1Node.model_validate(manifests[name]))
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for name in list(pending):
            node = core.read_node(name)
            conditions = (node.status.conditions if node.status else None) or []
            ready = [c for c in conditions if c.type == "Ready" and c.status == "True"]
            if ready:
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise TestbedError(f"kwok did not make nodes {sorted(pending)} Ready within {timeout:.0f}s")
        if pending:
            time.sleep(0.2)
    return names
