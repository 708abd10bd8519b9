"""``kubectl sampleforge`` against the real testbed: the plugin runs as its own process (and through
the real kubectl binary's plugin lookup) on the testbed's kubeconfig, with the operator running as
its own process and kwok GPU nodes running the runs' Jobs.
``logs`` is tested in test_cli_logs.py, where no operator runs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from minio import Minio
from operator_helpers import (
    CREDENTIALS_SECRET,
    EXAMPLE_BUCKETS,
    FAST,
    HOLD,
    commit_output,
    create_run,
    example,
    release,
    running_operator,
    running_pod,
    wait_for,
    wait_phase,
)

from sampleforge.api import GROUP, VERSION
from sampleforge.api.constants import PLURALS, Kind
from sampleforge.testbed import EXIT_CODE_ANNOTATION, Testbed
from sampleforge.testbed._operator import OperatorProcess
from sampleforge.testbed._paths import binary

pytestmark = pytest.mark.integration
AR, FT = Kind.AUGMENTATION_RUN, Kind.FINE_TUNE_RUN
SETTINGS = FAST | EXAMPLE_BUCKETS
BIN = Path(sys.executable).parent
PLUGIN = shutil.which("kubectl-sampleforge", path=str(BIN))


def plugin(testbed: Testbed, *args: str, timeout: float = 120,
           extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed ``kubectl-sampleforge`` with only KUBECONFIG to find the cluster."""
    assert PLUGIN is not None, "kubectl-sampleforge is not installed: reinstall the project (make setup)"
    env = dict(testbed.env(), COLUMNS="160", NO_COLOR="1", TERM="dumb", **(extra_env or {}))
    return subprocess.run([PLUGIN, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)



def put(s3: Minio, uri: str, data: bytes, content_type: str = "text/markdown") -> None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    s3.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)

@pytest.fixture(scope="module")
def operator_proc(testbed: Testbed) -> Iterator[OperatorProcess]:
    with running_operator(testbed, "operator-cli.log", SETTINGS) as proc:
        yield proc


class TestAugmentationRun:
    def test_status_wait_report_through_the_plugin_and_kubectl(self, testbed: Testbed, kube_api: client.ApiClient,
                                                              ns: str, stored: Callable[..., Any], s3: Minio,
                                                              tmp_path: Path) -> None:
        run = create_run(kube_api, ns, stored("augmentationrun.yaml", parallelism=1), labels=HOLD)
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        wait_phase(kube_api, AR, ns, name, "Running")

        shown = plugin(testbed, "status", name, "-n", ns)
        assert shown.returncode == 0, shown.stderr
        assert f"AugmentationRun/{name} in namespace {ns}" in shown.stdout
        assert "Running" in shown.stdout and "JobRunning" in shown.stdout

        # Not finished yet: wait gives up with its own exit code, naming the phase.
        early = plugin(testbed, "wait", f"ar/{name}", "-n", ns, "--timeout", "2")
        assert early.returncode == 3, early.stderr
        assert "timed out after 2s" in early.stderr and "phase Running" in early.stderr

        # No manifest yet: the report is refused rather than shown half-written.
        uncommitted = plugin(testbed, "report", name, "-n", ns)
        assert uncommitted.returncode == 4 and "has not committed its output yet" in uncommitted.stderr

        # Play the job's part: the report, then the commit; then let the pods finish.
        out = run["spec"]["output"]["uri"]
        put(s3, out + "report.md", b"# Augmentation report\n\n| augmenter | kept |\n| --- | --- |\n| typo | 20 |\n\n"
                                   b"Rows in: **50**, rows out: **70**.\n")
        commit_output(s3, run, rows=50, generated={"typo": 20})
        waiter = subprocess.Popen([str(PLUGIN), "wait", name, "-n", ns, "--timeout", "90"],
                                  env=dict(testbed.env(), NO_COLOR="1"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert waiter.stderr is not None and waiter.stderr.readline().startswith("waiting for"), "not watching"
        release(kube_api, ns, uid)
        stdout, stderr = waiter.communicate(timeout=120)
        assert waiter.returncode == 0, stderr
        assert f"AugmentationRun/{name} Succeeded" in stdout

        raw = plugin(testbed, "status", name, "-n", ns, "-o", "json")
        status = json.loads(raw.stdout)
        assert status["phase"] == "Succeeded" and status["results"]["samplesOut"] == 70
        text = plugin(testbed, "status", name, "-n", ns).stdout
        assert "Succeeded" in text and "augmenter typo (kept)" in text and "manifest.json" in text

        report = plugin(testbed, "report", name, "-n", ns)
        assert report.returncode == 0, report.stderr
        assert "Augmentation report" in report.stdout and "typo" in report.stdout
        assert out + "report.md" in report.stdout

        html = tmp_path / "report.html"
        missing = plugin(testbed, "report", name, "-n", ns, "--html", str(html))
        assert missing.returncode == 4 and "no HTML report published yet" in missing.stderr
        assert out + "report.html" in missing.stderr and not html.exists()
        put(s3, out + "report.html", b"<html><body><h1>report</h1></body></html>", "text/html")
        written = plugin(testbed, "report", name, "-n", ns, "--html", str(html))
        assert written.returncode == 0, written.stderr
        assert html.read_bytes() == b"<html><body><h1>report</h1></body></html>"
        # --open hands the written file to the user's browser (BROWSER, as Python's webbrowser reads it).
        browser = tmp_path / "browser.sh"
        browser.write_text(f'#!/bin/sh\necho "$1" > {tmp_path / "opened"}\n')
        browser.chmod(0o755)
        opened = plugin(testbed, "report", name, "-n", ns, "--html", str(html), "--open",
                        extra_env={"BROWSER": str(browser)})
        assert opened.returncode == 0, opened.stderr
        assert (tmp_path / "opened").read_text().strip() == html.resolve().as_uri()

        # --s3-endpoint replaces spec.storage.endpoint (a port-forward from a laptop); unreachable, it says what to do.
        unreachable = plugin(testbed, "report", name, "-n", ns, "--s3-endpoint", "127.0.0.1:9")
        assert unreachable.returncode == 4
        assert "cannot reach MinIO at 127.0.0.1:9" in unreachable.stderr and "port-forward" in unreachable.stderr

        # The real kubectl finds the plugin on PATH and hands it the arguments (and KUBECONFIG).
        env = dict(testbed.env(), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", NO_COLOR="1",
                   COLUMNS="160")
        listed = subprocess.run([str(binary("kubectl")), "plugin", "list"], env=env, capture_output=True, text=True,
                                check=False)
        assert "kubectl-sampleforge" in listed.stdout
        via = subprocess.run([str(binary("kubectl")), "sampleforge", "status", f"augmentationrun/{name}", "-n", ns],
                             env=env, capture_output=True, text=True, timeout=60, check=False)
        assert via.returncode == 0, via.stderr
        assert "Succeeded" in via.stdout and f"AugmentationRun/{name}" in via.stdout
        via_wait = subprocess.run([str(binary("kubectl")), "sampleforge", "wait", name, "-n", ns, "--timeout", "5"],
                                  env=env, capture_output=True, text=True, timeout=60, check=False)
        assert via_wait.returncode == 0, via_wait.stderr

        # Without the credentials Secret the report says which Secret, where, and what to do.
        client.CoreV1Api(kube_api).delete_namespaced_secret(CREDENTIALS_SECRET, ns)
        no_secret = plugin(testbed, "report", name, "-n", ns)
        assert no_secret.returncode == 4
        assert f"credentials Secret '{CREDENTIALS_SECRET}'" in no_secret.stderr and ns in no_secret.stderr

    def test_wait_on_a_failing_run_exits_non_zero_with_the_reason(self, testbed: Testbed,
                                                                  kube_api: client.ApiClient, ns: str) -> None:
        run = create_run(kube_api, ns, example("augmentationrun.yaml", backoffLimit=0, parallelism=1), labels=HOLD)
        name = run["metadata"]["name"]
        pod = running_pod(kube_api, ns, run["metadata"]["uid"])
        waiter = subprocess.Popen([str(PLUGIN), "wait", name, "-n", ns, "--timeout", "90"],
                                  env=dict(testbed.env(), NO_COLOR="1", COLUMNS="300"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert waiter.stderr is not None and waiter.stderr.readline().startswith("waiting for"), "not watching"
        client.CoreV1Api(kube_api).patch_namespaced_pod(pod.metadata.name, ns,
                                                        {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "7"}}})
        _, stderr = waiter.communicate(timeout=120)
        assert waiter.returncode == 1, stderr
        assert f"AugmentationRun/{name} Failed: BackoffLimitExceeded" in stderr and "exited with code 7" in stderr

    def test_wait_for_a_run_that_is_deleted(self, testbed: Testbed, kube_api: client.ApiClient, ns: str) -> None:
        run = create_run(kube_api, ns, example("augmentationrun.yaml", suspend=True))
        name = run["metadata"]["name"]
        wait_phase(kube_api, AR, ns, name, "Suspended")
        waiter = subprocess.Popen([str(PLUGIN), "wait", name, "-n", ns, "--timeout", "60"],
                                  env=dict(testbed.env(), NO_COLOR="1", COLUMNS="300"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert waiter.stderr is not None
        first = waiter.stderr.readline()  # the plugin has read the run and watches it from here on
        assert first.startswith(f"waiting for AugmentationRun/{name}"), first
        client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[AR], name)
        _, stderr = waiter.communicate(timeout=90)
        assert waiter.returncode == 4, stderr
        assert f"AugmentationRun {name} was deleted from namespace {ns} while waiting" in stderr

    def test_context_namespace_and_unknown_runs(self, testbed: Testbed, kube_api: client.ApiClient, ns: str,
                                                 tmp_path: Path) -> None:
        name = create_run(kube_api, ns, example("augmentationrun.yaml", suspend=True))["metadata"]["name"]
        # A kubeconfig whose current context is broken and whose context "team" defaults to the run's namespace:
        # --context picks the cluster, the context's namespace is the default, -n overrides it.
        kubeconfig = yaml.safe_load(testbed.kubeconfig.read_text())
        good = kubeconfig["contexts"][0]
        kubeconfig["contexts"] = [{"name": "team", "context": {**good["context"], "namespace": ns}},
                                  {"name": "broken", "context": {**good["context"], "cluster": "nowhere"}}]
        kubeconfig["current-context"] = "broken"
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        env = dict(testbed.env(), KUBECONFIG=str(path), NO_COLOR="1", COLUMNS="160")

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(PLUGIN), *args], env=env, capture_output=True, text=True, timeout=60,
                                  check=False)

        by_context = run("status", name, "--context", "team")
        assert by_context.returncode == 0, by_context.stderr
        assert f"AugmentationRun/{name} in namespace {ns}" in by_context.stdout
        assert run("--context", "team", "-n", ns, "status", f"ar/{name}").returncode == 0  # options first, too
        broken = run("status", name)
        assert broken.returncode == 4 and "nowhere" in broken.stderr
        elsewhere = run("status", name, "--context", "team", "-n", "default")
        assert elsewhere.returncode == 4
        assert f"no AugmentationRun or FineTuneRun named '{name}' in namespace 'default'" in elsewhere.stderr
        wrong_kind = run("wait", f"ftr/{name}", "--context", "team")
        assert wrong_kind.returncode == 4 and f"no FineTuneRun named '{name}' in namespace '{ns}'" in wrong_kind.stderr
        no_context = run("status", name, "--context", "absent")
        assert no_context.returncode == 4 and "cannot use context 'absent'" in no_context.stderr


def documented_role() -> dict[str, Any]:
    """The Role docs/plugin.md gives plugin users, read from the page itself so the page stays true."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "plugin.md").read_text()
    block = text.split("<!-- plugin-user-role -->", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    return dict(yaml.safe_load(block))


class TestLeastPrivilege:
    def test_the_documented_role_is_enough_and_the_plugin_uses_the_users_identity(
            self, testbed: Testbed, kube_api: client.ApiClient, ns: str, stored: Callable[..., Any], s3: Minio,
            tmp_path: Path) -> None:
        run = create_run(kube_api, ns, stored("augmentationrun.yaml", parallelism=1), labels=HOLD)
        name = run["metadata"]["name"]
        wait_phase(kube_api, AR, ns, name, "Running")
        put(s3, run["spec"]["output"]["uri"] + "report.md", b"# Report for the team\n")
        commit_output(s3, run, rows=10, generated={"typo": 5})
        release(kube_api, ns, run["metadata"]["uid"])
        wait_phase(kube_api, AR, ns, name, "Succeeded", timeout=90)

        core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
        role = documented_role()
        assert role["rules"][-1]["resourceNames"] == [CREDENTIALS_SECRET]
        rbac.create_namespaced_role(ns, role)
        core.create_namespaced_service_account(ns, {"metadata": {"name": "analyst"}})
        binding = {"metadata": {"name": "analyst"}, "subjects": [{"kind": "ServiceAccount", "name": "analyst",
                                                                   "namespace": ns}],
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}}
        rbac.create_namespaced_role_binding(ns, binding)
        token = core.create_namespaced_service_account_token("analyst", ns, {"spec": {"expirationSeconds": 600}})
        admin = yaml.safe_load(testbed.kubeconfig.read_text())
        kubeconfig = {"apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
                      "users": [{"name": "analyst", "user": {"token": token.status.token}}],
                      "contexts": [{"name": "analyst", "context": {"cluster": admin["clusters"][0]["name"],
                                                                   "user": "analyst", "namespace": ns}}],
                      "current-context": "analyst"}
        path = tmp_path / "analyst.kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        env = dict(testbed.env(), KUBECONFIG=str(path), NO_COLOR="1", COLUMNS="160")

        def run_as_analyst(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(PLUGIN), *args], env=env, capture_output=True, text=True, timeout=60,
                                  check=False)

        for args in (("status", name), ("wait", name, "--timeout", "10"), ("report", name)):
            done = run_as_analyst(*args)
            assert done.returncode == 0, (args, done.stderr)
        assert "Report for the team" in run_as_analyst("report", name).stdout
        # Outside the Role (another namespace): the plugin says what it was not allowed to do.
        other = run_as_analyst("status", name, "-n", "default")
        assert other.returncode == 4 and "not allowed to read" in other.stderr and "namespace default" in other.stderr
        rbac.delete_namespaced_role_binding("analyst", ns)
        refused = wait_for(lambda: (r := run_as_analyst("status", name)).returncode == 4 and r, timeout=30,
                           what="the unbound identity to be refused")
        assert "not allowed to read AugmentationRun" in refused.stderr and "ask for read access" in refused.stderr


class TestFineTuneRuns:
    def test_compare_and_report(self, testbed: Testbed, kube_api: client.ApiClient, ns: str,
                                stored: Callable[..., Any], s3: Minio) -> None:
        runs = {}
        for name, metrics in (("baseline", {"ndcg@10": 0.58, "mrr": 0.5, "auc": 0.75}),
                              ("augmented", {"ndcg@10": 0.612, "mrr": 0.52, "auc": 0.74})):
            run = create_run(kube_api, ns, stored("finetunerun-baseline.yaml"), name=name, labels=HOLD)
            wait_phase(kube_api, FT, ns, name, "Running")
            if name == "augmented":
                put(s3, run["spec"]["output"]["uri"] + "model/README.md",
                    b"# shoes ranker\n\nA LoRA relevance ranker trained on the augmented set.\n")
            commit_output(s3, run, metrics=metrics)
            release(kube_api, ns, run["metadata"]["uid"])
            runs[name] = run
        for name in runs:
            assert plugin(testbed, "wait", f"finetunerun/{name}", "-n", ns, "--timeout", "90").returncode == 0

        table = plugin(testbed, "compare", "baseline", "augmented", "-n", ns)
        assert table.returncode == 0, table.stderr
        text = table.stdout.replace("│", " ")
        assert "lift in points over baseline" in text
        assert "+3.20" in text and "+2.00" in text and "-1.00" in text
        lifts = json.loads(plugin(testbed, "compare", "ftr/baseline", "ftr/augmented", "-n", ns, "-o", "json").stdout)
        assert lifts[1]["liftPoints"] == pytest.approx({"ndcg@10": 3.2, "mrr": 2.0, "auc": -1.0})
        assert lifts[0]["metrics"]["ndcg@10"] == 0.58

        card = plugin(testbed, "report", "augmented", "-n", ns)
        assert card.returncode == 0, card.stderr
        assert "shoes ranker" in card.stdout and "metrics.json" in card.stdout
        assert "ndcg@10" in card.stdout and "0.612" in card.stdout

        not_ft = plugin(testbed, "compare", "ar/baseline", "augmented", "-n", ns)
        assert not_ft.returncode == 2 and "compare takes FineTuneRuns" in not_ft.stderr
