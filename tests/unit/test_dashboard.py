"""The Grafana dashboard and the alert rules against the operator's metrics, without a server.

The dashboard and the rules are plain files in the chart; the metric names live in
operator/metrics.py. A renamed metric would leave an empty panel or an alert that can never fire,
silently; this test makes it loud. The real Prometheus evaluation of every expression is in
tests/integration/test_monitoring.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sampleforge.operator.metrics import OperatorMetrics

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sampleforge"
DASHBOARD = CHART / "dashboards" / "sampleforge.json"
RULES = CHART / "alerts" / "sampleforge-rules.yaml"

_METRIC = re.compile(r"\bsampleforge_[a-z0-9_]+\b")
#: Suffixes Prometheus' exposition adds to a family's name, by metric type.
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
             "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",),
             "unknown": ("",), "stateset": ("",), "gaugehistogram": ("_bucket", "_gcount", "_gsum")}


def exposed_names() -> set[str]:
    """Every sample name the operator's registry can put on /metrics.

    ``OperatorMetrics.names()`` is the contract; a labelled counter or histogram that has not
    been observed yet exposes no samples, so the names its samples *will* have (``_total``,
    ``_bucket``...) are derived from the family's type as well.
    """
    metrics = OperatorMetrics()
    names = set(metrics.names())
    for family in metrics.registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in node.get("panels", []):
        yield panel
        yield from panels(panel)


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL or variable query) for every query in the dashboard."""
    out = [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in panels(dashboard()) for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']}", query))
    return out


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    return rules


def test_exposed_names_include_the_sample_names_of_counters_and_histograms() -> None:
    names = exposed_names()
    assert {"sampleforge_job_failures_total", "sampleforge_reconcile_duration_seconds_bucket",
            "sampleforge_runs", "sampleforge_operator_leader", "sampleforge_run_failed_timestamp_seconds"} <= names
    assert "sampleforge_job_failures_bucket" not in names


@pytest.mark.parametrize(("where", "query"), dashboard_queries())
def test_dashboard_queries_use_only_defined_metrics(where: str, query: str) -> None:
    used = set(_METRIC.findall(query))
    assert used or 'up{job="sampleforge-operator"}' in query, f"{where} queries no sampleforge metric: {query}"
    missing = used - exposed_names()
    assert not missing, f"{where} uses metrics the operator does not define: {sorted(missing)}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_rules_use_only_defined_metrics(rule: dict[str, Any]) -> None:
    used = set(_METRIC.findall(rule["expr"]))
    missing = used - exposed_names()
    assert not missing, f"alert {rule['alert']} uses metrics the operator does not define: {sorted(missing)}"
    assert used or "up{" in rule["expr"]


def test_dashboard_has_namespace_and_run_variables_and_per_run_panels_use_them() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert {"datasource", "namespace", "run"} <= set(variables)
    assert "$namespace" in variables["run"]["query"]["query"], "the run list must follow the namespace choice"
    for name in ("namespace", "run"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    per_run = [(p["title"], t["expr"]) for p in panels(dashboard()) for t in p.get("targets", [])
               if re.search(r"sampleforge_(run_|augmentation_|finetune_)", t["expr"])
               and "run_phase_transitions" not in t["expr"] and "run_duration" not in t["expr"]]
    assert len(per_run) >= 8
    for title, expr in per_run:
        assert 'namespace=~"$namespace"' in expr and 'name=~"$run"' in expr, f"{title}: {expr} ignores the variables"


def test_dashboard_has_the_panels_the_platform_team_asked_for() -> None:
    titles = {p["title"] for p in panels(dashboard()) if p["type"] != "row"}
    wanted = {"Runs by phase", "Augmentation throughput", "Rows kept per augmenter", "Training loss",
              "Evaluation metrics", "Progress", "ETA", "Heartbeat age", "Reconcile latency", "Job failures"}
    assert wanted <= titles, f"missing panels: {sorted(wanted - titles)}"


def test_dashboard_layout_is_well_formed() -> None:
    """Unique ids, every panel on the 24-column grid, no two panels overlapping, one data source."""
    all_panels = list(panels(dashboard()))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for p in all_panels:
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, f"{p['title']} leaves the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert p["targets"] and len(refs) == len(set(refs)), p["title"]
    assert dashboard()["uid"] == "sampleforge"


def test_every_alert_is_actionable() -> None:
    """Severity for routing, and a summary and description that say what to do."""
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {"SampleforgeRunFailed", "SampleforgeRunStalled", "SampleforgeRunsStuckPending",
                                           "SampleforgeOperatorDown", "SampleforgeOperatorNotWatching",
                                           "SampleforgeReconcileErrors"}
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 40, rule["alert"]
        assert 'job="sampleforge-operator"' in rule["expr"], f"{rule['alert']} must match the chart's scrape job"
        assert rule["annotations"]["runbook_url"].startswith("https://"), rule["alert"]


def test_per_run_alerts_name_the_run() -> None:
    """An alert about one run carries the run's own namespace and name (honor_labels keeps them on
    per-run series), not the operator's namespace."""
    for rule in alert_rules():
        if rule["alert"] in ("SampleforgeRunFailed", "SampleforgeRunStalled"):
            assert "sampleforge_job_failures_total" not in rule["expr"], rule["alert"]
            assert "{{ $labels.namespace }}/{{ $labels.name }}" in rule["annotations"]["summary"], rule["alert"]
            grouped = re.findall(r"by \(([^)]*)\)", rule["expr"])
            assert all({"namespace", "name"} <= {label.strip() for label in g.split(",")} for g in grouped), rule["alert"]


def test_every_alert_has_promtool_unit_tests_that_fire_and_stay_quiet() -> None:
    tests = yaml.safe_load((CHART / "alerts" / "tests.yaml").read_text())
    assert tests["rule_files"] == ["sampleforge-rules.yaml"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names == fired, f"alerts without a firing test case: {sorted(names - fired)}"
    assert names <= quiet, f"alerts without a test that they stay quiet: {sorted(names - quiet)}"


def test_chart_embeds_the_dashboard_and_the_rules_files_unchanged() -> None:
    """One source each: the chart's templates read the files, never a copy of them."""
    configmap = (CHART / "templates" / "dashboard-configmap.yaml").read_text()
    assert '.Files.Get "dashboards/sampleforge.json"' in configmap
    rule = (CHART / "templates" / "prometheusrule.yaml").read_text()
    assert '.Files.Get "alerts/sampleforge-rules.yaml"' in rule
    assert "tpl" not in rule, "the rules must not be templated: promtool tests the file as it is"
