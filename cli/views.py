"""What the commands print, as rich renderables built from the typed status models.

Everything here is pure (a run's dict in, a renderable or numbers out), so the layout and the
arithmetic (lift, ages, percentages) are unit-tested without a cluster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sampleforge.api import AugmentationRunStatus, Condition, ConditionStatus, FineTuneRunStatus, Kind, Phase
from sampleforge.api.fields import LOWER_IS_BETTER

PHASE_STYLES: dict[str, str] = {
    Phase.SUCCEEDED: "bold green", Phase.FAILED: "bold red", Phase.RUNNING: "bold cyan",
    Phase.PENDING: "yellow", Phase.WAITING: "yellow", Phase.SUSPENDED: "magenta",
}
#: Conditions whose True is bad news: they are shown in red when True, the others when False.
_BAD_WHEN_TRUE = {"Stalled", "Failed", "SpecChangeIgnored"}


def parse_status(kind: Kind, run: Mapping[str, Any]) -> AugmentationRunStatus | FineTuneRunStatus:
    """The run's status through the same model the operator writes it with."""
    model = AugmentationRunStatus if kind == Kind.AUGMENTATION_RUN else FineTuneRunStatus
    return model.model_validate(run.get("status") or {})


def human_duration(seconds: float) -> str:
    """51m, 2h10m, 3d4h: the same short style as kubectl's AGE column."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 3600:
        return f"{minutes}m" + (f"{seconds % 60}s" if minutes < 10 and seconds % 60 else "")
    if seconds < 86400:
        return f"{hours}h" + (f"{minutes % 60}m" if minutes % 60 else "")
    return f"{days}d" + (f"{hours % 24}h" if hours % 24 else "")


def age(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "—"
    now = now or datetime.now(UTC)
    return human_duration((now - when).total_seconds())


def format_number(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.1f}"


def _kv_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    return table


def status_view(kind: Kind, run: Mapping[str, Any], now: datetime | None = None) -> RenderableType:
    """Phase and conditions first (why it is where it is), then progress, outputs and results."""
    status = parse_status(kind, run)
    meta = run.get("metadata", {})
    phase = status.phase.value if status.phase else "Pending (not yet seen by the operator)"
    head = _kv_table()
    head.add_row("Run", f"{kind.value}/{meta.get('name')} in namespace {meta.get('namespace')}")
    head.add_row("Phase", Text(phase, style=PHASE_STYLES.get(status.phase or "", "")))
    generation, observed = meta.get("generation"), status.observed_generation
    if generation is not None and observed is not None and observed != generation:
        head.add_row("Generation", Text(f"{generation} (operator has seen {observed})", style="yellow"))
    if status.start_time:
        head.add_row("Started", f"{status.start_time.isoformat()} ({age(status.start_time, now)} ago)")
    if status.completion_time:
        took = (status.completion_time - status.start_time).total_seconds() if status.start_time else None
        suffix = f", took {human_duration(took)}" if took is not None else ""
        head.add_row("Finished", f"{status.completion_time.isoformat()}{suffix}")
    if status.job_name:
        head.add_row("Job", status.job_name)
    parts: list[RenderableType] = [head]

    if status.conditions:
        parts.append(conditions_view(status.conditions, now))

    if status.progress:
        parts.append(_progress_view(status.progress, now))
    if status.outputs:
        outputs = _kv_table()
        out = status.outputs
        for label, value in (("Output", out.uri), ("Manifest", out.manifest_uri), ("Report", out.report_uri),
                             ("Metrics", out.metrics_uri), ("Model", out.model_uri), ("Model card", out.model_card_uri),
                             ("Rejected rows", out.rejected_rows_uri)):
            if value:
                outputs.add_row(label, value)
        parts.append(Panel(outputs, title="Outputs", title_align="left", expand=False))
    if isinstance(status, AugmentationRunStatus) and status.results:
        parts.append(_augmentation_results(status))
    if isinstance(status, FineTuneRunStatus) and status.results:
        parts.append(_finetune_results(status))
    return Group(*parts)


def condition_style(type_: str, value: str) -> str:
    """Red for bad news (Stalled, Failed, SpecChangeIgnored True), green for Ready, yellow for
    not ready yet, dim for conditions that are simply not the case."""
    if type_ in _BAD_WHEN_TRUE:
        return "bold red" if value == ConditionStatus.TRUE else "dim"
    if type_ == "Ready":
        return "green" if value == ConditionStatus.TRUE else "yellow"
    return "cyan" if value == ConditionStatus.TRUE else "dim"


def conditions_view(conditions: Sequence[Condition], now: datetime | None = None) -> RenderableType:
    """Ready, then every condition that holds (True or Unknown), each with reason, age and message;
    the ones that are False are only named: their message repeats Ready's and would bury the news."""
    ordered = sorted(conditions, key=lambda c: (c.type != "Ready", c.status == ConditionStatus.FALSE, c.type))
    shown = [c for c in ordered if c.type == "Ready" or c.status != ConditionStatus.FALSE]
    table = Table(title="Conditions", title_justify="left", expand=False)
    for column in ("Type", "Status", "Reason", "Age", "Message"):
        table.add_column(column, overflow="fold")
    for c in shown:
        table.add_row(c.type, Text(c.status.value, style=condition_style(c.type, c.status)), c.reason,
                      age(c.last_transition_time, now), c.message)
    hidden = [c.type for c in ordered if c not in shown]
    if not hidden:
        return table
    return Group(table, Text(f"False: {', '.join(hidden)}", style="dim"))


def _progress_view(progress: Any, now: datetime | None) -> RenderableType:
    grid = _kv_table()
    if progress.done is not None or progress.total is not None:
        done = format_number(progress.done)
        total = format_number(progress.total) if progress.total is not None else "?"
        percent = progress.percent
        if percent is None and progress.done is not None and progress.total:
            percent = min(100, int(100 * progress.done / progress.total))
        bar = progress_bar(percent) if percent is not None else ""
        grid.add_row("Done", f"{done} / {total}" + (f"  {bar} {percent}%" if percent is not None else ""))
    if progress.rate is not None:
        grid.add_row("Rate", f"{format_number(progress.rate)}/s")
    if (progress.eta or progress.eta_seconds is not None) and progress.percent != 100:
        grid.add_row("ETA", progress.eta or human_duration(progress.eta_seconds or 0))
    if progress.stage:
        grid.add_row("Stage", progress.stage)
    if progress.last_heartbeat_time:
        grid.add_row("Last heartbeat", f"{age(progress.last_heartbeat_time, now)} ago")
    return Panel(grid, title="Progress", title_align="left", expand=False)


def progress_bar(percent: int, width: int = 20) -> str:
    filled = round(width * max(0, min(100, percent)) / 100)
    return "█" * filled + "░" * (width - filled)


def _augmentation_results(status: AugmentationRunStatus) -> RenderableType:
    results = status.results
    assert results is not None
    grid = _kv_table()
    grid.add_row("Samples in", format_number(results.samples_in))
    grid.add_row("Samples out", format_number(results.samples_out))
    if results.samples_in and results.samples_out is not None:
        grid.add_row("Expansion", f"×{results.samples_out / results.samples_in:.2f}")
    if results.rejected_rows is not None:
        grid.add_row("Rejected rows", format_number(results.rejected_rows))
    parts: list[RenderableType] = [grid]
    if results.per_augmenter or results.filtered:
        table = Table(expand=False)
        table.add_column("Step")
        table.add_column("Rows", justify="right")
        for name, kept in results.per_augmenter.items():
            table.add_row(f"augmenter {name} (kept)", format_number(kept))
        for name, dropped in results.filtered.items():
            table.add_row(f"filter {name} (dropped)", format_number(dropped))
        parts.append(table)
    return Panel(Group(*parts), title="Results", title_align="left", expand=False)


def _finetune_results(status: FineTuneRunStatus) -> RenderableType:
    results = status.results
    assert results is not None
    grid = _kv_table()
    if results.step is not None:
        grid.add_row("Step", format_number(results.step))
    if results.epoch is not None:
        grid.add_row("Epoch", format_number(results.epoch))
    if results.loss is not None:
        grid.add_row("Loss", format_number(results.loss))
    if results.best_metric:
        best = results.best_metric
        grid.add_row("Best", f"{best.name} = {format_number(best.value)} at step {best.step}")
    if results.rejected_rows is not None:
        grid.add_row("Rejected rows", format_number(results.rejected_rows))
    if results.checkpoint_uri:
        grid.add_row("Checkpoint", results.checkpoint_uri)
    parts: list[RenderableType] = [grid]
    if results.latest_metrics:
        table = Table(expand=False)
        table.add_column("Metric")
        table.add_column("Value", justify="right")
        for name, value in results.latest_metrics.items():
            table.add_row(name, format_number(value))
        parts.append(table)
    return Panel(Group(*parts), title="Results", title_align="left", expand=False)


# --- compare ------------------------------------------------------------------------------------


def lift_points(value: float | None, baseline: float | None) -> float | None:
    """The difference in points (hundredths) of the same metric: 0.612 vs 0.580 is +3.2 points.
    Metrics are on a 0..1 scale (or an error scale for mse/mae), so points read as percentage points."""
    if value is None or baseline is None:
        return None
    return (value - baseline) * 100.0


def is_improvement(metric: str, lift: float) -> bool:
    """Whether a positive or negative lift is good news for this metric (losses and errors shrink)."""
    return lift < 0 if metric in LOWER_IS_BETTER else lift > 0


@dataclass(frozen=True)
class Compared:
    """One run's column in ``compare``: its name, phase and latest metrics."""

    name: str
    phase: str
    metrics: Mapping[str, float]


def metric_names(runs: Sequence[Compared]) -> list[str]:
    """Every metric any run reports, in the order the first run that has it lists it."""
    names: list[str] = []
    for run in runs:
        names.extend(name for name in run.metrics if name not in names)
    return names


def compare_table(runs: Sequence[Compared]) -> Table:
    """Metric rows, a column per run, and after each run but the first its lift over the first."""
    base = runs[0]
    table = Table(title=f"Metrics (lift in points over {base.name})", title_justify="left")
    table.add_column("Metric", style="bold")
    table.add_column(f"{base.name}\n{base.phase}", justify="right")
    for run in runs[1:]:
        table.add_column(f"{run.name}\n{run.phase}", justify="right")
        table.add_column("lift\n(points)", justify="right")
    for metric in metric_names(runs):
        cells: list[str | Text] = [metric, format_number(base.metrics.get(metric))]
        for run in runs[1:]:
            value = run.metrics.get(metric)
            lift = lift_points(value, base.metrics.get(metric))
            cells.append(format_number(value))
            if lift is None:
                cells.append("—")
            else:
                style = "green" if is_improvement(metric, lift) else ("red" if lift else "")
                cells.append(Text(f"{lift:+.2f}", style=style))
        table.add_row(*cells)
    return table
