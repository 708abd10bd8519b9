"""The Helm chart against the real API server: accepted as rendered, installed, and sufficient.

* ``helm lint`` and ``helm template`` over every ``ci/*-values.yaml``, each output accepted by the
  API server in a server-side dry-run (real admission, real schema validation of every object,
  including the ServiceMonitor and PrometheusRule against small stand-in CRDs from
  tests/fixtures/monitoring: the testbed has no prometheus-operator).
* ``helm install``, then ``helm upgrade`` to a chart whose CRD changed: the API server serves the
  changed CRD; ``helm uninstall`` leaves the CRDs (and so the runs) in place.
* ``helm install`` in cluster-wide and in namespaced mode; then the operator runs as its own
  process with a token of the chart's ServiceAccount (never the admin certificate) and takes runs
  to Succeeded, Failed and Suspended, accepts heartbeats (TokenReview) and posts Events: proof
  that the RBAC is enough. SelfSubjectAccessReviews made with that same token show what it is NOT
  allowed to do.
* The Argo CD health check is run by a Lua interpreter on the status objects that operator wrote.
"""

from __future__ import annotations

import importlib.util
import json
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from kubernetes import client
from operator_helpers import (
    FAST,
    HOLD,
    commit_output,
    condition,
    create_credentials,
    create_run,
    example,
    get_run,
    jobs_of,
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
from sampleforge.testbed._controlplane import write_kubeconfig
from sampleforge.testbed._operator import OPERATOR_NAMESPACE, OperatorProcess

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sampleforge"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
MONITORING_CRDS = REPO / "tests" / "fixtures" / "monitoring" / "monitoring-crds.yaml"
AR, FT = Kind.AUGMENTATION_RUN, Kind.FINE_TUNE_RUN
#: Set by OperatorProcess for a process on 127.0.0.1 (the chart points them at its Service).
_LOCAL_ONLY = {"SAMPLEFORGE_OPERATOR_HTTP_PORT", "SAMPLEFORGE_OPERATOR_HEARTBEAT_URL"}
#: The session's testbed applied crds/ before any test: these releases leave the CRDs to it, as a
#: second release in a cluster does (test_helm_upgrade_applies_a_changed_crd takes them over).
SESSION_CRDS = "crds.install=false"


def _unit_module(name: str) -> ModuleType:
    """A module of tests/unit (the Lua harness), loaded by path: the unit tests own it."""
    path = REPO / "tests" / "unit" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"sampleforge_unit_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


argocd = _unit_module("test_chart_argocd")


def helm(testbed: Testbed, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(binary("helm")), *args], env=testbed.env(), capture_output=True, text=True,
                            timeout=180, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def ensure_namespace(api: client.ApiClient, name: str) -> None:
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    except client.ApiException as err:
        if err.status != 409:  # another module (or an earlier test) made it
            raise


@pytest.fixture(scope="module")
def chart_testbed(testbed: Testbed) -> Testbed:
    """The testbed with the operator's namespace and the stand-in monitoring CRDs."""
    with testbed.api_client() as api:
        ensure_namespace(api, OPERATOR_NAMESPACE)
    testbed.kubectl("apply", "--server-side", "-f", str(MONITORING_CRDS))
    testbed.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(MONITORING_CRDS))
    return testbed


# --- lint, template, dry-run ------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_is_clean(chart_testbed: Testbed, values_file: Path) -> None:
    result = helm(chart_testbed, "lint", "--strict", str(CHART), "-f", str(values_file))
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_rendered_chart_is_accepted_by_the_api_server(chart_testbed: Testbed, values_file: Path) -> None:
    rendered = helm(chart_testbed, "template", "dryrun", str(CHART), "--namespace", OPERATOR_NAMESPACE,
                    "-f", str(values_file)).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    with chart_testbed.api_client() as api:
        for namespace in {d["metadata"].get("namespace") for d in docs} - {None}:
            ensure_namespace(api, namespace)  # a namespaced install needs its namespaces to exist
    result = chart_testbed.kubectl("apply", "--dry-run=server", "-o", "name", "-f", "-", input=rendered)
    accepted = result.stdout.split()
    assert len(accepted) == len(docs), f"accepted {accepted} of {[d['kind'] for d in docs]}"


# --- installed: the operator with the chart's ServiceAccount ------------------------------------------


class Release:
    """A ``helm install`` of the chart and the operator run with its ServiceAccount's token."""

    def __init__(self, testbed: Testbed, name: str, workdir: Path, sets: list[str]) -> None:
        self.testbed = testbed
        self.name = name
        self.fullname = f"{name}-sampleforge"
        helm(testbed, "install", name, str(CHART), "--namespace", OPERATOR_NAMESPACE, *[a for s in sets
                                                                                        for a in ("--set", s)])
        manifest = helm(testbed, "get", "manifest", name, "--namespace", OPERATOR_NAMESPACE).stdout
        self.objects = [d for d in yaml.safe_load_all(manifest) if d]
        deployment = next(d for d in self.objects if d["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        self.service_account = pod["serviceAccountName"]
        self.env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
        self.kubeconfig = write_kubeconfig(workdir / f"{name}.kubeconfig", testbed.api.url, testbed.pki.serving_ca,
                                           token=self._token(), user=f"{OPERATOR_NAMESPACE}:{self.service_account}")
        settings = {k: v for k, v in self.env.items() if k not in _LOCAL_ONLY}
        self.pod_name = f"{name}-operator-0"
        self._create_pod(deployment)
        self.operator = OperatorProcess(self.kubeconfig, testbed.logs / f"operator-{name}.log",
                                        identity=self.pod_name, settings=settings | FAST)  # only timings change from the chart's

    def _create_pod(self, deployment: dict[str, Any]) -> None:
        """The Pod the operator would run in, with the Deployment's pod labels (the testbed runs the
        operator as a process: no kubelet). Never scheduled; it is there to be labelled."""
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        pod = {"metadata": {"name": self.pod_name, "labels": labels},
               "spec": {"nodeSelector": {"sampleforge.io/no-such-node": "true"},
                        "containers": [{"name": "operator", "image": "sampleforge-operator:test"}]}}
        with self.testbed.api_client() as api:
            client.CoreV1Api(api).create_namespaced_pod(OPERATOR_NAMESPACE, pod)

    def service_selects(self, service: str) -> list[str]:
        """The Pods in the release namespace that a Service of the release selects."""
        with self.testbed.api_client() as api:
            core = client.CoreV1Api(api)
            selector = core.read_namespaced_service(service, OPERATOR_NAMESPACE).spec.selector
            pods = core.list_namespaced_pod(OPERATOR_NAMESPACE,
                                            label_selector=",".join(f"{k}={v}" for k, v in selector.items()))
        return sorted(p.metadata.name for p in pods.items)

    def _token(self) -> str:
        """What the kubelet would mount in the operator's pod: a token for its ServiceAccount."""
        with self.testbed.api_client() as api:
            request = {"spec": {"audiences": [], "expirationSeconds": 3600}}
            response = client.CoreV1Api(api).create_namespaced_service_account_token(
                self.service_account, OPERATOR_NAMESPACE, request)
        return str(response.status.token)

    def can_i(self, verb: str, resource: str, namespace: str | None = None) -> bool:
        """A SelfSubjectAccessReview made with the operator's own token. ``resource`` is
        ``type[/name]``; a subresource is written ``type#subresource``."""
        resource, _, subresource = resource.partition("#")
        args = ["--kubeconfig", str(self.kubeconfig), "auth", "can-i", verb, resource]
        args += [f"--subresource={subresource}"] if subresource else []
        args += ["--namespace", namespace] if namespace else ["--all-namespaces"]
        result = subprocess.run([str(binary("kubectl")), *args], capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.stdout.strip() in ("yes", "no"), result.stderr
        return result.stdout.strip() == "yes"

    def uninstall(self, namespaces: list[str]) -> None:
        """Delete the runs in ``namespaces`` while the operator still runs (it lets go of its
        finalizers), so no later test's operator inherits them; then remove the release."""
        with self.testbed.api_client() as api:
            custom = client.CustomObjectsApi(api)
            for namespace in namespaces:
                for plural in PLURALS.values():
                    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, plural)
            wait_for(lambda: not any(custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]
                                     for ns in namespaces for plural in PLURALS.values()),
                     timeout=60, what="the module's runs to be deleted")
        self.operator.stop()
        helm(self.testbed, "uninstall", self.name, "--namespace", OPERATOR_NAMESPACE, check=False)
        with self.testbed.api_client() as api:
            client.CoreV1Api(api).delete_namespaced_pod(self.pod_name, OPERATOR_NAMESPACE, grace_period_seconds=0)


#: Namespaces this module made; deleted at its end, so later modules' operators never meet its runs.
_MADE: list[str] = []


def make_namespace(api: client.ApiClient, testbed: Testbed, credentials: bool = True) -> str:
    name = f"t-{secrets.token_hex(4)}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name, "labels": {"sampleforge.io/test": "true"}}})
    _MADE.append(name)
    testbed.wait_for_default_service_account(name)
    if credentials:
        create_credentials(api, name, testbed.minio)
    return name



def heartbeat(api: client.ApiClient, url: str, run: dict[str, Any], done: int) -> int:
    meta = run["metadata"]
    pod = running_pod(api, meta["namespace"], meta["uid"])
    beat = {"kind": run["kind"], "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"],
            "shard": 0, "shards": 1, "done": done, "total": 1000, "rate": 50.0, "sentAt": datetime.now(UTC).isoformat(),
            "augmentation": {"samplesIn": done, "samplesOut": 2 * done, "perAugmenter": {"typo": done}}}
    return post_heartbeat(url, pod_token(api, pod), beat)


def permission_errors(release: Release) -> list[str]:
    """Log lines of the operator about a refused (403) request: each one is a missing rule.

    Except kopf's cluster scanning (a watch of CustomResourceDefinitions for new resource kinds,
    and in namespaced mode a list of Namespaces), which kopf treats as optional: refused, it logs
    and carries on with the resources and namespaces it was given. The chart deliberately does not
    grant it; ``settings.scanning.disabled = True`` at startup makes kopf stop asking.
    """
    log = Path(release.operator.process.log_path).read_text()
    scanning = ("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", "/api/v1/namespaces ->",
                "Not enough permissions to watch for resources", "Not enough permissions to list namespaces",
                "Not enough permissions to watch for namespaces",
                # Not RBAC: the API server's answer for a namespace being deleted (earlier tests' runs).
                "because it is being terminated")
    refused = re.compile(r"status=403|'code': 403|\b403 Forbidden|[Ff]orbidden")
    return [line for line in log.splitlines() if refused.search(line) and not any(s in line for s in scanning)]


def lua_health(run: dict[str, Any]) -> tuple[str, str]:
    interpreters = argocd.interpreters()
    results = {argocd.health(run, interpreter) for interpreter in interpreters}
    assert len(results) == 1, f"the interpreters disagree: {results}"
    result: tuple[str, str] = results.pop()
    return result


@pytest.fixture(scope="module")
def api(chart_testbed: Testbed) -> Iterator[client.ApiClient]:
    with chart_testbed.api_client() as admin:
        yield admin
        for name in _MADE:
            client.CoreV1Api(admin).delete_namespace(name)
        _MADE.clear()


@pytest.fixture(scope="class")
def cluster_release(chart_testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """The chart with its defaults (cluster-wide), its operator running; gone after the class, so
    that it does not serve the namespaced class's runs."""
    rel = Release(chart_testbed, "sf", tmp_path_factory.mktemp("chart"), sets=[SESSION_CRDS])
    try:
        rel.operator.start(timeout=90)
        yield rel
    finally:
        rel.uninstall(_MADE)


@pytest.fixture(scope="class")
def namespaces(chart_testbed: Testbed, api: client.ApiClient) -> tuple[str, str]:
    """(served, not served) for the namespaced release."""
    return make_namespace(api, chart_testbed), make_namespace(api, chart_testbed)


@pytest.fixture(scope="class")
def namespaced_release(chart_testbed: Testbed, namespaces: tuple[str, str],
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    served, _ = namespaces
    rel = Release(chart_testbed, "sfns", tmp_path_factory.mktemp("chart-ns"),
                  sets=[SESSION_CRDS, f"watchNamespaces={{{served}}}", "jobServiceAccount.create=true",
                        "rbac.aggregateToDefaultRoles=false"])
    try:
        rel.operator.start(timeout=90)
        yield rel
    finally:
        rel.uninstall(_MADE)


class TestClusterWide:
    def test_the_operator_runs_with_the_service_account_token_only(self, cluster_release: Release) -> None:
        config = yaml.safe_load(cluster_release.kubeconfig.read_text())
        user = config["users"][0]["user"]
        assert set(user) == {"token"}, "no client certificate: the admin identity must not leak in"
        assert cluster_release.env["SAMPLEFORGE_OPERATOR_LEASE_NAME"] == cluster_release.fullname
        assert cluster_release.env["SAMPLEFORGE_OPERATOR_NAMESPACES"] == ""

    def test_an_augmentation_run_succeeds_with_heartbeats_and_events(self, cluster_release: Release,
                                                                      api: client.ApiClient) -> None:
        namespace = make_namespace(api, cluster_release.testbed)
        minio = cluster_release.testbed.minio
        run = create_run(api, namespace, stored_example(minio, "augmentationrun.yaml", parallelism=1), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        wait_phase(api, AR, namespace, name, "Running", timeout=60)
        # TokenReview (authentication.k8s.io) with the operator's own permissions.
        assert heartbeat(api, cluster_release.operator.url, run, 400) == 202
        wait_for(lambda: (get_run(api, AR, namespace, name).get("status") or {}).get("progress", {}).get("done") == 400,
                 what="the heartbeat's progress in status")
        commit_output(minio.client(), run)
        release(api, namespace, uid)
        done = wait_phase(api, AR, namespace, name, "Succeeded", timeout=90)
        assert condition(done, "Ready")["status"] == "True"
        assert len(jobs_of(api, namespace, uid)) == 1
        wait_for(lambda: {"JobCreated", "Succeeded"} <= {
            e.reason for e in client.CoreV1Api(api).list_namespaced_event(
                namespace, field_selector=f"involvedObject.uid={uid}").items}, what="Events posted by the operator")

    def test_a_multi_node_finetune_run_gets_its_headless_service(self, cluster_release: Release,
                                                                  api: client.ApiClient) -> None:
        namespace = make_namespace(api, cluster_release.testbed)
        doc = example("finetunerun-baseline.yaml", distribution={"nodes": 2, "gpusPerNode": 1})
        run = create_run(api, namespace, doc, labels=HOLD)
        uid = run["metadata"]["uid"]
        jobs = wait_for(lambda: jobs_of(api, namespace, uid), what="the fine-tune Job")
        services = wait_for(lambda: client.CoreV1Api(api).list_namespaced_service(
            namespace, label_selector=f"sampleforge.io/run-uid={uid}").items, what="the rendezvous Service")
        assert services[0].spec.cluster_ip == "None"
        assert jobs[0].spec.template.spec.subdomain == services[0].metadata.name
        wait_phase(api, FT, namespace, run["metadata"]["name"], "Running", timeout=60)

    def test_argo_cd_health_of_the_statuses_the_operator_wrote(self, cluster_release: Release,
                                                               api: client.ApiClient) -> None:
        namespace = make_namespace(api, cluster_release.testbed)
        no_secret = make_namespace(api, cluster_release.testbed, credentials=False)
        running = create_run(api, namespace, example("augmentationrun.yaml", parallelism=1), name="running",
                             labels=HOLD)
        done = stored_example(cluster_release.testbed.minio, "augmentationrun.yaml", parallelism=1)
        commit_output(cluster_release.testbed.minio.client(), {**done, "metadata": {"name": "succeeded", "uid": ""}})
        succeeded = create_run(api, namespace, done, name="succeeded")
        failing = create_run(api, namespace, example("augmentationrun.yaml", parallelism=1, backoffLimit=0),
                             name="failed", labels=HOLD)
        create_run(api, namespace, example("augmentationrun.yaml", suspend=True), name="suspended")
        create_run(api, namespace, example("finetunerun.yaml", data={
            "fromAugmentationRun": "not-there", "eval": "s3://datasets/search/shoes/eval.parquet"}), name="waiting")
        create_run(api, no_secret, example("augmentationrun.yaml"), name="no-secret")
        pod = running_pod(api, namespace, failing["metadata"]["uid"])
        client.CoreV1Api(api).patch_namespaced_pod(pod.metadata.name, namespace,
                                                   {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "3"}}})

        def stalled() -> dict[str, Any] | None:
            current = get_run(api, AR, no_secret, "no-secret")
            cond = condition(current, "Stalled")
            return current if cond and cond["status"] == "True" else None

        observed = {
            "running": wait_phase(api, AR, namespace, running["metadata"]["name"], "Running"),
            "succeeded": wait_phase(api, AR, namespace, succeeded["metadata"]["name"], "Succeeded", timeout=90),
            "failed": wait_phase(api, AR, namespace, "failed", "Failed", timeout=90),
            "suspended": wait_phase(api, AR, namespace, "suspended", "Suspended"),
            "waiting": wait_phase(api, FT, namespace, "waiting", "Waiting"),
            "no-secret": wait_for(stalled, what="the run without its Secret to stall"),
        }
        # A run waiting for an upstream run that does not exist needs a person: Stalled, so Degraded.
        expected = {"running": "Progressing", "succeeded": "Healthy", "failed": "Degraded", "suspended": "Suspended",
                    "waiting": "Degraded", "no-secret": "Degraded"}
        got = {name: lua_health(obj) for name, obj in observed.items()}
        assert {name: status for name, (status, _) in got.items()} == expected, json.dumps(got, indent=1)
        assert "exited with code 3" in got["failed"][1]
        assert "not-there" in got["waiting"][1]
        assert "minio-search-ml" in got["no-secret"][1]
        # Suspended is reached through a Job patch (suspend) the RBAC allows.
        job = jobs_of(api, namespace, observed["suspended"]["metadata"]["uid"])[0]
        assert job.spec.suspend is True

    def test_the_token_is_refused_what_the_operator_does_not_need(self, cluster_release: Release) -> None:
        allowed = [("get", "secrets", "default"), ("create", "jobs", "default"), ("patch", "jobs", "default"),
                   ("create", "configmaps", "default"), ("get", "configmaps", "default"),
                   ("list", "events", "default"), ("patch", "pods", OPERATOR_NAMESPACE),
                   ("patch", "augmentationruns.sampleforge.io#status", "default"),
                   ("update", "finetuneruns.sampleforge.io#finalizers", "default"),
                   ("create", "tokenreviews.authentication.k8s.io", None),
                   ("update", f"leases.coordination.k8s.io/{cluster_release.fullname}", OPERATOR_NAMESPACE)]
        refused = [("list", "secrets", None), ("watch", "secrets", "default"), ("list", "secrets", "default"),
                   ("delete", "jobs", "default"), ("create", "pods", "default"), ("patch", "pods", "default"),
                   ("list", "configmaps", "default"), ("update", "configmaps", "default"),
                   ("delete", "configmaps", "default"), ("delete", "augmentationruns.sampleforge.io", "default"),
                   ("update", "augmentationruns.sampleforge.io", "default"),
                   ("update", "augmentationruns.sampleforge.io#status", "default"),
                   ("patch", "jobs#status", "default"),
                   ("update", "leases.coordination.k8s.io/kube-scheduler", "kube-system"),
                   ("update", "leases.coordination.k8s.io/someone-else", OPERATOR_NAMESPACE),
                   ("create", "clusterroles.rbac.authorization.k8s.io", None),
                   ("list", "customresourcedefinitions.apiextensions.k8s.io", None)]
        assert [r for r in allowed if not cluster_release.can_i(*r)] == []
        assert [r for r in refused if cluster_release.can_i(*r)] == []

    def test_the_leader_labels_its_pod_and_only_it_gets_heartbeats(self, cluster_release: Release) -> None:
        """The chart's RBAC lets the leader label its own Pod; the heartbeat Service selects the
        leader's Pod, the metrics Service every replica's."""
        name = cluster_release.fullname
        wait_for(lambda: cluster_release.service_selects(name) == [cluster_release.pod_name], timeout=30,
                 what="the heartbeat Service to select the leader's Pod")
        # The metrics Service selects every replica: the stand-in and the Deployment's own Pods
        # (created by the testbed's controllers, never started: no kubelet runs them).
        every = cluster_release.service_selects(f"{name}-metrics")
        assert cluster_release.pod_name in every, every
        assert cluster_release.operator.readiness() == (True, "ok: leader, handling runs")

    def test_the_operator_never_hit_a_permission_error(self, cluster_release: Release) -> None:
        assert permission_errors(cluster_release) == []


class TestNamespaced:
    def test_runs_in_the_served_namespace_succeed_as_the_api_less_job_identity(
            self, namespaced_release: Release, api: client.ApiClient, namespaces: tuple[str, str]) -> None:
        served, other = namespaces
        ignored = create_run(api, other, example("augmentationrun.yaml", parallelism=1), name="not-mine")
        minio = namespaced_release.testbed.minio
        run = create_run(api, served, stored_example(minio, "augmentationrun.yaml", parallelism=1,
                                                     serviceAccountName="sampleforge-job"), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        pod = running_pod(api, served, uid)
        assert pod.spec.service_account_name == "sampleforge-job"
        assert pod.spec.automount_service_account_token is False
        wait_phase(api, AR, served, name, "Running")
        assert heartbeat(api, namespaced_release.operator.url, run, 100) == 202
        commit_output(minio.client(), run)
        release(api, served, uid)
        wait_phase(api, AR, served, name, "Succeeded", timeout=90)
        assert "status" not in get_run(api, AR, other, ignored["metadata"]["name"]), "a namespace it does not serve"
        assert not jobs_of(api, other, ignored["metadata"]["uid"])

    def test_the_token_reaches_nothing_outside_the_served_namespace(self, namespaced_release: Release,
                                                                     namespaces: tuple[str, str]) -> None:
        served, other = namespaces
        assert namespaced_release.can_i("get", "secrets", served)
        assert namespaced_release.can_i("create", "jobs", served)
        assert namespaced_release.can_i("create", "tokenreviews.authentication.k8s.io")
        assert namespaced_release.can_i("list", "events", served)
        assert namespaced_release.can_i("patch", "pods", OPERATOR_NAMESPACE)
        for verb, resource, namespace in [("get", "secrets", other), ("get", "secrets", None),
                                          ("list", "events", other), ("patch", "pods", served),
                                          ("list", "secrets", served), ("create", "jobs", other),
                                          ("list", "augmentationruns.sampleforge.io", None),
                                          ("list", "pods", None), ("get", "secrets", OPERATOR_NAMESPACE)]:
            assert not namespaced_release.can_i(verb, resource, namespace), f"{verb} {resource} in {namespace or 'all'}"

    def test_the_operator_never_hit_a_permission_error(self, namespaced_release: Release) -> None:
        assert permission_errors(namespaced_release) == []


# --- CRD upgrades ---------------------------------------------------------------------------------------


def crd_names() -> list[str]:
    return sorted(p.stem for p in (REPO / "crds").glob("*.yaml"))


def served_crd(testbed: Testbed, name: str) -> dict[str, Any]:
    crd: dict[str, Any] = json.loads(testbed.kubectl("get", "crd", name, "-o", "json").stdout)
    return crd


def test_helm_upgrade_applies_a_changed_crd_and_uninstall_keeps_it(chart_testbed: Testbed, tmp_path: Path) -> None:
    """Helm never upgrades a chart's crds/ folder; the chart templates its CRDs so that it does."""
    name, target = "sfcrd", "finetuneruns.sampleforge.io"
    try:
        # The testbed applied crds/ with kubectl, as a cluster that had the CRDs before this chart did:
        # the documented adoption (docs/install.md, "CRDs") hands them to the release.
        for crd in crd_names():
            chart_testbed.kubectl("label", "crd", crd, "app.kubernetes.io/managed-by=Helm", "--overwrite")
            chart_testbed.kubectl("annotate", "crd", crd, f"meta.helm.sh/release-name={name}",
                                  f"meta.helm.sh/release-namespace={OPERATOR_NAMESPACE}", "--overwrite")
        # The operator itself is not needed here: no replica would ever start (no kubelet).
        sets = ["--set", "replicaCount=1", "--set", "leaderElection.enabled=false"]
        helm(chart_testbed, "install", name, str(CHART), "--namespace", OPERATOR_NAMESPACE, *sets)
        installed = served_crd(chart_testbed, target)
        assert installed["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

        # The next chart version: its generated CRD has a new printer column.
        upgraded_chart = tmp_path / "sampleforge"
        shutil.copytree(CHART, upgraded_chart)
        crd_file = upgraded_chart / "files" / "crds" / f"{target}.yaml"
        text = crd_file.read_text()
        column = ("    - name: Upgraded\n      type: string\n      jsonPath: .metadata.name\n"
                  "      description: Added by the next chart version.\n      priority: 1\n")
        assert "    additionalPrinterColumns:\n" in text
        crd_file.write_text(text.replace("    additionalPrinterColumns:\n", "    additionalPrinterColumns:\n" + column, 1))
        helm(chart_testbed, "upgrade", name, str(upgraded_chart), "--namespace", OPERATOR_NAMESPACE, *sets)
        columns = [c["name"] for c in served_crd(chart_testbed, target)["spec"]["versions"][0]["additionalPrinterColumns"]]
        assert columns[0] == "Upgraded", f"helm upgrade did not apply the changed CRD: {columns}"

        helm(chart_testbed, "uninstall", name, "--namespace", OPERATOR_NAMESPACE)
        for crd in crd_names():
            served_crd(chart_testbed, crd)  # still there: uninstalling the operator never deletes the runs
    finally:
        helm(chart_testbed, "uninstall", name, "--namespace", OPERATOR_NAMESPACE, check=False)
        # Back to the session's CRDs exactly (no column, no Helm ownership) for the tests after this one.
        chart_testbed.kubectl("replace", "-f", str(REPO / "crds"))
        chart_testbed.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
    restored = served_crd(chart_testbed, target)
    assert "Upgraded" not in [c["name"] for c in restored["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert "meta.helm.sh/release-name" not in (restored["metadata"].get("annotations") or {})
