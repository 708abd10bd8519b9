"""The job side of the heartbeat channel: report progress to the operator, rate-limited, in the
background, and never let a monitoring hiccup fail the work.

Each send reads the projected ServiceAccount token afresh (the kubelet rotates it) and POSTs a
:class:`~sampleforge.api.heartbeat.Heartbeat`. Sends are coalesced: ``update()`` only records the
latest state, and a background thread sends it at most once per interval, so a training loop can
call ``update()`` every step for free.

The thread also sends when nothing new happened: a keep-alive repeating the last state with the
current stage (``stage("loading model")``). Downloading a model, a first pass over a large source
or training a GAN can take longer than the operator's heartbeat timeout without reporting a single
row; only a pod that has gone silent (dead, hung in C, cut off from the network) may time out.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from sampleforge.api import jobenv
from sampleforge.api.heartbeat import Heartbeat, PodIdentity, ProgressReport
from sampleforge.api.status import AugmentationResults, FineTuneResults

log = logging.getLogger(__name__)


class HeartbeatSender:
    """Coalescing, background heartbeat sender. Without a configured URL it only logs progress."""

    def __init__(self, identity: PodIdentity, url: str | None, token_file: Path | None,
                 interval: float = 10.0) -> None:
        self.identity = identity
        self.url = url
        self.token_file = token_file
        self.interval = interval
        self._latest: ProgressReport | None = None
        #: What was last sent (or tried): a keep-alive repeats it, so the operator never sees
        #: progress go backwards because a pod had nothing new to say.
        self._last = ProgressReport(done=0)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self.sent = 0
        self.failures = 0

    @classmethod
    def from_env(cls, identity: PodIdentity, env: Mapping[str, str] | None = None) -> HeartbeatSender:
        env = os.environ if env is None else env
        token = env.get(jobenv.HEARTBEAT_TOKEN_FILE)
        return cls(identity, env.get(jobenv.HEARTBEAT_URL) or None, Path(token) if token else None,
                   float(env.get(jobenv.HEARTBEAT_INTERVAL_SECONDS, "10")))

    def start(self) -> HeartbeatSender:
        self._thread.start()
        return self

    def update(self, *, done: int, total: int | None = None, rate: float | None = None,
               augmentation: AugmentationResults | None = None, finetune: FineTuneResults | None = None,
               message: str | None = None) -> None:
        """Record the latest progress. A value out of range (a NaN rate, a negative count) is a bug
        in the reporting, not in the work: this one report is dropped, naming the field, and the
        work goes on."""
        try:
            report = ProgressReport(done=done, total=total, rate=rate, augmentation=augmentation, finetune=finetune,
                                    message=message)
        except ValidationError as err:
            self.failures += 1
            log.warning("heartbeat dropped: invalid progress fields",
                        extra={"errors": [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]})
            return
        with self._lock:
            self._latest = report

    def stage(self, message: str) -> None:
        """Say what the pod is doing now (shown in status.progress.stage), keeping the last
        progress; sent with the next heartbeat, and repeated by every keep-alive after it."""
        with self._lock:
            base = self._latest if self._latest is not None else self._last
            self._latest = base.model_copy(update={"message": message[:1024]})

    def flush(self) -> None:
        """Send the latest state now (at the end of a run, or before a checkpoint's long pause)."""
        self._send_latest()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 5)
        self._send_latest()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.interval)
            if not self._stopped.is_set():
                self._send_latest(keepalive=True)

    def _send_latest(self, keepalive: bool = False) -> None:
        with self._lock:
            report, self._latest = self._latest, None
            repeat = report is None
            if repeat and keepalive:
                report = self._last
            if report is not None:
                self._last = report
        if report is None:
            return
        message = Heartbeat.model_validate({**self.identity.model_dump(), **report.model_dump(),
                                            "sent_at": datetime.now(UTC)})
        body = message.to_kube()
        if not self.url:
            # Nobody to keep alive: a run by hand logs each new report once, not one line per interval.
            if not repeat:
                log.info("progress", extra={"heartbeat": body})
            return
        try:
            token = self.token_file.read_text().strip() if self.token_file else ""
            request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
            self.sent += 1
        except (OSError, urllib.error.URLError) as err:
            # Progress is best effort: the operator marks a run stale if heartbeats stop for long.
            self.failures += 1
            log.warning("heartbeat not delivered", extra={"error": str(err), "url": self.url})
            with self._lock:
                if self._latest is None:
                    self._latest = report
