"""Throughput of sampleforge's text-edit augmenters against nlpaug's equivalents, on one CPU core.

Why this exists: the augmentation job runs these edits on the CPU cores of a GPU pod, and the
project's target is at least 10x nlpaug's rows/second per core. Both libraries run in the same
process, on the same rows, with the same edit budget (nlpaug's defaults: 30 % of words, at most 10;
for character edits 30 % of a word's characters, at most 10, words of 4+ characters), one variant
per row, and are timed alternately so that machine noise hits both; each number is the best of
``--repeats`` runs.

Rows: English queries and product titles from the ESCI sample plus Walmart-Amazon titles, and the
ESCI queries alone (short texts, where per-row overhead dominates); Chinese QBQTC queries and titles
for ours only (nlpaug's character and random-word augmenters have no Chinese word segmentation).
The data lives in ../shared/data (or $SAMPLEFORGE_SHARED_DATA) and is read, never copied.

    python bench/bench_text_augmenters.py            # full run, writes bench/results/text_augmenters.md
    python bench/bench_text_augmenters.py --quick    # tiny run that checks the benchmark works; prints only
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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_model

from sampleforge.jobs.augment.text import TextAugmenter, create_augmenter, default_lexicon

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "text_augmenters.md"

# nlpaug's defaults, applied to ours so that both do the same amount of editing.
WORD_BUDGET: dict[str, Any] = {"alpha": 0.3, "maxEdits": 10}
CHAR_BUDGET: dict[str, Any] = {**WORD_BUDGET, "charAlpha": 0.3, "maxCharsPerWord": 10, "minWordLen": 4}


@dataclass(frozen=True)
class Case:
    """One comparison: our augmenter, and nlpaug's counterpart."""

    ours: str
    options: dict[str, Any]
    nlpaug_label: str
    nlpaug_factory: Callable[[], Any]
    note: str = ""


@dataclass(frozen=True)
class RowSet:
    name: str
    rows: list[str]
    compare: bool  # whether nlpaug runs on it (English only)


def shared_data_dir() -> Path:
    """../shared/data beside the repository, or $SAMPLEFORGE_SHARED_DATA."""
    override = os.environ.get("SAMPLEFORGE_SHARED_DATA")
    return Path(override) if override else REPO.parent / "shared" / "data"


def load_rows(data: Path) -> tuple[list[str], list[str], list[str]]:
    """ESCI queries, ESCI titles + Walmart-Amazon titles, QBQTC queries + titles."""
    queries: list[str] = []
    titles: list[str] = []
    with (data / "esci-sample" / "esci.csv").open(newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            queries.append(rec["query"])
            titles.append(rec["product_title"])
    with (data / "walmart-amazon" / "train.txt").open(encoding="utf-8") as f:
        for line in f:
            for side in line.split("\t")[:2]:
                titles.append(side.split("COL title VAL ", 1)[1].split(" COL category VAL", 1)[0].strip())
    chinese: list[str] = []
    with (data / "qbqtc" / "dev.json").open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            chinese += [rec["query"], rec["title"]]

    def keep(rows: list[str]) -> list[str]:
        return [r for r in rows if r.strip()]

    return keep(queries), keep(titles), keep(chinese)


def pin_one_core() -> str:
    """Pin this process to the first core it may use; returns a description for the report."""
    if hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity on this platform)"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def build_kind() -> str:
    """Whether the text package runs as Python source or as mypyc-compiled extension modules."""
    tokens = importlib.import_module("sampleforge.jobs.augment.text.tokens")
    return "mypyc-compiled" if str(tokens.__file__).endswith((".so", ".pyd")) else "pure Python (as shipped)"


def make_cases() -> list[Case]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nlpaug.augmenter.char as nac
        import nlpaug.augmenter.word as naw
    substitute_words = sorted({t for g in default_lexicon().groups for t in g if " " not in t and t.isascii()})
    nearest = "nearest, not equivalent: "
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
            "word.RandomWordAug(action='substitute', target_words=...)",
            lambda: naw.RandomWordAug(action="substitute", target_words=substitute_words),
            nearest + "nlpaug's SynonymAug needs WordNet/PPDB files that cannot be fetched offline; its random "
            "substitute (with our lexicon's words as targets) does no lookup, ours matches (multi-word) lexicon terms",
        ),
        Case(
            "randomInsert",
            WORD_BUDGET,
            "word.RandomWordAug(action='substitute', target_words=...)",
            lambda: naw.RandomWordAug(action="substitute", target_words=substitute_words),
            nearest + "nlpaug has no offline random insertion (ContextualWordEmbsAug needs a BERT download)",
        ),
    ]


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(case: Case, sets: Sequence[RowSet], repeats: int) -> list[dict[str, Any]]:
    ours: TextAugmenter[Any] = create_augmenter(case.ours, case.options)
    theirs = case.nlpaug_factory()
    warm = [r for s in sets for r in s.rows[:30]]
    ours.augment(warm, seed=0)  # jieba dictionary, caches
    theirs.augment([r for s in sets if s.compare for r in s.rows[:30]])
    out = []
    for row_set in sets:
        rows = row_set.rows
        ours_t: list[float] = []
        theirs_t: list[float] = []
        for rep in range(repeats):
            ours_t.append(timed(partial(ours.augment, rows, seed=rep, n_per_text=1)))
            if row_set.compare:
                random.seed(rep)
                np.random.seed(rep)
                theirs_t.append(timed(partial(theirs.augment, rows, n=1)))
        result = ours.augment(rows, seed=0, n_per_text=1)
        ours_rps = len(rows) / min(ours_t)
        theirs_rps = len(rows) / min(theirs_t) if theirs_t else None
        out.append(
            {
                "case": case,
                "set": row_set.name,
                "rows": len(rows),
                "ours": ours_rps,
                "theirs": theirs_rps,
                "ratio": ours_rps / theirs_rps if theirs_rps else None,
                "edited": 1 - result.rows_without_variants / max(1, len(rows)),
            }
        )
    return out


def render_report(
    results: list[dict[str, Any]], env: dict[str, str], quick: bool, command: str, title: bool = True
) -> str:
    """The Markdown report; ``title=False`` for a section appended to an existing report."""
    head = ["# Text-edit augmenters: sampleforge vs nlpaug, one CPU core", ""] if title else [""]
    lines = [
        *head,
        f"## sampleforge {env['sampleforge build']}",
        "",
        f"Written by `{command}`"
        + (" (a tiny run that checks the benchmark works, not a result)" if quick else "")
        + ".",
        "",
        "| machine | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in env.items()],
        "",
        "Rows/second is the best of the repeats; both libraries are timed alternately in one process on the same",
        "rows, one variant per row, with nlpaug's default edit budget applied to both. `edited` is the share of",
        "rows for which ours produced a variant: ours returns no copy when no edit is possible (a synonym edit",
        "needs a lexicon word in the text; typos need Latin letters; numbers are protected).",
        "",
        "| augmenter | nlpaug counterpart | rows | n | rows/s ours | rows/s nlpaug | ratio | edited |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        case: Case = r["case"]
        theirs = f"{r['theirs']:,.0f}" if r["theirs"] else "n/a (no Chinese support)"
        ratio = f"**{r['ratio']:.1f}x**" if r["ratio"] else "n/a"
        lines.append(
            f"| `{case.ours}` | `{case.nlpaug_label}` | {r['set']} | {r['rows']:,} | {r['ours']:,.0f} | {theirs} "
            f"| {ratio} | {r['edited']:.0%} |"
        )
    notes = sorted({f"- `{r['case'].ours}`: {r['case'].note}" for r in results if r["case"].note})
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run that checks the benchmark works")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per library and row set (default 5)")
    parser.add_argument("--output", type=Path, default=None, help=f"report path (default {RESULTS}; --quick: none)")
    parser.add_argument(
        "--append",
        action="store_true",
        help="add this run as a section of the existing report (e.g. a mypyc-compiled build) instead of replacing it",
    )
    args = parser.parse_args(argv)
    data = shared_data_dir()
    if not (data / "esci-sample" / "esci.csv").is_file():
        print(f"shared data not found at {data}; set SAMPLEFORGE_SHARED_DATA", file=sys.stderr)
        return 2
    pinned = pin_one_core()
    queries, titles, chinese = load_rows(data)
    repeats = args.repeats or (1 if args.quick else 5)
    if args.quick:
        queries, titles, chinese = queries[:50], titles[:100], chinese[:100]
    sets = [
        RowSet("en: ESCI queries + ESCI/Walmart-Amazon titles", queries + titles, True),
        RowSet("en: ESCI queries only", queries, True),
        RowSet("zh: QBQTC queries + titles", chinese, False),
    ]
    env = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{cpu_model()} (nproc {os.cpu_count()}, {pinned})",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a",
        "Python": platform.python_version(),
        "packages": ", ".join(f"{p} {version(p)}" for p in ("sampleforge", "nlpaug", "numpy", "jieba")),
        "sampleforge build": build_kind(),
        "repeats": str(repeats),
    }
    results = []
    for case in make_cases():
        for r in measure(case, sets, repeats):
            results.append(r)
            ratio = f"{r['ratio']:.1f}x" if r["ratio"] else "n/a"
            print(f"{case.ours:13s} {r['set'][:24]:24s} ours {r['ours']:9,.0f}/s  ratio {ratio}", flush=True)
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    append = args.append and output is not None and output.is_file()
    prefix = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    args_used = list(argv) if argv is not None else sys.argv[1:]
    command = prefix + " ".join(["python", "bench/bench_text_augmenters.py", *args_used])
    report = render_report(results, env, args.quick, command, title=not append)
    if output is None:
        print(report)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("a" if append else "w", encoding="utf-8") as f:
            f.write(report)
        print(f"{'appended to' if append else 'wrote'} {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
