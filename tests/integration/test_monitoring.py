"""Alerts and dashboard against the real Prometheus tools.

* ``promtool check rules`` and ``promtool test rules`` (a unit test for every alert, both firing
  and staying quiet: charts/sampleforge/alerts/tests.yaml).
* Every dashboard query parsed by promtool (as recording rules: the same PromQL parser).
* A real Prometheus, configured the way the chart's ServiceMonitor configures prometheus-operator
  (job="sampleforge-operator", honor_labels), scrapes the operator every second while it takes
  runs through Running, Succeeded, Failed and Suspended on the testbed, with progress heartbeats
  from the runs' pods. Then every dashboard query and every alert expression is evaluated through
  Prometheus' HTTP API: each must succeed, the dashboard's must return series (two named
  exceptions below), the alert rules load and evaluate without error, RunFailed fires for the
  failed run with that run's namespace and name (not the operator's), and the alerts about an
  unhealthy operator stay quiet. A failed run that is deleted takes its alert along.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from operator_helpers import (
    HOLD,
    commit_output,
    create_credentials,
    create_run,
    ensure_operator_namespace,
    example,
    pod_token,
    post_heartbeat,
    release,
    running_pod,
    stored_example,
    wait_for,
    wait_phase,
)

from sampleforge.api.constants import GROUP, PLURALS, VERSION, Kind
from sampleforge.testbed import EXIT_CODE_ANNOTATION, Testbed, binary
from sampleforge.testbed._health import http_ok
from sampleforge.testbed._minio import MinioServer
from sampleforge.testbed._operator import OPERATOR_NAMESPACE, OperatorProcess
from sampleforge.testbed._ports import free_port
from sampleforge.testbed._process import ManagedProcess

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sampleforge"
RULES = CHART / "alerts" / "sampleforge-rules.yaml"
RULE_TESTS = CHART / "alerts" / "tests.yaml"
DASHBOARD = CHART / "dashboards" / "sampleforge.json"
JOB = "sampleforge-operator"
AR, FT = Kind.AUGMENTATION_RUN, Kind.FINE_TUNE_RUN
#: Grafana's built-in interval variables, as Grafana would fill them for a short time range.
GRAFANA_INTERVALS = {"$__rate_interval": "30s", "$__interval": "1s", "$__range": "5m"}
#: Dashboard series that may legitimately be empty after a healthy run: both counters are
#: created by their first error, and nothing failed to reconcile or to create a Job here.
MAY_BE_EMPTY = {
    "sampleforge_reconcile_errors_total": "no reconcile failed",
    "sampleforge_job_create_errors_total": "no Job creation failed",
}
#: Alert inputs that are legitimately absent in a healthy run (same reason: created on first error).
ALERT_INPUTS_MAY_BE_ABSENT = {"sampleforge_reconcile_errors_total", "sampleforge_heartbeats_total"}
#: Alerts that must fire after the run below (a run failed), and the ones that must stay quiet.
MUST_FIRE = {"SampleforgeRunFailed"}
#: Where every alert's runbook_url points (a section of docs/runbooks.md).
RUNBOOKS = "https://github.com/sampleforge/sampleforge/blob/main/docs/runbooks.md#"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary("promtool")), *args], capture_output=True, text=True, timeout=120, check=False)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_targets() -> list[tuple[str, str, bool]]:
    """(where, expr, is a range query) of every panel target."""
    out = []
    stack = list(dashboard()["panels"])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            out.append((f"{panel['title']} / {target['refId']}", target["expr"], bool(target.get("range"))))
    return out


def fill(expr: str, namespace: str = ".*", run: str = ".*") -> str:
    """An expression as Grafana sends it, with the dashboard's variables chosen."""
    for name, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(name, value)
    return expr.replace("$namespace", namespace).replace("$run", run)


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    return rules


# --- promtool ----------------------------------------------------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """promtool has no 'check query'; as recording rules, the queries go through the same parser."""
    rules = [{"record": f"sampleforge:dashboard_query_{i}", "expr": fill(expr)}
             for i, (_, expr, _) in enumerate(dashboard_targets())]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- a real Prometheus scraping the operator during runs -------------------------------------------------


@dataclass
class Prometheus:
    url: str
    process: ManagedProcess

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else [data["result"]]
        return result

    def query_range(self, expr: str, seconds: int = 60) -> list[dict[str, Any]]:
        end = time.time()
        data = self.api("query_range", query=expr, start=str(end - seconds), end=str(end), step="5")
        assert data["resultType"] == "matrix", data
        result: list[dict[str, Any]] = data["result"]
        return result


def start_prometheus(workdir: Path, logs: Path, operator_port: int) -> Prometheus:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        # What the chart's ServiceMonitor makes prometheus-operator generate, less the Kubernetes
        # service discovery: the job name, honor_labels, and the operator's namespace as a target label.
        "scrape_configs": [{"job_name": JOB, "honor_labels": True, "metrics_path": "/metrics",
                            "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"],
                                                "labels": {"namespace": OPERATOR_NAMESPACE}}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess("prometheus", [
        binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn", "--storage.tsdb.retention.time=1h",
    ], logs / "prometheus.log", cwd=workdir).start()
    process.wait_ready(lambda: http_ok(f"{url}/-/ready"), 60, "ready (/-/ready)")
    return Prometheus(url, process)


@dataclass
class Scene:
    """What the module's runs left behind for the queries to find."""

    prometheus: Prometheus
    namespace: str
    runs: dict[str, str]


def beat(api: client.ApiClient, url: str, run: dict[str, Any], done: int, total: int, **results: Any) -> None:
    meta = run["metadata"]
    pod = running_pod(api, meta["namespace"], meta["uid"])
    body = {"kind": run["kind"], "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"],
            "shard": 0, "shards": 1, "done": done, "total": total, "rate": 20.0,
            "sentAt": datetime.now(UTC).isoformat(), **results}
    assert post_heartbeat(url, pod_token(api, pod), body) == 202



@pytest.fixture(scope="module")
def scene(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    with testbed.api_client() as api:
        ensure_operator_namespace(api)
        namespace = f"t-{secrets.token_hex(4)}"
        client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        testbed.wait_for_default_service_account(namespace)
        create_credentials(api, namespace, testbed.minio)
        operator = OperatorProcess(testbed.kubeconfig, testbed.logs / "operator-monitoring.log", "monitoring-0", {
            "SAMPLEFORGE_OPERATOR_STATUS_MIN_INTERVAL_SECONDS": "1", "SAMPLEFORGE_OPERATOR_RESYNC_SECONDS": "2",
            "SAMPLEFORGE_OPERATOR_LEASE_NAME": "sampleforge-monitoring-test",
            # Only this module's runs: the run counts the alerts read must not include other tests'.
            "SAMPLEFORGE_OPERATOR_NAMESPACES": namespace,
            # The watch-health check runs every max(5 s, this / 4): healthy within seconds.
            "SAMPLEFORGE_OPERATOR_WATCH_STALE_SECONDS": "20",
        })
        prometheus = start_prometheus(tmp_path_factory.mktemp("prometheus"), testbed.logs, operator.port)
        try:
            operator.start(timeout=90)
            yield Scene(prometheus, namespace, drive_runs(api, namespace, operator.url, testbed.minio))
        finally:
            # Runs go while the operator still runs (it lets go of its finalizers), so no later
            # test's operator inherits them from a namespace being deleted.
            custom = client.CustomObjectsApi(api)
            for plural in PLURALS.values():
                custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, plural)
            wait_for(lambda: not any(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]
                                     for plural in PLURALS.values()), timeout=60, what="the runs to be deleted")
            operator.stop()
            prometheus.process.stop()
            client.CoreV1Api(api).delete_namespace(namespace)


def drive_runs(api: client.ApiClient, namespace: str, url: str, minio: MinioServer) -> dict[str, str]:
    """An augmentation and a fine-tuning run with progress, a failed run and a suspended one; the
    two that succeed commit what their last heartbeats said."""
    shoes = create_run(api, namespace, stored_example(minio, "augmentationrun.yaml", parallelism=1), name="shoes",
                       labels=HOLD)
    ranker = create_run(api, namespace, stored_example(minio, "finetunerun-baseline.yaml"), name="ranker",
                        labels=HOLD)
    broken = create_run(api, namespace, example("augmentationrun.yaml", parallelism=1, backoffLimit=0), name="broken",
                        labels=HOLD)
    create_run(api, namespace, example("augmentationrun.yaml", suspend=True), name="paused")
    wait_phase(api, AR, namespace, "shoes", "Running", timeout=90)
    wait_phase(api, FT, namespace, "ranker", "Running", timeout=90)
    for step in range(1, 4):
        beat(api, url, shoes, 200 * step, 1000, augmentation={
            "samplesIn": 200 * step, "samplesOut": 450 * step,
            "perAugmenter": {"typo": 150 * step, "synonym": 100 * step}, "filtered": {"dedup": 20 * step}})
        beat(api, url, ranker, 40 * step, 300, finetune={
            "step": 40 * step, "epoch": 0.4 * step, "loss": 1.0 / step,
            "latestMetrics": {"ndcg@10": 0.5 + 0.05 * step, "mrr": 0.4 + 0.05 * step}})
        time.sleep(1.5)
    pod = running_pod(api, namespace, broken["metadata"]["uid"])
    client.CoreV1Api(api).patch_namespaced_pod(pod.metadata.name, namespace,
                                               {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "1"}}})
    s3 = minio.client()
    commit_output(s3, shoes, rows=600, generated={"typo": 450, "synonym": 300}, filtered={"dedup": 60})
    commit_output(s3, ranker, step=120, metrics={"ndcg@10": 0.65, "mrr": 0.55}, loss=1 / 3)
    release(api, namespace, shoes["metadata"]["uid"])
    release(api, namespace, ranker["metadata"]["uid"])
    wait_phase(api, AR, namespace, "shoes", "Succeeded", timeout=90)
    wait_phase(api, FT, namespace, "ranker", "Succeeded", timeout=90)
    wait_phase(api, AR, namespace, "broken", "Failed", timeout=90)
    wait_phase(api, AR, namespace, "paused", "Suspended", timeout=90)
    return {"augmentation": "shoes", "finetune": "ranker", "failed": "broken", "suspended": "paused"}


@pytest.fixture(scope="module")
def prometheus(scene: Scene) -> Prometheus:
    """Prometheus once it has scraped the end state for long enough to compute rates over it."""
    prom = scene.prometheus
    wait_for(lambda: prom.query('sampleforge_runs{kind="AugmentationRun", phase="Succeeded"} >= 1')
             and prom.query('sampleforge_runs{kind="AugmentationRun", phase="Failed"} >= 1')
             and prom.query(f'count_over_time(up{{job="{JOB}"}}[1m]) >= 15')
             and prom.query(f'sampleforge_operator_watch_healthy{{job="{JOB}"}} == 1'),
             timeout=90, what="Prometheus to have scraped the finished runs")
    return prom


def test_prometheus_scrapes_the_operator_as_the_chart_configures_it(prometheus: Prometheus, scene: Scene) -> None:
    up = prometheus.query(f'up{{job="{JOB}"}}')
    assert [s["value"][1] for s in up] == ["1"]
    assert up[0]["metric"]["namespace"] == OPERATOR_NAMESPACE
    # honor_labels: per-run series keep the run's namespace instead of the target's.
    progress = prometheus.query('sampleforge_run_progress_ratio{name="shoes"}')
    assert progress and progress[0]["metric"]["namespace"] == scene.namespace
    assert not prometheus.query("{exported_namespace!=\"\"}")


@pytest.mark.parametrize(("where", "expr", "is_range"), dashboard_targets(), ids=[t[0] for t in dashboard_targets()])
def test_every_dashboard_query_returns_series(prometheus: Prometheus, scene: Scene, where: str, expr: str,
                                              is_range: bool) -> None:
    filled = fill(expr, namespace=scene.namespace)
    series = prometheus.query(filled)
    if is_range:
        assert prometheus.query_range(filled) or not series
    if not series:
        reason = next((why for metric, why in MAY_BE_EMPTY.items() if metric in expr), None)
        assert reason, f"{where}: {filled} returned no series"
        return
    assert all(s["value"][1] not in ("", None) for s in series)


def test_dashboard_per_run_panels_show_the_runs_values(prometheus: Prometheus, scene: Scene) -> None:
    """Not only series: the values the heartbeats carried."""
    ns = scene.namespace

    def settles_at(expr: str, expected: float) -> None:
        """The series reaches the value the heartbeats carried (a scrape or a status write may lag)."""

        def reached() -> bool:
            series = prometheus.query(expr)
            return len(series) == 1 and float(series[0]["value"][1]) == pytest.approx(expected)

        wait_for(reached, timeout=45, what=f"{expr} == {expected} (last: {prometheus.query(expr)})")

    settles_at(f'sampleforge_run_progress_ratio{{namespace="{ns}", name="shoes"}}', 1.0)  # Succeeded
    settles_at(f'sum by (augmenter) (sampleforge_augmentation_augmenter_samples{{namespace="{ns}", '
               f'augmenter="typo"}})', 450)
    settles_at(f'sampleforge_finetune_loss{{namespace="{ns}", name="ranker"}}', 1 / 3)
    settles_at(f'sampleforge_finetune_eval_metric{{namespace="{ns}", name="ranker", metric="ndcg@10"}}', 0.65)


def test_dashboard_variables_list_the_namespace_and_its_runs(prometheus: Prometheus, scene: Scene) -> None:
    """Grafana's label_values(metric, label), answered by Prometheus the way Grafana asks it."""
    variables = {v["name"]: v["query"]["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"}
    found: dict[str, set[str]] = {}
    for name, query in variables.items():
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"variable {name}: {query}"
        selector = fill(match.group(1), namespace=scene.namespace)
        found[name] = {s["metric"][match.group(2)] for s in prometheus.query(f"group by ({match.group(2)}) ({selector})")}
    assert scene.namespace in found["namespace"]
    assert {"shoes", "ranker"} <= found["run"]


def selectors(expr: str) -> list[str]:
    """The vector selectors of an expression (metric name with its label matchers)."""
    return [m.group(0) for m in re.finditer(r"\b(sampleforge_[a-z0-9_]+|up)\b(\{[^}]*\})?", expr)
            if m.group(1) != "up" or m.group(2)]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_expression_evaluates_and_only_run_failed_fires(prometheus: Prometheus, scene: Scene,
                                                                   rule: dict[str, Any]) -> None:
    series = prometheus.query(rule["expr"])
    if rule["alert"] in MUST_FIRE:
        assert series, f"{rule['alert']} should see the failed run"
        # One series per failed run, with the run's own namespace (honor_labels), not the operator's.
        assert [{k: s["metric"].get(k) for k in ("kind", "namespace", "name", "reason")} for s in series] == [
            {"kind": str(AR), "namespace": scene.namespace, "name": scene.runs["failed"],
             "reason": "BackoffLimitExceeded"}]
    elif "for" not in rule:
        assert series == [], f"{rule['alert']} fires on a healthy operator: {series}"
    # A rule with a `for:` duration may see a run in transit (Pending for a second) at any instant;
    # that it does not FIRE is checked below, against Prometheus's own alert state.
    for selector in selectors(rule["expr"]):
        name = selector.split("{")[0]
        if name in ALERT_INPUTS_MAY_BE_ABSENT and not prometheus.query(selector):
            continue
        assert prometheus.query(selector), f"{rule['alert']}: {selector} matches no series; the alert is blind"


def test_prometheus_loads_the_rules_and_raises_the_run_failed_alert(prometheus: Prometheus) -> None:
    groups = prometheus.api("rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {r["alert"] for r in alert_rules()}
    assert {name: r["health"] for name, r in loaded.items() if r["health"] != "ok"} == {}

    def firing() -> set[str]:
        return {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"}

    assert wait_for(lambda: firing() == MUST_FIRE, timeout=30, what="SampleforgeRunFailed to fire alone")


def test_run_failed_alert_names_the_run_and_its_runbook(prometheus: Prometheus, scene: Scene) -> None:
    """The alert an on-call person receives: which run, where, why, and what to do."""
    alerts = wait_for(lambda: [a for a in prometheus.api("alerts")["alerts"]
                               if a["labels"]["alertname"] == "SampleforgeRunFailed" and a["state"] == "firing"],
                      timeout=30, what="SampleforgeRunFailed to fire")
    assert len(alerts) == 1, alerts
    labels, annotations = alerts[0]["labels"], alerts[0]["annotations"]
    assert {k: labels.get(k) for k in ("kind", "namespace", "name", "reason", "severity")} == {
        "kind": str(AR), "namespace": scene.namespace, "name": scene.runs["failed"],
        "reason": "BackoffLimitExceeded", "severity": "warning"}
    assert labels["namespace"] != OPERATOR_NAMESPACE
    assert annotations["summary"] == f"AugmentationRun {scene.namespace}/broken failed (BackoffLimitExceeded)"
    assert annotations["runbook_url"] == RUNBOOKS + "sampleforgerunfailed"
    assert annotations["description"].endswith(RUNBOOKS + "backofflimitexceeded")


def test_a_deleted_failed_run_takes_its_alert_along(testbed: Testbed, prometheus: Prometheus, scene: Scene) -> None:
    """Per-run failure series stay bounded: the operator drops a run's series when it is deleted."""
    ns, selector = scene.namespace, 'sampleforge_run_failed_timestamp_seconds{name="doomed"}'
    with testbed.api_client() as api:
        doomed = create_run(api, ns, example("augmentationrun.yaml", parallelism=1, backoffLimit=0), name="doomed",
                            labels=HOLD)
        pod = running_pod(api, ns, doomed["metadata"]["uid"], timeout=90)
        client.CoreV1Api(api).patch_namespaced_pod(pod.metadata.name, ns,
                                                   {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "1"}}})
        wait_phase(api, AR, ns, "doomed", "Failed", timeout=90)
        found = wait_for(lambda: prometheus.query(selector), timeout=30, what=f"{selector} in Prometheus")
        assert found[0]["metric"]["namespace"] == ns
        assert float(found[0]["value"][1]) == pytest.approx(time.time(), abs=120)
        client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[AR], "doomed")
    wait_for(lambda: not prometheus.query(selector), timeout=60, what=f"{selector} to go with the run")
    wait_for(lambda: not [a for a in prometheus.api("alerts")["alerts"] if a["labels"].get("name") == "doomed"],
             timeout=30, what="the deleted run's alert to end")
    # The run that is still there keeps its alert.
    assert prometheus.query('sampleforge_run_failed_timestamp_seconds{name="broken"}')
