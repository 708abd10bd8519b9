"""``report.html`` of a FineTuneRun: the model card's figures as one self-contained page with charts.

Rendered from what ``metrics.json`` records (so it shows what the run committed): the training loss
over steps (``lossCurve``) with the evaluation loss when it was measured, each evaluation metric over
steps (``history``), the final evaluation against the first one and the best, the calibrated decision
against the uncalibrated one, and the data and settings it was trained with. The page loads nothing
from anywhere; every text from users or data is escaped (:mod:`sampleforge.jobs.common.svg`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from sampleforge.api.fields import LOWER_IS_BETTER
from sampleforge.api.finetune import FineTuneRunSpec
from sampleforge.jobs.common.htmlpage import figure, page, section, table, tiles
from sampleforge.jobs.common.svg import Line, Series, esc, fmt, grouped_bars, line_chart

__all__ = ["render_html_report"]

_FIRST, _FINAL, _BEST = "#56B4E9", "#0072B2", "#009E73"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _show(value: Any) -> str:
    """A metric to four decimals; a count as it is."""
    number = _number(value)
    if number is None:
        return "–"
    return f"{number:.4f}" if isinstance(value, float) and math.isfinite(number) else fmt(number)


def _in_unit(value: float | None) -> bool:
    return value is not None and 0.0 <= value <= 1.0


def _history(results: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    return [(int(h.get("step", 0)), h.get("metrics") or {}) for h in results.get("history") or []
            if isinstance(h, Mapping)]


def _markers(results: Mapping[str, Any]) -> list[tuple[float, str]]:
    marks: list[tuple[float, str]] = []
    best = results.get("best")
    if isinstance(best, Mapping) and _number(best.get("step")) is not None:
        marks.append((float(best["step"]), f"best {best.get('name', '')}"))
    published = _number(results.get("publishedStep"))
    if published is not None and published != _number(results.get("step")) and \
            not (marks and marks[0][0] == published):
        marks.append((published, "published"))
    return marks


def _header(spec: FineTuneRunSpec, run: Mapping[str, str], data: Mapping[str, Any], results: Mapping[str, Any],
            world_size: int) -> list[str]:
    best = results.get("best") if isinstance(results.get("best"), Mapping) else None
    method = ", ".join(f"{k}={v}" for k, v in spec.method.to_kube().items())
    items = [(fmt(int(results.get("step") or 0)), "optimizer steps"),
             (_show(results.get("epochs")), "epochs"),
             (fmt(int((data.get("train") or {}).get("rows") or 0)), "training rows"),
             (fmt(int((data.get("eval") or {}).get("rows") or 0)), "evaluation rows")]
    if best:
        items.insert(0, (_show(best.get("value")), f"best {best.get('name', '')} (step {best.get('step')})"))
    seconds = _number(results.get("trainingSeconds"))
    return [
        f"<h1>Fine-tuning report: {esc(run.get('namespace', ''))}/{esc(run.get('name', ''))}</h1>",
        (f'<p class="meta">Task <code>{esc(spec.task)}</code> from <code>{esc(spec.model)}</code>, method '
         f"{esc(method)}; {world_size} process(es)"
         + (f", {seconds:.0f} s of training" if seconds is not None else "")
         + ("; stopped early" if results.get("stoppedEarly") else "") + ".</p>"),
        tiles(items),
    ]


def _loss(results: Mapping[str, Any]) -> str:
    curve = [(float(p[0]), float(p[1])) for p in results.get("lossCurve") or []
             if isinstance(p, Sequence) and len(p) == 2 and _number(p[0]) is not None and _number(p[1]) is not None]
    lines = [Line("training loss", curve, "#0072B2")]
    evaluated = [(float(step), float(m["loss"])) for step, m in _history(results) if _number(m.get("loss")) is not None]
    if evaluated:
        lines.append(Line("evaluation loss", evaluated, "#D55E00"))
    caption = ("Mean training loss of the optimizer steps since the previous point (the first process's "
               "batches)" + ("; the evaluation loss at each evaluation" if evaluated else "") + ".")
    if not curve:
        caption += " This run's metrics.json has no training loss curve (published before it was recorded)."
    chart = line_chart("Loss over training steps", lines, y_label="loss", markers=_markers(results))
    return section("Loss", "loss", figure("loss", chart, caption))


def _metrics(results: Mapping[str, Any]) -> str | None:
    history = _history(results)
    names = list(dict.fromkeys(n for _, m in history for n in m if n != "loss"))
    if not names:
        return None
    parts = []
    unit = [n for n in names if n not in LOWER_IS_BETTER and all(
        0.0 <= (_number(m.get(n)) or 0.0) <= 1.0 for _, m in history)]
    groups = ([("Evaluation metrics over training steps", "metrics", unit)] if unit else []) + [
        (f"{n} over training steps", f"metric-{n}", [n]) for n in names if n not in unit]
    for title, key, group in groups:
        lines = [Line(n, [(float(s), float(m[n])) for s, m in history if _number(m.get(n)) is not None])
                 for n in group]
        parts.append(figure(key, line_chart(title, lines, markers=_markers(results)),
                            f"Measured at each of the {len(history)} evaluation(s) on the evaluation split."))
    return section("Evaluation over training", "curves", *parts)


def _comparison(results: Mapping[str, Any]) -> str:
    final: Mapping[str, Any] = results.get("final") or {}
    history = _history(results)
    first_step, first = history[0] if len(history) > 1 else (None, {})
    best = results.get("best") if isinstance(results.get("best"), Mapping) else None
    best_step = best.get("step") if best else None
    at_best = next((m for s, m in history if s == best_step), {})
    names = list(final)
    unit = [n for n in names if n not in LOWER_IS_BETTER and _in_unit(_number(final.get(n)))]
    series = ([Series(f"first evaluation (step {first_step})", [_number(first.get(n)) or 0.0 for n in unit], _FIRST)]
              if first else [])
    series.append(Series("final (published model)", [_number(final.get(n)) or 0.0 for n in unit], _FINAL))
    parts = []
    if unit:
        parts.append(figure("final", grouped_bars("Final evaluation" + (" against the first one" if first else ""),
                                                  unit, series),
                            "The published model's metrics on the evaluation split"
                            + (f", next to the first evaluation at step {first_step}." if first else ".")))
    rows = []
    for n in names:
        value, start = _number(final.get(n)), _number(first.get(n))
        change = f"{value - start:+.4f}" if value is not None and start is not None else "–"
        rows.append((n, _show(first.get(n)) if first else "–", _show(at_best.get(n)) if at_best else "–",
                     _show(final.get(n)), change))
    headers = ["metric", f"first evaluation (step {first_step})" if first else "first evaluation",
               f"best evaluation (step {best_step})" if best else "best evaluation", "final", "change from first"]
    parts.append(table(headers, rows, numeric=(1, 2, 3, 4)))
    if results.get("rankingQueries") is not None:
        skipped = results.get("rankingQueriesSkipped") or {}
        parts.append(f'<p class="note">Ranking metrics average over {esc(results["rankingQueries"])} evaluation '
                     f"queries; left out: {esc(skipped.get('singleCandidate', 0))} with a single candidate and "
                     f"{esc(skipped.get('noRelevant', 0))} with no relevant one.</p>")
    return section("Evaluation", "evaluation", *parts)


def _calibration(results: Mapping[str, Any]) -> str | None:
    calibration = results.get("calibration")
    if not isinstance(calibration, Mapping) or not calibration.get("calibrated"):
        return None
    after: Mapping[str, Any] = calibration["calibrated"]
    before: Mapping[str, Any] = calibration.get("uncalibrated") or {}
    names = [n for n in after if _number(after.get(n)) is not None]
    chart = grouped_bars("Decision metrics before and after calibration", names, [
        Series("uncalibrated", [_number(before.get(n)) or 0.0 for n in names], _FIRST),
        Series("calibrated", [_number(after.get(n)) or 0.0 for n in names], _FINAL)])
    return section("Decision calibration", "calibration",
                   figure("calibration", chart, f"Tuned to maximise {calibration.get('objective', '?')}; measured on "
                          f"{calibration.get('calibratedMeasuredOn', 'the evaluation rows')}."),
                   table(["metric", "uncalibrated", "calibrated"],
                         [(n, _show(before.get(n)), _show(after.get(n))) for n in names], numeric=(1, 2)))


def _data(spec: FineTuneRunSpec, data: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    train, evaluation = data.get("train") or {}, data.get("eval") or {}
    t = spec.training
    rows: list[tuple[str, Any]] = [
        ("training source", train.get("uri")), ("training rows", train.get("rows")),
        ("evaluation source", evaluation.get("uri")), ("evaluation rows", evaluation.get("rows")),
        ("augmentation run", data.get("fromAugmentationRun")), ("rows set aside", data.get("rejectedRows")),
        ("epochs", t.epochs), ("max steps", t.max_steps), ("batch size per process", t.batch_size),
        ("learning rate", t.learning_rate), ("scheduler", t.scheduler), ("max length", t.max_length),
        ("seed", t.seed), ("samples seen", results.get("samplesSeen"))]
    parts = [table(["setting", "value"], [(k, v) for k, v in rows if v is not None])]
    rejected = data.get("rejected") or {}
    if rejected:
        parts.append(table(["rows set aside because", "rows"], list(rejected.items()), numeric=(1,)))
    return section("Data and settings", "data", *parts)


def render_html_report(spec: FineTuneRunSpec, run: Mapping[str, str], data: Mapping[str, Any],
                       results: Mapping[str, Any], world_size: int) -> str:
    sections = [_loss(results), _metrics(results), _comparison(results), _calibration(results),
                _data(spec, data, results)]
    return page(f"Fine-tuning report: {run.get('namespace', '')}/{run.get('name', '')}",
                [*_header(spec, run, data, results, world_size), *(s for s in sections if s)])
