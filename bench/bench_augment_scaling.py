"""Does the augmentation job's total work stay flat as the shards grow, and does each shard read only its part?

Why this exists (issue 11, item 1): every shard used to make its own first pass over the whole source,
so 8 shards read the data 9 times. A run of n > 1 shards is now three steps, each its own process
(``SAMPLEFORGE_STEP``): ``analysis`` (one process: the first pass, committed under ``_analysis/``),
``shards`` (n processes: each reads the analysis and only its own byte range of the source) and
``reduce`` (one process: duplicates across shards removed, manifest committed). A run of one shard is
one process doing all three, the baseline.

The benchmark runs the real job (``python -m sampleforge.jobs``, with the environment the operator
would render, from ``testbed.localrun.job_environment``) on the same source with 1, 2, 4 and 8 shards,
each step's processes as separate OS processes, and records for every process its CPU seconds
(``ru_utime + ru_stime`` from ``os.wait4``), its peak RSS (``ru_maxrss``) and its wall time; for every
shard the bytes its marker says it read (source and analysis); for every run the analysis artifact's
size. Data: the real QBQTC query–title pairs in ../shared/data (or $SAMPLEFORGE_SHARED_DATA) repeated
with a unique query per copy (copy k's query ends in `` #k``, the helpers of bench_finetune_memory.py),
as JSON-lines objects of 100,000 rows in a local MinIO (the testbed's binary). The augmenters are a
cheap, realistic mix: randomSwap, randomDelete, typo and a BM25 hard negative over the item pool, with
exact dedup and a fixed seed. A process that only imports what a shard process imports is measured
too: the fixed cost every extra process adds.

Targets: total CPU at 8 shards ≤ 1.15 × one shard's (``cpuRatio8to1``); bytes read per shard
≤ 1.1 × (source ÷ shards) + the analysis artifact, i.e. ``readRatio8`` = (largest bytes read by one
shard − the artifact's size) ÷ (source ÷ 8) ≤ 1.1.

    python bench/bench_augment_scaling.py                 # 3 M rows, 1, 2, 4 and 8 shards
    python bench/bench_augment_scaling.py --quick         # 20k rows, 1 and 2 shards; prints only
    python bench/bench_augment_scaling.py --rows 300000 --shards 1 8 --parallel 1 --output /tmp/s.md
    python bench/bench_augment_scaling.py --from-results  # rewrite the report from the recorded JSON

Results go to ``bench/results/augment_scaling.md`` and ``.json`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from bench_finetune_memory import PART_ROWS, source_pairs, synthetic_parts
from machine import cpu_model, publish

BENCH = Path(__file__).resolve().parent
RESULTS_MD = BENCH / "results" / "augment_scaling.md"
RESULTS_JSON = BENCH / "results" / "augment_scaling.json"
BUCKET = "bench"
CPU_TARGET = 1.15
READ_TARGET = 1.1
#: Heavy packages worth naming when a process loads them (their import is a per-process cost).
HEAVY = ("torch", "transformers", "sentence_transformers", "faiss", "sklearn", "scipy", "pandas", "jieba",
         "datasketch", "pyarrow", "numpy")

#: Runs the job exactly as ``python -m sampleforge.jobs`` does, and on exit writes the names of the
#: modules it loaded (so the fixed per-process cost can be measured on the same imports).
_JOB = """
import atexit, os, runpy, sys
def _loaded():
    with open(os.environ["BENCH_MODULES_FILE"], "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
atexit.register(_loaded)
sys.argv = ["sampleforge-job"]
runpy.run_module("sampleforge.jobs", run_name="__main__", alter_sys=True)
"""

#: Imports the modules a job process loaded, then loads jieba's dictionary; prints the CPU of each part.
_EMPTY = """
import importlib, json, resource, sys, warnings
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
start = cpu()
names = [n for n in open(sys.argv[1]).read().split() if n and n != "__main__" and not n.startswith("__")]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            pass
imported = cpu()
try:
    import logging, jieba
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
except Exception:
    pass
print(json.dumps({"startup": start, "imports": imported - start, "jieba": cpu() - imported, "modules": len(names)}))
"""


# --- the run's configuration ----------------------------------------------------------------------


def run_spec(shards: int, seed: int) -> dict[str, Any]:
    return {
        "storage": {"endpoint": f"{BUCKET}:9000", "credentialsSecret": "x"},
        "source": {"uri": f"s3://{BUCKET}/rows/", "format": "jsonl",
                   "columns": {"query": "query", "item": "title", "label": "label", "id": "id"}},
        "augmenters": [{"type": "randomSwap", "fraction": 0.2},
                       {"type": "randomDelete", "fraction": 0.2, "fields": ["item"]},
                       {"type": "typo", "fraction": 0.2},
                       {"type": "hardNegative", "method": "bm25", "perQuery": 1, "skipTop": 1, "fraction": 0.05,
                        "label": "0"}],
        "filters": {"dedup": {"method": "exact"}},
        "parallelism": shards,
        "seed": seed,
        "output": {"uri": f"s3://{BUCKET}/out-{shards}/"},
    }


# --- running processes ----------------------------------------------------------------------------


class Process:
    """One job process: started, then reaped with ``os.wait4`` for its rusage."""

    def __init__(self, label: str, command: Sequence[str], env: dict[str, str], logdir: Path) -> None:
        self.label = label
        self.log_path = logdir / f"{label}.log"
        self.modules_path = logdir / f"{label}.modules"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.started = time.monotonic()
        self.popen = subprocess.Popen(list(command), env={**env, "BENCH_MODULES_FILE": str(self.modules_path)},
                                      stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        self.result: dict[str, Any] | None = None

    def poll(self) -> bool:
        pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)
        if pid == 0:
            return False
        code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = code  # reaped here: tell Popen, so it never waits for it again
        self._log.close()
        self.result = {"label": self.label, "exitCode": code, "cpuSeconds": round(usage.ru_utime + usage.ru_stime, 3),
                       "userSeconds": round(usage.ru_utime, 3), "systemSeconds": round(usage.ru_stime, 3),
                       "peakRssMiB": round(usage.ru_maxrss / 1024, 1),
                       "wallSeconds": round(time.monotonic() - self.started, 3)}
        return True

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def run_all(jobs: Sequence[tuple[str, dict[str, str]]], parallel: int, logdir: Path) -> list[dict[str, Any]]:
    """Run ``jobs`` (label, environment), at most ``parallel`` at a time; their results in order."""
    pending = list(jobs)
    running: list[Process] = []
    done: dict[str, dict[str, Any]] = {}
    while pending or running:
        while pending and len(running) < parallel:
            label, env = pending.pop(0)
            running.append(Process(label, [sys.executable, "-c", _JOB], env, logdir))
        time.sleep(0.05)
        for proc in [p for p in running if p.poll()]:
            running.remove(proc)
            assert proc.result is not None
            if proc.result["exitCode"] != 0:
                for other in running:
                    other.popen.kill()
                    other.poll()
                raise RuntimeError(f"{proc.label} failed with exit code {proc.result['exitCode']}:\n{proc.tail()}")
            done[proc.label] = proc.result
    return [done[label] for label, _ in jobs]


def empty_process(modules: Path, env: dict[str, str]) -> dict[str, Any]:
    """CPU and RSS of a process that imports what a job process imported and loads jieba, nothing more."""
    proc = subprocess.Popen([sys.executable, "-c", _EMPTY, str(modules)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    parts = json.loads(output)
    return {"cpuSeconds": round(usage.ru_utime + usage.ru_stime, 3), "peakRssMiB": round(usage.ru_maxrss / 1024, 1),
            "importCpuSeconds": round(parts["imports"], 3), "jiebaCpuSeconds": round(parts["jieba"], 3),
            "modules": parts["modules"]}


# --- measuring --------------------------------------------------------------------------------------


def _objects(s3: Any, prefix: str) -> dict[str, int]:
    return {o.object_name: o.size for o in s3.list_objects(BUCKET, prefix=prefix, recursive=True)}


def _remove(s3: Any, prefix: str) -> None:
    for name in _objects(s3, prefix):
        s3.remove_object(BUCKET, name)


def measure_configuration(shards: int, args: argparse.Namespace, s3: Any, env_for: Any, workdir: Path,
                          source_bytes: int) -> tuple[dict[str, Any], Path]:
    """Run the job with ``shards`` shards; its figures and the modules file of one shard process."""
    spec = run_spec(shards, args.seed)
    logdir = workdir / f"logs-{shards}"
    logdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / f"cache-{shards}"
    steps: list[tuple[str, list[tuple[str, dict[str, str]]], int]]
    if shards == 1:
        steps = [("all", [("all", env_for(spec, 0, 1, None, cache))], 1)]
    else:
        steps = [("analysis", [("analysis", env_for(spec, 0, shards, "analysis", cache))], 1),
                 ("shards", [(f"shard-{i}", env_for(spec, i, shards, "shards", cache)) for i in range(shards)],
                  args.parallel),
                 ("reduce", [("reduce", env_for(spec, 0, shards, "reduce", cache))], 1)]
    processes: list[dict[str, Any]] = []
    per_step: dict[str, dict[str, Any]] = {}
    load_before = os.getloadavg()[0]
    for step, jobs, parallel in steps:
        started = time.monotonic()
        results = run_all(jobs, parallel, logdir)
        for r in results:
            r["step"] = step
        processes += results
        per_step[step] = {"processes": len(results), "cpuSeconds": round(sum(r["cpuSeconds"] for r in results), 3),
                          "peakRssMiB": max(r["peakRssMiB"] for r in results),
                          "wallSeconds": round(time.monotonic() - started, 3)}
    out = f"out-{shards}/"
    files = _objects(s3, out)
    artifact = sum(size for name, size in files.items() if name.startswith(f"{out}_analysis/"))
    markers = [json.loads(s3.get_object(BUCKET, f"{out}_shards/{i}.json").read()) for i in range(shards)]
    manifest = json.loads(s3.get_object(BUCKET, f"{out}manifest.json").read())
    if not all(isinstance(m.get("bytesRead"), dict) for m in markers):
        raise RuntimeError(f"the shard markers of the {shards}-shard run carry no bytesRead: this job does not count "
                           "the bytes it reads (the change of issue 11 is not in this checkout)")
    read = [{"source": int(m["bytesRead"].get("source", 0)), "analysis": int(m["bytesRead"].get("analysis", 0))}
            for m in markers]
    totals = [r["source"] + r["analysis"] for r in read]
    shard_processes = [p for p in processes if p["step"] in ("all", "shards")]
    fair = source_bytes / shards
    result = {
        "cpuSeconds": round(sum(p["cpuSeconds"] for p in processes), 3),
        "bytesReadPerShard": max(totals),
        "peakRssMiB": max(p["peakRssMiB"] for p in shard_processes),
        "processes": len(processes),
        "wallSeconds": round(sum(s["wallSeconds"] for s in per_step.values()), 3),
        "bytesRead": read,
        "sourceBytesReadPerShard": max(r["source"] for r in read),
        "analysisArtifactBytes": artifact,
        "fairShareBytes": round(fair),
        "readRatio": round((max(totals) - artifact) / fair, 4),
        "peakRssMiBAnyProcess": max(p["peakRssMiB"] for p in processes),
        "rowsOut": manifest.get("rowsOut"),
        "generatedRows": manifest.get("generatedRows"),
        "outputBytes": sum(size for name, size in files.items() if "/_" not in name[len(out) - 1:]),
        "steps": per_step,
        "perProcess": processes,
        "loadAverage1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }
    print(f"{shards} shard(s): {result['cpuSeconds']:,.1f} CPU s over {len(processes)} processes, "
          f"{result['wallSeconds']:,.0f} s wall, bytes read per shard {max(totals):,} (read ratio "
          f"{result['readRatio']:.3f}), peak RSS per shard {result['peakRssMiB']:,.0f} MiB, "
          f"{result['rowsOut']:,} rows out", flush=True)
    modules = logdir / f"{shard_processes[0]['label']}.modules"
    kept = workdir / f"modules-{shards}"
    if modules.exists():
        shutil.copy(modules, kept)
    _remove(s3, out)
    shutil.rmtree(cache, ignore_errors=True)
    return result, kept


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from sampleforge.api import Kind
    from sampleforge.testbed import Testbed, TestbedOptions
    from sampleforge.testbed.localrun import job_environment

    pairs, source = source_pairs()
    report: dict[str, Any] = {"rows": args.rows, "source": source, "shards": {}}
    with Testbed(TestbedOptions(kubernetes=False, minio=True, workdir=workdir / "testbed")) as testbed:
        s3 = testbed.minio_client()
        s3.make_bucket(BUCKET)
        started = time.monotonic()
        source_bytes = objects = 0
        for k, part in enumerate(synthetic_parts(pairs, args.rows)):
            s3.put_object(BUCKET, f"rows/part-{k:05d}.jsonl", io.BytesIO(part), len(part))
            source_bytes += len(part)
            objects += 1
        print(f"{args.rows:,} rows in {objects} objects, {source_bytes / 2**20:,.1f} MiB, uploaded in "
              f"{time.monotonic() - started:,.0f} s", flush=True)
        report.update(sourceBytes=source_bytes, sourceObjects=objects, rowsPerObject=PART_ROWS)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("SAMPLEFORGE_")}
        base_env.update(SAMPLEFORGE_PROGRESS="0", SAMPLEFORGE_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1",
                        OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

        def env_for(spec: dict[str, Any], shard: int, shards: int, step: str | None, cache: Path) -> dict[str, str]:
            env = {**base_env, **job_environment(Kind.AUGMENTATION_RUN, spec, name=f"scaling-{shards}",
                                                 namespace="bench", uid=f"scaling-{shards}", minio=testbed.minio,
                                                 cache_dir=cache, shard=shard, shards=shards)}
            if step is not None:
                env["SAMPLEFORGE_STEP"] = step
            return env

        modules: Path | None = None
        runs: dict[str, list[dict[str, Any]]] = {str(n): [] for n in args.shards}
        for repeat in range(args.repeats):  # interleaved: 1, 2, 4, 8, 1, 2, 4, 8, ...
            for shards in args.shards:
                result, kept = measure_configuration(shards, args, s3, env_for, workdir, source_bytes)
                result["repeat"] = repeat
                runs[str(shards)].append(result)
                if kept.exists():
                    modules = kept  # the last (largest) configuration's shard process
        report["shards"] = {n: min(results, key=lambda r: float(r["cpuSeconds"])) for n, results in runs.items()}
        report["runs"] = {n: [r["cpuSeconds"] for r in results] for n, results in runs.items()}
        if modules is not None:
            empties = [empty_process(modules, base_env) for _ in range(3)]
            report["emptyProcess"] = min(empties, key=lambda e: float(e["cpuSeconds"]))
            report["emptyProcess"]["runs"] = [e["cpuSeconds"] for e in empties]
            loaded = set(modules.read_text().split())
            report["emptyProcess"]["heavyPackages"] = [name for name in HEAVY if name in loaded]
            print(f"empty process (imports of a shard process, jieba's dictionary): "
                  f"{report['emptyProcess']['cpuSeconds']:.2f} CPU s", flush=True)
    return report


def code_version() -> dict[str, Any]:
    """The commit measured, and the job's files that differed from it (uncommitted changes)."""
    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=BENCH.parent, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    changed = [line[3:] for line in git("status", "--porcelain", "--", "api", "jobs").splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "uncommittedJobFiles": changed}


# --- report -------------------------------------------------------------------------------------------


def ratios(report: dict[str, Any]) -> dict[str, float]:
    shards = report["shards"]
    if "1" not in shards:
        return {}
    one = shards["1"]["cpuSeconds"]
    return {n: round(r["cpuSeconds"] / one, 4) for n, r in shards.items()}


def verdict(value: float | None, target: float) -> str:
    return "not measured" if value is None else ("met" if value <= target else "missed")


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _repeats_note(report: dict[str, Any]) -> str:
    repeats = report["config"].get("repeats", 1)
    loads = [r["loadAverage1m"] for r in report["shards"].values() if "loadAverage1m" in r]
    load = ""
    if loads:
        values = [v for pair in loads for v in pair.values()]
        load = (f" The 1-minute load average on the {report['cores']} cores was {min(values):.1f}–{max(values):.1f} "
                "around the reported runs (other people's work shared the machine).")
    if repeats == 1:
        return "One run per configuration." + load
    runs = "; ".join(f"{n} shard{'s' if n != '1' else ''}: {', '.join(f'{c:,.1f}' for c in cpus)} s"
                     for n, cpus in sorted(report["runs"].items(), key=lambda item: int(item[0])))
    spread = max(max(cpus) / min(cpus) - 1 for cpus in report["runs"].values())
    return (f"Each configuration ran {repeats} times, interleaved (1, 2, 4, 8 shards, then again); the tables show "
            f"each configuration's run with the least total CPU (every run's total CPU: {runs}). The same "
            f"configuration's total CPU varied by up to {spread:.0%} between runs, more than some differences between "
            "configurations: read the breakdown of the fixed costs below as indicative, not exact." + load)


def fixed_cost_per_shard(report: dict[str, Any]) -> tuple[float, float] | None:
    """Least-squares line through the shards step's CPU at each n > 1: (CPU per shard process, the rest)."""
    points = [(int(n), r["steps"]["shards"]["cpuSeconds"]) for n, r in report["shards"].items() if int(n) > 1]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points))
    return slope, mean_y - slope * mean_x


def _code_note(report: dict[str, Any]) -> str:
    code = report.get("code")
    if not code:
        return ""
    changed = code["uncommittedJobFiles"]
    return (f" Code: commit {code['commit'][:10]}"
            + (f" with uncommitted changes to {', '.join(f'`{c}`' for c in changed)}." if changed else "."))


def render(report: dict[str, Any]) -> str:
    shards = report["shards"]
    counts = sorted(shards, key=int)
    largest = counts[-1]
    cpu = ratios(report)
    empty = report.get("emptyProcess")
    config = report["config"]
    lines = [
        "# Augmentation job: total work and bytes read against the number of shards",
        "",
        (f"Measured by `{report['command']}` on {report['date']}: {report['machine']}, Python {report['python']}. "
         f"Data: {report['source']}, repeated to {report['rows']:,} rows with a unique query per copy (copy k's "
         f"query ends in ` #k`), as {report['sourceObjects']} JSON-lines object{'s' if report['sourceObjects'] > 1 else ''} of up to {report['rowsPerObject']:,} "
         f"rows ({_mib(report['sourceBytes'])}) in a local MinIO (the testbed's binary)."),
        "",
        (f"Each run is the real job (`python -m sampleforge.jobs`, the environment from "
         f"`testbed.localrun.job_environment`), every process its own OS process. One shard: one process, no "
         f"`SAMPLEFORGE_STEP`, doing the first pass, the shard pass and the commit. n > 1 shards: the steps in "
         f"order, `analysis` (1 process), `shards` (n processes, {config['parallel']} at a time on this "
         f"{report['cores']}-core machine), `reduce` (1 process). CPU seconds are each process's `ru_utime + "
         f"ru_stime` from `os.wait4`, summed over the run's processes; peak RSS is each process's `ru_maxrss`; "
         f"bytes read are what each shard's marker (`_shards/<i>.json`, `bytesRead`) counts: source plus "
         f"analysis artifact. BLAS and OpenMP threads are 1 per process. The machine is shared: wall times depend "
         f"on what else ran, and CPU seconds do too (a process sharing a core's caches with other work needs more "
         f"of them), which is why configurations are repeated. {_repeats_note(report)}{_code_note(report)}"),
        "",
        "Spec (`output.uri` and `parallelism` vary with the shard count):",
        "",
        "```json",
        "{",
        ",\n".join(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}" for key, value in config["spec"].items()),
        "}",
        "```",
        "",
        ("| shards | processes | total CPU | × 1 shard | wall | bytes read per shard (largest) | source ÷ shards | "
         "analysis artifact | read ratio | peak RSS per shard (largest) | rows out |"),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in counts:
        r = shards[n]
        ratio = f"{cpu[n]:.3f}" if n in cpu else "–"
        lines.append(f"| {n} | {r['processes']} | {r['cpuSeconds']:,.1f} s | {ratio} | {r['wallSeconds']:,.0f} s | "
                     f"{_mib(r['bytesReadPerShard'])} | {_mib(r['fairShareBytes'])} | "
                     f"{_mib(r['analysisArtifactBytes'])} | {r['readRatio']:.3f} | {r['peakRssMiB']:,.0f} MiB | "
                     f"{r['rowsOut']:,} |")
    lines += [
        "",
        ("Read ratio: (largest bytes read by one shard − the analysis artifact) ÷ (source ÷ shards); the target "
         "\"bytes read per shard ≤ 1.1 × (source ÷ shards) + the analysis artifact\" is read ratio ≤ 1.1. With one "
         "shard the one process reads the source in the first pass and again in the shard pass."),
        "",
        "Per step:",
        "",
        "| shards | step | processes | CPU (sum) | CPU per process | peak RSS (largest) | wall |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in counts:
        for step, s in shards[n]["steps"].items():
            lines.append(f"| {n} | {step} | {s['processes']} | {s['cpuSeconds']:,.1f} s | "
                         f"{s['cpuSeconds'] / s['processes']:,.1f} s | {s['peakRssMiB']:,.0f} MiB | "
                         f"{s['wallSeconds']:,.0f} s |")
    cpu8, read8 = report.get("cpuRatio8to1"), report.get("readRatio8")
    cpu_n, read_n = cpu.get(largest), shards[largest]["readRatio"]
    lines += [
        "",
        "## Targets",
        "",
        "| target | result | |",
        "| --- | --- | --- |",
        (f"| total CPU at 8 shards ≤ {CPU_TARGET} × 1 shard (`cpuRatio8to1`) | "
         f"{'not measured' if cpu8 is None else f'{cpu8:.3f}'} | {verdict(cpu8, CPU_TARGET)} |"),
        (f"| bytes read per shard at 8 shards ≤ {READ_TARGET} × (source ÷ 8) + analysis artifact (`readRatio8`) | "
         f"{'not measured' if read8 is None else f'{read8:.3f}'} | {verdict(read8, READ_TARGET)} |"),
        "",
        (f"**Total CPU at {largest} shards: {cpu_n:.3f}× one shard's (target ≤ {CPU_TARGET}: "
         f"{verdict(cpu_n, CPU_TARGET)}); read ratio at {largest} shards: {read_n:.3f} (target ≤ {READ_TARGET}: "
         f"{verdict(read_n, READ_TARGET)}); peak RSS per shard {shards[largest]['peakRssMiB']:,.0f} MiB "
         f"(1 shard: {shards[counts[0]]['peakRssMiB']:,.0f} MiB)**") if cpu_n is not None else
        f"**Read ratio at {largest} shards: {read_n:.3f} (target ≤ {READ_TARGET}: {verdict(read_n, READ_TARGET)})**",
    ]
    if empty is not None:
        heavy = ", ".join(empty.get("heavyPackages", [])) or "none of " + ", ".join(HEAVY)
        lines += [
            "",
            "## The fixed cost of a process",
            "",
            (f"A process that only imports the {empty['modules']} modules a shard process of the largest run loaded "
             f"(heavy packages among them: {heavy}) and loads jieba's dictionary costs **{empty['cpuSeconds']:.2f} "
             f"CPU s** ({empty['importCpuSeconds']:.2f} s of imports, {empty['jiebaCpuSeconds']:.2f} s of jieba's "
             f"dictionary, the rest the interpreter's start) and {empty['peakRssMiB']:,.0f} MiB."),
            "",
        ]
        if "1" in shards:
            one = shards["1"]
            for n in counts[1:]:
                r = shards[n]
                extra = r["processes"] - one["processes"]
                excess = r["cpuSeconds"] - one["cpuSeconds"]
                lines.append(
                    f"- {n} shards: {r['processes']} processes, {extra} more than one shard's; measured CPU "
                    f"{excess:+,.1f} s against one shard, of which {extra} × {empty['cpuSeconds']:.2f} s = "
                    f"{extra * empty['cpuSeconds']:,.1f} s is start-up; the rest, {excess - extra * empty['cpuSeconds']:+,.1f} s, "
                    "is the steps' own work beyond one process's (see the per-step table).")
    fit = fixed_cost_per_shard(report)
    if fit is not None and empty is not None:
        slope, intercept = fit
        points = ", ".join(f"{shards[n]['steps']['shards']['cpuSeconds']:,.1f} s at {n}" for n in counts if int(n) > 1)
        lines += [
            "",
            (f"The shards step's CPU ({points} shards) fits a line of **{slope:,.1f} s per shard process** plus "
             f"{intercept:,.0f} s that does not depend on the shard count (least squares). Of those {slope:,.1f} s, "
             f"{empty['cpuSeconds']:.2f} s is the empty process above; the other {slope - empty['cpuSeconds']:,.1f} s "
             "is what every shard does however few rows it has: read and load the analysis artifact "
             f"({_mib(shards[counts[-1]]['analysisArtifactBytes'])}), build its augmenters and filters from it, and "
             "write its parts, dedup keys and marker."
             + (f" The analysis step, a process of its own, took {shards[counts[-1]]['steps']['analysis']['cpuSeconds']:,.1f} s "
                f"and the reduce {shards[counts[-1]]['steps']['reduce']['cpuSeconds']:,.1f} s at {counts[-1]} shards; "
                f"the one-shard process does both in {shards['1']['cpuSeconds']:,.1f} s with its shard pass."
                if "1" in shards and "analysis" in shards[counts[-1]]["steps"] else "")),
        ]
    missed = [name for name, value, target in (("cpu", cpu8, CPU_TARGET), ("read", read8, READ_TARGET))
              if value is not None and value > target]
    if missed and empty is not None and "8" in shards and "1" in shards:
        r8, r1 = shards["8"], shards["1"]
        reasons = []
        if "cpu" in missed:
            excess = r8["cpuSeconds"] - r1["cpuSeconds"]
            startup = (r8["processes"] - r1["processes"]) * empty["cpuSeconds"]
            text = (f"total CPU at 8 shards is {excess:,.1f} s ({excess / r1['cpuSeconds']:.0%}) above one shard's; "
                    f"{startup:,.1f} s of it is the start-up of {r8['processes'] - r1['processes']} more processes "
                    f"({empty['cpuSeconds']:.2f} s each: interpreter, imports, jieba's dictionary)")
            if fit is not None:
                per_shard = 7 * (fit[0] - empty["cpuSeconds"])
                text += (f", {per_shard:,.1f} s the fixed work of 7 more shard processes beyond start-up (7 × "
                         f"{fit[0] - empty['cpuSeconds']:,.1f} s, from the line above), and the remaining "
                         f"{excess - startup - per_shard:,.1f} s everything else: the separate analysis and reduce steps' "
                         f"work beyond what the one process does, and the shards' row work beyond the one process's "
                         f"shard pass (the reduce alone: {r8['steps']['reduce']['cpuSeconds']:,.1f} s "
                         f"with its start-up; the analysis: {r8['steps']['analysis']['cpuSeconds']:,.1f} s)")
            reasons.append(text)
        if "read" in missed:
            reasons.append(
                f"the largest shard read {_mib(r8['bytesReadPerShard'])} (source "
                f"{_mib(r8['sourceBytesReadPerShard'])}) against a share of {_mib(r8['fairShareBytes'])} plus an "
                f"artifact of {_mib(r8['analysisArtifactBytes'])}")
        lines += ["", "Why the missed target is missed: " + "; ".join(reasons) + "."]
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 rows, 1 and 2 shards; print only")
    parser.add_argument("--rows", type=int, help="source rows (default 3,000,000)")
    parser.add_argument("--shards", type=int, nargs="+", help="shard counts (default 1 2 4 8)")
    parser.add_argument("--parallel", type=int, default=2, help="shard processes run at once (default 2)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of every configuration, interleaved; the one with the least CPU is reported")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, help="write the Markdown report here instead of bench/results")
    parser.add_argument("--note", help="a paragraph added to the report")
    parser.add_argument("--from-results", action="store_true",
                        help="measure nothing; rewrite the Markdown report from the recorded JSON")
    args = parser.parse_args(argv)
    if args.from_results:
        report = json.loads(RESULTS_JSON.read_text())
        if args.note is not None:
            report["note"] = args.note
            RESULTS_JSON.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        (args.output or RESULTS_MD).write_text(render(report))
        return 0
    args.rows = args.rows or (20_000 if args.quick else 3_000_000)
    args.shards = sorted(set(args.shards or ([1, 2] if args.quick else [1, 2, 4, 8])))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-augment-scaling-") as tmp:
        report = measure(args, Path(tmp))
    cpu = ratios(report)
    report.update(
        cpuRatios=cpu, cpuRatio8to1=cpu.get("8"),
        readRatio8=report["shards"]["8"]["readRatio"] if "8" in report["shards"] else None,
        config={"spec": run_spec(1, args.seed) | {"output": {"uri": "s3://bench/out-<shards>/"},
                                                  "parallelism": "<shards>"},
                "parallel": args.parallel, "shardCounts": args.shards, "threadsPerProcess": 1,
                "repeats": args.repeats},
        cores=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{cpu_model()}, {os.cpu_count()} cores", python=platform.python_version(),
        benchSeconds=round(time.monotonic() - started, 1), note=args.note,
        code=code_version(),
        command=" ".join(["bench/bench_augment_scaling.py", *(argv if argv is not None else sys.argv[1:])]))
    publish(render(report), report, output=args.output, quick=args.quick, markdown=RESULTS_MD,
            results=RESULTS_JSON)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
