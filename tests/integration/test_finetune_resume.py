"""Preemption: SIGTERM → checkpoint committed → exit 143 → the retried pod resumes and ends where
an uninterrupted run ends, with the same parameters, metrics and evaluation history.

The job runs as a real subprocess (``python -m sampleforge.jobs.finetune``) configured only by its
environment, as in a pod; SIGTERM is sent once the first periodic checkpoint is committed in
MinIO, so the job stops mid-epoch and the resumed run must skip exactly the batches it had done,
restore the optimizer, scheduler and RNG state (dropout is active), and continue.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest
from finetune_support import upload_model_and_qbqtc_slice
from minio import Minio
from safetensors.numpy import load_file

from sampleforge.api import Kind
from sampleforge.jobs.common.storage import ObjectStore, S3Uri
from sampleforge.jobs.finetune.errors import ExitCode
from sampleforge.testbed import Testbed
from sampleforge.testbed.localrun import JOB_COMMAND, job_environment

pytestmark = pytest.mark.integration



class Heartbeats:
    """A stand-in for the operator's heartbeat endpoint: records every POSTed message."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.tokens: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append(json.loads(body))
                outer.tokens.add(self.headers.get("Authorization", ""))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/heartbeat"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def setup(testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path) -> dict[str, Any]:
    """The model and a slice of QBQTC in the bucket; a spec that checkpoints every 3 steps."""
    upload_model_and_qbqtc_slice(s3, bucket)

    def spec(out: str, **changes: Any) -> dict[str, Any]:
        document: dict[str, Any] = {
            "storage": {"endpoint": "minio.test:9000", "credentialsSecret": "minio"},
            "model": f"s3://{bucket}/minilm/", "task": "relevance",
            "data": {"uri": f"s3://{bucket}/qbqtc.jsonl", "columns": {"item": "title"}, "evalFraction": 0.3},
            "training": {"epochs": 2, "batchSize": 2, "maxLength": 32, "learningRate": 1e-4, "seed": 5,
                         "warmupSteps": 2, "scheduler": "cosine"},
            "distribution": {"gradientAccumulationSteps": 2},
            "checkpoint": {"everySteps": 3, "keep": 2},
            "evaluation": {"metrics": ["ndcg@5", "accuracy"], "everySteps": 2,
                           "earlyStopping": {"metric": "ndcg@5", "patience": 100, "restoreBest": False}},
            "output": {"uri": f"s3://{bucket}/{out}/"},
        }
        document.update(changes)
        return document

    token = tmp_path / "token"
    token.write_text("projected-sa-token")

    def env(out: str, heartbeat_url: str | None = None, **changes: Any) -> dict[str, str]:
        return {**os.environ, "HF_HUB_OFFLINE": "1", **job_environment(
            Kind.FINE_TUNE_RUN, spec(out, **changes), name=f"resume-{out}", uid=f"uid-{out}", minio=testbed.minio,
            cache_dir=tmp_path / "cache", heartbeat_url=heartbeat_url, heartbeat_token_file=token,
            heartbeat_interval=0.5)}

    return {"env": env, "spec": spec}


def job(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(JOB_COMMAND, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def json_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def committed_checkpoints(store: ObjectStore, bucket: str, out: str) -> list[int]:
    steps = []
    for uri, _, _ in store.list(S3Uri(bucket, f"{out}/checkpoints/")):
        if uri.key.endswith("/manifest.json"):
            steps.append(json.loads(store.read_bytes(uri))["step"])
    return sorted(steps)


def published(store: ObjectStore, bucket: str, out: str, target: Path) -> dict[str, Any]:
    store.download_committed(S3Uri(bucket, f"{out}/"), target)
    results: dict[str, Any] = json.loads((target / "metrics.json").read_text())
    return results


def in_process(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The entry point in this process (cheaper than a new interpreter) with ``env`` only."""
    from sampleforge.jobs.finetune.entrypoint import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key in [k for k in os.environ if k.startswith("SAMPLEFORGE_")]:
                mp.delenv(key)
            for key, value in env.items():
                mp.setenv(key, value)
            code = main()
    finally:
        logging.captureWarnings(False)
        root.handlers[:], root.level = handlers, level
    err = capsys.readouterr().err
    finished = [e for e in json_lines(err) if e["message"] == "finished"]
    assert finished, err[-3000:]
    return code, finished[-1]["detail"], err


def test_sigterm_checkpoint_then_resume_equals_an_uninterrupted_run(
        setup: dict[str, Any], s3: Minio, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ObjectStore(s3)

    # The reference: the same spec, never interrupted (and reporting heartbeats).
    with Heartbeats() as heartbeats:
        reference = job(setup["env"]("a", heartbeat_url=heartbeats.url))
        _, err = reference.communicate(timeout=480)
        assert reference.returncode == ExitCode.SUCCESS, err[-4000:]

    # The interrupted run: SIGTERM as soon as its first checkpoint is committed.
    interrupted = job(setup["env"]("b"))
    deadline = time.monotonic() + 300
    while not committed_checkpoints(store, bucket, "b"):
        assert interrupted.poll() is None, interrupted.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no checkpoint was committed in time"
        time.sleep(0.1)
    interrupted.send_signal(signal.SIGTERM)
    _, err = interrupted.communicate(timeout=240)
    assert interrupted.returncode == ExitCode.PREEMPTED == 143, err[-4000:]
    steps_at_stop = committed_checkpoints(store, bucket, "b")
    stopped = [e for e in json_lines(err) if e["message"] == "finished"][-1]
    assert f"stopped at step {steps_at_stop[-1]} on SIGTERM" in stopped["detail"]
    assert not store.exists(S3Uri(bucket, "b/manifest.json")), "a preempted run must not publish"

    # A checkpoint of another configuration is refused, naming the field, and is left intact.
    code, detail, _ = in_process(setup["env"]("b", method={"type": "lora", "rank": 4}), capsys)
    assert code == ExitCode.CONFIGURATION, detail
    assert "different configuration: method" in detail and "lora" in detail
    assert committed_checkpoints(store, bucket, "b") == steps_at_stop

    # The retried pod resumes from the newest committed checkpoint and finishes.
    resumed = job(setup["env"]("b"))
    _, err = resumed.communicate(timeout=480)
    assert resumed.returncode == ExitCode.SUCCESS, err[-4000:]
    resume_line = [e for e in json_lines(err) if e["message"] == "resumed"]
    assert resume_line and resume_line[0]["step"] == steps_at_stop[-1]
    assert resume_line[0]["batches_in_epoch"] > 0, "the stop was meant to fall mid-epoch"

    a = published(store, bucket, "a", tmp_path / "a")
    b = published(store, bucket, "b", tmp_path / "b")
    assert b["step"] == a["step"] == a["totalSteps"]
    assert b["final"] == pytest.approx(a["final"], abs=1e-6)
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
    assert [h["step"] for h in b["history"]] == [h["step"] for h in a["history"]]
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert hb["metrics"] == pytest.approx(ha["metrics"], abs=1e-6)
    assert b["best"] == pytest.approx(a["best"])
    wa = load_file(str(tmp_path / "a" / "model" / "encoder" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model" / "encoder" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
    assert worst <= 1e-5, f"parameters differ by up to {worst}"
    head_a = load_file(str(tmp_path / "a" / "model" / "head.safetensors"))
    head_b = load_file(str(tmp_path / "b" / "model" / "head.safetensors"))
    assert head_a.keys() == head_b.keys()
    for key in head_a:
        np.testing.assert_allclose(head_b[key], head_a[key], atol=1e-5)

    # Retention: only the newest `keep` checkpoints stay committed, and no uncommitted leftovers.
    assert len(committed_checkpoints(store, bucket, "b")) <= 2
    folders = {u.key.split("/")[2] for u, _, _ in store.list(S3Uri(bucket, "b/checkpoints/"))}
    assert len(folders) == len(committed_checkpoints(store, bucket, "b"))

    # The heartbeats carried what status.results shows.
    assert heartbeats.tokens == {"Bearer projected-sa-token"}
    last = heartbeats.received[-1]
    assert last["kind"] == "FineTuneRun" and last["uid"] == "uid-a"
    assert last["done"] == last["total"] == a["totalSteps"]
    results = last["finetune"]
    assert results["step"] == a["step"] and results["checkpointUri"].startswith(f"s3://{bucket}/a/checkpoints/")
    assert results["latestMetrics"] == pytest.approx(a["final"])
    assert results["bestMetric"]["name"] == "ndcg@5"
    assert any("rate" in h for h in heartbeats.received)

    # A pod restarted after the final commit has nothing left to do.
    code, detail, err = in_process(setup["env"]("b"), capsys)
    assert code == ExitCode.SUCCESS and detail == f"published s3://{bucket}/b/manifest.json"
    assert any(e["message"] == "already published by this run; nothing to do" for e in json_lines(err))
