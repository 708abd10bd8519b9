"""The local-process node runs a Job's container command for real, with its environment, Secrets,
downward API and projected token, and reports the outcome through the real Job controller."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from operator_helpers import wait_for

from sampleforge.testbed import Testbed, TestbedOptions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_testbed() -> Iterator[Testbed]:
    with Testbed(TestbedOptions(controllers=True, gpu_nodes=0, local_node=True, minio=False)) as tb:
        yield tb


def job(name: str, script: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "completions": 2, "parallelism": 2, "completionMode": "Indexed",
                 "template": {"spec": {
                     "restartPolicy": "Never", "serviceAccountName": "default",
                     "containers": [{
                         "name": "job", "image": "local", "command": ["sh", "-c", script],
                         "env": [
                             {"name": "GREETING", "valueFrom": {"secretKeyRef": {"name": "greeting", "key": "text"}}},
                             {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                             {"name": "TOKEN_FILE", "value": "/var/run/secrets/app/token"},
                         ],
                         "volumeMounts": [{"name": "token", "mountPath": "/var/run/secrets/app"}],
                     }],
                     "volumes": [{"name": "token", "projected": {"sources": [{"serviceAccountToken": {
                         "audience": "sampleforge.io/test", "expirationSeconds": 600, "path": "token"}}]}}],
                 }}},
    }


class TestLocalNode:
    def test_a_job_really_runs_and_succeeds(self, local_testbed: Testbed, tmp_path_factory: pytest.TempPathFactory
                                            ) -> None:
        out = tmp_path_factory.mktemp("out")
        with local_testbed.api_client() as api:
            core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
            core.create_namespaced_secret("default", {"metadata": {"name": "greeting"},
                                                      "stringData": {"text": "hello from a Secret"}})
            script = (f'test -s "$TOKEN_FILE" && printf "%s|%s|%s" "$GREETING" "$JOB_COMPLETION_INDEX" "$POD_NAME" '
                      f'> {out}/$JOB_COMPLETION_INDEX.txt && cp "$TOKEN_FILE" {out}/token-$JOB_COMPLETION_INDEX')
            batch.create_namespaced_job("default", job("real", script))
            # The Job controller sets Complete a moment after counting both successes (SuccessCriteriaMet comes
            # first), so wait for the condition itself rather than asserting it right after the count.
            done = wait_for(lambda: (j := batch.read_namespaced_job_status("real", "default")).status.conditions
                            and any(c.type == "Complete" and c.status == "True" for c in j.status.conditions) and j,
                            timeout=90, what="the Job to complete")
            assert done.status.succeeded == 2
            for index in ("0", "1"):
                greeting, got_index, pod_name = (out / f"{index}.txt").read_text().split("|")
                assert (greeting, got_index) == ("hello from a Secret", index)
                assert pod_name.startswith("real-")
                # The token really is a ServiceAccount token bound to this pod, for the declared audience.
                claims = json.loads(base64.urlsafe_b64decode((out / f"token-{index}").read_text().split(".")[1]
                                                             + "=="))
                assert claims["aud"] == ["sampleforge.io/test"]
                assert claims["kubernetes.io"]["pod"]["name"] == pod_name

    def test_a_config_map_volume_is_mounted_as_files(self, local_testbed: Testbed,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
        # How the operator hands a run its spec: a ConfigMap mounted read-only, its path in a variable.
        out = tmp_path_factory.mktemp("out")
        spec = json.dumps({"big": "x" * 200_000})  # above Linux's 128 KiB limit for one environment string
        with local_testbed.api_client() as api:
            core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
            core.create_namespaced_config_map("default", {"metadata": {"name": "run-spec"}, "immutable": True,
                                                          "data": {"spec.json": spec}})
            body = job("mounted", f'cp "$SPEC_FILE" {out}/spec-$JOB_COMPLETION_INDEX.json')
            pod = body["spec"]["template"]["spec"]
            # With an emptyDir at /tmp too, as the operator renders (the local stand-ins live under /tmp:
            # a path rewritten into one must not be rewritten again).
            pod["containers"][0]["env"] = [{"name": "SPEC_FILE", "value": "/etc/sampleforge/run/spec.json"},
                                           {"name": "TMPDIR", "value": "/tmp"}]
            pod["containers"][0]["volumeMounts"] = [{"name": "spec", "mountPath": "/etc/sampleforge/run",
                                                     "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}]
            pod["volumes"] = [{"name": "spec", "configMap": {"name": "run-spec", "defaultMode": 0o444}},
                              {"name": "tmp", "emptyDir": {}}]
            batch.create_namespaced_job("default", body)
            wait_for(lambda: (batch.read_namespaced_job_status("mounted", "default").status.succeeded or 0) >= 2,
                     timeout=90, what="the Job to complete")
        assert (out / "spec-0.json").read_text() == spec and (out / "spec-1.json").read_text() == spec

    def test_a_failing_command_fails_the_job_with_its_exit_code(self, local_testbed: Testbed) -> None:
        with local_testbed.api_client() as api:
            core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
            batch.create_namespaced_job("default", job("fails", "echo 'bad input' >&2; exit 3"))
            wait_for(lambda: (batch.read_namespaced_job_status("fails", "default").status.failed or 0) >= 1,
                     timeout=90, what="the Job to fail")
            pods = core.list_namespaced_pod("default", label_selector="job-name=fails").items
            terminated = [p.status.container_statuses[0].state.terminated for p in pods
                          if p.status.container_statuses and p.status.container_statuses[0].state.terminated]
            assert terminated and terminated[0].exit_code == 3
            assert "bad input" in terminated[0].message
