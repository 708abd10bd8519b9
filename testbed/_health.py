"""Readiness probes: a server is ready when its own health endpoint says so, never after a sleep."""

from __future__ import annotations

import ssl
import urllib.request


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        return bool(response.status == 200)


def self_signed_tls() -> ssl.SSLContext:
    """For the controllers' /healthz, served with a certificate they make for themselves at start."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
