"""The Helm chart as the real ``helm template`` renders it: RBAC, Deployment, Services, monitoring.

No cluster is needed (tests/integration/test_chart.py hands the same output to the API server and
runs the operator with the chart's ServiceAccount). What is checked here is what review would
otherwise have to catch: that the RBAC is exactly the documented least-privilege set in both modes
(no wildcards, no Secret access outside the served namespaces, no delete), that selectors select
what they should, and that the schema rejects bad values.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sampleforge.api.constants import LABEL_LEADER, LEADER_VALUE
from sampleforge.operator.settings import Settings
from sampleforge.testbed import binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sampleforge"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "sf", "sampleforge-system"
FULLNAME = "sf-sampleforge"
SA_USER = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"

#: Every permission the operator gets, and nothing else (docs/rbac.md says why each is needed):
#: (apiGroup, resource) -> verbs.
EXPECTED_NAMESPACED_RULES = {
    ("sampleforge.io", "augmentationruns"): {"get", "list", "watch", "patch"},
    ("sampleforge.io", "finetuneruns"): {"get", "list", "watch", "patch"},
    ("sampleforge.io", "augmentationruns/status"): {"patch"},
    ("sampleforge.io", "finetuneruns/status"): {"patch"},
    ("sampleforge.io", "augmentationruns/finalizers"): {"update"},
    ("sampleforge.io", "finetuneruns/finalizers"): {"update"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch"},
    ("", "pods"): {"list", "watch"},
    ("", "services"): {"create"},
    ("", "configmaps"): {"get", "create"},
    ("", "events"): {"create", "list"},
    ("", "secrets"): {"get"},
}
EXPECTED_CLUSTER_SCOPED_RULES = {("authentication.k8s.io", "tokenreviews"): {"create"}}
#: In the release namespace only: the leader Lease, and the leader label on the operator's own Pod.
EXPECTED_LEASE_RULES = {("coordination.k8s.io", "leases"): {"create", "get", "update"}, ("", "pods"): {"patch"}}
#: libyaml's parser when PyYAML has it: the rendered chart is large (the dashboard JSON).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
AGGREGATION_LABEL = re.compile(r"^rbac\.authorization\.k8s\.io/aggregate-to-")


def helm() -> Path:
    try:
        return binary("helm")
    except FileNotFoundError as err:
        if os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("SAMPLEFORGE_REQUIRE_TESTBED") == "1":
            pytest.fail(f"{err}: CI must render the chart")
        pytest.skip(str(err))


def render(*values_files: Path, sets: Iterable[str] = (), check: bool = True) -> list[dict[str, Any]]:
    """The chart's objects as ``helm template`` renders them (a fresh copy each call)."""
    returncode, stdout, stderr = _helm_template(values_files, tuple(sets))
    if check and returncode != 0:
        raise AssertionError(f"helm template failed: {stderr}")
    if returncode != 0:
        raise ChartError(stderr)
    return [doc for doc in yaml.load_all(stdout, Loader=_LOADER) if doc]


@functools.cache
def _helm_template(values_files: tuple[Path, ...], sets: tuple[str, ...]) -> tuple[int, str, str]:
    args = [str(helm()), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for path in values_files:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    return result.returncode, result.stdout, result.stderr


class ChartError(Exception):
    pass


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def is_for_people(role: dict[str, Any]) -> bool:
    """The view/edit roles aggregated into Kubernetes' own roles are for users, not the operator."""
    return any(AGGREGATION_LABEL.match(k) for k in (role["metadata"].get("labels") or {}))


def operator_roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in of_kind(docs, "ClusterRole") + of_kind(docs, "Role") if not is_for_people(r)]


def grants(roles: Iterable[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for role in roles:
        for rule in role.get("rules") or []:
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def bound_roles(docs: list[dict[str, Any]], binding_kind: str) -> list[dict[str, Any]]:
    """The roles the chart's bindings of ``binding_kind`` give to the operator's ServiceAccount."""
    roles = {(r["kind"], r["metadata"]["name"], r["metadata"].get("namespace")): r for r in operator_roles(docs)}
    out = []
    for binding in of_kind(docs, binding_kind):
        subjects = binding["subjects"]
        assert subjects == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}], subjects
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        out.append(roles[(ref["kind"], ref["name"], namespace)])
    return out


def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


# --- RBAC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_no_role_uses_wildcards_or_dangerous_verbs(values_file: Path) -> None:
    for role in of_kind(render(values_file), "ClusterRole") + of_kind(render(values_file), "Role"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(key, []), f"{role['metadata']['name']}: wildcard in {key}: {rule}"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), role["metadata"]["name"]
            assert not {"pods/exec", "pods/attach", "pods/portforward", "serviceaccounts/token", "nodes",
                        "clusterroles", "clusterrolebindings", "roles", "rolebindings"} & set(rule["resources"])
    for role in operator_roles(render(values_file)):
        for rule in role["rules"]:
            assert not {"delete", "deletecollection"} & set(rule["verbs"]), \
                f"{role['metadata']['name']}: the operator deletes nothing (garbage collection does): {rule}"


def test_cluster_wide_mode_grants_exactly_the_documented_rules() -> None:
    docs = render()
    cluster = grants(bound_roles(docs, "ClusterRoleBinding"))
    assert cluster == {**EXPECTED_NAMESPACED_RULES, **EXPECTED_CLUSTER_SCOPED_RULES}
    assert grants(bound_roles(docs, "RoleBinding")) == EXPECTED_LEASE_RULES


def test_cluster_wide_secret_access_is_get_only_and_can_be_withheld() -> None:
    docs = render()
    secret_roles = [r for r in operator_roles(docs) if ("", "secrets") in grants([r])]
    assert [r["metadata"]["name"] for r in secret_roles] == [f"{FULLNAME}-secret-reader"]
    assert grants(secret_roles) == {("", "secrets"): {"get"}}, "never list/watch: that would enumerate Secrets"

    withheld = render(sets=["rbac.clusterWideSecretAccess=false"])
    assert ("", "secrets") not in grants(bound_roles(withheld, "ClusterRoleBinding"))
    assert ("", "secrets") not in grants(bound_roles(withheld, "RoleBinding"))
    # The reader role still exists, for per-namespace RoleBindings that the NOTES explain.
    one(withheld, "ClusterRole", f"{FULLNAME}-secret-reader")


def test_namespaced_mode_grants_nothing_cluster_wide_but_token_reviews() -> None:
    docs = render(CHART / "ci" / "namespaced-values.yaml")
    watched = {"search-ml", "recsys-ml"}
    assert grants(bound_roles(docs, "ClusterRoleBinding")) == EXPECTED_CLUSTER_SCOPED_RULES
    for binding in of_kind(docs, "RoleBinding"):
        namespace = binding["metadata"]["namespace"]
        role = next(r for r in bound_roles([*docs], "RoleBinding")
                    if r["metadata"]["name"] == binding["roleRef"]["name"] and r["metadata"]["namespace"] == namespace)
        if namespace == NAMESPACE:
            assert grants([role]) == EXPECTED_LEASE_RULES, "the release namespace: the Lease and the leader label"
        else:
            assert namespace in watched
            assert grants([role]) == EXPECTED_NAMESPACED_RULES
    assert {b["metadata"]["namespace"] for b in of_kind(docs, "RoleBinding")} == watched | {NAMESPACE}
    assert not [r for r in of_kind(docs, "ClusterRole") if ("", "secrets") in grants([r])]


def test_the_lease_role_may_renew_only_the_operators_own_lease() -> None:
    docs = render()
    role = one(docs, "Role", f"{FULLNAME}-leader-election")
    env = {e["name"]: e.get("value") for e in container(docs)["env"]}
    assert role["metadata"]["namespace"] == NAMESPACE
    for rule in role["rules"]:
        if rule["resources"] == ["pods"]:
            assert (rule["apiGroups"], rule["verbs"]) == ([""], ["patch"]), "only the leader label on its own Pods"
        elif set(rule["verbs"]) & {"get", "update"}:
            assert rule["resourceNames"] == [env["SAMPLEFORGE_OPERATOR_LEASE_NAME"]]
        else:
            assert rule["verbs"] == ["create"], "create cannot be limited by name; nothing else may be unlimited"
    assert not of_kind(render(CHART / "ci" / "networkpolicy-values.yaml"), "Role"), \
        "without leader election there is no Lease to grant and no leader Pod to label"


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_pods_may_be_patched_only_in_the_release_namespace(values_file: Path) -> None:
    """The leader labels its own Pod; the runs' pods (in other namespaces) are never patched."""
    docs = render(values_file)
    for role in operator_roles(docs):
        if "patch" in grants([role]).get(("", "pods"), set()):
            assert role["kind"] == "Role" and role["metadata"]["namespace"] == NAMESPACE, role["metadata"]["name"]


def test_run_pods_get_an_identity_without_api_access() -> None:
    docs = render(CHART / "ci" / "namespaced-values.yaml")
    accounts = [a for a in of_kind(docs, "ServiceAccount") if a["metadata"]["name"] == "sampleforge-job"]
    assert {a["metadata"]["namespace"] for a in accounts} == {"search-ml", "recsys-ml"}
    assert all(a["automountServiceAccountToken"] is False for a in accounts)
    subjects = [s["name"] for b in of_kind(docs, "RoleBinding") + of_kind(docs, "ClusterRoleBinding")
                for s in b["subjects"]]
    assert "sampleforge-job" not in subjects, "run pods need no RBAC: heartbeats use a TokenReview"


def test_people_can_manage_runs_through_the_aggregated_roles() -> None:
    people = {r["metadata"]["name"]: r for r in of_kind(render(), "ClusterRole") if is_for_people(r)}
    edit, view = people[f"{FULLNAME}-edit"], people[f"{FULLNAME}-view"]
    assert grants([edit])[("sampleforge.io", "augmentationruns")] >= {"create", "delete", "patch"}
    assert grants([view])[("sampleforge.io", "finetuneruns")] == {"get", "list", "watch"}
    assert not [r for r in of_kind(render(CHART / "ci" / "namespaced-values.yaml"), "ClusterRole") if is_for_people(r)]


# --- Deployment, Services, monitoring ----------------------------------------------------------------


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_deployment_is_locked_down_and_probed() -> None:
    docs = render()
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container(docs)
    assert deployment["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = main["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]} and ctx["runAsNonRoot"] is True
    assert {m["mountPath"] for m in main["volumeMounts"]} == {"/tmp"}, "only /tmp is writable"
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["resources"]["requests"] and main["resources"]["limits"]["memory"]
    env = {e["name"]: e for e in main["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["SAMPLEFORGE_OPERATOR_NAMESPACES"]["value"] == ""
    # Standbys are ready, so a rollout starts a new replica before it stops an old one.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_every_operator_setting_the_chart_sets_is_a_real_setting() -> None:
    """A misspelt SAMPLEFORGE_OPERATOR_* variable is silently ignored by the operator."""
    from dataclasses import fields

    from sampleforge.operator.settings import Settings

    known = {"SAMPLEFORGE_OPERATOR_" + f.name.upper() for f in fields(Settings)} | {"POD_NAME", "POD_NAMESPACE"}
    for values_file in CI_VALUES:
        names = {e["name"] for e in container(render(values_file))["env"]}
        assert names <= known, f"{values_file.name}: unknown settings {sorted(names - known)}"
        settings_env = {e["name"]: e["value"] for e in container(render(values_file))["env"] if "value" in e}
        Settings.from_env(settings_env)  # every value parses as its field's type


def test_heartbeat_url_points_at_the_leader_service() -> None:
    docs = render()
    env = {e["name"]: e.get("value") for e in container(docs)["env"]}
    service = one(docs, "Service", FULLNAME)
    port = service["spec"]["ports"][0]["port"]
    assert env["SAMPLEFORGE_OPERATOR_HEARTBEAT_URL"] == \
        f"http://{FULLNAME}.{NAMESPACE}.svc:{port}/v1alpha1/heartbeats"
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    leader = {LABEL_LEADER: LEADER_VALUE}
    assert LABEL_LEADER not in pod_labels, "the leader sets the label on its own Pod; the template never does"
    # The heartbeat Service: this release's replicas, and of those only the one the leader labelled.
    assert service["spec"]["selector"] == {**selector_labels(docs), **leader}
    assert "publishNotReadyAddresses" not in service["spec"], "heartbeats must reach a ready leader only"
    metrics = one(docs, "Service", f"{FULLNAME}-metrics")
    assert metrics["spec"]["selector"] == selector_labels(docs), "every replica is scraped, standbys included"
    assert metrics["spec"]["publishNotReadyAddresses"] is True, "standbys must be scraped too"
    # A single replica without leader election labels nothing: the Service selects it as it is.
    single = render(CHART / "ci" / "networkpolicy-values.yaml")
    assert one(single, "Service", FULLNAME)["spec"]["selector"] == selector_labels(single)


def selector_labels(docs: list[dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    return labels


def test_the_charts_leader_label_is_the_operators() -> None:
    """One source of truth: the label the operator writes (api/constants.py) is the one selected."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    defined = re.search(r'define "sampleforge.leaderLabel" -}}\s*(\S+)\s*{{-', helpers)
    assert defined is not None and defined.group(1) == LABEL_LEADER
    assert LEADER_VALUE == "true"


def test_namespaced_settings_follow_watch_namespaces_and_job_env_is_encoded() -> None:
    env = {e["name"]: e.get("value") for e in container(render(CHART / "ci" / "namespaced-values.yaml"))["env"]}
    assert env["SAMPLEFORGE_OPERATOR_NAMESPACES"] == "search-ml,recsys-ml"
    allow = Settings.from_env(env).storage_allow_list  # what the operator makes of the value it is given
    assert allow == {"search-ml": ("s3://datasets/search/", "s3://models/search/"), "recsys-ml": ("s3://datasets/recsys/",)}
    default = Settings.from_env(env).default_storage  # runs without spec.storage get this one
    assert default is not None and default.endpoint == "minio.data:9000" and default.ca_bundle is not None
    assert default.web_identity is not None and default.web_identity.role_arn.endswith(":role/search-ml-data")
    env = {e["name"]: e.get("value") for e in container(render(CHART / "ci" / "networkpolicy-values.yaml"))["env"]}
    assert env["SAMPLEFORGE_OPERATOR_EXTRA_JOB_ENV"] == "HTTPS_PROXY=http://proxy.internal:3128,NO_PROXY=.svc.cluster.local"
    assert env["SAMPLEFORGE_OPERATOR_LEADER_ELECTION"] == "false"


def test_monitoring_objects_embed_the_rules_and_dashboard_files() -> None:
    docs = render(CHART / "ci" / "monitoring-values.yaml")
    rule = one(docs, "PrometheusRule")
    assert one(render(sets=["metrics.prometheusRule.enabled=true"]), "PrometheusRule")["spec"] == \
        yaml.safe_load((CHART / "alerts" / "sampleforge-rules.yaml").read_text()), "with the defaults: the file as it is"
    changed = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert changed["SampleforgeRunsStuckPending"]["for"] == "1h"
    assert changed["SampleforgeRunStalled"]["labels"] == {"severity": "critical", "team": "ml-platform"}
    dashboard = one(docs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["sampleforge.json"]) == json.loads(
        (CHART / "dashboards" / "sampleforge.json").read_text())
    monitor = one(docs, "ServiceMonitor")
    metrics_service = one(docs, "Service", f"{FULLNAME}-metrics")
    heartbeat_service = one(docs, "Service", FULLNAME)
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics_service["metadata"]["labels"].items()
    assert not selector.items() <= heartbeat_service["metadata"]["labels"].items(), "scrape each replica once"
    # job="sampleforge-operator", which every alert rule matches on.
    assert metrics_service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "sampleforge-operator"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == metrics_service["spec"]["ports"][0]["name"] and endpoint["honorLabels"] is True
    kinds = {d["kind"] for d in render()}
    assert "ServiceMonitor" not in kinds and "PrometheusRule" not in kinds, "both need CRDs: off by default"


def test_network_policy_admits_run_pods_and_scrapers_to_the_operator_only() -> None:
    docs = render(CHART / "ci" / "networkpolicy-values.yaml")
    policy = one(docs, "NetworkPolicy")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    heartbeat, scrape = policy["spec"]["ingress"]
    assert heartbeat["from"] == [{"namespaceSelector": {},
                                  "podSelector": {"matchLabels": {"app.kubernetes.io/managed-by": "sampleforge-operator"}}}]
    assert scrape["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert all(rule["ports"] == [{"port": "http", "protocol": "TCP"}] for rule in policy["spec"]["ingress"])
    assert not of_kind(render(), "NetworkPolicy")


# --- values and schema ------------------------------------------------------------------------------


@pytest.mark.parametrize(("sets", "message"), [
    (["replicaCount=two"], "replicaCount"),
    (["bogus=1"], "bogus"),
    (["watchNamespaces={Search_ML}"], "watchNamespaces"),
    (["image.digest=latest"], "digest"),
    (["leaderElection.enabled=false"], "replicaCount > 1 needs leaderElection"),
    (["operator.extraJobEnv.NO_PROXY=a\\,b"], "may not contain ','"),
    (["jobServiceAccount.create=true"], "jobServiceAccount.namespaces"),
    (["podDisruptionBudget.minAvailable=most"], "minAvailable"),
    (["podDisruptionBudget.unhealthyPodEvictionPolicy=Never"], "unhealthyPodEvictionPolicy"),
    (["metrics.serviceMonitor.namespace=Monitoring"], "namespace"),
])
def test_bad_values_are_refused_with_a_message_that_names_them(sets: list[str], message: str) -> None:
    with pytest.raises(ChartError, match=re.escape(message)):
        render(sets=sets, check=False)


def test_every_value_the_templates_read_is_defined() -> None:
    """A typo in ``.Values.x`` renders as empty, silently; every path must exist in values.yaml."""
    defaults = values()
    paths = set()
    for template in (CHART / "templates").iterdir():
        paths.update(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", template.read_text()))
    assert paths
    for path in sorted(paths):
        node: Any = defaults
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f".Values.{path} is not in values.yaml"
            node = node[part]


def test_schema_describes_every_default_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if isinstance(value, dict) and node.get("properties") is not None:
            for key, child in value.items():
                assert key in node["properties"], f"{path}{key} is missing from values.schema.json"
                walk(child, node["properties"][key], f"{path}{key}.")

    assert schema["additionalProperties"] is False
    walk(values(), schema, "")


def test_chart_crds_are_the_generated_ones() -> None:
    generated = sorted((REPO / "crds").glob("*.yaml"))
    assert generated
    for crd in generated:
        assert (CHART / "files" / "crds" / crd.name).read_text() == crd.read_text(), \
            f"{crd.name}: run python -m sampleforge.api.crdgen"
    assert not (CHART / "crds").exists(), "Helm never upgrades crds/: the chart templates its CRDs instead"


def test_crds_are_templated_as_generated_with_the_keep_policy() -> None:
    """Templates, so that ``helm upgrade`` applies a changed CRD; kept on uninstall, so that removing
    the release never deletes the runs with their CRD."""
    rendered = {d["metadata"]["name"]: d for d in of_kind(render(), "CustomResourceDefinition")}
    generated = {p.stem: yaml.safe_load(p.read_text()) for p in (REPO / "crds").glob("*.yaml")}
    assert set(rendered) == set(generated)
    for name, crd in rendered.items():
        assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert crd == generated[name], f"{name}: rendered differently from crds/{name}.yaml"
    assert all("annotations" not in d["metadata"]
               for d in of_kind(render(sets=["crds.keep=false"]), "CustomResourceDefinition"))
    assert not of_kind(render(sets=["crds.install=false"]), "CustomResourceDefinition"), \
        "a second release in the same cluster leaves the CRDs to the first"


# --- availability, pull secrets, run pods' identity, scrape options ------------------------------------


def test_two_replicas_get_a_disruption_budget_that_keeps_one_up() -> None:
    docs = render()
    budget = one(docs, "PodDisruptionBudget")
    assert budget["metadata"]["namespace"] == NAMESPACE
    assert budget["spec"]["selector"]["matchLabels"] == selector_labels(docs)
    assert budget["spec"]["minAvailable"] == 1 and "maxUnavailable" not in budget["spec"]
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", "a crash-looping replica never blocks a drain"
    by_max = one(render(sets=["podDisruptionBudget.maxUnavailable=50%"]), "PodDisruptionBudget")["spec"]
    assert by_max["maxUnavailable"] == "50%" and "minAvailable" not in by_max
    assert one(render(sets=["replicaCount=3", "podDisruptionBudget.minAvailable=2"]),
               "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    # One replica could never be evicted under a budget of one: no budget at all, as when disabled.
    assert not of_kind(render(CHART / "ci" / "networkpolicy-values.yaml"), "PodDisruptionBudget")
    assert not of_kind(render(sets=["podDisruptionBudget.enabled=false"]), "PodDisruptionBudget")


def test_pull_secrets_reach_the_operator_pod_and_the_run_pods_service_account() -> None:
    docs = render(CHART / "ci" / "namespaced-values.yaml")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    accounts = [a for a in of_kind(docs, "ServiceAccount") if a["metadata"]["name"] == "sampleforge-job"]
    assert len(accounts) == 2
    for account in accounts:
        assert account["imagePullSecrets"] == [{"name": "regcred"}], "default: the chart's imagePullSecrets"
        assert account["metadata"]["annotations"] == {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/sampleforge-runs"}
    own = [a for a in of_kind(render(CHART / "ci" / "namespaced-values.yaml",
                                     sets=["jobServiceAccount.imagePullSecrets[0].name=jobs-pull"]), "ServiceAccount")
           if a["metadata"]["name"] == "sampleforge-job"]
    assert own and all(a["imagePullSecrets"] == [{"name": "jobs-pull"}] for a in own), "its own list wins"
    plain = [a for a in of_kind(render(sets=["jobServiceAccount.create=true", "jobServiceAccount.namespaces={ml}"]),
                                "ServiceAccount") if a["metadata"]["name"] == "sampleforge-job"]
    assert "imagePullSecrets" not in plain[0] and "annotations" not in plain[0]["metadata"]
    assert "imagePullSecrets" not in one(render(), "Deployment")["spec"]["template"]["spec"]


def test_service_monitor_namespace_and_relabelings() -> None:
    docs = render(CHART / "ci" / "monitoring-values.yaml")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}, "still scrapes the release namespace"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["relabelings"] == [{"targetLabel": "cluster", "replacement": "search-prod"}]
    assert endpoint["metricRelabelings"] == [{"sourceLabels": ["__name__"], "regex": "python_gc_.*", "action": "drop"}]
    plain = one(render(sets=["metrics.serviceMonitor.enabled=true"]), "ServiceMonitor")
    assert plain["metadata"]["namespace"] == NAMESPACE
    assert "relabelings" not in plain["spec"]["endpoints"][0] and "metricRelabelings" not in plain["spec"]["endpoints"][0]


# --- alerts as values ----------------------------------------------------------------------------------


def rules_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "alerts" / "sampleforge-rules.yaml").read_text())
    return loaded


def rendered_rules(*sets: str) -> dict[str, dict[str, Any]]:
    spec = one(render(sets=["metrics.prometheusRule.enabled=true", *sets]), "PrometheusRule")["spec"]
    return {rule["alert"]: rule for group in spec["groups"] for rule in group["rules"]}


def first_threshold(expr: str) -> float | None:
    """What the chart's template takes for an alert's threshold: the first "> N" ending a line."""
    found = re.search(r"> ([0-9][0-9.e+-]*)\n", expr)
    return float(found.group(1)) if found else None


def test_alert_defaults_in_values_are_the_rules_files() -> None:
    """values.yaml documents each alert's defaults; they must be what the promtool-tested file says."""
    alerts = values()["metrics"]["prometheusRule"]["alerts"]
    in_file = {rule["alert"]: rule for group in rules_file()["groups"] for rule in group["rules"]}
    assert set(alerts) == set(in_file), "every alert, and only those, has its values"
    for name, rule in in_file.items():
        settings = alerts[name]
        assert settings["enabled"] is True
        assert settings["severity"] == rule["labels"]["severity"], name
        assert settings.get("for") == rule.get("for"), name
        if "threshold" in settings:
            assert first_threshold(rule["expr"]) == settings["threshold"], name


def test_alert_thresholds_durations_severities_and_labels_are_values() -> None:
    default = rendered_rules()
    changed = rendered_rules("metrics.prometheusRule.alerts.SampleforgeRunStalled.threshold=900",
                             "metrics.prometheusRule.alerts.SampleforgeRunStalled.for=15m",
                             "metrics.prometheusRule.alerts.SampleforgeHeartbeatsRejected.threshold=0.5",
                             "metrics.prometheusRule.alerts.SampleforgeOperatorDown.severity=page",
                             "metrics.prometheusRule.alerts.SampleforgeRunFailed.labels.route=ml-oncall",
                             "metrics.prometheusRule.alertLabels.team=ml-platform",
                             "metrics.prometheusRule.alerts.SampleforgeRunsStuckPending.enabled=false")
    stalled = changed["SampleforgeRunStalled"]
    assert stalled["expr"] == default["SampleforgeRunStalled"]["expr"].replace("> 300\n", "> 900\n")
    assert "changes(" in stalled["expr"] and "> 0\n" in stalled["expr"], "only the threshold changes"
    assert stalled["for"] == "15m"
    assert changed["SampleforgeHeartbeatsRejected"]["expr"].endswith("> 0.5\n")
    assert changed["SampleforgeOperatorDown"]["labels"] == {"severity": "page", "team": "ml-platform"}
    assert changed["SampleforgeRunFailed"]["labels"] == {"severity": "warning", "team": "ml-platform",
                                                         "route": "ml-oncall"}
    assert "SampleforgeRunsStuckPending" not in changed
    assert changed["SampleforgeRunStalled"]["annotations"] == default["SampleforgeRunStalled"]["annotations"]


def test_every_alert_of_a_group_left_out_leaves_out_the_group() -> None:
    names = [rule["alert"] for rule in rules_file()["groups"][0]["rules"]]
    spec = one(render(sets=["metrics.prometheusRule.enabled=true",
                            *[f"metrics.prometheusRule.alerts.{n}.enabled=false" for n in names]]), "PrometheusRule")
    assert [g["name"] for g in spec["spec"]["groups"]] == [g["name"] for g in rules_file()["groups"][1:]]


@pytest.mark.parametrize(("sets", "message"), [
    (["metrics.prometheusRule.alerts.SampleforgeRunFaild.enabled=false"], "no such alert"),
    (["metrics.prometheusRule.alerts.SampleforgeOperatorDown.threshold=3"], "has no threshold"),
    (["metrics.prometheusRule.alerts.SampleforgeRunStalled.for=soon"], "for"),
    (["metrics.prometheusRule.alerts.SampleforgeRunStalled.threshold=high"], "threshold"),
])
def test_bad_alert_values_are_refused(sets: list[str], message: str) -> None:
    with pytest.raises(ChartError, match=re.escape(message)):
        render(sets=["metrics.prometheusRule.enabled=true", *sets], check=False)


def test_promtool_accepts_the_rules_with_changed_values(tmp_path: Path) -> None:
    try:
        promtool = binary("promtool")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    spec = one(render(sets=["metrics.prometheusRule.enabled=true",
                            "metrics.prometheusRule.alerts.SampleforgeReconcileErrors.threshold=20",
                            "metrics.prometheusRule.alerts.SampleforgeHeartbeatsRejected.threshold=0.001",
                            "metrics.prometheusRule.alerts.SampleforgeRunsStuckPending.for=1h30m",
                            "metrics.prometheusRule.alertLabels.team=ml"]), "PrometheusRule")["spec"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
