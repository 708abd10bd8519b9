"""Rendering a run into its Job (and Service) is pure, deterministic and complete.

Every example manifest in ``examples/`` is rendered here; the lead's integration tests create the
same Jobs on a real API server. The kubernetes client's models stand in for the server's schema:
a rendered object must survive deserialization into ``V1Job`` / ``V1Service`` unchanged, which
fails on any misspelled or misplaced field name.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from kubernetes import client

from sampleforge.api import AugmentationRunSpec, FineTuneRunSpec, Kind, jobenv
from sampleforge.api.constants import (
    API_VERSION,
    GPU_RESOURCE,
    KUEUE_QUEUE_LABEL,
    LABEL_MANAGED_BY,
    LABEL_RUN_KIND,
    LABEL_RUN_NAME,
    LABEL_RUN_UID,
    LABEL_STEP,
    MANAGED_BY_VALUE,
)
from sampleforge.operator.render import (
    ANNOTATION_RUN_GENERATION,
    MAX_JOB_NAME_LENGTH,
    POD_ONLY_FIELDS,
    RunObject,
    child_labels,
    job_name,
    render_headless_service,
    render_job,
    render_spec_config_map,
    run_label_value,
    selector_labels,
    service_name,
)
from sampleforge.operator.settings import Settings
from sampleforge.operator.specdrift import ANNOTATION_APPLIED_SPEC

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
NAMESPACE = "search-ml"
UID = "0b6c2a52-1f0e-4c53-9d8e-7f0a3c1e2d44"
UPSTREAM_OUTPUT = "s3://datasets/search/shoes/augmented/2026q4/"
SETTINGS = Settings()
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
#: What the credentials Secret would hold: the operator never sees it, so it must never show up.
SECRET_VALUES = ("AKIA-SENTINEL-ACCESS-KEY", "sentinel/secret+key=", "hf_sentinelHubToken")
CREDENTIAL_ENV = (jobenv.S3_ACCESS_KEY, jobenv.S3_SECRET_KEY, jobenv.HUB_TOKEN)


def body_of(path: Path, /, **metadata: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(path.read_text())
    body["metadata"] = {"namespace": NAMESPACE, "uid": UID, "generation": 1, **body["metadata"], **metadata}
    return body


def run_of(path: Path, /, **metadata: Any) -> RunObject:
    return RunObject.from_body(body_of(path, **metadata))


def example(file: str, /, **metadata: Any) -> RunObject:
    return run_of(REPO / "examples" / file, **metadata)


def with_spec(run: RunObject, **changes: Any) -> RunObject:
    """The run with top-level spec fields replaced (camelCase keys), re-validated."""
    raw = {**copy.deepcopy(dict(run.raw_spec)), **changes}
    raw = {k: v for k, v in raw.items() if v is not None}
    spec = type(run.spec).model_validate(raw)
    return RunObject(kind=run.kind, name=run.name, namespace=run.namespace, uid=run.uid,
                     generation=run.generation, spec=spec, raw_spec=raw, labels=run.labels)


def upstream_input(run: RunObject) -> str | None:
    spec = run.spec
    return UPSTREAM_OUTPUT if isinstance(spec, FineTuneRunSpec) and spec.data.from_augmentation_run else None


def render(run: RunObject, settings: Settings = SETTINGS) -> dict[str, Any]:
    job: dict[str, Any] = render_job(run, settings, upstream_input(run))
    return job


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def container(job: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(job)["containers"]
    assert len(containers) == 1
    return containers[0]


def env(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = container(job)["env"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e for e in entries}


def env_value(job: dict[str, Any], name: str) -> str:
    value: str = env(job)[name]["value"]
    return value


@pytest.fixture(params=EXAMPLES, ids=[p.name for p in EXAMPLES])
def any_example(request: pytest.FixtureRequest) -> RunObject:
    path: Path = request.param
    return run_of(path)


class TestExampleSet:
    def test_every_example_is_rendered_here(self) -> None:
        names = {p.name for p in EXAMPLES}
        assert {"augmentationrun.yaml", "augmentationrun-complete.yaml", "finetunerun.yaml",
                "finetunerun-baseline.yaml", "finetunerun-complete.yaml"} <= names


class TestJobName:
    def test_short_names_read_as_the_run(self) -> None:
        assert job_name(Kind.AUGMENTATION_RUN, "shoes-2026q4") == "shoes-2026q4-aug"
        assert job_name(Kind.FINE_TUNE_RUN, "shoes-ranker-2026q4") == "shoes-ranker-2026q4-ft"
        assert job_name("FineTuneRun", "a") == "a-ft"

    def test_rendered_job_carries_the_derived_name(self, any_example: RunObject) -> None:
        assert render(any_example)["metadata"]["name"] == job_name(any_example.kind, any_example.name)

    @pytest.mark.parametrize("length", [56, 57, 60, 63, 64, 200, 253])
    def test_long_names_are_cut_to_a_valid_label_with_a_hash(self, length: int) -> None:
        name = ("shoes-ranker-" * 30)[: length - 1] + "x"
        for kind in Kind:
            derived = job_name(kind, name)
            assert len(derived) <= MAX_JOB_NAME_LENGTH
            assert DNS_LABEL.match(derived), derived
            assert derived.endswith("-aug" if kind is Kind.AUGMENTATION_RUN else "-ft")
            assert derived == job_name(kind, name)  # stable

    def test_indexed_pod_hostnames_fit_a_dns_label(self) -> None:
        name = job_name(Kind.AUGMENTATION_RUN, "a" * 253)
        assert len(f"{name}-999") <= 63  # spec.parallelism <= 1000

    def test_names_sharing_a_long_prefix_stay_apart(self) -> None:
        prefix = "catalog-ranker-" * 5
        assert job_name(Kind.FINE_TUNE_RUN, prefix + "a") != job_name(Kind.FINE_TUNE_RUN, prefix + "b")

    def test_dots_are_replaced_without_colliding_with_the_dashed_name(self) -> None:
        dotted = job_name(Kind.FINE_TUNE_RUN, "ranker.v1")
        assert DNS_LABEL.match(dotted)
        assert dotted != job_name(Kind.FINE_TUNE_RUN, "ranker-v1") == "ranker-v1-ft"
        assert dotted.startswith("ranker-v1-")

    def test_the_hash_is_fixed_not_random(self) -> None:
        # A restarted operator must derive the very same name: pin one value.
        assert job_name(Kind.AUGMENTATION_RUN, "x" * 100) == "x" * 46 + "-" + _sha8("x" * 100) + "-aug"

    def test_long_run_name_label_is_a_valid_label_value(self) -> None:
        for name in ("short", "a" * 63, "a" * 64, "b." * 100 + "c"):
            value = run_label_value(name)
            assert len(value) <= 63 and LABEL_VALUE.match(value), value
        assert run_label_value("a" * 63) == "a" * 63
        assert run_label_value("a" * 64) != run_label_value("a" * 65)

    def test_service_name_is_a_dns_1035_label(self) -> None:
        assert service_name("ranker-ft") == "ranker-ft"
        for job in ("2026q4-ranker-ft", job_name(Kind.FINE_TUNE_RUN, "9" * 200)):
            name = service_name(job)
            assert DNS_1035_LABEL.match(name) and len(name) <= 63, name


def _sha8(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


class TestOwnership:
    def test_the_job_is_controlled_by_the_run(self, any_example: RunObject) -> None:
        meta = render(any_example)["metadata"]
        assert meta["namespace"] == NAMESPACE
        assert meta["ownerReferences"] == [{
            "apiVersion": API_VERSION, "kind": any_example.kind.value, "name": any_example.name, "uid": UID,
            "controller": True, "blockOwnerDeletion": True,
        }]

    def test_the_service_is_controlled_by_the_run(self) -> None:
        run = example("finetunerun.yaml")
        service = render_headless_service(run, SETTINGS)
        assert service is not None
        assert service["metadata"]["ownerReferences"] == render(run)["metadata"]["ownerReferences"]

    def test_the_generation_rendered_from_is_recorded(self) -> None:
        job = render(example("augmentationrun.yaml", generation=7))
        annotations = job["metadata"]["annotations"]
        assert annotations[ANNOTATION_RUN_GENERATION] == "7"
        assert set(json.loads(annotations[ANNOTATION_APPLIED_SPEC])) >= {"augmenters", "filters", "resources"}


class TestLabels:
    def test_operator_labels_on_job_and_pods(self, any_example: RunObject) -> None:
        job = render(any_example)
        expected = {
            LABEL_RUN_NAME: any_example.name, LABEL_RUN_KIND: any_example.kind.value, LABEL_RUN_UID: UID,
            LABEL_MANAGED_BY: MANAGED_BY_VALUE, "app.kubernetes.io/name": "sampleforge",
        }
        for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
            assert expected.items() <= labels.items()
            assert all(LABEL_VALUE.match(v) and len(v) <= 63 for v in labels.values())

    def test_user_labels_are_propagated_but_bookkeeping_is_not(self) -> None:
        labels = {
            "team": "search", "app.kubernetes.io/part-of": "ranking", "cost-center": "ml-42",
            "app.kubernetes.io/instance": "argocd-app", "argocd.argoproj.io/instance": "x",
            "applyset.kubernetes.io/part-of": "applyset-abc", "kustomize.toolkit.fluxcd.io/name": "apps",
            "kueue.x-k8s.io/queue-name": "sneaky", "sampleforge.io/run": "someone-else",
            "app.kubernetes.io/managed-by": "Helm", "job-name": "other", "controller-uid": "other",
        }
        job = render(example("augmentationrun.yaml", labels=labels))
        for got in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
            assert {"team": "search", "app.kubernetes.io/part-of": "ranking", "cost-center": "ml-42"}.items() \
                <= got.items()
            for dropped in ("app.kubernetes.io/instance", "argocd.argoproj.io/instance", "job-name",
                            "applyset.kubernetes.io/part-of", "kustomize.toolkit.fluxcd.io/name", "controller-uid"):
                assert dropped not in got
            assert KUEUE_QUEUE_LABEL not in got  # no spec.queueName: no queue, whatever the labels say
            assert got[LABEL_RUN_NAME] == "shoes-2026q4"
            assert got[LABEL_MANAGED_BY] == MANAGED_BY_VALUE

    def test_kueue_queue_label_from_spec_on_the_job_only(self) -> None:
        job = render(example("augmentationrun-complete.yaml"))
        assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "search-ml-gpu"
        assert KUEUE_QUEUE_LABEL not in job["spec"]["template"]["metadata"]["labels"]

    def test_no_kueue_label_without_a_queue(self) -> None:
        assert KUEUE_QUEUE_LABEL not in render(example("finetunerun.yaml"))["metadata"]["labels"]

    def test_selector_labels_select_the_pods(self, any_example: RunObject) -> None:
        pod_labels = render(any_example)["spec"]["template"]["metadata"]["labels"]
        assert selector_labels(any_example).items() <= pod_labels.items()
        # A sharded run's pods also say their step (tests/unit/test_operator_steps.py).
        assert child_labels(any_example) == {k: v for k, v in pod_labels.items() if k != LABEL_STEP}


class TestGpuRequest:
    @pytest.mark.parametrize(("name", "gpus"), [
        ("augmentationrun.yaml", 1), ("augmentationrun-complete.yaml", 1), ("finetunerun.yaml", 4),
        ("finetunerun-baseline.yaml", 1), ("finetunerun-complete.yaml", 4),
    ])
    def test_examples_request_their_gpus(self, name: str, gpus: int) -> None:
        resources = container(render(example(name)))["resources"]
        assert resources["limits"][GPU_RESOURCE] == str(gpus)
        assert resources["requests"][GPU_RESOURCE] == str(gpus)

    def test_augmentation_defaults_to_no_gpu(self) -> None:
        run = with_spec(example("augmentationrun.yaml"), resources=None)
        job = render(run)
        assert "resources" not in container(job)
        assert "tolerations" not in pod_spec(job)
        assert all(v["name"] != "dshm" for v in pod_spec(job)["volumes"])

    def test_finetune_defaults_to_one_gpu(self) -> None:
        raw = dict(example("finetunerun-baseline.yaml").raw_spec)
        raw["distribution"] = {"mixedPrecision": "bf16"}
        job = render(with_spec(example("finetunerun-baseline.yaml"), distribution=raw["distribution"]))
        assert container(job)["resources"]["limits"] == {GPU_RESOURCE: "1"}
        assert env_value(job, jobenv.GPUS_PER_NODE) == "1"

    def test_finetune_uses_resources_gpus_without_gpus_per_node(self) -> None:
        run = with_spec(example("finetunerun-baseline.yaml"), distribution={}, resources={"gpus": 2})
        assert container(render(run))["resources"]["limits"] == {GPU_RESOURCE: "2"}

    def test_cpu_and_memory_requests_equal_limits(self) -> None:
        resources = container(render(example("finetunerun-complete.yaml")))["resources"]
        assert resources["requests"] == resources["limits"] == {"cpu": "32", "memory": "256Gi", GPU_RESOURCE: "4"}
        aug = container(render(example("augmentationrun-complete.yaml")))["resources"]
        assert aug["limits"] == {"cpu": "8", "memory": "64Gi", GPU_RESOURCE: "1"}  # cpu: 8 (an int) as a string

    def test_shared_memory(self) -> None:
        def dshm(job: dict[str, Any]) -> dict[str, Any]:
            volume: dict[str, Any] = next(v for v in pod_spec(job)["volumes"] if v["name"] == "dshm")
            assert {"name": "dshm", "mountPath": "/dev/shm"} in container(job)["volumeMounts"]
            return volume

        assert dshm(render(example("finetunerun-complete.yaml")))["emptyDir"] == {"medium": "Memory",
                                                                                 "sizeLimit": "32Gi"}
        assert dshm(render(example("augmentationrun.yaml")))["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}


class TestScheduling:
    def test_gpu_type_becomes_a_node_selector_on_the_configured_label(self) -> None:
        run = example("finetunerun-complete.yaml")
        assert pod_spec(render(run))["nodeSelector"] == {
            "node.kubernetes.io/instance-type": "gpu-large", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        custom = Settings(gpu_type_label="cloud.example.com/accelerator")
        assert pod_spec(render(run, custom))["nodeSelector"]["cloud.example.com/accelerator"] == \
            "NVIDIA-H100-80GB-HBM3"

    def test_gpu_taint_is_tolerated_once(self) -> None:
        gpu_toleration = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        plain = pod_spec(render(example("augmentationrun.yaml")))
        assert plain["tolerations"] == [gpu_toleration]
        complete = pod_spec(render(example("finetunerun-complete.yaml")))["tolerations"]
        assert complete.count(gpu_toleration) == 1  # the spec lists it already
        assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute",
                "tolerationSeconds": 3600} in complete
        off = pod_spec(render(example("augmentationrun.yaml"), Settings(tolerate_gpu_taint=False)))
        assert "tolerations" not in off

    def test_pass_through_fields(self) -> None:
        run = example("finetunerun-complete.yaml")
        spec = pod_spec(render(run))
        assert spec["affinity"] == run.raw_spec["affinity"]
        assert spec["priorityClassName"] == "ml-training"
        assert spec["serviceAccountName"] == "sampleforge-job"

    def test_unset_fields_are_left_out(self) -> None:
        spec = pod_spec(render(example("augmentationrun.yaml")))
        for key in ("affinity", "priorityClassName", "nodeSelector", "subdomain"):
            assert key not in spec
        # Explicit even when unset: the projected heartbeat token needs a named ServiceAccount.
        assert spec["serviceAccountName"] == "default"

    def test_pod_basics(self, any_example: RunObject) -> None:
        spec = pod_spec(render(any_example))
        assert spec["restartPolicy"] == "Never"
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        grace = 30 if any_example.kind is Kind.AUGMENTATION_RUN else 120
        assert spec["terminationGracePeriodSeconds"] == grace


class TestSecurity:
    def test_restricted_pod_security(self, any_example: RunObject) -> None:
        job = render(any_example)
        assert pod_spec(job)["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        assert container(job)["securityContext"] == {"allowPrivilegeEscalation": False,
                                                     "capabilities": {"drop": ["ALL"]},
                                                     "readOnlyRootFilesystem": True}

    def test_every_place_the_job_writes_is_a_writable_empty_dir(self, any_example: RunObject) -> None:
        # The root filesystem is read-only: the job's cache, temporary files, the home directory
        # (libraries that cache under ~) and Hugging Face's cache must each lie in an emptyDir.
        job = render(any_example)
        empty_dirs = {v["name"] for v in pod_spec(job)["volumes"] if "emptyDir" in v}
        writable = {m["mountPath"] for m in container(job)["volumeMounts"]
                    if m["name"] in empty_dirs and not m.get("readOnly")}
        assert "/tmp" in writable
        for name in (jobenv.CACHE_DIR, jobenv.TMPDIR, jobenv.HOME, jobenv.HF_HOME):
            path = env_value(job, name)
            assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), (name, path)
        assert {"name": "tmp", "emptyDir": {}} in pod_spec(job)["volumes"]

    def test_what_is_given_to_the_pod_is_mounted_read_only(self, any_example: RunObject) -> None:
        mounts = container(render(any_example))["volumeMounts"]
        given = {"heartbeat-token", "run-spec", "s3-web-identity", "s3-ca"}  # the last two per spec.storage
        assert {m["name"] for m in mounts if m.get("readOnly")} == given & {m["name"] for m in mounts}
        assert {"heartbeat-token", "run-spec"} <= {m["name"] for m in mounts if m.get("readOnly")}

    def test_heartbeat_token_is_audience_bound_and_short_lived(self, any_example: RunObject) -> None:
        job = render(any_example)
        volume = next(v for v in pod_spec(job)["volumes"] if v["name"] == "heartbeat-token")
        token = volume["projected"]["sources"][0]["serviceAccountToken"]
        assert token == {"audience": jobenv.HEARTBEAT_AUDIENCE, "expirationSeconds": 3600, "path": "token"}
        mount = next(m for m in container(job)["volumeMounts"] if m["name"] == "heartbeat-token")
        assert mount["readOnly"] is True
        assert env_value(job, jobenv.HEARTBEAT_TOKEN_FILE) == mount["mountPath"] + "/token"


class TestSecretsNeverInline:
    def test_storage_credentials_come_from_the_secret(self) -> None:
        e = env(render(example("augmentationrun.yaml")))
        assert e[jobenv.S3_ACCESS_KEY] == {"name": jobenv.S3_ACCESS_KEY, "valueFrom": {
            "secretKeyRef": {"name": "minio-search-ml", "key": "accessKey"}}}
        assert e[jobenv.S3_SECRET_KEY]["valueFrom"] == {"secretKeyRef": {"name": "minio-search-ml", "key": "secretKey"}}
        assert jobenv.HUB_TOKEN not in e

    def test_configured_secret_keys_and_hub_token(self) -> None:
        e = env(render(example("augmentationrun-complete.yaml")))
        assert e[jobenv.S3_ACCESS_KEY]["valueFrom"]["secretKeyRef"] == {"name": "minio-search-ml",
                                                                        "key": "AWS_ACCESS_KEY_ID"}
        assert e[jobenv.S3_SECRET_KEY]["valueFrom"]["secretKeyRef"]["key"] == "AWS_SECRET_ACCESS_KEY"
        ft = env(render(example("finetunerun-complete.yaml")))
        assert ft[jobenv.HUB_TOKEN]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}


class TestStorageSignIn:
    """spec.storage's three ways to sign in, and its CA bundle, as the pods see them."""

    def test_web_identity_projects_a_token_for_sts_and_names_the_role(self) -> None:
        job = render(example("finetunerun-complete.yaml"))
        e = env(job)
        assert jobenv.S3_ACCESS_KEY not in e and jobenv.S3_SECRET_KEY not in e
        volume = next(v for v in pod_spec(job)["volumes"] if v["name"] == "s3-web-identity")
        assert volume["projected"]["sources"] == [{"serviceAccountToken": {
            "audience": "sampleforge-sts", "expirationSeconds": 3600, "path": "token"}}]
        mount = next(m for m in container(job)["volumeMounts"] if m["name"] == "s3-web-identity")
        assert env_value(job, jobenv.AWS_WEB_IDENTITY_TOKEN_FILE) == mount["mountPath"] + "/token"
        assert env_value(job, jobenv.AWS_ROLE_ARN) == "arn:minio:iam:::role/yrz_TZM8PjynijwCLSeWPu0Y47E"
        assert env_value(job, jobenv.AWS_ENDPOINT_URL_STS) == "https://minio.data:9000"
        assert env_value(job, jobenv.AWS_ROLE_SESSION_NAME).startswith("sampleforge-")
        assert env_value(job, jobenv.AWS_REGION) == "us-east-1"

    def test_the_ca_bundle_is_mounted_as_one_file(self) -> None:
        job = render(example("augmentationrun-complete.yaml"))
        volume = next(v for v in pod_spec(job)["volumes"] if v["name"] == "s3-ca")
        assert volume["configMap"]["name"] == "minio-ca"
        assert volume["configMap"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
        mount = next(m for m in container(job)["volumeMounts"] if m["name"] == "s3-ca")
        assert env_value(job, jobenv.S3_CA_FILE) == mount["mountPath"] + "/ca.crt"

    def test_neither_keys_nor_web_identity_leaves_the_pods_own_chain(self) -> None:
        run = example("augmentationrun.yaml")
        storage = {k: v for k, v in run.raw_spec["storage"].items() if k != "credentialsSecret"}
        e = env(render(with_spec(run, storage=storage)))
        signed = {jobenv.S3_ACCESS_KEY, jobenv.S3_SECRET_KEY, jobenv.AWS_WEB_IDENTITY_TOKEN_FILE, jobenv.AWS_ROLE_ARN}
        assert not signed & set(e) and jobenv.S3_ENDPOINT in e

    def test_credential_variables_never_have_a_value(self, any_example: RunObject) -> None:
        for name, entry in env(render(any_example)).items():
            if name in CREDENTIAL_ENV:
                assert "value" not in entry and set(entry["valueFrom"]) == {"secretKeyRef"}

    def test_no_secret_value_anywhere_in_the_job(self, any_example: RunObject) -> None:
        # Even with the values lying around in the run object (a careless annotation, a status
        # message), nothing the Secret holds may reach the Job.
        body = body_of(REPO / "examples" / f"{_example_file(any_example)}",
                       annotations={"note": " ".join(SECRET_VALUES)})
        body["status"] = {"message": SECRET_VALUES[0]}
        run = RunObject.from_body(body)
        text = json.dumps(render(run), sort_keys=True)
        service = render_headless_service(run, SETTINGS)
        text += json.dumps(service)
        for secret in SECRET_VALUES:
            assert secret not in text
        assert "stringData" not in text and '"data"' not in text


def _example_file(run: RunObject) -> str:
    return next(p.name for p in EXAMPLES if yaml.safe_load(p.read_text())["metadata"]["name"] == run.name)


def spec_file_text(run: RunObject) -> str:
    """What the job reads at RUN_SPEC_FILE: the key of the spec ConfigMap the pod mounts there."""
    job = render(run)
    path = env_value(job, jobenv.RUN_SPEC_FILE)
    mount = next(m for m in container(job)["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in pod_spec(job)["volumes"] if v["name"] == mount["name"])
    config_map = render_spec_config_map(run)
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    return str(config_map["data"][path[len(mount["mountPath"].rstrip("/")) + 1:]])


def without_pod_only_fields(spec: Any) -> Any:
    return spec.model_copy(update=dict.fromkeys(("affinity",), None))


def _big_spec(run: RunObject, features: int) -> RunObject:
    """The run with ``features`` long dense feature columns: a spec far above 128 KiB."""
    raw = copy.deepcopy(dict(run.raw_spec))
    raw["source"]["columns"]["denseFeatures"] = [f"feature_{i:05d}_" + "x" * 200 for i in range(features)]
    return RunObject(kind=run.kind, name=run.name, namespace=run.namespace, uid=run.uid, generation=1,
                     spec=run.spec, raw_spec=raw)


class TestRunSpec:
    def test_run_spec_round_trips_to_an_equal_spec(self, any_example: RunObject) -> None:
        # All but the fields the operator applies to the pod itself (affinity, unbounded in size).
        raw = spec_file_text(any_example)
        assert json.loads(raw) == {k: v for k, v in any_example.raw_spec.items() if k not in POD_ONLY_FIELDS}
        assert type(any_example.spec).model_validate(json.loads(raw)) == without_pod_only_fields(any_example.spec)

    def test_run_spec_with_server_defaults_round_trips(self, any_example: RunObject) -> None:
        # What the API server stores has every default filled in; the job must read it the same.
        stored = any_example.spec.to_kube()
        run = RunObject(kind=any_example.kind, name=any_example.name, namespace=NAMESPACE, uid=UID, generation=1,
                        spec=any_example.spec, raw_spec=stored)
        raw = spec_file_text(run)
        assert type(run.spec).model_validate(json.loads(raw)) == without_pod_only_fields(any_example.spec)

    def test_run_spec_is_compact_with_sorted_keys(self) -> None:
        run = example("augmentationrun.yaml")
        raw = spec_file_text(run)
        assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def test_the_spec_is_a_read_only_file_never_an_environment_variable(self, any_example: RunObject) -> None:
        job = render(any_example)
        assert jobenv.RUN_SPEC not in env(job)
        mount = next(m for m in container(job)["volumeMounts"] if m["name"] == "run-spec")
        assert mount["readOnly"] is True
        assert env_value(job, jobenv.RUN_SPEC_FILE) == mount["mountPath"] + "/spec.json"
        volume = next(v for v in pod_spec(job)["volumes"] if v["name"] == "run-spec")
        assert volume["configMap"]["defaultMode"] == 0o444

    def test_a_spec_above_the_exec_limit_leaves_the_pod_small(self) -> None:
        # Linux refuses exec when one environment string exceeds 128 KiB (MAX_ARG_STRLEN): the
        # spec must never travel as one.
        run = _big_spec(example("augmentationrun-complete.yaml"), 700)
        assert len(spec_file_text(run).encode()) > 128 * 1024
        job = render(run)
        assert max(len(json.dumps(e).encode()) for e in container(job)["env"]) < 4096
        assert len(json.dumps(job).encode()) < 16 * 1024

    def test_the_spec_config_map_is_owned_by_the_run_and_immutable(self, any_example: RunObject) -> None:
        config_map = render_spec_config_map(any_example)
        meta = config_map["metadata"]
        assert meta["ownerReferences"] == [render(any_example)["metadata"]["ownerReferences"][0]]
        assert meta["namespace"] == NAMESPACE and meta["labels"] == child_labels(any_example)
        assert config_map["immutable"] is True
        assert _round_trip(config_map, "V1ConfigMap") == config_map

    def test_the_spec_config_map_name_is_derived_from_the_run_and_its_spec(self) -> None:
        run = example("augmentationrun.yaml")
        name = render_spec_config_map(run)["metadata"]["name"]
        assert name == render_spec_config_map(example("augmentationrun.yaml"))["metadata"]["name"]
        assert name.startswith(job_name(run.kind, run.name) + "-spec-") and len(name) <= 253
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
        # Another spec (a Job recreated after an edit) or another run of the same name: another name.
        edited = RunObject(kind=run.kind, name=run.name, namespace=NAMESPACE, uid=UID, generation=2, spec=run.spec,
                           raw_spec={**run.raw_spec, "parallelism": 2})
        assert render_spec_config_map(edited)["metadata"]["name"] != name
        assert render_spec_config_map(example("augmentationrun.yaml", uid="another-uid"))["metadata"]["name"] != name

    def test_identity_and_storage_env(self) -> None:
        job = render(example("finetunerun-complete.yaml"))
        assert env_value(job, jobenv.RUN_KIND) == "FineTuneRun"
        assert env_value(job, jobenv.RUN_NAME) == "catalog-ranker-complete"
        assert env_value(job, jobenv.RUN_NAMESPACE) == NAMESPACE
        assert env_value(job, jobenv.RUN_UID) == UID
        assert env_value(job, jobenv.S3_ENDPOINT) == "minio.data:9000"
        assert env_value(job, jobenv.S3_SECURE) == "true"
        assert env_value(job, jobenv.S3_REGION) == "us-east-1"
        plain = env(render(example("augmentationrun.yaml")))
        assert plain[jobenv.S3_SECURE]["value"] == "false" and jobenv.S3_REGION not in plain

    def test_every_variable_is_part_of_the_contract(self, any_example: RunObject) -> None:
        contract = {v for k, v in vars(jobenv).items() if k.isupper() and isinstance(v, str)}
        # The openai engine's API keys are numbered by augmenter: jobenv.llm_api_key_env(i).
        names = {n for n in env(render(any_example)) if not n.startswith(jobenv.LLM_API_KEY_PREFIX)}
        assert names <= contract
        keyed = [n for n in env(render(any_example)) if n.startswith(jobenv.LLM_API_KEY_PREFIX)]
        assert all(n == jobenv.llm_api_key_env(int(n[len(jobenv.LLM_API_KEY_PREFIX):])) for n in keyed)

    def test_heartbeat_and_cache_settings(self) -> None:
        settings = Settings(heartbeat_url="http://127.0.0.1:8080/v1alpha1/heartbeats", heartbeat_interval_seconds=3)
        job = render(example("augmentationrun.yaml"), settings)
        assert env_value(job, jobenv.HEARTBEAT_URL) == "http://127.0.0.1:8080/v1alpha1/heartbeats"
        assert env_value(job, jobenv.HEARTBEAT_INTERVAL_SECONDS) == "3"
        cache = env_value(job, jobenv.CACHE_DIR)
        mount = next(m for m in container(job)["volumeMounts"] if m["name"] == "cache")
        assert mount["mountPath"] == cache
        assert {"name": "cache", "emptyDir": {}} in pod_spec(job)["volumes"]

    def test_extra_env_is_added_but_never_overrides_the_contract(self) -> None:
        settings = Settings(extra_job_env={"HTTPS_PROXY": "http://proxy:3128", jobenv.S3_ENDPOINT: "evil:9000",
                                           jobenv.S3_ACCESS_KEY: "inline", "NCCL_DEBUG": "INFO"})
        e = env(render(example("augmentationrun.yaml"), settings))
        assert e["HTTPS_PROXY"]["value"] == "http://proxy:3128" and e["NCCL_DEBUG"]["value"] == "INFO"
        assert e[jobenv.S3_ENDPOINT]["value"] == "minio.data:9000"
        assert "value" not in e[jobenv.S3_ACCESS_KEY]

    def test_compute_threads_follow_the_cpu_request_per_training_process(self) -> None:
        from sampleforge.operator._render_pod import threads_per_process

        assert threads_per_process(None, 0) is None
        assert [threads_per_process(q, 0) for q in ("2", "0.5", "7500m", "16")] == [2, 1, 7, 16]
        assert threads_per_process("32", 8) == 4 and threads_per_process("4", 8) == 1
        assert jobenv.THREADS not in env(render(example("augmentationrun.yaml")))  # no cpu declared
        # cpu 8, one GPU, but an augmentation shard is one process: 8 threads.
        assert env_value(render(example("augmentationrun-complete.yaml")), jobenv.THREADS) == "8"
        # cpu 32 shared by the 4 training processes of a 4-GPU pod: 8 threads each.
        assert env_value(render(example("finetunerun-complete.yaml")), jobenv.THREADS) == "8"
        # An operator-wide setting wins (for example to leave cores to a sidecar).
        assert env(render(example("augmentationrun.yaml"), Settings(extra_job_env={jobenv.THREADS: "3"})))[
            jobenv.THREADS]["value"] == "3"

    def test_image_and_entry_point(self) -> None:
        assert container(render(example("augmentationrun.yaml")))["image"] == SETTINGS.job_image
        assert container(render(example("augmentationrun.yaml"), Settings(job_image="reg/job:1")))["image"] == \
            "reg/job:1"
        assert container(render(example("finetunerun-complete.yaml")))["image"] == \
            "registry.example.com/sampleforge/job:0.1.0"
        assert container(render(example("finetunerun.yaml")))["command"] == [jobenv.ENTRYPOINT]

    def test_input_uri_for_a_run_fed_by_an_augmentation_run(self) -> None:
        run = example("finetunerun.yaml")
        assert env_value(render_job(run, SETTINGS, UPSTREAM_OUTPUT), jobenv.INPUT_URI) == UPSTREAM_OUTPUT
        with pytest.raises(ValueError, match="fromAugmentationRun"):
            render_job(run, SETTINGS)

    def test_input_uri_is_refused_where_there_is_no_upstream(self) -> None:
        for name in ("augmentationrun.yaml", "finetunerun-baseline.yaml"):
            assert jobenv.INPUT_URI not in env(render(example(name)))
            with pytest.raises(ValueError, match="input_uri"):
                render_job(example(name), SETTINGS, UPSTREAM_OUTPUT)


class TestSharding:
    @pytest.mark.parametrize(("name", "shards"), [("augmentationrun.yaml", 4), ("augmentationrun-complete.yaml", 8)])
    def test_one_indexed_pod_per_shard(self, name: str, shards: int) -> None:
        job = render(example(name))
        assert job["spec"]["completionMode"] == "Indexed"
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == shards
        assert env_value(job, jobenv.SHARD_COUNT) == str(shards)
        assert jobenv.MASTER_ADDR not in env(job)
        assert render_headless_service(example(name), SETTINGS) is None

    def test_a_single_shard_is_still_indexed(self) -> None:
        job = render(with_spec(example("augmentationrun.yaml"), parallelism=1))
        assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 1
        assert env_value(job, jobenv.SHARD_COUNT) == "1"


class TestMultiNode:
    def test_rendezvous_env_service_and_subdomain(self) -> None:
        settings = Settings(rendezvous_port=23456)
        run = example("finetunerun.yaml")
        job = render(run, settings)
        name = job["metadata"]["name"]
        assert job["spec"]["completionMode"] == "Indexed"
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
        service = render_headless_service(run, settings)
        assert service is not None
        svc = service["metadata"]["name"]
        assert svc == name == "shoes-ranker-2026q4-ft"
        assert pod_spec(job)["subdomain"] == svc
        assert env_value(job, jobenv.MASTER_ADDR) == f"{name}-0.{svc}.{NAMESPACE}.svc"
        assert env_value(job, jobenv.MASTER_PORT) == "23456"
        assert env_value(job, jobenv.NUM_NODES) == "2"
        assert env_value(job, jobenv.GPUS_PER_NODE) == "4"
        assert container(job)["ports"] == [{"name": "rendezvous", "containerPort": 23456}]
        assert service["metadata"]["namespace"] == NAMESPACE
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
        assert service["spec"]["ports"] == [{"name": "rendezvous", "port": 23456, "targetPort": 23456,
                                             "protocol": "TCP"}]
        pod_labels = job["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()

    def test_service_name_when_the_run_name_starts_with_a_digit(self) -> None:
        run = example("finetunerun-complete.yaml", name="2026q4-ranker")
        job = render(run)
        service = render_headless_service(run, SETTINGS)
        assert service is not None
        assert service["metadata"]["name"] == pod_spec(job)["subdomain"] == "sf-2026q4-ranker-ft"
        assert env_value(job, jobenv.MASTER_ADDR) == f"2026q4-ranker-ft-0.sf-2026q4-ranker-ft.{NAMESPACE}.svc"

    def test_single_node_is_a_plain_job_without_service(self) -> None:
        run = example("finetunerun-baseline.yaml")
        job = render(run)
        assert job["spec"]["completionMode"] == "NonIndexed"
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == 1
        e = env(job)
        assert e[jobenv.NUM_NODES]["value"] == "1" and e[jobenv.GPUS_PER_NODE]["value"] == "1"
        assert jobenv.MASTER_ADDR not in e and jobenv.MASTER_PORT not in e
        assert "subdomain" not in pod_spec(job) and "ports" not in container(job)
        assert render_headless_service(run, SETTINGS) is None


class TestSuspendAndLimits:
    def test_limits_from_the_spec(self) -> None:
        spec = render(example("finetunerun-complete.yaml"))["spec"]
        assert spec["backoffLimit"] == 2
        assert spec["activeDeadlineSeconds"] == 172800
        assert spec["ttlSecondsAfterFinished"] == 604800

    def test_defaults_and_unset_limits(self) -> None:
        spec = render(example("augmentationrun.yaml"))["spec"]
        assert spec["backoffLimit"] == 3
        assert "activeDeadlineSeconds" not in spec and "ttlSecondsAfterFinished" not in spec
        assert spec["suspend"] is False

    def test_suspend_follows_the_spec(self) -> None:
        assert render(with_spec(example("augmentationrun.yaml"), suspend=True))["spec"]["suspend"] is True

    def test_a_queued_job_starts_suspended_for_kueue_to_admit(self) -> None:
        run = example("augmentationrun-complete.yaml")
        assert run.spec.queue_name is not None and run.spec.suspend is False
        assert render(run)["spec"]["suspend"] is True

    def test_pod_failure_policy(self, any_example: RunObject) -> None:
        spec = render(any_example)["spec"]
        assert spec["podFailurePolicy"] == {"rules": [
            {"action": "FailJob",
             "onExitCodes": {"containerName": "job", "operator": "In", "values": [2, 3, 4]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]}
        # The fine-tune job's own codes for "no retry can help" are the ones the policy fails on.
        from sampleforge.jobs.finetune.errors import ExitCode
        assert {ExitCode.CONFIGURATION, ExitCode.MODEL_UNAVAILABLE, ExitCode.DATASET_UNREADABLE} == set(
            jobenv.EXIT_NOT_RETRYABLE)
        assert spec["podReplacementPolicy"] == "Failed"
        assert container(render(any_example))["name"] == "job"


class TestDeterminism:
    def test_rendering_twice_gives_equal_objects_and_json(self, any_example: RunObject) -> None:
        first, second = render(any_example), render(any_example)
        assert first == second
        assert json.dumps(first) == json.dumps(second)
        again = render(run_of(REPO / "examples" / _example_file(any_example)))
        assert json.dumps(again) == json.dumps(first)

    def test_label_order_does_not_matter(self) -> None:
        labels = {"b": "2", "a": "1", "c": "3"}
        one = render(example("augmentationrun.yaml", labels=labels))
        two = render(example("augmentationrun.yaml", labels=dict(reversed(labels.items()))))
        assert json.dumps(one) == json.dumps(two)

    def test_rendering_does_not_alias_the_spec(self) -> None:
        run = example("finetunerun-complete.yaml")
        before = copy.deepcopy(run.spec)
        job = render(run)
        pod_spec(job)["affinity"]["podAntiAffinity"] = "mutated"
        assert run.spec == before

    def test_from_body_accepts_read_only_mapping_views(self) -> None:
        body = body_of(REPO / "examples" / "finetunerun.yaml")
        frozen = MappingProxyType({**body, "spec": MappingProxyType(body["spec"])})
        assert render(RunObject.from_body(frozen)) == render(RunObject.from_body(body))

    def test_kind_and_spec_must_agree(self) -> None:
        run = example("augmentationrun.yaml")
        with pytest.raises(TypeError, match="FineTuneRunSpec"):
            RunObject(kind=Kind.FINE_TUNE_RUN, name=run.name, namespace=NAMESPACE, uid=UID, generation=1,
                      spec=run.spec, raw_spec=run.raw_spec)
        assert isinstance(run.spec, AugmentationRunSpec)


def _round_trip(obj: dict[str, Any], klass: str) -> Any:
    api = client.ApiClient()
    model = api._ApiClient__deserialize(obj, klass)  # type: ignore[attr-defined]
    return api.sanitize_for_serialization(model)  # type: ignore[no-untyped-call]


class TestKubernetesModels:
    """The kubernetes client ignores unknown keys when it deserializes, so compare what comes back:
    a misspelled or misplaced field is missing from the round trip."""

    def test_job_is_a_valid_v1_job(self, any_example: RunObject) -> None:
        job = render(any_example)
        assert _round_trip(job, "V1Job") == job

    def test_service_is_a_valid_v1_service(self) -> None:
        service = render_headless_service(example("finetunerun-complete.yaml"), SETTINGS)
        assert service is not None
        assert _round_trip(service, "V1Service") == service

    def test_the_check_catches_a_misspelled_field(self) -> None:
        job = render(example("augmentationrun.yaml"))
        job["spec"]["backofLimit"] = job["spec"].pop("backoffLimit")
        assert _round_trip(job, "V1Job") != job
