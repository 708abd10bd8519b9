"""Hard-negative retrieval indexes at catalog scale: build time, query time, recall and peak memory.

Why this exists (issue 11): hard negatives used to be mined from at most 100,000 items (BM25) or
50,000 (embeddings, numpy brute force); they now search the whole catalog, through a faiss index for
embeddings and a scipy sparse matrix for BM25 (``jobs/augment/retrieval.py``, ``bm25.py``). This
measures both at 1 M and 5 M items, each size in a fresh process so that its peak RSS is its own:

* ``embedding``: :func:`~sampleforge.jobs.augment.retrieval.build_vector_index`, the function the
  miner calls, fed synthetic unit vectors of the real model's dimension (384, all-MiniLM-L6-v2):
  computing 5 M real embeddings on this CPU is out of reach (MiniLM encodes a few hundred titles a
  second here: days), and the index does not care where the vectors come from, only how they are
  spread. They are spread like catalog embeddings: 500 topics, families of about 20 variants of a
  product around each family centre (cosine about 0.6 within a family), queries near a family.
  Recall@k is measured against exact brute-force search (numpy, float32) over all items, for a sample
  of queries; query time is for 1,000 queries of k = 50 (what the miner asks for: skipTop + perQuery
  + 32 slack, 36 with the defaults).
* ``bm25``: :class:`~sampleforge.jobs.augment.bm25.BM25Index` over synthetic item titles of 5 to 14
  words drawn from a 200,000-word vocabulary with Zipf-like frequencies (a few words in most titles,
  most words rare, like brands, model numbers and colours); queries of 2 to 4 words. BM25 scores
  every document that shares a term, so its recall is exact by construction; what is measured is time
  and memory. The documents are generated as they are indexed, never held as a list.

Times exclude generating the data (measured apart and subtracted). Peak RSS is the process's high
water mark (VmHWM), so it includes the interpreter, numpy/faiss and the generator's chunk (100 MB).

    python bench/bench_retrieval_index.py            # 1 M and 5 M: writes bench/results/retrieval_index.{md,json}
    python bench/bench_retrieval_index.py --quick    # 20,000 items, IVF forced (checks the benchmark works)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from machine import cpu_model

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
DIM = 384
K = 50
CHUNK = 65_536
SEED = 20261203


def _status(field: str) -> float:
    """A VmXXX line of /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the measured processes --------------------------------------------------------------------------


class Vectors:
    """Synthetic unit vectors with catalog-like structure (module docstring), chunk by chunk."""

    def __init__(self, n: int, dim: int = DIM, seed: int = SEED) -> None:
        import numpy as np

        self.np = np
        self.n, self.dim, self.seed = n, dim, seed
        rng = np.random.default_rng(seed)
        self.topics = rng.standard_normal((500, dim)).astype(np.float32)
        self.tables = [rng.standard_normal((size, dim)).astype(np.float32) for size in (4096, 4093, 4091)]
        self.families = max(1, n // 20)

    def family(self, f: Any) -> Any:
        np = self.np
        a, b, c = self.tables
        noise = (a[f % 4096] + b[(f // 4096) % 4093] + c[(f * 7 + 3) % 4091]) / math.sqrt(3.0)
        v = self.topics[(f * 31) % 500] + 0.6 * noise
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def _near(self, f: Any, rng: Any, spread: float) -> Any:
        np = self.np
        x = self.family(f) + spread * rng.standard_normal((len(f), self.dim), dtype=np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def chunk(self, c: int) -> Any:
        np = self.np
        rng = np.random.default_rng([self.seed, c])
        size = min(CHUNK, self.n - c * CHUNK)
        return self._near(rng.integers(0, self.families, size), rng, 0.04)

    def queries(self, count: int, salt: int) -> Any:
        np = self.np
        rng = np.random.default_rng([self.seed, 10**9 + salt])
        return self._near(rng.integers(0, self.families, count), rng, 0.045)


def measure_embedding(n: int, queries: int, recall_queries: int, exact_max: int | None) -> dict[str, Any]:
    import faiss
    import numpy as np

    from sampleforge.jobs.augment import retrieval

    rss_start = _status("VmRSS")
    data = Vectors(n)
    sample = data.queries(recall_queries, 1)
    best = np.full((recall_queries, K), -np.inf, dtype=np.float32)
    best_ids = np.full((recall_queries, K), -1, dtype=np.int64)
    generating = 0.0

    def chunks() -> Iterator[Any]:
        nonlocal best, best_ids, generating
        for c in range(math.ceil(n / CHUNK)):
            started = time.monotonic()
            x = data.chunk(c)
            sims = sample @ x.T  # exact search, merged chunk by chunk
            scores = np.concatenate([best, sims], axis=1)
            ids = np.concatenate([best_ids, np.broadcast_to(np.arange(c * CHUNK, c * CHUNK + len(x)), sims.shape)],
                                 axis=1)
            top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
            best, best_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
            generating += time.monotonic() - started
            yield x

    started = time.monotonic()
    index = retrieval.build_vector_index(chunks(), n, seed=0,
                                         exact_max=exact_max if exact_max is not None else retrieval.EXACT_MAX_ITEMS)
    build = time.monotonic() - started - generating
    q = data.queries(queries, 2)
    started = time.monotonic()
    index.search(q, K)
    query = time.monotonic() - started
    found = index.search(sample, K)
    order = np.argsort(-best, axis=1)
    truth = np.take_along_axis(best_ids, order, 1)
    recall = {k: float(np.mean([len(set(f[:k]) & set(t[:k].tolist())) / k for f, t in zip(found, truth, strict=True)]))
              for k in (10, K)}
    ivf = index.ivf
    if ivf is not None:
        size = n * (ivf.code_size + 8) + ivf.nlist * DIM * 4
    else:
        size = n * DIM * 4
    return {"index": "embedding", "items": n, "type": index.kind, "nprobe": index.nprobe, "dim": DIM,
            "buildSeconds": round(build, 2), "generateSeconds": round(generating, 2),
            "querySecondsPer1k": round(query / queries * 1000, 3), "queries": queries,
            "recallQueries": recall_queries, "recallAt10": round(recall[10], 4), f"recallAt{K}": round(recall[K], 4),
            "indexMiB": round(size / 2**20, 1), "rssStartMiB": round(rss_start, 1),
            "peakRssMiB": round(_status("VmHWM"), 1), "faissThreads": faiss.omp_get_max_threads()}


class Titles:
    """Synthetic item titles from a Zipf-like vocabulary (module docstring), generated lazily."""

    VOCABULARY = 200_000

    def __init__(self, seed: int = SEED) -> None:
        import numpy as np

        self.np = np
        self.seed = seed
        syllables = ["ka", "lo", "mi", "ne", "ra", "su", "to", "vi", "ze", "po", "qu", "da", "fe", "gi", "ho", "ju"]
        words = []
        for i in range(self.VOCABULARY):
            parts, j = [], i
            for _ in range(3):
                parts.append(syllables[j % 16])
                j //= 16
            words.append("".join(parts) + (str(j) if j else "") if i % 5 else f"{''.join(parts)}{i % 997}x")
        self.words = np.asarray(words, dtype=object)
        weights = 1.0 / (np.arange(self.VOCABULARY) + 10.0) ** 1.05
        self.cumulative = np.cumsum(weights / weights.sum())

    def _draw(self, rng: Any, count: int) -> Any:
        return self.np.minimum(self.np.searchsorted(self.cumulative, rng.random(count)), self.VOCABULARY - 1)

    def texts(self, n: int, timer: list[float]) -> Iterator[str]:
        np = self.np
        for c in range(math.ceil(n / 100_000)):
            started = time.monotonic()
            rng = np.random.default_rng([self.seed, c])
            size = min(100_000, n - c * 100_000)
            lengths = rng.integers(5, 15, size)
            ids = self._draw(rng, int(lengths.sum()))
            words = self.words[ids]
            bounds = np.concatenate([[0], np.cumsum(lengths)])
            batch = [" ".join(words[bounds[i] : bounds[i + 1]]) for i in range(size)]
            timer[0] += time.monotonic() - started
            yield from batch

    def queries(self, count: int) -> list[str]:
        np = self.np
        rng = np.random.default_rng([self.seed, 10**9])
        lengths = rng.integers(2, 5, count)
        ids = self._draw(rng, int(lengths.sum()))
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        return [" ".join(self.words[ids[bounds[i] : bounds[i + 1]]]) for i in range(count)]


def measure_bm25(n: int, queries: int) -> dict[str, Any]:
    from sampleforge.jobs.augment.bm25 import BM25Index

    rss_start = _status("VmRSS")
    titles = Titles()
    timer = [0.0]
    started = time.monotonic()
    index = BM25Index(titles.texts(n, timer))
    build = time.monotonic() - started - timer[0]
    q = titles.queries(queries)
    started = time.monotonic()
    found = index.top_many(q, K)
    query = time.monotonic() - started
    return {"index": "bm25", "items": n, "type": "bm25-csr", "postings": index.postings,
            "vocabulary": len(index.vocabulary), "buildSeconds": round(build, 2), "generateSeconds": round(timer[0], 2),
            "querySecondsPer1k": round(query / queries * 1000, 3), "queries": queries,
            "meanResults": round(sum(len(f) for f in found) / queries, 1), "recallAt10": 1.0, f"recallAt{K}": 1.0,
            "indexMiB": round(index.nbytes / 2**20, 1), "rssStartMiB": round(rss_start, 1),
            "peakRssMiB": round(_status("VmHWM"), 1)}


# --- the parent: one process per measurement, then the report ----------------------------------------


def run_child(kind: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(n),
               "--queries", str(args.queries), "--recall-queries", str(args.recall_queries)]
    if args.exact_max is not None:
        command += ["--exact-max", str(args.exact_max)]
    print(f"==> {kind} at {n:,} items", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"index": kind, "items": n, "failed": f"did not finish within {args.timeout} s"}
    wall = time.monotonic() - started
    if done.returncode != 0:
        reason = (f"killed by signal {-done.returncode}" + (" (out of memory?)" if done.returncode == -9 else "")
                  if done.returncode < 0 else f"exit {done.returncode}")
        return {"index": kind, "items": n, "failed": f"{reason}: {done.stderr.strip().splitlines()[-1:]}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["wallSeconds"] = round(wall, 1)
    result["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"<== {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def _versions() -> dict[str, str]:
    import faiss
    import numpy
    import scipy

    return {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__,
            "faiss-cpu": faiss.__version__}


def report(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Hard-negative retrieval indexes at catalog scale",
        "",
        (f"Run {meta['date']} on {meta['cpu']} ({meta['cores']} cores, load average {meta['loadStart']} at the start, "
        f"{meta['loadEnd']} at the end: the machine was shared with other work, so times are upper bounds), "
        f"{', '.join(f'{k} {v}' for k, v in meta['versions'].items())}. Written by `bench/bench_retrieval_index.py` "
        "(its docstring says what is generated and how it is measured)."),
        "",
        ("Embedding rows: synthetic unit vectors of the real model's dimension (384, all-MiniLM-L6-v2), spread like "
        "catalog embeddings (topics, product families, variants); computing 5 M real embeddings on this CPU is out "
        "of reach. BM25 rows: synthetic titles from a Zipf-like 200,000-word vocabulary. Recall is against exact "
        f"brute-force search over every item (embedding: {meta['recallQueries']} queries; BM25 is exhaustive, so "
        f"exact). Query time: {meta['queries']} queries, k = {K}, given per 1,000. Build and query times exclude "
        "generating the data."),
        "",
        *[f"Rows kept from an earlier run of {m['date']} (load average {m['loadStart']} → {m['loadEnd']}, "
          f"{m['queries']} queries): {', '.join(m.get('rows', [])) or 'see the .json'}."
          for m in meta.get("earlierRuns", [])],
        *([meta["note"]] if meta.get("note") else []),
        "",
        "| index | items | type | build (s) | per 1k queries (s) | recall@10 | recall@50 | index (MiB) | peak RSS (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if "failed" in r:
            lines.append(f"| {r['index']} | {r['items']:,} | failed: {r['failed']} | | | | | | |")
            continue
        kind = r["type"] + (f", nprobe {r['nprobe']}" if r.get("nprobe") else "")
        lines.append(f"| {r['index']} | {r['items']:,} | {kind} | {r['buildSeconds']:.1f} | {r['querySecondsPer1k']:.2f} | "
                     f"{r['recallAt10']:.3f} | {r[f'recallAt{K}']:.3f} | {r['indexMiB']:,.0f} | {r['peakRssMiB']:,.0f} |")
    lines += [
        "",
        "## Memory, stated",
        "",
        ("* Embedding index: up to 200,000 items `IndexFlatIP` (exact; 4 × 384 = 1,536 bytes per item); above, "
        "`IndexIVFScalarQuantizer` with fp16 residuals: 2 × 384 + 8 = 776 bytes per item plus the centroids "
        "(nlist × 384 × 4 bytes), about 3.6 GiB at 5 M items. Vectors are added in chunks of 65,536, so they are "
        "never held twice; training holds 64 × nlist vectors once."),
        ("* BM25: 12 bytes per (item, distinct term) posting (float64 weight, int32 item number) plus the vocabulary; "
        "building briefly holds the item-major and the term-major matrix together. Query batches are bounded to "
        "4 M postings."),
        ("* The item pool itself (every distinct item, column-wise UTF-8): the text bytes plus about 40 bytes per "
        "item; not part of these rows, which index generated data."),
        ("* Peak RSS is above the index size: besides the interpreter and libraries (about 100 MiB), faiss's "
         "inverted lists grow by doubling (std::vector), and the chunk being added (65,536 × 384 floats) and its "
         "residuals, the k-means sample and the generator's temporaries are held while the index grows."),
        "",
        "Wall time per measurement, data generation and the exact search for recall included: "
        + ", ".join(f"{r['index']} {r['items']:,}: {r['wallSeconds']:,.0f} s" for r in results if "wallSeconds" in r)
        + ".",
        "",
    ]
    bm = {r["items"]: r for r in results if r["index"] == "bm25" and "failed" not in r}
    for n, r in sorted(bm.items()):
        lines.append(f"BM25 at {n:,} items: {r['postings']:,} postings, {r['vocabulary']:,} terms, "
                     f"{r['meanResults']:.0f} results per query on average.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 items, IVF forced; prints, writes only --output")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--only", choices=["embedding", "bm25"], nargs="+", default=["embedding", "bm25"])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--recall-queries", type=int, default=100)
    parser.add_argument("--exact-max", type=int, help="override the flat/IVF threshold (quick mode: 5,000)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    parser.add_argument("--output", type=Path, help="report path (default bench/results/retrieval_index.md)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the recorded rows (the output's .json) of the measurements not run this time")
    parser.add_argument("--from-json", action="store_true", help="run nothing; rewrite the report from its .json")
    parser.add_argument("--child", nargs=2, metavar=("INDEX", "ITEMS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, n = args.child[0], int(args.child[1])
        result = (measure_embedding(n, args.queries, args.recall_queries, args.exact_max) if kind == "embedding"
                  else measure_bm25(n, args.queries))
        print(json.dumps(result))
        return 0
    if args.quick:
        args.sizes, args.queries, args.recall_queries = [20_000], 100, 20
        args.exact_max = args.exact_max or 5_000
    target = args.output or (None if args.quick else RESULTS / "retrieval_index.md")
    if args.from_json:
        target = target or RESULTS / "retrieval_index.md"
        recorded = json.loads(target.with_suffix(".json").read_text())
        target.write_text(report(recorded["results"], recorded["meta"]))
        print(f"rewritten: {target}", file=sys.stderr)
        return 0
    load_start = os.getloadavg()[0]
    results = [run_child(kind, n, args) for n in args.sizes for kind in args.only]
    meta = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
            "cores": os.cpu_count(), "loadStart": round(load_start, 1), "loadEnd": round(os.getloadavg()[0], 1),
            "versions": _versions(), "queries": args.queries, "recallQueries": args.recall_queries, "k": K,
            "dim": DIM, "quick": args.quick}
    if args.keep and target is not None and target.with_suffix(".json").exists():
        recorded = json.loads(target.with_suffix(".json").read_text())
        fresh = {(r["index"], r["items"]) for r in results}
        kept = [r for r in recorded["results"] if (r["index"], r["items"]) not in fresh]
        order = {"embedding": 0, "bm25": 1}
        results = sorted(kept + results, key=lambda r: (r["items"], order.get(r["index"], 2)))
        earlier = recorded["meta"]
        earlier["rows"] = [f"{r['index']} {r['items']:,}" for r in kept if r.get("date", earlier["date"]) == earlier["date"]]
        meta["earlierRuns"] = [*earlier.pop("earlierRuns", []), earlier] if kept else []
    text = report(results, meta)
    print(text)
    if target is not None:
        target.write_text(text)
        target.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"written to {target} and {target.with_suffix('.json')}", file=sys.stderr)
    return 0 if all("failed" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
