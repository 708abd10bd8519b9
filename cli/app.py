"""The commands of ``kubectl sampleforge`` (typer), each a thin layer over :mod:`.kube`,
:mod:`.views`, :mod:`.podlogs`, :mod:`.storage` and :mod:`.lint`.

Exit codes are part of the interface, because ``wait`` is used in scripts and CI:
0 success, 1 the run failed (or ``lint`` found errors), 2 bad usage, 3 ``wait`` timed out,
4 an error the user can fix (run not found, Secret missing, MinIO unreachable).
"""

from __future__ import annotations

import json
import sys
import time
import webbrowser
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markdown import Markdown
from rich.rule import Rule
from rich.text import Text

from sampleforge.api import Kind
from sampleforge.api.constants import TERMINAL_PHASES, Phase

from . import lint as linting
from .kube import Cluster, UserError, connect, get_run, phase_of, watch_run
from .refs import RefError, RunRef, parse_ref
from .storage import fetch_report
from .views import Compared, compare_table, status_view

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_ERROR = 4

app = typer.Typer(name="kubectl sampleforge", no_args_is_help=True, add_completion=False,
                  help="Look at sampleforge runs (AugmentationRun, FineTuneRun): status, logs of every shard, "
                       "reports, metrics side by side; wait for them; lint manifests offline.")
out = Console()
err = Console(stderr=True)


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace of the run(s); default: the "
                                                "context's namespace.")]
Context = Annotated[str | None, typer.Option("--context", help="kubeconfig context to use; default: current.")]
Kubeconfig = Annotated[str | None, typer.Option("--kubeconfig", help="kubeconfig file; default: KUBECONFIG, "
                                                 "then ~/.kube/config, then in-cluster.")]
RunArg = Annotated[str, typer.Argument(metavar="RUN", help="NAME, or KIND/NAME with KIND augmentationrun (ar, augrun) "
                                                           "or finetunerun (ftr, ftrun).")]


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    err.print(Text.assemble(("error: ", "bold red"), message), highlight=False)
    return typer.Exit(code)


def _cluster(ctx: typer.Context, namespace: str | None, context: str | None, kubeconfig: str | None) -> Cluster:
    shared = ctx.obj or {}
    return connect(namespace or shared.get("namespace"), context or shared.get("context"),
                   kubeconfig or shared.get("kubeconfig"))


def _ref(text: str) -> RunRef:
    try:
        return parse_ref(text)
    except RefError as error:
        raise _fail(str(error), EXIT_USAGE) from None


@app.callback()
def _global(ctx: typer.Context, namespace: Namespace = None, context: Context = None,
            kubeconfig: Kubeconfig = None) -> None:
    """Cluster options may come before the command too (``sampleforge -n ml status RUN``)."""
    ctx.obj = {"namespace": namespace, "context": context, "kubeconfig": kubeconfig}


@app.command()
def status(ctx: typer.Context, run: RunArg, namespace: Namespace = None, context: Context = None,
           kubeconfig: Kubeconfig = None,
           output: Annotated[OutputFormat, typer.Option("--output", "-o", help="text, or json: the raw status.")]
           = OutputFormat.TEXT) -> None:
    """Phase, conditions with reasons, progress and ETA, outputs and results of a run."""
    ref = _ref(run)
    try:
        cluster = _cluster(ctx, namespace, context, kubeconfig)
        kind, obj = get_run(cluster, ref)
    except UserError as error:
        raise _fail(str(error)) from None
    if output == OutputFormat.JSON:
        sys.stdout.write(json.dumps(obj.get("status") or {}, indent=2, sort_keys=True) + "\n")
        return
    try:
        view = status_view(kind, obj)
    except ValidationError as error:
        # An operator newer than this plugin may write fields it does not know: show them rather than fail.
        err.print(f"the status of {kind.value} {obj['metadata']['name']} does not match this plugin's schema "
                  f"({error.error_count()} difference(s); upgrade the plugin); shown as stored:", highlight=False)
        sys.stdout.write(yaml.safe_dump(obj.get("status") or {}, sort_keys=False))
        return
    out.print(view)


@app.command()
def logs(ctx: typer.Context, run: RunArg, follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream "
         "new lines and new pods (retries) until the run finishes.")] = False,
         tail: Annotated[int | None, typer.Option("--tail", help="Only the last N lines of each pod.")] = None,
         namespace: Namespace = None, context: Context = None, kubeconfig: Kubeconfig = None) -> None:
    """The logs of every pod of a run, each line prefixed with its shard (or rank) and pod."""
    from .podlogs import follow_logs, print_logs

    ref = _ref(run)
    try:
        cluster = _cluster(ctx, namespace, context, kubeconfig)
        kind, obj = get_run(cluster, ref)
        if follow:
            pods, read = follow_logs(cluster, kind, obj, tail)
        else:
            pods, read = print_logs(cluster, kind, obj, tail)
    except UserError as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    name = obj["metadata"]["name"]
    if pods == 0:
        job = (obj.get("status") or {}).get("jobName")
        raise _fail(f"{kind.value} {name} has no pods in namespace {cluster.namespace} (phase "
                    f"{phase_of(obj) or 'Pending'}{', Job ' + job if job else ''}): they have not started yet, or "
                    "the Job and its pods were deleted (spec.ttlSecondsAfterFinished)")
    if read == 0:
        raise _fail(f"none of the {pods} pods of {kind.value} {name} had a log the cluster could return (see above)")


@app.command()
def report(ctx: typer.Context, run: RunArg,
           html: Annotated[Path | None, typer.Option("--html", help="Write the run's HTML report to this file.",
                                                      dir_okay=False)] = None,
           open_html: Annotated[bool, typer.Option("--open", help="With --html: open the written file in the "
                                                   "default web browser.")] = False,
           s3_endpoint: Annotated[str | None, typer.Option("--s3-endpoint", help="host:port to reach MinIO at "
                                  "instead of spec.storage.endpoint (e.g. a kubectl port-forward).")] = None,
           namespace: Namespace = None, context: Context = None, kubeconfig: Kubeconfig = None) -> None:
    """The run's report from MinIO, rendered here: an AugmentationRun's report.md, a FineTuneRun's model
    card and metrics."""
    ref = _ref(run)
    if open_html and html is None:
        raise _fail("--open opens the file --html writes: pass --html FILE too", EXIT_USAGE)
    try:
        cluster = _cluster(ctx, namespace, context, kubeconfig)
        kind, obj = get_run(cluster, ref)
        found = fetch_report(cluster, kind, obj, want_html=html is not None, endpoint=s3_endpoint)
    except UserError as error:
        raise _fail(str(error)) from None
    if html is not None:
        assert found.html is not None
        html.write_bytes(found.html)
        err.print(f"wrote {found.html_uri} to {html}", highlight=False)
        if open_html and not webbrowser.open(html.resolve().as_uri()):
            err.print(f"no web browser to open {html} with; open it yourself", highlight=False)
        return
    for uri, markdown in found.markdown:
        out.print(Rule(uri, style="dim"))
        out.print(Markdown(markdown))
    if found.metrics is not None:
        out.print(Rule(found.metrics_uri or "metrics.json", style="dim"))
        out.print(found.metrics)


@app.command()
def compare(ctx: typer.Context, runs: Annotated[list[str], typer.Argument(metavar="RUN RUN...", help="FineTuneRuns; "
            "the first is the baseline the others' lift is measured against.")],
            namespace: Namespace = None, context: Context = None, kubeconfig: Kubeconfig = None,
            output: Annotated[OutputFormat, typer.Option("--output", "-o")] = OutputFormat.TEXT) -> None:
    """FineTuneRuns' latest evaluation metrics side by side, with each one's lift (in points) over the first."""
    if len(runs) < 2:
        raise _fail("compare needs at least two FineTuneRuns: a baseline and one to compare with it", EXIT_USAGE)
    refs = [_ref(text) for text in runs]
    for ref in refs:
        if ref.kind == Kind.AUGMENTATION_RUN:
            raise _fail(f"{ref} is an AugmentationRun; compare takes FineTuneRuns (their metrics)", EXIT_USAGE)
    columns: list[Compared] = []
    try:
        cluster = _cluster(ctx, namespace, context, kubeconfig)
        for ref in refs:
            _, obj = get_run(cluster, RunRef(ref.name, Kind.FINE_TUNE_RUN))
            results = (obj.get("status") or {}).get("results") or {}
            columns.append(Compared(ref.name, phase_of(obj) or "Pending", dict(results.get("latestMetrics") or {})))
    except UserError as error:
        raise _fail(str(error)) from None
    if output == OutputFormat.JSON:
        base = columns[0].metrics
        sys.stdout.write(json.dumps([{"name": c.name, "phase": c.phase, "metrics": dict(c.metrics),
                                      "liftPoints": {m: round((v - base[m]) * 100, 6) for m, v in c.metrics.items()
                                                     if m in base}} for c in columns], indent=2) + "\n")
        return
    without = [c.name for c in columns if not c.metrics]
    out.print(compare_table(columns))
    if without:
        err.print(f"no evaluation metrics yet for: {', '.join(without)} (they appear once a run evaluates)",
                  highlight=False)


@app.command()
def wait(ctx: typer.Context, run: RunArg,
         timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait before giving up (exit 3).")]
         = 3600.0, namespace: Namespace = None, context: Context = None, kubeconfig: Kubeconfig = None) -> None:
    """Wait for a run to finish: exit 0 when it Succeeded, 1 when it Failed (with the reason), 3 on timeout."""
    started = time.monotonic()
    ref = _ref(run)
    try:
        cluster = _cluster(ctx, namespace, context, kubeconfig)
        kind, obj = get_run(cluster, ref)
        name = obj["metadata"]["name"]
        current: dict[str, Any] | None = obj
        if phase_of(obj) not in TERMINAL_PHASES:
            # On stderr, so that scripts reading stdout see only the outcome.
            err.print(f"waiting for {kind.value}/{name} (phase {phase_of(obj) or 'Pending'})", highlight=False)
            for current in watch_run(cluster, kind, name, timeout - (time.monotonic() - started)):
                if current is None or phase_of(current) in TERMINAL_PHASES:
                    break
    except UserError as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if current is None:
        raise _fail(f"{kind.value} {name} was deleted from namespace {cluster.namespace} while waiting")
    phase = phase_of(current)
    if phase == Phase.SUCCEEDED:
        out.print(f"{kind.value}/{name} Succeeded", highlight=False)
        return
    if phase == Phase.FAILED:
        failed: dict[str, Any] = next((c for c in (current.get("status") or {}).get("conditions", []) if c.get("type") == "Failed"),
                      {})
        raise _fail(f"{kind.value}/{name} Failed: {failed.get('reason', 'Failed')}: {failed.get('message', '')}",
                    EXIT_FAILED)
    raise _fail(f"timed out after {timeout:g}s waiting for {kind.value}/{name} (phase {phase or 'Pending'}); "
                f"see `kubectl sampleforge status {kind.value.lower()}/{name} -n {cluster.namespace}`", EXIT_TIMEOUT)


@app.command("lint")
def lint_command(files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Manifests (YAML, several "
                 "documents allowed; '-' reads stdin).", allow_dash=True)]) -> None:
    """Validate run manifests offline against the schema, with the messages the API server gives."""
    failed = checked = 0
    for path in files:
        if str(path) == "-":
            text, source = sys.stdin.read(), "<stdin>"
        else:
            try:
                text, source = path.read_text(encoding="utf-8"), str(path)
            except OSError as error:
                raise _fail(f"cannot read {path}: {error.strerror}") from None
        count, errors = linting.lint_text(text, source)
        checked += count
        for problem in errors:
            err.print(Text.assemble(("✗ ", "red"), str(problem)), highlight=False, soft_wrap=True)
        failed += len(errors)
        if count == 0 and not errors:
            err.print(Text.assemble(("! ", "yellow"), f"{source}: no AugmentationRun or FineTuneRun in it"))
    if failed:
        raise typer.Exit(EXIT_FAILED)
    if checked == 0:
        raise typer.Exit(EXIT_FAILED)
    out.print(f"[green]✓[/] {checked} run{'s' if checked != 1 else ''} valid", highlight=False)


def main() -> None:
    """Entry point of ``kubectl-sampleforge`` and ``sampleforge``."""
    app()
