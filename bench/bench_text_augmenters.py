"""Throughput of sampleforge's text-edit augmenters against nlpaug's equivalents, on one CPU core.

Why this exists: the augmentation job runs these edits on the CPU cores of a GPU pod, and the
project's target is at least 10x nlpaug's rows/second per core. Both libraries run in the same
process, on the same rows, with the same edit budget (nlpaug's defaults: 30 % of words, at most 10;
for character edits 30 % of a word's characters, at most 10, words of 4+ characters), and are
timed alternately so that machine noise hits both; each number is the best of ``--repeats`` runs.

Rows: English queries and product titles from the ESCI sample and Walmart-Amazon titles; Chinese
queries and titles from QBQTC (ours only: nlpaug's character and random-word augmenters have no
Chinese word segmentation). The data lives in ../shared/data (or $SAMPLEFORGE_SHARED_DATA) and is
read, never copied.

    python bench/bench_text_augmenters.py            # full run, writes bench/results/text_augmenters.md
    python bench/bench_text_augmenters.py --quick    # seconds; prints the table, writes nothing
"""

from __future__ import annotations

import os

# One core, one thread: set before numpy (or anything importing it) is loaded.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import csv
import datetime as dt
import importlib.metadata
import json
import platform
import random
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sampleforge.jobs.augment.text import create_augmenter, default_lexicon

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "text_augmenters.md"

# nlpaug's defaults, applied to ours so that both do the same amount of editing.
WORD_BUDGET = {"alpha": 0.3, "maxEdits": 10}
CHAR_BUDGET = {**WORD_BUDGET, "charAlpha": 0.3, "maxCharsPerWord": 10, "minWordLen": 4}


@dataclass(frozen=True)
class Case:
    """One comparison: our augmenter, and nlpaug's counterpart (or None when there is none)."""

    ours: str
    options: dict[str, Any]
    nlpaug_label: str
    nlpaug_factory: Callable[[], Any] | None
    note: str = ""


def shared_data_dir() -> Path:
    """../shared/data beside the repository, or $SAMPLEFORGE_SHARED_DATA."""
    override = os.environ.get("SAMPLEFORGE_SHARED_DATA")
    return Path(override) if override else REPO.parent / "shared" / "data"


def load_english(data: Path) -> list[str]:
    """ESCI queries and product titles, then Walmart and Amazon titles of the matching pairs."""
    rows: list[str] = []
    with (data / "esci-sample" / "esci.csv").open(newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            rows.extend([rec["query"], rec["product_title"]])
    with (data / "walmart-amazon" / "train.txt").open(encoding="utf-8") as f:
        for line in f:
            for side in line.split("\t")[:2]:
                title = side.split("COL title VAL ", 1)[1].split(" COL category VAL", 1)[0].strip()
                if title:
                    rows.append(title)
    return [r for r in rows if r.strip()]


def load_chinese(data: Path) -> list[str]:
    """QBQTC queries and result titles."""
    rows: list[str] = []
    with (data / "qbqtc" / "dev.json").open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            rows.extend([rec["query"], rec["title"]])
    return [r for r in rows if r.strip()]


def pin_one_core() -> str:
    """Pin this process to the first core it may use; returns a description for the report."""
    if hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity on this platform)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def make_cases() -> list[Case]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nlpaug.augmenter.char as nac
        import nlpaug.augmenter.word as naw
    substitute_words = sorted({t for g in default_lexicon().groups for t in g if " " not in t and t.isascii()})
    return [
        Case("typo", CHAR_BUDGET, "char.KeyboardAug()", lambda: nac.KeyboardAug()),
        Case(
            "charNoise",
            {**CHAR_BUDGET, "actions": ["swap"]},
            "char.RandomCharAug(action='swap')",
            lambda: nac.RandomCharAug(action="swap"),
        ),
        Case("randomSwap", WORD_BUDGET, "word.RandomWordAug(action='swap')", lambda: naw.RandomWordAug(action="swap")),
        Case(
            "randomDelete",
            WORD_BUDGET,
            "word.RandomWordAug(action='delete')",
            lambda: naw.RandomWordAug(action="delete"),
        ),
        Case(
            "synonym",
            WORD_BUDGET,
            "word.RandomWordAug(action='substitute', target_words=lexicon words)",
            lambda: naw.RandomWordAug(action="substitute", target_words=substitute_words),
            "nearest, not equivalent: nlpaug's SynonymAug needs WordNet/PPDB files that cannot be fetched "
            "offline; its random substitute does no lexicon lookup, ours matches (multi-word) lexicon terms",
        ),
        Case(
            "randomInsert",
            WORD_BUDGET,
            "word.RandomWordAug(action='substitute', target_words=lexicon words)",
            lambda: naw.RandomWordAug(action="substitute", target_words=substitute_words),
            "nearest, not equivalent: nlpaug has no offline random insertion (ContextualWordEmbsAug needs BERT)",
        ),
    ]


def best_time(run: Callable[[], object], repeats: int, times: list[float]) -> None:
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)


def measure(case: Case, english: Sequence[str], chinese: Sequence[str], repeats: int) -> dict[str, Any]:
    ours = create_augmenter(case.ours, case.options)
    ours.augment(list(english[:50]) + list(chinese[:50]), seed=0)  # warm-up: jieba dictionary, caches
    theirs = case.nlpaug_factory() if case.nlpaug_factory else None
    if theirs is not None:
        theirs.augment(list(english[:20]))
    rows = list(english)
    ours_t: list[float] = []
    theirs_t: list[float] = []
    for rep in range(repeats):
        best_time(lambda: ours.augment(rows, seed=rep, n_per_text=1), 1, ours_t)
        if theirs is not None:
            random.seed(rep)
            np.random.seed(rep)
            best_time(lambda: theirs.augment(rows, n=1), 1, theirs_t)
    zh_t: list[float] = []
    zh_rows = list(chinese)
    for rep in range(repeats):
        best_time(lambda: ours.augment(zh_rows, seed=rep, n_per_text=1), 1, zh_t)
    result = ours.augment(rows, seed=0, n_per_text=1)
    zh_result = ours.augment(zh_rows, seed=0, n_per_text=1)
    out: dict[str, Any] = {
        "case": case,
        "rows": len(rows),
        "ours": len(rows) / min(ours_t),
        "theirs": len(rows) / min(theirs_t) if theirs_t else None,
        "zh_rows": len(zh_rows),
        "zh_ours": len(zh_rows) / min(zh_t),
        "edited": 1 - result.rows_without_variants / max(1, len(rows)),
        "zh_edited": 1 - zh_result.rows_without_variants / max(1, len(zh_rows)),
    }
    out["ratio"] = out["ours"] / out["theirs"] if out["theirs"] else None
    return out


def render_report(results: list[dict[str, Any]], env: dict[str, str], quick: bool) -> str:
    lines = [
        "# Text-edit augmenters: sampleforge vs nlpaug, one CPU core",
        "",
        "Written by `bench/bench_text_augmenters.py`" + (" --quick (tiny run, not a result)" if quick else "") + ".",
        "",
        "| machine | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines += [
        "",
        "Rows/second is the best of the repeats (both libraries timed alternately in one process, same rows,",
        "`n=1` variant per row, nlpaug's default edit budget applied to both). `edited` is the share of rows",
        "for which ours produced a variant (ours returns no copy when no edit is possible; a synonym edit",
        "needs a lexicon word in the text).",
        "",
        "| augmenter | nlpaug counterpart | rows (en) | rows/s ours | rows/s nlpaug | ratio | edited (en) "
        "| rows (zh) | rows/s ours (zh) | edited (zh) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        case: Case = r["case"]
        theirs = f"{r['theirs']:,.0f}" if r["theirs"] else "n/a"
        ratio = f"**{r['ratio']:.1f}x**" if r["ratio"] else "n/a"
        lines.append(
            f"| `{case.ours}` | `{case.nlpaug_label}` | {r['rows']:,} | {r['ours']:,.0f} | {theirs} | {ratio} "
            f"| {r['edited']:.0%} | {r['zh_rows']:,} | {r['zh_ours']:,.0f} | {r['zh_edited']:.0%} |"
        )
    notes = [f"- `{r['case'].ours}`: {r['case'].note}" for r in results if r["case"].note]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run (seconds) that checks the benchmark works")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per library (default 5, quick 1)")
    parser.add_argument("--output", type=Path, default=None, help=f"report path (default {RESULTS}; quick: none)")
    args = parser.parse_args(argv)
    data = shared_data_dir()
    if not (data / "esci-sample" / "esci.csv").exists():
        print(f"shared data not found at {data}; set SAMPLEFORGE_SHARED_DATA", file=sys.stderr)
        return 2
    pinned = pin_one_core()
    english, chinese = load_english(data), load_chinese(data)
    repeats = args.repeats or (1 if args.quick else 5)
    if args.quick:
        english, chinese = english[:300], chinese[:300]
    env = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{cpu_model()} (nproc {os.cpu_count()}, {pinned})",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a",
        "Python": platform.python_version(),
        "packages": ", ".join(f"{p} {version(p)}" for p in ("sampleforge", "nlpaug", "numpy", "jieba")),
        "repeats": str(repeats),
    }
    results = []
    for case in make_cases():
        results.append(measure(case, english, chinese, repeats))
        r = results[-1]
        ratio = f"{r['ratio']:.1f}x" if r["ratio"] else "n/a"
        print(
            f"{case.ours:13s} ours {r['ours']:10,.0f} rows/s  nlpaug {r['theirs'] or 0:10,.0f}  ratio {ratio}",
            flush=True,
        )
    report = render_report(results, env, args.quick)
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report, encoding="utf-8")
        print(f"wrote {output}")
    else:
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
