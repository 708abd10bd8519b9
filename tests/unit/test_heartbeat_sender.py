"""The job side of the heartbeat channel against a real local HTTP endpoint: coalescing, the bearer
token read per send, and that nothing about progress reporting can fail the work."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sampleforge.api.heartbeat import PodIdentity
from sampleforge.api.status import AugmentationResults
from sampleforge.jobs.common.heartbeat import HeartbeatSender

IDENTITY = PodIdentity.model_validate({"kind": "FineTuneRun", "namespace": "ml", "name": "ranker", "uid": "u-1"})


class Receiver:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.tokens: list[str] = []
        self.status = 204
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.tokens.append(self.headers["Authorization"])
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1alpha1/heartbeats"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_updates_coalesce_and_the_token_is_read_per_send(receiver: Receiver, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    sender = HeartbeatSender(IDENTITY, receiver.url, token, interval=3600)  # no timed sends in this test
    for step in range(50):
        sender.update(done=step, total=100)
    sender.flush()
    token.write_text("rotated")
    sender.update(done=60, total=100)
    sender.flush()
    sender.flush()  # nothing new: nothing sent
    assert [b["done"] for b in receiver.bodies] == [49, 60]
    assert receiver.tokens == ["Bearer first", "Bearer rotated"]
    assert receiver.bodies[0]["uid"] == "u-1" and "sentAt" in receiver.bodies[0]
    assert sender.sent == 2 and sender.failures == 0


def test_invalid_progress_is_dropped_not_raised(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    sender = HeartbeatSender(IDENTITY, receiver.url, None, interval=3600)
    sender.update(done=-1, rate=float("-inf"))
    sender.flush()  # must not raise into the training loop
    sender.update(done=5)
    sender.flush()
    assert [b["done"] for b in receiver.bodies] == [5]
    assert sender.failures == 1
    dropped = [r for r in caplog.records if r.getMessage().startswith("heartbeat dropped")]
    assert dropped and any("done" in e for e in dropped[0].errors)  # type: ignore[attr-defined]


def test_results_travel_as_the_status_models_camel_cased(receiver: Receiver) -> None:
    sender = HeartbeatSender(IDENTITY, receiver.url, None, interval=3600)
    sender.update(done=3, augmentation=AugmentationResults(samples_in=3, per_augmenter={"typo": 2}))
    sender.flush()
    assert receiver.bodies[0]["augmentation"] == {"samplesIn": 3, "perAugmenter": {"typo": 2}, "filtered": {}}


def test_an_undelivered_heartbeat_is_kept_for_the_next_send(receiver: Receiver) -> None:
    sender = HeartbeatSender(IDENTITY, receiver.url, None, interval=3600)
    receiver.status = 503
    sender.update(done=7)
    sender.flush()
    assert sender.failures == 1 and sender.sent == 0
    receiver.status = 204
    sender.flush()  # the same state, retried
    assert [b["done"] for b in receiver.bodies] == [7, 7]
    assert sender.sent == 1


def test_the_background_thread_sends_and_stop_flushes(receiver: Receiver) -> None:
    sender = HeartbeatSender(IDENTITY, receiver.url, None, interval=0.05).start()
    sender.update(done=1)
    deadline = threading.Event()
    for _ in range(100):
        if receiver.bodies:
            break
        deadline.wait(0.05)
    sender.update(done=2)
    sender.stop()
    assert [b["done"] for b in receiver.bodies][-1] == 2


def test_a_silent_pod_still_sends_keepalives_with_its_stage(receiver: Receiver, tmp_path: Path) -> None:
    """A model download or a first pass reports no progress for minutes: the sender must keep the
    run alive (and say what it does) rather than let the operator's heartbeat timeout fail it."""
    token = tmp_path / "token"
    token.write_text("t")
    sender = HeartbeatSender(IDENTITY, receiver.url, token, interval=0.05).start()
    try:
        sender.update(done=7, total=100)
        sender.stage("loading model")
        deadline = time.monotonic() + 10
        while len(receiver.bodies) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sender.stop()
    assert len(receiver.bodies) >= 4, "nothing new to report must not mean nothing sent"
    assert all(b["done"] == 7 and b["message"] == "loading model" for b in receiver.bodies[:4])


def test_without_an_endpoint_each_report_is_logged_once_not_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    """A run by hand (no operator) logs progress instead of sending it; keep-alives would otherwise
    write a line per interval, filling an unread pipe and blocking the job."""
    caplog.set_level("INFO", logger="sampleforge.jobs.common.heartbeat")
    sender = HeartbeatSender(IDENTITY, None, None, interval=0.01).start()
    sender.update(done=1, total=10)
    time.sleep(0.3)
    sender.stage("evaluating")
    time.sleep(0.3)
    sender.stop()
    logged = [r for r in caplog.records if r.getMessage() == "progress"]
    assert len(logged) == 2, [r.heartbeat for r in logged]  # type: ignore[attr-defined]
