"""The plugin's pure parts: run references, the status layout, lift, and lint's messages and paths
(the same fixtures the API server rejects in tests/integration/test_crd_validation.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from rich.console import Console

from sampleforge.api import Kind
from sampleforge.api.constants import LABEL_STEP, Step
from sampleforge.cli.kube import COMPLETION_INDEX, context_namespace, pod_order, pod_prefix
from sampleforge.cli.lint import lint_document, lint_text
from sampleforge.cli.refs import RefError, RunRef, parse_ref
from sampleforge.cli.views import (
    Compared,
    compare_table,
    human_duration,
    is_improvement,
    lift_points,
    metric_names,
    status_view,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml")) + sorted((REPO / "examples/demo").glob("*.yaml"))
FIXTURES = sorted((REPO / "tests/fixtures/invalid").glob("*.yaml"))
NOW = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


def render(renderable: Any, width: int = 140) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def header(path: Path, key: str) -> str:
    return next(m.group(1).strip() for line in path.read_text().splitlines()
                if (m := re.match(rf"#\s*{key}:\s*(.+)$", line)))


class TestRefs:
    @pytest.mark.parametrize(("text", "kind"), [
        ("augmentationrun/shoes", Kind.AUGMENTATION_RUN), ("augmentationruns/shoes", Kind.AUGMENTATION_RUN),
        ("ar/shoes", Kind.AUGMENTATION_RUN), ("augrun/shoes", Kind.AUGMENTATION_RUN),
        ("AugmentationRun/shoes", Kind.AUGMENTATION_RUN),
        ("augmentationruns.sampleforge.io/shoes", Kind.AUGMENTATION_RUN),
        ("finetunerun/shoes", Kind.FINE_TUNE_RUN), ("ftr/shoes", Kind.FINE_TUNE_RUN),
        ("ftrun/shoes", Kind.FINE_TUNE_RUN), ("FineTuneRuns/shoes", Kind.FINE_TUNE_RUN),
    ])
    def test_kind_spellings_are_the_crds(self, text: str, kind: Kind) -> None:
        assert parse_ref(text) == RunRef("shoes", kind)

    def test_a_bare_name_leaves_the_kind_open(self) -> None:
        assert parse_ref(" shoes-2026q4 ") == RunRef("shoes-2026q4", None)
        assert str(parse_ref("ftr/x")) == "finetunerun/x"

    @pytest.mark.parametrize(("text", "says"), [
        ("pod/shoes", "'pod' in 'pod/shoes' is not a sampleforge kind"),
        ("ar/", "is not KIND/NAME"), ("ar/a/b", "is not KIND/NAME"), ("", "a run name is empty"),
    ])
    def test_bad_references_say_what_would_work(self, text: str, says: str) -> None:
        with pytest.raises(RefError, match=re.escape(says)):
            parse_ref(text)


def finetune_run(**status: Any) -> dict[str, Any]:
    return {"apiVersion": "sampleforge.io/v1alpha1", "kind": "FineTuneRun",
            "metadata": {"name": "ranker", "namespace": "search-ml", "generation": 2}, "status": status}


class TestStatusView:
    def test_running_finetune_shows_conditions_progress_and_metrics(self) -> None:
        run = finetune_run(
            phase="Running", observedGeneration=1, startTime="2026-12-03T07:42:00Z", jobName="ranker-ft",
            conditions=[
                {"type": "Ready", "status": "False", "reason": "JobRunning", "message": "2 of 2 pods running",
                 "lastTransitionTime": "2026-12-03T07:50:00Z"},
                {"type": "Stalled", "status": "False", "reason": "JobRunning", "message": "",
                 "lastTransitionTime": "2026-12-03T07:50:00Z"}],
            progress={"done": 370, "total": 1000, "percent": 37, "rate": 1.25, "eta": "51m", "stage": "training",
                      "lastHeartbeatTime": "2026-12-03T07:59:30Z"},
            outputs={"uri": "s3://models/ranker/"},
            results={"step": 370, "epoch": 1.11, "loss": 0.4123, "latestMetrics": {"ndcg@10": 0.612, "auc": 0.8},
                     "bestMetric": {"name": "ndcg@10", "value": 0.6125, "step": 300}})
        text = re.sub("[│┃]", " ", render(status_view(Kind.FINE_TUNE_RUN, run, NOW)))
        assert "FineTuneRun/ranker in namespace search-ml" in text
        assert "Running" in text and "2 (operator has seen 1)" in text
        assert "18m ago" in text  # startTime
        assert re.search(r"Ready\s+False\s+JobRunning\s+10m\s+2 of 2 pods running", text)
        assert "False: Stalled" in text and not re.search(r"Stalled\s+False", text)
        assert "370 / 1,000" in text and "37%" in text and "51m" in text and "training" in text
        assert "1.25/s" in text and "30s ago" in text
        assert "s3://models/ranker/" in text
        assert "ndcg@10 = 0.6125 at step 300" in text and re.search(r"ndcg@10\s+0.612\b", text)

    def test_succeeded_augmentation_shows_counts_per_augmenter_and_filter(self) -> None:
        run = {"metadata": {"name": "shoes", "namespace": "ml"}, "status": {
            "phase": "Succeeded", "startTime": "2026-12-03T07:00:00Z", "completionTime": "2026-12-03T07:42:00Z",
            "outputs": {"uri": "s3://d/out/", "manifestUri": "s3://d/out/manifest.json",
                        "reportUri": "s3://d/out/report.html", "rejectedRowsUri": "s3://d/out/rejects/"},
            "results": {"samplesIn": 1000, "samplesOut": 2500, "perAugmenter": {"typo": 900, "synonym": 600},
                        "filtered": {"dedup": 42}, "rejectedRows": 3}}}
        text = re.sub("[│┃]", " ", render(status_view(Kind.AUGMENTATION_RUN, run, NOW)))
        assert "Succeeded" in text and "took 42m" in text
        assert "s3://d/out/manifest.json" in text
        assert re.search(r"Report\s+s3://d/out/report.html", text) and "s3://d/out/rejects/" in text
        assert re.search(r"Samples in\s+1,000", text) and re.search(r"Samples out\s+2,500", text)
        assert "×2.50" in text
        assert re.search(r"augmenter typo \(kept\)\s+900", text) and re.search(r"filter dedup \(dropped\)\s+42", text)
        assert re.search(r"Rejected rows\s+3", text)

    def test_a_failed_run_leads_with_ready_then_what_holds(self) -> None:
        at = "2026-12-03T07:59:00Z"
        run = finetune_run(phase="Failed", conditions=[
            {"type": t, "status": v, "reason": r, "message": m, "lastTransitionTime": at} for t, v, r, m in (
                ("Complete", "False", "BackoffLimitExceeded", "x"), ("Failed", "True", "BackoffLimitExceeded",
                                                                     "pod ranker-0 exited with code 7"),
                ("Stalled", "True", "BackoffLimitExceeded", "y"), ("Ready", "False", "BackoffLimitExceeded", "z"))])
        lines = [line for line in render(status_view(Kind.FINE_TUNE_RUN, run, NOW)).splitlines()
                 if "BackoffLimitExceeded" in line]
        assert [line.split()[1] for line in lines] == ["Ready", "Failed", "Stalled"]
        assert "exited with code 7" in lines[1]

    def test_a_run_the_operator_has_not_seen(self) -> None:
        text = render(status_view(Kind.AUGMENTATION_RUN, {"metadata": {"name": "new", "namespace": "ml"}}, NOW))
        assert "Pending (not yet seen by the operator)" in text and "Conditions" not in text

    @pytest.mark.parametrize(("seconds", "shown"), [(5, "5s"), (65, "1m5s"), (600, "10m"), (3060, "51m"),
                                                     (7800, "2h10m"), (86400 * 3 + 3600 * 4, "3d4h")])
    def test_durations_read_like_kubectl(self, seconds: int, shown: str) -> None:
        assert human_duration(seconds) == shown
        assert human_duration(timedelta(seconds=seconds).total_seconds()) == shown


class TestCompare:
    def test_lift_is_in_points(self) -> None:
        assert lift_points(0.612, 0.580) == pytest.approx(3.2)
        assert lift_points(None, 0.5) is None and lift_points(0.5, None) is None

    def test_lower_is_better_metrics_improve_downwards(self) -> None:
        assert is_improvement("ndcg@10", 1.0) and not is_improvement("ndcg@10", -1.0)
        assert is_improvement("logLoss", -2.0) and not is_improvement("rmse", 0.5)

    def test_table_has_each_run_and_its_lift_over_the_first(self) -> None:
        runs = [Compared("baseline", "Succeeded", {"ndcg@10": 0.58, "auc": 0.75}),
                Compared("augmented", "Succeeded", {"ndcg@10": 0.612, "auc": 0.74, "mrr": 0.5}),
                Compared("pending", "Running", {})]
        assert metric_names(runs) == ["ndcg@10", "auc", "mrr"]
        text = render(compare_table(runs))
        assert "lift in points over baseline" in text
        assert re.search(r"ndcg@10\s+│\s+0.58\s+│\s+0.612\s+│\s+\+3.20\s+│\s+—\s+│\s+—", text), text
        assert re.search(r"auc\s+│\s+0.75\s+│\s+0.74\s+│\s+-1.00", text), text
        assert re.search(r"mrr\s+│\s+—\s+│\s+0.5\s+│\s+—", text), text


class TestLint:
    @pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
    def test_every_example_passes(self, path: Path) -> None:
        checked, errors = lint_text(path.read_text(), path.name)
        assert checked >= 1 and errors == [], errors

    @pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
    def test_each_invalid_fixture_fails_at_the_field_the_api_server_names(self, path: Path) -> None:
        checked, errors = lint_text(path.read_text(), path.name)
        assert checked == 1 and errors
        field = header(path, "field")
        assert field in [e.path for e in errors], (field, [str(e) for e in errors])
        # The API server's words after the path (a CEL rule's message, or the offending value) are ours too.
        expected = header(path, "expect")
        detail = expected.split(": ", 1)[1] if expected.startswith("spec.") else expected
        detail = re.sub(r"^(Invalid value|Forbidden|Required value|Unsupported value): ", "", detail)
        if not detail.startswith('"string"'):  # a type error: the server names the type, we name the value
            text = " ".join(e.message for e in errors)
            assert detail.split(": ")[-1] in text or detail.split(": ")[0] in text, (expected, text)

    def test_messages_read_like_the_api_servers(self) -> None:
        doc = yaml.safe_load((REPO / "tests/fixtures/invalid/ar-unknown-augmenter.yaml").read_text())
        [error] = lint_document(doc, "f.yaml")
        assert error.path == "spec.augmenters[0].type"
        assert error.message.startswith('Unsupported value: "backflip": supported values:')
        doc = yaml.safe_load((REPO / "tests/fixtures/invalid/ft-lora-params-without-lora.yaml").read_text())
        paths = {e.path: e.message for e in lint_document(doc, "f.yaml")}
        assert paths["spec.method.rank"] == ("rank applies only when type is lora or adalora; remove rank or change "
                                             "type")
        assert "spec.method.alpha" in paths

    def test_unknown_fields_are_caught_here_because_the_server_drops_them(self) -> None:
        doc = yaml.safe_load((REPO / "examples/augmentationrun.yaml").read_text())
        doc["spec"]["paralelism"] = 4
        [error] = lint_document(doc, "f.yaml")
        assert error.path == "spec.paralelism" and "unknown field" in error.message

    def test_a_manifest_of_a_whole_setup_lints_its_runs_only(self) -> None:
        run = (REPO / "examples/augmentationrun.yaml").read_text()
        text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\n" + run + "\n---\n" + \
            (REPO / "tests/fixtures/invalid/ar-parallelism-zero.yaml").read_text()
        checked, errors = lint_text(text, "setup.yaml")
        assert checked == 2 and [e.path for e in errors] == ["spec.parallelism"]
        assert "AugmentationRun/parallelism-zero" in errors[0].document

    def test_broken_yaml_and_foreign_objects(self) -> None:
        assert "not valid YAML" in lint_text("a: [", "x.yaml")[1][0].message
        bad = lint_document({"apiVersion": "sampleforge.io/v1alpha1", "kind": "Run"}, "x")
        assert "not a sampleforge run" in bad[0].message


class TestPodPrefix:
    @staticmethod
    def pod(name: str, index: str | None, where: str = "annotations") -> client.V1Pod:
        meta = client.V1ObjectMeta(name=name, **({where: {COMPLETION_INDEX: index}} if index is not None else {}))
        return client.V1Pod(metadata=meta)

    def test_shards_ranks_and_plain_pods(self) -> None:
        assert pod_prefix(Kind.AUGMENTATION_RUN, self.pod("shoes-aug-2-x7k2p", "2")) == "shard 2/x7k2p"
        assert pod_prefix(Kind.FINE_TUNE_RUN, self.pod("ranker-ft-0-q9z1m", "0", "labels")) == "rank 0/q9z1m"
        assert pod_prefix(Kind.FINE_TUNE_RUN, self.pod("ranker-ft-launcher", None)) == "ranker-ft-launcher"

    @staticmethod
    def step_pod(name: str, step: Step, index: str | None, created: int) -> client.V1Pod:
        labels = {LABEL_STEP: step.value} | ({COMPLETION_INDEX: index} if index is not None else {})
        stamp = datetime(2026, 12, 3, 12, 0, created, tzinfo=UTC)
        return client.V1Pod(metadata=client.V1ObjectMeta(name=name, labels=labels, creation_timestamp=stamp))

    def test_the_steps_of_a_multi_step_run_read_in_the_order_they_ran(self) -> None:
        # created out of order on purpose: a retried shard after the reduce's first pod
        pods = [self.step_pod("shoes-aug-reduce-p2x9w", Step.REDUCE, None, 9),
                self.step_pod("shoes-aug-1-b7k2p", Step.SHARDS, "1", 5),
                self.step_pod("shoes-aug-0-r4n8d", Step.SHARDS, "0", 12),
                self.step_pod("shoes-aug-0-x7k2p", Step.SHARDS, "0", 4),
                self.step_pod("shoes-aug-analysis-k3m8q", Step.ANALYSIS, None, 1)]
        ordered = sorted(pods, key=pod_order)
        assert [pod_prefix(Kind.AUGMENTATION_RUN, p) for p in ordered] == [
            "analysis/k3m8q", "shard 0/x7k2p", "shard 0/r4n8d", "shard 1/b7k2p", "reduce/p2x9w"]


class TestKubeconfigNamespace:
    def test_context_namespace_merges_a_kubeconfig_list_like_kubectl(self, tmp_path: Path) -> None:
        first, second = tmp_path / "a", tmp_path / "b"
        first.write_text(yaml.safe_dump({"current-context": "dev", "contexts": [
            {"name": "dev", "context": {"cluster": "c", "namespace": "search-ml"}}]}))
        second.write_text(yaml.safe_dump({"current-context": "prod", "contexts": [
            {"name": "dev", "context": {"cluster": "c", "namespace": "ignored"}},
            {"name": "prod", "context": {"cluster": "c"}}]}))
        both = f"{first}:{second}"
        assert context_namespace(both, None) == "search-ml"  # the first file's current-context and entry win
        assert context_namespace(both, "prod") is None  # no namespace set: the caller's default applies
        assert context_namespace(str(tmp_path / "missing"), "dev") is None


class TestCommandLine:
    """The installed entry point's exit codes, which scripts rely on."""

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sampleforge.cli", *args], capture_output=True, text=True,
                              check=False, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent"})

    def test_the_plugin_needs_neither_the_operator_nor_the_jobs(self) -> None:
        # The cli extra installs kubernetes, typer and rich over the core set: nothing heavier may load.
        code = ("import sys, sampleforge.cli.app, sampleforge.cli.podlogs, sampleforge.cli.storage; "
                "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'kopf', 'transformers', "
                "'pyarrow', 'prometheus_client') or m.startswith(('sampleforge.operator', 'sampleforge.jobs', "
                "'sampleforge.testbed'))))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert done.stdout.strip() == "[]"

    def test_lint_exit_codes(self) -> None:
        good = self.run("lint", *map(str, EXAMPLES))
        assert good.returncode == 0, good.stderr
        assert f"{len(EXAMPLES)} runs valid" in good.stdout
        bad = self.run("lint", str(REPO / "tests/fixtures/invalid/ar-fraction-above-one.yaml"))
        assert bad.returncode == 1
        assert "spec.augmenters[0].fraction: Invalid value: 1.5" in bad.stderr

    def test_no_cluster_is_a_clear_error(self) -> None:
        done = self.run("status", "shoes")
        assert done.returncode == 4 and "no cluster to talk to" in done.stderr and "KUBECONFIG" in done.stderr

    def test_an_explicit_kubeconfig_that_is_not_there_is_named(self, tmp_path: Path) -> None:
        done = self.run("status", "shoes", "--kubeconfig", str(tmp_path / "nope"))
        assert done.returncode == 4 and f"cannot use --kubeconfig {tmp_path / 'nope'}" in done.stderr

    def test_open_without_html_is_a_usage_error(self) -> None:
        done = self.run("report", "shoes", "--open")
        assert done.returncode == 2 and "pass --html FILE too" in done.stderr

    def test_a_bad_reference_is_a_usage_error(self) -> None:
        done = self.run("compare", "pod/a", "ftr/b")
        assert done.returncode == 2 and "not a sampleforge kind" in done.stderr
