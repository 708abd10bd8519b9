"""One builder of a pod's environment (``jobenv.pod_environment``): the operator renders it with
Secrets by reference, runs outside Kubernetes with literal values, and extras never take a contract
variable's place. test_render.py pins what the operator makes of it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sampleforge.api import Kind, jobenv

SPEC: dict[str, Any] = {"storage": {"endpoint": "minio.data:9000"}, "source": {"uri": "s3://d/t.jsonl"},
                        "augmenters": [{"type": "typo"}], "output": {"uri": "s3://d/out/"}}
KEYS = jobenv.StorageKeys("ak", "sk")


def environment(**fields: Any) -> dict[str, jobenv.EnvValue]:
    values: dict[str, Any] = {"kind": Kind.AUGMENTATION_RUN, "name": "r", "namespace": "ns", "uid": "u",
                              "storage": jobenv.StorageAccess("127.0.0.1:9000", keys=KEYS), "spec": SPEC, **fields}
    pairs = jobenv.pod_environment(jobenv.JobEnvironment(**values))
    assert len(pairs) == len(dict(pairs)), f"duplicate names: {pairs}"
    return dict(pairs)


def test_a_run_by_hand_gets_the_spec_inline_and_literal_keys() -> None:
    env = environment(completion_index=2, shard_count=3, cache_dir="/tmp/c", llm_api_keys={1: "k"})
    assert list(env)[:5] == [jobenv.RUN_KIND, jobenv.RUN_NAME, jobenv.RUN_NAMESPACE, jobenv.RUN_UID, jobenv.RUN_SPEC]
    assert json.loads(str(env[jobenv.RUN_SPEC])) == SPEC and jobenv.RUN_SPEC_FILE not in env
    assert env[jobenv.RUN_KIND] == "AugmentationRun" and env[jobenv.S3_SECURE] == "false"
    assert (env[jobenv.S3_ACCESS_KEY], env[jobenv.S3_SECRET_KEY]) == ("ak", "sk")
    assert (env[jobenv.JOB_COMPLETION_INDEX], env[jobenv.SHARD_COUNT]) == ("2", "3")
    assert env[jobenv.llm_api_key_env(1)] == "k" and jobenv.llm_api_key_env(0) not in env
    # Unset fields set nothing: the job's defaults apply.
    assert not env.keys() & {jobenv.HEARTBEAT_URL, jobenv.HOME, jobenv.NUM_NODES, jobenv.THREADS, jobenv.INPUT_URI}


def test_secrets_stay_references() -> None:
    ref = jobenv.SecretRef("minio", "accesskey")
    env = environment(storage=jobenv.StorageAccess("m:9000", keys=jobenv.StorageKeys(ref, ref)),
                      hub_token=jobenv.SecretRef("hf", "token"))
    assert env[jobenv.S3_ACCESS_KEY] == ref and env[jobenv.HUB_TOKEN] == jobenv.SecretRef("hf", "token")


def test_web_identity_names_the_region_for_the_sdks_too() -> None:
    identity = jobenv.WebIdentitySignIn(token_file="/t", role_arn="arn:aws:iam::1:role/r", session_name="s")
    env = environment(storage=jobenv.StorageAccess("m:9000", region="eu-1", web_identity=identity))
    assert (env[jobenv.S3_REGION], env[jobenv.AWS_REGION], env[jobenv.AWS_ROLE_ARN]) == ("eu-1", "eu-1", identity.role_arn)
    assert not env.keys() & {jobenv.S3_ACCESS_KEY, jobenv.AWS_ENDPOINT_URL_STS}
    assert jobenv.AWS_REGION not in environment(storage=jobenv.StorageAccess("m:9000", region="eu-1"))


def test_extras_come_last_and_never_shadow_the_contract_but_may_set_threads() -> None:
    extra = {"NCCL_DEBUG": "INFO", jobenv.S3_ENDPOINT: "evil:9000", jobenv.JOB_COMPLETION_INDEX: "7"}
    env = environment(threads=4, extra=extra)
    assert env[jobenv.S3_ENDPOINT] == "127.0.0.1:9000" and jobenv.JOB_COMPLETION_INDEX not in env
    assert list(env)[-2:] == ["NCCL_DEBUG", jobenv.THREADS] and env[jobenv.THREADS] == "4"
    assert environment(threads=4, extra={jobenv.THREADS: "1"})[jobenv.THREADS] == "1"


@pytest.mark.parametrize("spec", [{"spec": None}, {"spec_file": "/etc/spec.json"}], ids=["neither", "both"])
def test_the_spec_comes_one_way(spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        environment(**spec)
