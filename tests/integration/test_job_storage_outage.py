"""MinIO down under a running job (issue 10, "MinIO down mid-job"): the real augmentation job, run
as its pod runs it (``testbed.localrun``), loses the real MinIO server half-way through reading its
source, and MinIO comes back.

What an SRE expects, and what is asserted:

* a short outage (a MinIO restart, a crash and reschedule) costs the job nothing but time: its
  storage calls retry with backoff, the read that was cut resumes at the byte it reached, and the run
  commits exactly the rows an undisturbed run commits;
* an outage longer than the job's retries ends the pod with the ordinary exit code 1, which the
  Job's backoff retries, never with the do-not-retry codes 2/3/4 (the reader wraps the failure as a
  dataset that cannot be read: that must not become DatasetUnreadable); nothing is committed, and
  the rerun commits the same rows.

The source has an unused 12 KB column on each row (a crawled page, say), so that it is far larger
than what the sockets between MinIO and the job buffer: when MinIO dies while the job works on its
first batch, the rest of the object is still to come, and the body is really cut half-way. The job
is paused (SIGSTOP) while MinIO is killed, so where it stands when the outage begins is known.
MinIO here is a server of this module's own, so stopping it disturbs no other test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from heartbeat_receiver import Receiver, receiving
from minio import Minio
from test_augment_support import job_env, output_rows, put, qbqtc_lines, run_job, spec, start_subprocess

from sampleforge.api import jobenv
from sampleforge.jobs.augment.commit import marker_uri
from sampleforge.jobs.common.outage import RETRY_SECONDS_ENV
from sampleforge.jobs.common.storage import S3Uri
from sampleforge.testbed import Testbed, TestbedOptions

pytestmark = pytest.mark.integration

ROWS = 5000  # more than two of the job's 2048-row batches: the stream stays open while it augments one
PAGE = "<div>" + "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 210 + "</div>"  # ~12 KB
COLUMNS = {"query": "query", "item": "title", "label": "label", "id": "id"}
AUGMENTERS = [{"type": "typo"}, {"type": "randomSwap", "fields": ["query", "item"]}]
BUCKET = "outage"


@pytest.fixture(scope="module")
def own_minio() -> Iterator[Testbed]:
    with Testbed(TestbedOptions(kubernetes=False, minio=True)) as testbed:
        yield testbed


@pytest.fixture(scope="module")
def source(own_minio: Testbed) -> str:
    s3 = own_minio.minio_client()
    s3.make_bucket(BUCKET)
    lines = []
    for line in qbqtc_lines(ROWS):
        record = json.loads(line)
        record["page"] = PAGE
        lines.append(json.dumps(record, ensure_ascii=False))
    data = "\n".join(lines).encode()
    assert len(data) > 50 * 1024 * 1024
    return put(s3, BUCKET, "crawl/pairs.jsonl", data)


def _spec(source: str, out: str) -> dict[str, Any]:
    return spec(BUCKET, {"uri": source, "columns": COLUMNS}, AUGMENTERS, out=out)


@pytest.fixture(scope="module")
def undisturbed(own_minio: Testbed, source: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The rows of the same run without an outage."""
    env = job_env(own_minio, _spec(source, "undisturbed/"), tmp_path_factory.mktemp("undisturbed"))
    assert run_job(env) == 0
    rows = output_rows(own_minio.minio_client(), BUCKET, "undisturbed/")
    assert len(rows) > ROWS
    return rows


def _job(own_minio: Testbed, source: str, out: str, cache: Path, receiver: Receiver,
         retry_seconds: float) -> dict[str, str]:
    env = job_env(own_minio, _spec(source, out), cache)
    env[jobenv.HEARTBEAT_URL] = receiver.url
    env[jobenv.HEARTBEAT_INTERVAL_SECONDS] = "0.05"
    env[RETRY_SECONDS_ENV] = str(retry_seconds)
    return env


def _cut_minio_under(job: subprocess.Popen[bytes], own_minio: Testbed, receiver: Receiver) -> float:
    """Once the job augments its first batch (the source still streaming), pause it, kill MinIO (a
    crash: its port refuses connections), and let the job go on without it. When MinIO died."""
    receiver.wait_for_message("augmenting rows", timeout=180)
    os.kill(job.pid, signal.SIGSTOP)
    try:
        own_minio.minio.process.kill()
        return time.monotonic()
    finally:
        os.kill(job.pid, signal.SIGCONT)


def _wait_for_line(log: Path, text: str, job: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if job.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"the job never logged {text!r} (exit {job.poll()}); its log ends with:\n"
                         f"{log.read_text(errors='replace')[-4000:]}")


def _log_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]


def _committed(s3: Minio, out: str) -> list[str]:
    return [o.object_name or "" for o in s3.list_objects(BUCKET, prefix=out, recursive=True)
            if (o.object_name or "").endswith("manifest.json")
            or o.object_name == marker_uri(S3Uri(BUCKET, out), 0).key]


def test_a_job_rides_through_minio_crashing_mid_read_and_commits_what_an_undisturbed_run_does(
        own_minio: Testbed, source: str, undisturbed: list[dict[str, Any]], tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    with receiving() as receiver:
        job = start_subprocess(_job(own_minio, source, "short/", tmp_path / "cache", receiver, retry_seconds=120),
                               log)
        try:
            down = _cut_minio_under(job, own_minio, receiver)
            try:
                # The body of the source was cut half-way, and asking for the rest is refused.
                _wait_for_line(log, "storage read broke off; resuming", job, timeout=60)
                _wait_for_line(log, "storage unavailable; retrying", job, timeout=60)
                time.sleep(2)
            finally:
                own_minio.restart_minio()
            outage = time.monotonic() - down
            code = job.wait(timeout=300)
        finally:
            if job.poll() is None:
                job.kill()
    text = log.read_text(errors="replace")
    assert code == 0, f"exit {code} after a {outage:.0f}s outage; the job's log ends with:\n{text[-4000:]}"
    lines = _log_lines(log)
    resumed = [line for line in lines if line["message"] == "storage read broke off; resuming"]
    assert resumed and resumed[0]["at_byte"] > 0 and resumed[0]["uri"] == source
    assert any(line["message"] == "storage unavailable; retrying" for line in lines)
    assert not [line for line in lines if line["level"] == "error"] and "Traceback" not in text
    print(f"\nMinIO was down {outage:.1f}s; the job retried through it and committed")
    assert output_rows(own_minio.minio_client(), BUCKET, "short/") == undisturbed


def test_an_outage_longer_than_the_retries_exits_retryable_with_nothing_committed_and_a_rerun_commits_the_same(
        own_minio: Testbed, source: str, undisturbed: list[dict[str, Any]], tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    s3 = own_minio.minio_client()
    with receiving() as receiver:
        job = start_subprocess(_job(own_minio, source, "long/", tmp_path / "cache", receiver, retry_seconds=3), log)
        try:
            down = _cut_minio_under(job, own_minio, receiver)
            try:
                code = job.wait(timeout=120)  # MinIO stays down until the job has given up
                gave_up = time.monotonic() - down
            finally:
                own_minio.restart_minio()
        finally:
            if job.poll() is None:
                job.kill()
    text = log.read_text(errors="replace")
    assert code == jobenv.EXIT_FAILED, (f"exit {code}: 2, 3 and 4 tell the Job not to retry, for a MinIO that was "
                                        f"only down; the job's log ends with:\n{text[-4000:]}")
    finished = [line for line in _log_lines(log) if line["message"] == "finished"][-1]
    assert finished["reason"] == "Failed" and "did not answer" in finished["detail"]
    assert gave_up < 60, "bounded: the retries give up, the pod does not hang"
    assert _committed(s3, "long/") == [], "neither the run nor the shard may look finished"

    # What the Job's backoff does next: the pod again, MinIO back.
    assert run_job(job_env(own_minio, _spec(source, "long/"), tmp_path / "cache")) == 0
    assert output_rows(s3, BUCKET, "long/") == undisturbed
