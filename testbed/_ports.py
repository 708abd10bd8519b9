"""Free loopback ports for the servers a testbed starts."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port that was free a moment ago.

    There is a window between closing this socket and the server binding it; the servers we start
    fail loudly when they lose that race, and the readiness wait reports it with the server's log.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
