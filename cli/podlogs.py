"""``logs``: every pod of a run, each line prefixed with its shard or rank.

``kubectl logs job/x`` shows one pod of many. A run's work is spread over an Indexed Job's pods
(shards of an AugmentationRun, ranks of a FineTuneRun) and, after a failure, over retries of them;
this reads all of them, and with ``follow`` keeps a pod watch open so that a retried pod's lines
appear as soon as it starts.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from kubernetes import client, watch

from sampleforge.api import Kind
from sampleforge.api.constants import LABEL_RUN_UID

from .kube import Cluster, get_run, is_terminal, pod_name, pod_node, pod_phase, pod_prefix, run_pods
from .refs import RunRef

#: Pod phases in which a container has started, so the kubelet has a log to give.
_STARTED = {"Running", "Succeeded", "Failed"}


class _Printer:
    """Whole lines from several threads, never interleaved mid-line."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self.lock = threading.Lock()

    def line(self, prefix: str, text: str) -> None:
        with self.lock:
            self.out.write(f"[{prefix}] {text}\n")
            self.out.flush()

    def note(self, text: str) -> None:
        with self.lock:
            self.err.write(text + "\n")
            self.err.flush()


def _container(pod: client.V1Pod) -> str | None:
    containers = (pod.spec.containers if pod.spec else None) or []
    return str(containers[0].name) if containers else None


def _log_error(err: client.ApiException) -> str:
    body = str(err.body or "")
    detail = body[:300] if body else str(err.reason)
    return f"{err.status} {detail}".strip()


def print_logs(cluster: Cluster, kind: Kind, run: dict[str, Any], tail: int | None,
               out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> tuple[int, int]:
    """Every pod's log, pod after pod (shard 0 first); how many pods there were and how many of
    them had a log to read."""
    printer = _Printer(out, err)
    pods = run_pods(cluster, run)
    read = 0
    for pod in pods:
        prefix = pod_prefix(kind, pod)
        if pod_phase(pod) not in _STARTED:
            printer.note(f"[{prefix}] pod {pod_name(pod)} is {pod_phase(pod)}: no log yet")
            continue
        try:
            text = cluster.core.read_namespaced_pod_log(pod_name(pod), cluster.namespace,
                                                        container=_container(pod), tail_lines=tail)
        except client.ApiException as api_err:
            printer.note(f"[{prefix}] cannot read the log of pod {pod_name(pod)} "
                         f"(node {pod_node(pod)}): {_log_error(api_err)}")
            continue
        read += 1
        for line in str(text).splitlines():
            printer.line(prefix, line)
    return len(pods), read


def follow_logs(cluster: Cluster, kind: Kind, run: dict[str, Any], tail: int | None,
                out: TextIO = sys.stdout, err: TextIO = sys.stderr,
                stop: Callable[[], bool] = lambda: False) -> tuple[int, int]:
    """Stream every pod's log as it is written, picking up new pods (retries) as they start; ends
    when the run is finished and every stream has ended (or ``stop`` says so)."""
    printer = _Printer(out, err)
    streaming: dict[str, threading.Thread] = {}
    counts = {"pods": 0, "read": 0}

    def stream(pod: client.V1Pod, prefix: str) -> None:
        try:
            response: Any = cluster.core.read_namespaced_pod_log(pod_name(pod), cluster.namespace,
                                                            container=_container(pod), follow=True,
                                                            tail_lines=tail, _preload_content=False)
        except client.ApiException as api_err:
            printer.note(f"[{prefix}] cannot read the log of pod {pod_name(pod)} "
                         f"(node {pod_node(pod)}): {_log_error(api_err)}")
            return
        counts["read"] += 1
        pending = b""
        try:
            for chunk in response.stream(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    printer.line(prefix, line.decode(errors="replace"))
            if pending:
                printer.line(prefix, pending.decode(errors="replace"))
        finally:
            response.release_conn()

    def consider(pod: client.V1Pod) -> None:
        name = pod_name(pod)
        if name in streaming or pod_phase(pod) not in _STARTED:
            return
        counts["pods"] += 1
        prefix = pod_prefix(kind, pod)
        printer.note(f"[{prefix}] following pod {name}")
        thread = threading.Thread(target=stream, args=(pod, prefix), daemon=True, name=f"log-{name}")
        streaming[name] = thread
        thread.start()

    for pod in run_pods(cluster, run):
        consider(pod)
    selector = f"{LABEL_RUN_UID}={run['metadata']['uid']}"
    while not stop():
        w = watch.Watch()
        events = w.stream(cluster.core.list_namespaced_pod, cluster.namespace,
                          label_selector=selector, timeout_seconds=5)
        for event in events:
            if event["type"] in ("ADDED", "MODIFIED"):
                consider(event["object"])
        current = get_run(cluster, RunRef(run["metadata"]["name"], kind))[1]
        if is_terminal(current) and not any(t.is_alive() for t in streaming.values()):
            break
    for thread in streaming.values():
        thread.join(timeout=5)
    return counts["pods"], counts["read"]
