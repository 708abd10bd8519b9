"""Operator latency and scale on the real testbed.

* ``latency``: runs created one at a time; time from the create call to the operator's Job
  appearing in a watch (median, p99, worst).
* ``burst``: N runs created at once; the same latency under load, status writes per second, the
  operator's CPU seconds and peak RSS.
* ``idle``: N suspended runs left alone; the operator's resident memory once they are settled.

Writes ``bench/results/operator.md``. ``--quick`` runs tiny sizes to check the benchmark works.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from sampleforge.api import GROUP, VERSION
from sampleforge.api.constants import LABEL_RUN_NAME
from sampleforge.testbed import Testbed, TestbedOptions
from sampleforge.testbed._operator import OPERATOR_NAMESPACE, OperatorProcess

RESULTS = Path(__file__).resolve().parent / "results" / "operator.md"
NAMESPACE = "bench"


def run_manifest(name: str, suspend: bool) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "AugmentationRun", "metadata": {"name": name},
        "spec": {"storage": {"endpoint": "minio.bench:9000", "credentialsSecret": "creds"},
                 "source": {"uri": "s3://data/train.parquet", "columns": {"query": "q", "item": "t", "label": "y"}},
                 "augmenters": [{"type": "typo", "fraction": 0.3}], "output": {"uri": f"s3://data/out/{name}/"},
                 "parallelism": 1, "suspend": suspend},
    }


class JobWatcher:
    """Records when each run's Job first shows up in a watch."""

    def __init__(self, api: client.ApiClient) -> None:
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(api,), daemon=True)

    def start(self) -> JobWatcher:
        self._thread.start()
        return self

    def _run(self, api: client.ApiClient) -> None:
        batch = client.BatchV1Api(api)
        while not self._stop.is_set():
            w = watch.Watch()
            for event in w.stream(batch.list_namespaced_job, NAMESPACE, timeout_seconds=5):
                labels = event["object"].metadata.labels or {}
                name = labels.get(LABEL_RUN_NAME)
                if name and name not in self.seen:
                    self.seen[name] = time.perf_counter()
                if self._stop.is_set():
                    w.stop()

    def stop(self) -> None:
        self._stop.set()


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return cpu, hwm


def rss(pid: int) -> int:
    return next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:"))


def create(custom: client.CustomObjectsApi, name: str, suspend: bool = False) -> float:
    started = time.perf_counter()
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "augmentationruns", run_manifest(name, suspend))
    return started


def wait_seen(watcher: JobWatcher, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(n not in watcher.seen for n in names):
        if time.monotonic() > deadline:
            missing = [n for n in names if n not in watcher.seen]
            raise TimeoutError(f"{len(missing)} runs got no Job within {timeout:.0f}s")
        time.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the benchmark runs")
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--idle", type=int, default=2000)
    args = parser.parse_args()
    if args.quick:
        args.latency_runs, args.burst, args.idle = 5, 10, 20

    rows: list[tuple[str, str]] = []
    with Testbed(TestbedOptions(controllers=False, minio=False)) as tb, tb.api_client() as api:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        crds = Path(__file__).resolve().parents[1] / "crds"
        tb.kubectl("apply", "--server-side", "-f", str(crds))
        tb.kubectl("wait", "--for=condition=Established", "-f", str(crds))
        for ns in (NAMESPACE, OPERATOR_NAMESPACE):
            core.create_namespace({"metadata": {"name": ns}})
        core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "creds"},
                                                  "stringData": {"accessKey": "a", "secretKey": "b"}})
        operator = OperatorProcess(tb.kubeconfig, tb.logs / "operator.log",
                                   settings={"SAMPLEFORGE_OPERATOR_LEADER_ELECTION": "false"}).start()
        pid = operator.process.pid
        watcher = JobWatcher(api).start()
        try:
            # 1. one at a time
            latencies = []
            for i in range(args.latency_runs):
                name = f"lat-{i}"
                started = create(custom, name)
                wait_seen(watcher, [name], 60)
                latencies.append(watcher.seen[name] - started)
            rows += [(f"apply → Job created, {args.latency_runs} runs one at a time: median",
                      f"{statistics.median(latencies) * 1000:.0f} ms"),
                     ("… p99", f"{percentile(latencies, 0.99) * 1000:.0f} ms"),
                     ("… worst", f"{max(latencies) * 1000:.0f} ms")]

            # 2. a burst
            cpu0, _ = proc_stats(pid)
            writes0 = _status_writes(operator)
            names = [f"burst-{i}" for i in range(args.burst)]
            starts = {}
            burst_started = time.perf_counter()
            for name in names:
                starts[name] = create(custom, name)
            wait_seen(watcher, names, 600)
            burst_seconds = time.perf_counter() - burst_started
            time.sleep(5)  # let the status writes that follow Job creation land
            burst = [watcher.seen[n] - starts[n] for n in names]
            cpu1, peak = proc_stats(pid)
            writes = _status_writes(operator) - writes0
            rows += [(f"{args.burst} runs created at once: apply → Job p50", f"{percentile(burst, 0.5):.2f} s"),
                     ("… p99", f"{percentile(burst, 0.99):.2f} s"),
                     ("… all Jobs created after", f"{burst_seconds:.1f} s"),
                     ("… status writes per second (burst + 5 s)", f"{writes / (burst_seconds + 5):.1f}"),
                     ("… operator CPU seconds", f"{cpu1 - cpu0:.1f}"),
                     ("… operator peak RSS", f"{peak / 2**20:.0f} MiB")]

            # 3. many idle (suspended) runs
            idle_names = [f"idle-{i}" for i in range(args.idle)]
            for name in idle_names:
                create(custom, name, suspend=True)
            wait_seen(watcher, idle_names, 1200)
            time.sleep(20)
            cpu_a, _ = proc_stats(pid)
            time.sleep(30)
            cpu_b, peak = proc_stats(pid)
            total = args.latency_runs + args.burst + args.idle
            rows += [(f"{total} runs ({args.idle} suspended) idle: operator RSS", f"{rss(pid) / 2**20:.0f} MiB"),
                     ("… operator peak RSS over the whole benchmark", f"{peak / 2**20:.0f} MiB"),
                     ("… operator CPU while idle", f"{(cpu_b - cpu_a) / 30 * 100:.1f} % of one core")]
        finally:
            watcher.stop()
            operator.stop()

    write_results(rows, args)
    for key, value in rows:
        print(f"{key:70s} {value}")
    return 0


def _status_writes(operator: OperatorProcess) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{operator.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "sampleforge_status_writes"
               for s in f.samples if s.name.endswith("_total"))


def write_results(rows: list[tuple[str, str]], args: argparse.Namespace) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [
        "# Operator latency and scale",
        "",
        (f"Measured {datetime.now(UTC):%Y-%m-%d} with `python bench/bench_operator.py"
         f"{' --quick' if args.quick else ''}` on {os.cpu_count()} cores ({cpu}), Python "
         f"{platform.python_version()}, against the testbed's real kube-apiserver (no kubelet: the Jobs are not "
         "run, only created; this measures the operator)."),
        "",
        "| measurement | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
    ]
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
