"""One pod, several processes: start one training process per GPU with torchrun.

A FineTuneRun's pod runs the entry point once. When the pod has more than one GPU, or the run
spans several pods (nodes), the entry point re-executes itself under ``torch.distributed.run``
with the rendezvous the operator rendered (MASTER_ADDR, MASTER_PORT, node rank =
JOB_COMPLETION_INDEX); accelerate picks the rest up from torchrun's environment.

torchrun reports any failure of a worker as exit status 1, which would hide "preempted, checkpoint
committed" (143) from the Job's podFailurePolicy. So each worker also writes its exit code to a
file, and the launcher exits with the most meaningful one. SIGTERM is forwarded to torchrun, which
forwards it to the workers; they agree on a step, checkpoint and exit.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from sampleforge.api import jobenv
from sampleforge.api.finetune import FineTuneRunSpec

from .errors import ExitCode

log = logging.getLogger(__name__)

#: Where workers leave their exit codes for the launcher (set by the launcher only).
EXIT_DIR_ENV = "SAMPLEFORGE_FINETUNE_EXIT_DIR"
#: How long torchrun lets workers finish their SIGTERM checkpoint before it kills them.
SHUTDOWN_TIMEOUT_SECONDS = 100


def processes_per_node(spec: FineTuneRunSpec, env: Mapping[str, str]) -> int:
    return max(1, int(env.get(jobenv.GPUS_PER_NODE) or spec.gpus_per_pod() or 1))


def nodes(spec: FineTuneRunSpec, env: Mapping[str, str]) -> int:
    return int(env.get(jobenv.NUM_NODES) or spec.distribution.nodes)


def needs_launch(spec: FineTuneRunSpec, env: Mapping[str, str]) -> bool:
    """True in the pod's first process when more than one training process is wanted."""
    if "LOCAL_RANK" in env:  # already a torchrun worker
        return False
    return processes_per_node(spec, env) > 1 or nodes(spec, env) > 1


def node_layout(env: Mapping[str, str]) -> tuple[int, int]:
    """(this node's rank, number of nodes) inside a worker; (0, 1) for a single process."""
    local = int(env.get("LOCAL_WORLD_SIZE", "1")) or 1
    return int(env.get("RANK", "0")) // local, max(int(env.get("WORLD_SIZE", "1")) // local, 1)


def free_port() -> int:
    """A free loopback port: one pod on its own needs no agreed port, and a fixed one could clash
    with another job on the same machine (a laptop, a CI runner)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worst(codes: list[int]) -> int:
    """The exit code of the pod from its workers' codes: a configuration or data error wins (no
    retry will help), then preemption (retry, resume), then any other failure, then success."""
    for preferred in (ExitCode.CONFIGURATION, ExitCode.MODEL_UNAVAILABLE, ExitCode.DATASET_UNREADABLE,
                      ExitCode.PREEMPTED):
        if preferred in codes:
            return int(preferred)
    return max(codes, default=int(ExitCode.UNEXPECTED))


def launch(spec: FineTuneRunSpec, env: Mapping[str, str], cache_dir: Path) -> int:
    """Run the entry point under torchrun on this node; return the pod's exit status."""
    per_node, node_count = processes_per_node(spec, env), nodes(spec, env)
    cache_dir.mkdir(parents=True, exist_ok=True)
    exit_dir = Path(tempfile.mkdtemp(prefix="exit-", dir=cache_dir))
    command = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={node_count}", f"--nproc-per-node={per_node}",
        f"--node-rank={env.get(jobenv.JOB_COMPLETION_INDEX, '0')}",
        f"--master-addr={env.get(jobenv.MASTER_ADDR, '127.0.0.1')}",
        f"--master-port={env.get(jobenv.MASTER_PORT) or (free_port() if node_count == 1 else 29500)}",
        # On SIGTERM torchrun passes the signal on, then kills workers still running after this
        # long: room for the SIGTERM checkpoint within the pod's grace period (120 s for a FineTuneRun).
        f"--shutdown-timeout={SHUTDOWN_TIMEOUT_SECONDS}",
        "-m", "sampleforge.jobs.finetune",
    ]
    log.info("starting training processes", extra={"processes_per_node": per_node, "nodes": node_count})
    child = subprocess.Popen(command, env={**env, EXIT_DIR_ENV: str(exit_dir)})

    def forward(signum: int, frame: FrameType | None) -> None:
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [json.loads(p.read_text())["exitCode"] for p in sorted(exit_dir.glob("rank-*.json"))]
    if status == 0 and len(codes) == per_node and all(c == 0 for c in codes):
        return 0
    result = worst(codes) if codes else int(ExitCode.UNEXPECTED)
    log.info("training processes ended", extra={"torchrun_status": status, "worker_codes": codes, "exit_code": result})
    return result
