"""A real local HTTP endpoint that takes a job's heartbeats as the operator's does, for tests that
run a job outside Kubernetes and want to see what its pod would report (its progress and stage)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """Keeps every heartbeat body it is sent, in arrival order, and answers 202."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.tokens: list[str] = []
        self.status = 202
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.tokens.append(self.headers.get("Authorization", ""))
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1alpha1/heartbeats"

    def messages(self) -> list[str]:
        """The stage or progress message of every heartbeat so far (a keep-alive repeats the last)."""
        return [str(body.get("message") or "") for body in list(self.bodies)]

    def stages(self) -> list[str]:
        """The messages in the order they were first said, each once."""
        return list(dict.fromkeys(self.messages()))

    def wait_for_message(self, starts_with: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first heartbeat whose message starts with ``starts_with``, waiting for it to come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for body in list(self.bodies):
                if str(body.get("message") or "").startswith(starts_with):
                    return body
            time.sleep(0.02)
        raise AssertionError(f"no heartbeat said {starts_with!r} within {timeout:.0f}s; they said: {self.stages()}")


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
