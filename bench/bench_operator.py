"""Operator latency and scale on the real testbed.

* ``latency``: runs created one at a time; time from the create call to the operator's Job
  appearing in a watch (median, p99, worst).
Every run is an AugmentationRun of ``parallelism: 1``, so its Job is its only one (a run of several
shards starts with its analysis Job, made the same way): "apply → Job" is the time to the first Job.

* ``burst``: N runs created at once; the same latency under load, status writes per second, the
  operator's CPU seconds and peak RSS.
* ``idle``: N suspended runs left alone; the operator's resident memory once they are settled.

Writes ``bench/results/operator.md`` and ``operator.json`` (with the targets of issue 11, each met
or missed). ``--quick`` runs tiny sizes to check the benchmark works.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from machine import cpu_model, publish

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
        # One watch resumed from its last resourceVersion, its events left as plain JSON: restarting
        # from scratch replays every Job as ADDED, and turning each into a V1Job cost this process
        # (and the create loop in its main thread) seconds of CPU per restart once thousands of
        # Jobs existed, which the earlier recorded numbers included.
        batch = client.BatchV1Api(api)
        version: str | None = None
        while not self._stop.is_set():
            w = watch.Watch()
            since = {"resource_version": version} if version else {}
            try:
                for event in w.stream(batch.list_namespaced_job, NAMESPACE, timeout_seconds=5, deserialize=False,
                                      **since):
                    obj = event.get("object") or event.get("raw_object") or {}
                    if event.get("type") == "ERROR":
                        version = None  # 410 Gone: start over (the Jobs are replayed as ADDED)
                        break
                    meta = obj.get("metadata") or {}
                    version = meta.get("resourceVersion") or version
                    name = (meta.get("labels") or {}).get(LABEL_RUN_NAME)
                    if name and name not in self.seen:
                        self.seen[name] = time.perf_counter()
                    if self._stop.is_set():
                        w.stop()
            except client.ApiException as err:
                if err.status != 410:
                    raise
                version = None

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


def load() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the benchmark runs")
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--output", type=Path, help="write the Markdown here instead of bench/results/")
    args = parser.parse_args()
    if args.quick:
        args.latency_runs, args.burst, args.idle = 5, 10, 20

    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sizes": {"latencyRuns": args.latency_runs, "burst": args.burst, "idle": args.idle},
        "loadAverage": {"start": load()},
    }
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
        time.sleep(2)  # settled after its start: what the operator costs before any run exists
        report["noRuns"] = {"operatorRssMiB": round(rss(pid) / 2**20)}
        watcher = JobWatcher(api).start()
        try:
            # 1. one at a time
            latencies = []
            for i in range(args.latency_runs):
                name = f"lat-{i}"
                started = create(custom, name)
                wait_seen(watcher, [name], 60)
                latencies.append(watcher.seen[name] - started)
            report["latency"] = {"medianMs": round(statistics.median(latencies) * 1000),
                                 "p99Ms": round(percentile(latencies, 0.99) * 1000),
                                 "worstMs": round(max(latencies) * 1000)}
            report["loadAverage"]["afterLatency"] = load()

            # 2. a burst
            time.sleep(5)  # the one-at-a-time runs' status writes land outside the burst's count
            cpu0, _ = proc_stats(pid)
            writes0 = _status_writes(operator)
            names = [f"burst-{i}" for i in range(args.burst)]
            starts = {}
            burst_started = time.perf_counter()
            for name in names:
                starts[name] = create(custom, name)
            created_after = time.perf_counter() - burst_started
            wait_seen(watcher, names, 600)
            burst_seconds = time.perf_counter() - burst_started
            time.sleep(5)  # let the status writes that follow Job creation land
            burst = [watcher.seen[n] - starts[n] for n in names]
            cpu1, peak = proc_stats(pid)
            writes = _status_writes(operator) - writes0
            report["burst"] = {"runs": args.burst, "p50S": round(percentile(burst, 0.5), 2),
                               "p99S": round(percentile(burst, 0.99), 2), "worstS": round(max(burst), 2),
                               "runsCreatedAfterS": round(created_after, 1), "allJobsAfterS": round(burst_seconds, 1),
                               "statusWrites": int(writes), "statusWritesPerRun": round(writes / args.burst, 2),
                               "operatorCpuSeconds": round(cpu1 - cpu0, 1), "operatorPeakRssMiB": round(peak / 2**20)}
            report["loadAverage"]["afterBurst"] = load()

            # 3. many idle (suspended) runs
            # Created by a few clients at once: only the operator's memory once they settle is measured
            # here, and one client alone took minutes on a loaded machine.
            idle_names = [f"idle-{i}" for i in range(args.idle)]
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda name: create(custom, name, suspend=True), idle_names))
            wait_seen(watcher, idle_names, 1200)
            time.sleep(20)
            cpu_a, _ = proc_stats(pid)
            writes_a = _status_writes(operator)
            time.sleep(30)
            cpu_b, peak = proc_stats(pid)
            total = args.latency_runs + args.burst + args.idle
            writes_b = _status_writes(operator)
            report["idle"] = {"runs": total, "suspended": args.idle, "operatorRssMiB": round(rss(pid) / 2**20),
                              "operatorPeakRssMiB": round(peak / 2**20),
                              "operatorCpuPercent": round((cpu_b - cpu_a) / 30 * 100, 1),
                              "statusWritesIn30s": int(writes_b - writes_a),
                              "statusWritesPerRunOverall": round(writes_b / total, 2)}
            report["loadAverage"]["end"] = load()
        finally:
            watcher.stop()
            operator.stop()

    burst_p99, idle_rss = report["burst"]["p99S"], report["idle"]["operatorRssMiB"]
    per_run, idle_writes = report["burst"]["statusWritesPerRun"], report["idle"]["statusWritesIn30s"]
    report["targets"] = {
        "burstP99S": {"target": 2.0, "result": burst_p99, "met": burst_p99 <= 2.0},
        "idleRssMiB": {"target": 400, "result": idle_rss, "met": idle_rss <= 400},
        # Bounded: a fixed number per run to reach its steady state, none while nothing changes.
        "statusWritesPerRun": {"target": "<= 2 per new run, 0 while idle", "result": [per_run, idle_writes],
                               "met": per_run <= 2 and idle_writes == 0},
    }
    publish(markdown(report, args), report, output=args.output, quick=args.quick, markdown=RESULTS,
            results=RESULTS.with_suffix(".json"))
    return 0


def _status_writes(operator: OperatorProcess) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{operator.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "sampleforge_status_writes"
               for s in f.samples if s.name.endswith("_total"))


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    lat, burst, idle, loads = report["latency"], report["burst"], report["idle"], report["loadAverage"]
    rows = [
        ("operator RSS with no runs (after its start)", f"{report['noRuns']['operatorRssMiB']} MiB"),
        (f"apply → Job created, {args.latency_runs} runs one at a time: median", f"{lat['medianMs']} ms"),
        ("… p99", f"{lat['p99Ms']} ms"),
        ("… worst", f"{lat['worstMs']} ms"),
        (f"{args.burst} runs created at once: apply → Job p50", f"{burst['p50S']:.2f} s"),
        ("… p99", f"{burst['p99S']:.2f} s"),
        ("… worst", f"{burst['worstS']:.2f} s"),
        ("… all runs created after (one client, one create at a time)", f"{burst['runsCreatedAfterS']:.1f} s"),
        ("… all Jobs created after", f"{burst['allJobsAfterS']:.1f} s"),
        ("… status writes per run (burst + 5 s)", f"{burst['statusWritesPerRun']:.2f}"),
        ("… operator CPU seconds", f"{burst['operatorCpuSeconds']:.1f}"),
        ("… operator peak RSS", f"{burst['operatorPeakRssMiB']} MiB"),
        (f"{idle['runs']} runs ({idle['suspended']} suspended) idle: operator RSS", f"{idle['operatorRssMiB']} MiB"),
        ("… operator peak RSS over the whole benchmark", f"{idle['operatorPeakRssMiB']} MiB"),
        ("… operator CPU while idle", f"{idle['operatorCpuPercent']:.1f} % of one core"),
        ("… status writes in 30 s idle", str(idle["statusWritesIn30s"])),
    ]
    targets = report["targets"]
    verdict = [
        ("p99 apply → Job, burst", "≤ 2 s", f"{burst['p99S']:.2f} s", targets["burstP99S"]["met"]),
        ("operator RSS, idle runs", "≤ 400 MiB", f"{idle['operatorRssMiB']} MiB", targets["idleRssMiB"]["met"]),
        ("status writes per run", "bounded: ≤ 2 per new run, 0 while idle",
         f"{burst['statusWritesPerRun']:.2f} per new run, {idle['statusWritesIn30s']} in 30 s idle",
         targets["statusWritesPerRun"]["met"]),
    ]
    return "\n".join([
        "# Operator latency and scale",
        "",
        (f"Measured {report['date']} with `python bench/bench_operator.py{' --quick' if args.quick else ''}` on "
         f"{report['machine']}, Python {report['python']}, against the testbed's real kube-apiserver and etcd on the "
         "same machine (no kubelet: the Jobs are created, not run; this measures the operator). The runs are "
         "AugmentationRuns of parallelism 1, so the Job timed is each run's first and only one. 1-minute load "
         f"average {loads.get('start')} at the start, {loads.get('afterLatency')} after the one-at-a-time runs, "
         f"{loads.get('afterBurst')} after the burst, {loads.get('end')} at the end: a shared machine, so the "
         "times are indicative."),
        "",
        "| measurement | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        "| target | wanted | result | |",
        "| --- | --- | --- | --- |",
        *[f"| {name} | {want} | {got} | {'met' if met else 'missed'} |" for name, want, got, met in verdict],
        "",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
