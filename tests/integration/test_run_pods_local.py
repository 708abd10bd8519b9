"""AugmentationRuns through the whole production path: the operator's rendered Job on the
local-process node (pods really run the job, which reads its spec from the mounted ConfigMap file and
writes only to its emptyDirs), MinIO, and the run's status.

* a run on good data succeeds;
* an AugmentationRun and a FineTuneRun chained on it both succeed, and each one's status equals what
  it committed (manifest.json; the FineTuneRun's metrics.json), value for value;
* a run on an empty source file fails with reason DatasetUnreadable naming spec.source.uri, at once
  (the Job's podFailurePolicy), where it used to succeed with 0 rows;
* a run of three shards runs as three Jobs in turn (analysis, shards, reduce) and writes the rows a
  run of one shard writes.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
import pytest
from finetune_support import MINILM
from kubernetes import client
from operator_helpers import CREDENTIALS_SECRET, condition, create_run, jobs_of, pods_of, wait_phase
from test_augment_support import qbqtc_lines

from sampleforge.api import jobenv
from sampleforge.api.constants import LABEL_STEP, Kind, Step
from sampleforge.testbed import Testbed, TestbedOptions
from sampleforge.testbed._localnode import LOCAL_NODE_NAME
from sampleforge.testbed._operator import OPERATOR_NAMESPACE, OperatorProcess

pytestmark = pytest.mark.integration
AR, FT = Kind.AUGMENTATION_RUN, Kind.FINE_TUNE_RUN
NAMESPACE = "search-ml"
BUCKET = "datasets"


@pytest.fixture(scope="module")
def local() -> Iterator[Testbed]:
    tb = Testbed(TestbedOptions(controllers=True, gpu_nodes=0, local_node=True, minio=True)).start()
    failed = True
    try:
        tb.kubectl("apply", "--server-side", "-f", "crds")
        tb.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", "crds")
        with tb.api_client() as api:
            core = client.CoreV1Api(api)
            for ns in (NAMESPACE, OPERATOR_NAMESPACE):
                core.create_namespace({"metadata": {"name": ns}})
            tb.wait_for_default_service_account(NAMESPACE)
            core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": CREDENTIALS_SECRET}, "stringData": {
                "accessKey": tb.minio.access_key, "secretKey": tb.minio.secret_key}})
        tb.minio.client().make_bucket(BUCKET)
        # The chart's defaultStorage, for runs that set no spec.storage.
        default_storage = {"endpoint": tb.minio.endpoint, "credentialsSecret": CREDENTIALS_SECRET}
        operator = OperatorProcess(tb.kubeconfig, tb.logs / "operator.log", settings={
            "SAMPLEFORGE_OPERATOR_DEFAULT_STORAGE": json.dumps(default_storage)}).start()
        try:
            yield tb
            failed = False
        finally:
            operator.stop()
    finally:
        tb.stop(keep_workdir=failed)


def put(tb: Testbed, key: str, data: bytes) -> str:
    tb.minio.client().put_object(BUCKET, key, io.BytesIO(data), len(data))
    return f"s3://{BUCKET}/{key}"


def run_doc(tb: Testbed, name: str, source: str) -> dict[str, Any]:
    return {"apiVersion": "sampleforge.io/v1alpha1", "kind": "AugmentationRun", "metadata": {"name": name},
            "spec": {"storage": {"endpoint": tb.minio.endpoint, "credentialsSecret": CREDENTIALS_SECRET},
                     "source": {"uri": source}, "augmenters": [{"type": "typo", "fraction": 0.5}],
                     "output": {"uri": f"s3://{BUCKET}/out/{name}/"}, "backoffLimit": 2}}


ROWS = [{"query": f"running shoes size {i}", "item": f"Trail runner model {i} breathable mesh", "label": i % 2}
        for i in range(40)]


def test_a_run_succeeds_with_its_pods_reading_the_spec_file(local: Testbed) -> None:
    source = put(local, "shoes/train.jsonl", "\n".join(json.dumps(r) for r in ROWS).encode() + b"\n")
    with local.api_client() as api:
        run = create_run(api, NAMESPACE, run_doc(local, "shoes", source))
        done = wait_phase(api, AR, NAMESPACE, "shoes", "Succeeded", timeout=300)
        assert done["status"]["results"]["samplesOut"] > len(ROWS)
        pod = pods_of(api, NAMESPACE, run["metadata"]["uid"])[0]
        assert pod.spec.node_name == LOCAL_NODE_NAME
        container = pod.spec.containers[0]
        assert container.security_context.read_only_root_filesystem is True
        assert {e.name for e in container.env} >= {jobenv.RUN_SPEC_FILE, jobenv.TMPDIR, jobenv.HOME}
        assert jobenv.RUN_SPEC not in {e.name for e in container.env}
    manifest = json.loads(local.minio.client().get_object(BUCKET, "out/shoes/manifest.json").read())
    assert manifest["rowsRead"] == len(ROWS)


def test_an_empty_source_fails_the_run_as_dataset_unreadable_at_once(local: Testbed) -> None:
    source = put(local, "empty/train.jsonl", b"")
    with local.api_client() as api:
        run = create_run(api, NAMESPACE, run_doc(local, "empty-source", source))
        failed = wait_phase(api, AR, NAMESPACE, "empty-source", "Failed", timeout=300)
        ready = condition(failed, "Ready")
        assert ready is not None and ready["reason"] == "DatasetUnreadable", failed["status"]
        assert f"spec.source.uri {source} holds no rows" in ready["message"]
        # exit 4 is a do-not-retry code: one pod, no retries through backoffLimit
        job = jobs_of(api, NAMESPACE, run["metadata"]["uid"])[0]
        assert (job.status.failed or 0) == 1
    assert not list(local.minio.client().list_objects(BUCKET, prefix="out/empty-source/manifest.json"))


def _exists(tb: Testbed, uri: str) -> bool:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return tb.minio.client().stat_object(bucket, key).size > 0


def _read(tb: Testbed, uri: str) -> dict[str, Any]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return dict(json.loads(tb.minio.client().get_object(bucket, key).read()))


def test_a_run_without_storage_uses_the_operators_default_and_says_so(local: Testbed) -> None:
    """A GitOps manifest that leaves spec.storage to the platform's default (chart value defaultStorage)."""
    source = put(local, "default/train.jsonl", "\n".join(json.dumps(r) for r in ROWS).encode() + b"\n")
    doc = run_doc(local, "by-default", source)
    del doc["spec"]["storage"]
    with local.api_client() as api:
        create_run(api, NAMESPACE, doc)
        done = wait_phase(api, AR, NAMESPACE, "by-default", "Succeeded", timeout=300)
    assert "storage" not in done["spec"]
    assert done["status"]["storage"] == {"endpoint": local.minio.endpoint, "credentialsSecret": CREDENTIALS_SECRET,
                                         "secure": False}
    manifest = _read(local, done["status"]["outputs"]["manifestUri"])
    assert done["status"]["results"]["samplesOut"] == manifest["rowsOut"]


def test_a_chained_finetune_run_shows_exactly_what_both_runs_committed(local: Testbed) -> None:
    rows = [{"query": f"trail shoe {i % 8}", "item": f"Trail runner model {i} {'waterproof' if i % 2 else 'mesh'}",
             "label": i % 2} for i in range(48)]
    source = put(local, "chain/train.jsonl", "\n".join(json.dumps(r) for r in rows).encode() + b"\n")
    for path in sorted(p for p in MINILM.rglob("*") if p.is_file()):
        local.minio.client().fput_object(BUCKET, f"models/minilm/{path.relative_to(MINILM).as_posix()}", str(path))
    held_out = [{"query": f"road shoe {q}", "item": f"Road racer {q}-{i} {'carbon plate' if i % 2 else 'foam'}",
                 "label": i % 2} for q in range(3) for i in range(4)]
    eval_uri = put(local, "chain/eval.jsonl", "\n".join(json.dumps(r) for r in held_out).encode() + b"\n")
    aug = run_doc(local, "chain-aug", source)
    finetune = {"apiVersion": "sampleforge.io/v1alpha1", "kind": "FineTuneRun", "metadata": {"name": "chain-ranker"},
                "spec": {"storage": aug["spec"]["storage"],
                         "data": {"fromAugmentationRun": "chain-aug", "eval": eval_uri},
                         "model": f"s3://{BUCKET}/models/minilm/", "task": "relevance", "method": {"type": "full"},
                         "training": {"epochs": 1, "maxSteps": 6, "batchSize": 8, "maxLength": 32, "seed": 3},
                         "evaluation": {"metrics": ["ndcg@5", "mrr", "auc"]}, "resources": {"gpus": 0, "cpu": "1"},
                         "output": {"uri": f"s3://{BUCKET}/out/chain-ranker/"}}}
    with local.api_client() as api:
        create_run(api, NAMESPACE, finetune)  # waits for its upstream, which is created after it
        create_run(api, NAMESPACE, aug)
        aug_done = wait_phase(api, AR, NAMESPACE, "chain-aug", "Succeeded", timeout=300)
        ft_done = wait_phase(api, FT, NAMESPACE, "chain-ranker", "Succeeded", timeout=600)
    manifest = _read(local, aug_done["status"]["outputs"]["manifestUri"])
    results = aug_done["status"]["results"]
    assert (results["samplesIn"], results["samplesOut"]) == (manifest["rowsIn"], manifest["rowsOut"])
    assert results["perAugmenter"] == {name: a["kept"] for name, a in manifest["augmenters"].items()}
    outputs, ft_outputs = aug_done["status"]["outputs"], ft_done["status"]["outputs"]
    assert outputs["reportUri"].rsplit("/", 1)[1] in {"report.html", "report.md"} and _exists(local, outputs["reportUri"])
    assert "rejectedRowsUri" not in outputs  # nothing was rejected, so nothing to point at
    metrics = _read(local, ft_outputs["metricsUri"])
    assert ft_outputs["metricsUri"] == ft_outputs["uri"] + "metrics.json"
    assert _exists(local, ft_outputs["modelCardUri"]) and ft_outputs["modelCardUri"].endswith("model/README.md")
    with local.api_client() as api:
        success = [e.message for e in client.CoreV1Api(api).list_namespaced_event(
            NAMESPACE, field_selector="involvedObject.name=chain-aug,reason=Succeeded").items]
    assert any(f"{manifest['rowsIn']} rows in, {manifest['rowsOut']} out" in m and outputs["uri"] in m
               for m in success), success
    ft_results = ft_done["status"]["results"]
    finite = {k: v for k, v in metrics["final"].items() if isinstance(v, float) and math.isfinite(v)}
    assert finite and ft_results["latestMetrics"] == pytest.approx(finite)
    assert ft_results["step"] == metrics["step"] and ft_results["loss"] == pytest.approx(metrics["loss"])
    assert ft_done["status"]["progress"]["done"] == ft_done["status"]["progress"]["total"]
    assert ft_done["status"]["completionTime"] > ft_done["status"]["startTime"]


def _rows_written(tb: Testbed, manifest: dict[str, Any], prefix: str) -> tuple[list[Any], list[Any]]:
    """The source rows and the generated rows a committed output holds, each in the order written."""
    rows: list[dict[str, Any]] = []
    for entry in manifest["files"]:
        data = tb.minio.client().get_object(BUCKET, prefix + entry["path"]).read()
        rows.extend(pq.read_table(io.BytesIO(data)).to_pylist())
    return [r for r in rows if r["sf_origin"] == "source"], [r for r in rows if r["sf_origin"] != "source"]


def test_a_run_of_three_shards_runs_three_steps_and_writes_what_one_shard_writes(local: Testbed) -> None:
    """parallelism 3 through the operator: the analysis Job, the shards' Indexed Job, the reduce Job,
    one after the other with real pods; the output equals a one-shard run's, with the rows that
    different shards generated alike removed by the reduce step."""
    # The same QBQTC rows in every third of the source: short Chinese queries give a swap or a
    # deletion few outcomes, so the shards generate some of the same rows.
    lines = [json.loads(line) for line in qbqtc_lines(90)]
    rows = [{**r, "id": f"{r['id']}-{copy}"} for copy in range(3) for r in lines]
    source = put(local, "steps/train.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode() + b"\n")
    docs = {}
    for name, parallelism in (("steps-one", 1), ("steps-three", 3)):
        doc = run_doc(local, name, source)
        doc["spec"]["source"]["columns"] = {"query": "query", "item": "title", "label": "label", "id": "id"}
        doc["spec"].update(parallelism=parallelism, augmenters=[{"type": "randomSwap"},
                                                                {"type": "randomDelete", "fraction": 0.5}])
        docs[name] = doc
    with local.api_client() as api:
        runs = {name: create_run(api, NAMESPACE, doc) for name, doc in docs.items()}
        one = wait_phase(api, AR, NAMESPACE, "steps-one", "Succeeded", timeout=300)
        three = wait_phase(api, AR, NAMESPACE, "steps-three", "Succeeded", timeout=600)
        jobs = jobs_of(api, NAMESPACE, runs["steps-three"]["metadata"]["uid"])
        steps = {job.metadata.labels[LABEL_STEP]: job for job in jobs}
        assert sorted(steps) == sorted(Step) and all(job.status.succeeded for job in jobs)
        assert steps[Step.SHARDS].spec.completions == 3 and steps[Step.ANALYSIS].spec.completions == 1
        # Each step began after the one before had finished.
        assert steps[Step.ANALYSIS].status.completion_time <= steps[Step.SHARDS].metadata.creation_timestamp
        assert steps[Step.SHARDS].status.completion_time <= steps[Step.REDUCE].metadata.creation_timestamp
        assert not jobs_of(api, NAMESPACE, runs["steps-one"]["metadata"]["uid"])[0].metadata.labels.get(LABEL_STEP)
    assert three["status"]["stage"] == Step.REDUCE and three["status"]["jobName"] == steps[Step.REDUCE].metadata.name
    assert "stage" not in one["status"]
    m1, m3 = (_read(local, run["status"]["outputs"]["manifestUri"]) for run in (one, three))
    assert m3["shards"] == 3 and m3["crossShardDedup"]["removed"] > 0
    assert _rows_written(local, m3, "out/steps-three/") == _rows_written(local, m1, "out/steps-one/")
    for key in ("rowsIn", "rowsOut", "generatedRows", "filters", "labelDistribution"):
        assert m3[key] == m1[key], key
    results = three["status"]["results"]
    assert (results["samplesIn"], results["samplesOut"]) == (m3["rowsIn"], m3["rowsOut"])
    assert results["perAugmenter"] == {name: a["kept"] for name, a in m3["augmenters"].items()}
