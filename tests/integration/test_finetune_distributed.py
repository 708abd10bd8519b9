"""Several training processes in one pod: the entry point re-executes itself under torchrun (two
CPU processes, gloo), every rank saves its own RNG state into the shared checkpoint, SIGTERM to the
pod's first process reaches every rank, they agree on one step, checkpoint it and the pod exits 143;
the retried pod resumes and ends bit-identical to an uninterrupted two-process run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

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



def json_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_two_processes_preempted_and_resumed(testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path) -> None:
    upload_model_and_qbqtc_slice(s3, bucket)

    def env(out: str) -> dict[str, str]:
        spec = {"storage": {"endpoint": "minio.test:9000", "credentialsSecret": "minio"},
                "model": f"s3://{bucket}/minilm/", "task": "relevance",
                "data": {"uri": f"s3://{bucket}/qbqtc.jsonl", "columns": {"item": "title"}, "evalFraction": 0.3},
                "distribution": {"gpusPerNode": 2},
                "training": {"epochs": 2, "maxSteps": 9, "batchSize": 2, "maxLength": 32, "learningRate": 1e-4},
                "checkpoint": {"everySteps": 2, "keep": 2}, "evaluation": {"metrics": ["ndcg@5", "accuracy"]},
                "output": {"uri": f"s3://{bucket}/{out}/"}}
        return {**os.environ, **job_environment(Kind.FINE_TUNE_RUN, spec, name=f"dist-{out}", uid=f"uid-{out}",
                                                minio=testbed.minio, cache_dir=tmp_path / "cache")}

    store = ObjectStore(s3)

    def checkpoints(out: str) -> list[dict[str, Any]]:
        return [json.loads(store.read_bytes(u)) for u, _, _ in store.list(S3Uri(bucket, f"{out}/checkpoints/"))
                if u.key.endswith("/manifest.json")]

    interrupted = subprocess.Popen(JOB_COMMAND, env=env("b"), text=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not checkpoints("b"):
        assert interrupted.poll() is None, interrupted.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no checkpoint was committed in time"
        time.sleep(0.1)
    interrupted.send_signal(signal.SIGTERM)
    _, err = interrupted.communicate(timeout=240)
    assert interrupted.returncode == ExitCode.PREEMPTED, err[-4000:]
    ended = [e for e in json_lines(err) if e["message"] == "training processes ended"]
    assert ended and ended[0]["worker_codes"] == [143, 143]
    stops = {e["step"] for e in json_lines(err) if e["message"].startswith("termination requested")}
    assert len(stops) == 1, f"the ranks must agree on one step, got {stops}"
    latest = max(checkpoints("b"), key=lambda m: m["step"])
    assert latest["step"] == stops.pop()
    files = {f["path"] for f in latest["files"]}
    assert {"state/random_states_0.pkl", "state/random_states_1.pkl", "state/model.safetensors",
            "state/optimizer.bin", "state/scheduler.bin", "checkpoint.json"} <= files

    for out in ("b", "a"):  # the retried pod, then the uninterrupted reference
        run = subprocess.run(JOB_COMMAND, env=env(out), text=True, stderr=subprocess.PIPE, timeout=480, check=False)
        assert run.returncode == ExitCode.SUCCESS, run.stderr[-4000:]
        if out == "b":
            resumed = [e for e in json_lines(run.stderr) if e["message"] == "resumed"]
            assert resumed and all(e["step"] == latest["step"] for e in resumed)

    results = {}
    for out in ("a", "b"):
        store.download_committed(S3Uri(bucket, f"{out}/"), tmp_path / out)
        results[out] = json.loads((tmp_path / out / "metrics.json").read_text())
    assert results["a"]["step"] == results["b"]["step"] == 9
    assert results["b"]["final"] == results["a"]["final"] and results["b"]["loss"] == results["a"]["loss"]
    wa = load_file(str(tmp_path / "a" / "model" / "encoder" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model" / "encoder" / "model.safetensors"))
    assert max(float(np.abs(wa[k] - wb[k]).max()) for k in wa) <= 1e-6
