"""Storage the way clusters sign in, end to end: a run with no keys anywhere, whose pods sign in to
an https MinIO behind a private CA with their ServiceAccount's token (spec.storage.webIdentity and
caBundle), and an operator that reads the committed results with its own web identity.

Everything is real: the API server issues the tokens and serves its OpenID discovery, MinIO checks
them and hands out temporary keys through STS AssumeRoleWithWebIdentity (testbed/_sts.py), the
local node runs the Job's pods as processes with the projected token and the CA file mounted.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client
from operator_helpers import create_run, pods_of, wait_phase

from sampleforge.api import jobenv
from sampleforge.api.constants import Kind
from sampleforge.testbed import Testbed, TestbedOptions
from sampleforge.testbed._operator import OPERATOR_NAMESPACE, OperatorProcess
from sampleforge.testbed._sts import STS_AUDIENCE, StsMinio, start_sts_minio

pytestmark = pytest.mark.integration
NAMESPACE = "search-ml"
RUNNER = "augment-runner"  # the run's ServiceAccount: no Secret names it, no key belongs to it
BUCKET = "datasets"
CA_CONFIG_MAP = "minio-ca"


@dataclass(frozen=True)
class Cluster:
    tb: Testbed
    sts: StsMinio


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    tb = Testbed(TestbedOptions(controllers=True, gpu_nodes=0, local_node=True, minio=False)).start()
    failed = True
    try:
        tb.kubectl("apply", "--server-side", "-f", "crds")
        tb.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", "crds")
        with tb.api_client() as api:
            sts = start_sts_minio(api, tb.api.url, tb.pki.serving_ca, tb.workdir, tb.logs)
            tb.processes.append(sts.process)
            core = client.CoreV1Api(api)
            for ns in (NAMESPACE, OPERATOR_NAMESPACE):
                core.create_namespace({"metadata": {"name": ns}})
            tb.wait_for_default_service_account(NAMESPACE)
            core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": RUNNER}})
            core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": CA_CONFIG_MAP},
                                                          "data": {"ca.crt": sts.ca_pem}})
            # The operator's own identity, as IRSA would give its Deployment's ServiceAccount.
            core.create_namespaced_service_account(OPERATOR_NAMESPACE, {"metadata": {"name": "sampleforge"}})
            token = core.create_namespaced_service_account_token("sampleforge", OPERATOR_NAMESPACE, {
                "spec": {"audiences": [STS_AUDIENCE], "expirationSeconds": 3600}}).status.token
        token_file = tb.workdir / "operator-web-identity-token"
        token_file.write_text(token)
        sts.client().make_bucket(BUCKET)
        operator = OperatorProcess(tb.kubeconfig, tb.logs / "operator.log", settings={
            jobenv.AWS_WEB_IDENTITY_TOKEN_FILE: str(token_file), jobenv.AWS_ROLE_ARN: sts.role_arn,
            jobenv.AWS_ENDPOINT_URL_STS: sts.url, jobenv.AWS_ROLE_SESSION_NAME: "sampleforge-operator"}).start()
        try:
            yield Cluster(tb, sts)
            failed = False
        finally:
            operator.stop()
    finally:
        tb.stop(keep_workdir=failed)


def storage(sts: StsMinio, **identity: Any) -> dict[str, Any]:
    return {"endpoint": sts.endpoint, "secure": True, "caBundle": {"name": CA_CONFIG_MAP},
            "webIdentity": {"roleArn": sts.role_arn, "audience": STS_AUDIENCE, "stsEndpoint": sts.url, **identity}}


def augmentation(name: str, source: str, spec_storage: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "sampleforge.io/v1alpha1", "kind": "AugmentationRun", "metadata": {"name": name},
            "spec": {"storage": spec_storage, "serviceAccountName": RUNNER, "source": {"uri": source},
                     "augmenters": [{"type": "typo", "fraction": 0.5}], "output": {"uri": f"s3://{BUCKET}/out/{name}/"},
                     "backoffLimit": 0}}


def put_rows(sts: StsMinio, key: str) -> str:
    rows = [{"query": f"trail shoe {i}", "item": f"Trail runner model {i} waterproof", "label": i % 2}
            for i in range(30)]
    data = "\n".join(json.dumps(r) for r in rows).encode() + b"\n"
    sts.client().put_object(BUCKET, key, io.BytesIO(data), len(data))
    return f"s3://{BUCKET}/{key}"


def test_a_run_signs_in_with_its_service_account_and_trusts_the_private_ca(cluster: Cluster) -> None:
    source = put_rows(cluster.sts, "identity/train.jsonl")
    with cluster.tb.api_client() as api:
        run = create_run(api, NAMESPACE, augmentation("by-identity", source, storage(cluster.sts)))
        done = wait_phase(api, Kind.AUGMENTATION_RUN, NAMESPACE, "by-identity", "Succeeded", timeout=300)
        pod = pods_of(api, NAMESPACE, run["metadata"]["uid"])[0]
    env = {e.name for e in pod.spec.containers[0].env}
    assert not env & {jobenv.S3_ACCESS_KEY, jobenv.S3_SECRET_KEY}, "no keys reach the pod"
    assert {jobenv.AWS_WEB_IDENTITY_TOKEN_FILE, jobenv.AWS_ROLE_ARN, jobenv.S3_CA_FILE} <= env
    assert pod.spec.service_account_name == RUNNER
    # What the status shows is what the pods committed, read by the operator with its own identity.
    manifest = json.loads(cluster.sts.client().get_object(BUCKET, "out/by-identity/manifest.json").read())
    results = done["status"]["results"]
    assert (results["samplesIn"], results["samplesOut"]) == (manifest["rowsIn"], manifest["rowsOut"])
    assert results["samplesIn"] == 30 and results["samplesOut"] > 30


def test_a_token_for_another_audience_is_refused_and_the_run_fails_saying_so(cluster: Cluster) -> None:
    source = put_rows(cluster.sts, "wrong-audience/train.jsonl")
    with cluster.tb.api_client() as api:
        create_run(api, NAMESPACE, augmentation("wrong-audience", source,
                                                storage(cluster.sts, audience="someone-else")))
        failed = wait_phase(api, Kind.AUGMENTATION_RUN, NAMESPACE, "wrong-audience", "Failed", timeout=300)
    ready = next(c for c in failed["status"]["conditions"] if c["type"] == "Ready")
    # Fails at once (no retries: a refused identity is a configuration error), saying why and what to check.
    assert ready["reason"] == "InvalidSpec", ready
    assert "cannot sign in to" in ready["message"] and "spec.storage.webIdentity" in ready["message"]
    assert "IamAwsProvider" in ready["message"], "STS's own answer is quoted, not only 'all providers failed'"
    assert not list(cluster.sts.client().list_objects(BUCKET, prefix="out/wrong-audience/manifest.json"))
