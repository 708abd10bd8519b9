"""Run every benchmark and write one summary table: ``bench/results/README.md``.

Each benchmark is its own script (it pins cores, sets thread counts and starts servers the way its
measurement needs, so each runs in a fresh process) and writes its detailed report to
``bench/results/<name>.md``. This runner calls them one after the other, then reads the headline
numbers back out of those reports into a single table with the target each one is held to.

    python bench/run_all.py                 # everything, full size (about two hours on 2 cores)
    python bench/run_all.py --only finetune operator
    python bench/run_all.py --quick         # CI: tiny sizes, checks every benchmark still runs;
                                            # writes nothing in the repo, prints the table
    python bench/run_all.py --from-results  # rewrite the summary from the recorded reports

In ``--quick`` mode the detailed reports go to a temporary directory and the table shows whether each
benchmark ran, next to the headline of the *recorded* (committed) full result.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
SUMMARY = RESULTS / "README.md"


# --- headlines: the numbers each detailed report is about -------------------------------------------


def _table_rows(text: str) -> list[tuple[str, str]]:
    """(first cell, last cell) of every two-or-more-column table row, header and rules excluded."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 2 and not set(cells[0]) <= set("-: "):
            rows.append((cells[0], cells[-1]))
    return rows


def _value_after(rows: list[tuple[str, str]], label: str, after: str = "") -> str:
    """The value of the first row starting with ``label`` at or after the row starting with ``after``."""
    start = next((i for i, (name, _) in enumerate(rows) if name.startswith(after)), None)
    if start is None:
        raise ValueError(f"no row {after!r}")
    for name, value in rows[start:]:
        if name.startswith(label):
            return value
    raise ValueError(f"no row {label!r} after {after!r}")


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def headline_text_augmenters(text: str) -> str:
    def ratios(section: str) -> list[float]:
        return [float(x) for x in re.findall(r"\*\*([0-9.]+)x\*\*", section)]

    pure = ratios(_section(text, "## sampleforge pure Python"))
    parts = [f"{min(pure):.1f}–{max(pure):.1f}× nlpaug's rows/s (pure Python, {len(pure)} comparisons)"]
    if "## sampleforge mypyc-compiled" in text:
        compiled = ratios(_section(text, "## sampleforge mypyc-compiled"))
        parts.append(f"{min(compiled):.1f}–{max(compiled):.1f}× mypyc-compiled")
    return "; ".join(parts)


def headline_finetune(text: str) -> str:
    found = re.search(r"\*\*Median job / bare throughput: ([0-9.]+) wall-clock, ([0-9.]+) per CPU-second\*\*", text)
    if not found:
        raise ValueError("no median throughput line")
    wall, cpu = (float(x) for x in found.groups())
    return f"job / bare accelerate loop: {wall:.3f} wall-clock, {cpu:.3f} per CPU-second"


def headline_operator(text: str) -> str:
    rows = _table_rows(text)
    burst = "500 runs created at once"
    return (f"apply → Job median {_value_after(rows, 'apply → Job created')}; 500 runs at once: p50 "
            f"{_value_after(rows, burst)}, p99 {_value_after(rows, '… p99', burst)}, "
            f"{_value_after(rows, '… status writes per run', burst)} status writes per run, peak RSS "
            f"{_value_after(rows, '… operator peak RSS', burst)}; 2,000 idle runs: RSS "
            f"{_value_after(rows, '2600 runs')}")


def headline_generation(text: str) -> str:
    def ratio(label: str) -> str:
        found = re.search(rf"^\| {re.escape(label)} \| ([0-9.]+) \|", text, re.MULTILINE)
        if found is None:
            raise ValueError(f"no row {label!r}")
        return found.group(1)

    def rate(engine: str) -> str:
        found = re.search(rf"^\| {re.escape(engine)} \| ([0-9.]+) \|", text, re.MULTILINE)
        if found is None:
            raise ValueError(f"no row {engine!r}")
        return found.group(1)

    return (f"rows/s: transformers {rate('transformers')}, llama.cpp server {rate('server-direct')}, job openai "
            f"engine {rate('openai')}; job ÷ server {ratio('job openai ÷ direct client (rows/s)')}, server ÷ "
            f"transformers {ratio('direct client ÷ transformers (rows/s)')}")


def headline_augment_memory(text: str) -> str:
    rows = [line for line in text.splitlines() if re.match(r"\| [0-9,]+ \|", line)]
    if not rows:
        raise ValueError("no size rows")
    cells = [c.strip() for c in rows[-1].strip("|").split("|")]
    return f"{cells[0]} input rows: peak RSS {cells[3]} ({cells[4]} above the imports), {cells[7]} rows/s"


def headline_finetune_memory(text: str) -> str:
    found = re.search(r"\*\*Peak RSS at ([0-9,]+) rows is ([0-9.]+)× the peak at ([0-9,]+) rows\*\*", text)
    if not found:
        raise ValueError("no ratio line")
    largest, ratio, smallest = found.groups()
    rows = {cells[1]: cells[5] for cells in ([c.strip() for c in line.strip().strip("|").split("|")]
                                            for line in text.splitlines() if line.startswith("| Arrow"))}
    return (f"peak RSS per rank {rows.get(smallest, '?')} at {smallest} rows, {rows.get(largest, '?')} at {largest} "
            f"rows: {ratio}×")


def headline_augment_scaling(text: str) -> str:
    found = re.search(r"\*\*Total CPU at ([0-9]+) shards: ([0-9.]+)× one shard's \(target ≤ [0-9.]+: (met|missed)\); "
                      r"read ratio at [0-9]+ shards: ([0-9.]+) \(target ≤ [0-9.]+: (met|missed)\); peak RSS per shard "
                      r"([0-9,]+ MiB) \(1 shard: ([0-9,]+ MiB)\)\*\*", text)
    if not found:
        raise ValueError("no target line")
    shards, cpu, cpu_met, read, read_met, rss, rss_one = found.groups()
    return (f"{shards} shards: total CPU {cpu}× 1 shard ({cpu_met}); bytes read per shard, less the analysis artifact, "
            f"{read}× source ÷ shards ({read_met}); peak RSS per shard {rss} (1 shard: {rss_one})")


def headline_quality(text: str) -> str:
    """From the target table: ``| dataset | slice | primary metric | best baseline | best sampleforge arm
    (validation) | lift | 95 % CI | met |``."""
    rows = [cells for cells in (
        [c.strip() for c in line.strip().strip("|").split("|")] for line in _section(text, "## Target").splitlines()
        if line.startswith("|")) if len(cells) == 8 and re.fullmatch(r"[0-9,]+", cells[1])]
    if not rows:
        raise ValueError("no target rows")
    return "; ".join(f"{d} {n}: {metric} {lift} points, 95 % CI {ci}, best sampleforge arm {arm} vs best baseline "
                     f"{base} ({'met' if m == 'yes' else 'missed'})" for d, n, metric, base, arm, lift, ci, m in rows)


def headline_retrieval_index(text: str) -> str:
    """From the rows ``| index | items | type | build | per 1k queries | recall@10 | recall@50 | index | peak RSS |``:
    the largest catalog each index finished."""
    largest: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 9 or cells[0] not in ("embedding", "bm25") or cells[2].startswith("failed"):
            continue
        if cells[0] not in largest or int(cells[1].replace(",", "")) >= int(largest[cells[0]][1].replace(",", "")):
            largest[cells[0]] = cells
    if not largest:
        raise ValueError("no measured rows")
    return "; ".join(f"{c[0]} at {c[1]} items ({c[2]}): build {c[3]} s, {c[4]} s per 1k queries, recall@50 {c[6]}, "
                     f"peak RSS {c[8]} MiB" for c in largest.values())


def headline_judge(text: str) -> str:
    rows = dict(_table_rows(text))
    try:
        kappa, accuracy = rows["Cohen's kappa (graded pairs)"], rows["accuracy (graded pairs)"]
        graded, rate = rows["pairs graded"], rows["rows/s"]
    except KeyError as err:
        raise ValueError(f"no row {err}") from err
    if not re.search(r"[0-9]", rate):
        raise ValueError("no rate")
    return f"kappa {kappa}, accuracy {accuracy} ({graded} pairs graded), {rate} rows/s"


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    measures: str
    target: str
    headline: Callable[[str], str]
    #: Arguments for a quick run; ``{out}`` is replaced by a temporary report path.
    quick_args: tuple[str, ...] = ("--quick",)
    full_args: tuple[str, ...] = ()

    @property
    def result(self) -> Path:
        return RESULTS / f"{self.name}.md"


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("quality", "bench_quality.py",
              "threshold-free quality (QBQTC mean one-vs-rest AUC, Walmart–Amazon PR-AUC) of a MiniLM cross-encoder "
              "fine-tuned on 500-pair slices with early stopping on validation: baselines no-aug, class-weighted, "
              "nlpaug EDA vs sampleforge's edits / hard negatives / LLM paraphrase / combination, 5 seeds, "
              "paired bootstrap CI",
              "best sampleforge arm ≥ +2 points over the best baseline, 95 % CI above 0", headline_quality,
              quick_args=("--quick", "--output", "{out}")),
    Benchmark("text_augmenters", "bench_text_augmenters.py",
              "augmentation throughput: rows/s of the text-edit augmenters vs nlpaug on the same rows, one core",
              "≥ 10× nlpaug", headline_text_augmenters, quick_args=("--quick", "--output", "{out}")),
    Benchmark("generation", "bench_generation.py",
              "LLM generation: rows/s of the transformers engine, llama.cpp's OpenAI-compatible server (plain "
              "client) and the job's openai engine against it, same rows, model and threads",
              "job ≥ 0.9× server; server ≥ 5× transformers", headline_generation,
              quick_args=("--quick", "--output", "{out}")),
    Benchmark("finetune", "bench_finetune.py",
              "training throughput: the fine-tune job's loop vs a bare accelerate loop, same model and data",
              "≤ 5 % slower (ratio ≥ 0.95)", headline_finetune, full_args=("--threads", "1")),
    Benchmark("augment_memory", "bench_augment_memory.py",
              "peak memory of one augmentation shard against input size (up to 3M rows)",
              "bounded: no growth with the rows held", headline_augment_memory,
              quick_args=("--quick", "--output", "{out}")),
    Benchmark("augment_scaling", "bench_augment_scaling.py",
              "augmentation at 3 M rows with 1, 2, 4 and 8 shards, every step a separate process (analysis once, then "
              "the shards, then the cross-shard reduce): total CPU seconds, bytes read and peak RSS per shard",
              "total CPU at 8 shards ≤ 1.15× 1 shard; bytes read per shard ≤ 1.1 × source ÷ shards + analysis artifact",
              headline_augment_scaling, quick_args=("--quick", "--output", "{out}")),
    Benchmark("finetune_memory", "bench_finetune_memory.py",
              "peak RSS per fine-tune rank at 0.3 M, 1 M and 3 M training rows (rows streamed into memory-mapped "
              "Arrow, tokenised into mapped files), against the smallest size and the old in-memory path",
              "flat: ratio ≈ 1.0", headline_finetune_memory, quick_args=("--quick", "--output", "{out}")),
    Benchmark("retrieval_index", "bench_retrieval_index.py",
              "hard-negative retrieval over whole catalogs: the faiss embedding index (exact / IVF) and sparse "
              "BM25 at 1 M and 5 M items: build time, query time, recall@k against exact search, peak RSS",
              "5 M items without a cap; recall@50 ≥ 0.95; memory stated", headline_retrieval_index,
              quick_args=("--quick", "--output", "{out}")),
    Benchmark("judge", "bench_judge.py",
              "llmJudge: Cohen's kappa and accuracy of the judge's grades against gold labels on 200 "
              "Walmart–Amazon pairs, through the job's openai engine and llama.cpp's server (SmolLM2-135M)",
              "— (recorded as measured)", headline_judge, quick_args=("--quick", "--output", "{out}")),
    Benchmark("operator", "bench_operator.py",
              "operator scale: apply → Job latency, 500 runs at once, 2000 idle runs' memory",
              "—", headline_operator),
)


# --- running ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    benchmark: Benchmark
    returncode: int
    seconds: float
    report: Path | None


def run(benchmark: Benchmark, quick: bool, scratch: Path) -> Outcome:
    out = scratch / f"{benchmark.name}.md"
    args = [a.replace("{out}", str(out)) for a in (benchmark.quick_args if quick else benchmark.full_args)]
    command = [sys.executable, str(BENCH / benchmark.script), *args]
    print(f"==> {benchmark.name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    started = time.monotonic()
    code = subprocess.run(command, cwd=BENCH.parent, check=False).returncode
    seconds = time.monotonic() - started
    report = out if quick else benchmark.result
    print(f"<== {benchmark.name}: exit {code} after {seconds:.0f} s", file=sys.stderr, flush=True)
    return Outcome(benchmark, code, seconds, report if report.exists() else None)


def headline_of(benchmark: Benchmark, report: Path | None) -> str:
    if report is None:
        return "no report"
    try:
        return benchmark.headline(report.read_text())
    except (ValueError, IndexError) as err:
        return f"report unreadable: {err}"


def summary(outcomes: Sequence[Outcome], quick: bool) -> str:
    """One row per benchmark; those not run this time show their recorded result."""
    ran = {o.benchmark.name: o for o in outcomes}
    lines = [
        "# Benchmark results",
        "",
        (f"Written by `python bench/run_all.py{' --quick' if quick else ''}` on "
         f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {platform.machine()}, {os.cpu_count()} cores, "
         f"Python {platform.python_version()}. Each row links to the detailed report, which records the "
         "machine, versions and date of its own run."),
        "",
        "| benchmark | what it measures | target | result | this run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for b in BENCHMARKS:
        o = ran.get(b.name)
        fresh = o is not None and not quick
        shown = headline_of(b, o.report if fresh and o is not None else (b.result if b.result.exists() else None))
        if not fresh:
            shown = f"recorded: {shown}"
        status = ("not run" if o is None else
                  f"{'ok' if o.returncode == 0 else f'FAILED (exit {o.returncode})'}, {o.seconds:.0f} s")
        lines.append(f"| [{b.name}]({b.result.name}) | {b.measures} | {b.target} | {shown} | {status} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; check each benchmark runs, write nothing")
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHMARKS], help="run just these")
    parser.add_argument("--output", type=Path, help=f"summary path (default {SUMMARY}; --quick: print only)")
    parser.add_argument("--from-results", action="store_true",
                        help="run nothing; rewrite the summary from the recorded reports")
    args = parser.parse_args(argv)
    chosen = [] if args.from_results else [b for b in BENCHMARKS if not args.only or b.name in args.only]
    with tempfile.TemporaryDirectory(prefix="sampleforge-bench-") as scratch:
        outcomes = [run(b, args.quick, Path(scratch)) for b in chosen]
        text = summary(outcomes, args.quick)
    print(text)
    target = args.output or (None if args.quick else SUMMARY)
    if target is not None:
        target.write_text(text)
        print(f"summary written to {target}", file=sys.stderr)
    return 0 if all(o.returncode == 0 for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
