"""How the jobs ride through a storage outage: which failures mean "MinIO is unavailable, try
again" rather than "the request is wrong", and the backoff every storage call retries with.

Apart from :mod:`.storage` so that the retry policy reads on its own: a refused or dropped
connection, a timeout or a "try again" answer (5xx, throttling) is retried with exponential backoff
for up to :attr:`RetryPolicy.seconds`; past that the call raises a transient :class:`StorageError`,
and the pod exits with an ordinary code that the Job's backoff retries, never a do-not-retry one.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError

log = logging.getLogger(__name__)

#: How long (seconds) a storage call keeps retrying through an outage before the job gives up with
#: an ordinary, retryable exit code. Not rendered by the operator (the default suits a pod); for
#: tests and runs by hand.
RETRY_SECONDS_ENV = "SAMPLEFORGE_S3_RETRY_SECONDS"


class StorageError(RuntimeError):
    """An object or bucket could not be read or written; the message names it and what to check.

    ``transient`` is true when the server said "try again" (5xx, throttling): a retry of the pod
    may succeed, so the jobs must not turn it into a do-not-retry exit code."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


#: S3 error codes that mean the server is busy or failing, not that the request is wrong.
TRANSIENT_S3_CODES = frozenset({"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
                                "XMinioServerNotInitialized"})
#: Failures of the connection rather than answers: refused, reset, cut half-way through a body,
#: timed out. urllib3 raises its own HTTPError subclasses for all of them (MaxRetryError once its
#: few quick retries are spent, ProtocolError for a body cut short, ReadTimeoutError).
CONNECTION_ERRORS: tuple[type[Exception], ...] = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError,
                                                   http.client.HTTPException)
#: What a call may raise when the storage is unavailable (and, for S3 errors, also when the request is
#: wrong: :func:`is_transient` tells them apart).
MAYBE_TRANSIENT: tuple[type[Exception], ...] = (S3Error, ServerError, InvalidResponseError, *CONNECTION_ERRORS)
UNAVAILABLE: tuple[type[Exception], ...] = (ServerError, InvalidResponseError, *CONNECTION_ERRORS)


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` is the storage being unavailable (busy, restarting, unreachable) rather than
    the request being wrong, so that a retry later can succeed."""
    if isinstance(err, StorageError):
        return err.transient
    if isinstance(err, S3Error):
        return err.code in TRANSIENT_S3_CODES
    if isinstance(err, ServerError):
        return err.status_code >= 500 or err.status_code == 429
    if isinstance(err, InvalidResponseError):  # e.g. a proxy's HTML 502 page
        code = getattr(err, "_code", 0)
        return isinstance(code, int) and (code >= 500 or code == 429)
    return isinstance(err, CONNECTION_ERRORS)


def caused_by_outage(err: BaseException) -> bool:
    """Whether ``err`` or anything in its chain of causes (``raise ... from``) is storage being
    unavailable: a job wraps storage errors in its own (a dataset that cannot be read, a model that
    cannot be downloaded), and must not turn an outage into a do-not-retry exit code."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if is_transient(current):
            return True
        current = current.__cause__
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """How a storage call rides through an outage: exponential backoff from ``first_delay`` to
    ``max_delay`` seconds, for at most ``seconds`` in all, then a transient :class:`StorageError`."""

    seconds: float = 300.0
    first_delay: float = 1.0
    max_delay: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RetryPolicy:
        value = env.get(RETRY_SECONDS_ENV)
        if not value:
            return cls()
        try:
            seconds = float(value)
        except ValueError:
            raise StorageError(f"{RETRY_SECONDS_ENV}={value!r} is not a number of seconds") from None
        if not seconds >= 0:
            raise StorageError(f"{RETRY_SECONDS_ENV}={value!r} must be 0 or more seconds")
        return cls(seconds=seconds)


class Backoff:
    """One call's retries: :meth:`wait` sleeps before the next attempt, or raises once the policy's
    time is spent."""

    def __init__(self, policy: RetryPolicy, endpoint: str, action: str, uri: object) -> None:
        self.policy = policy
        self.endpoint = endpoint
        self.action = action
        self.uri = uri
        self.started = time.monotonic()
        self.delay = policy.first_delay
        self.attempts = 0

    def wait(self, err: BaseException) -> None:
        self.attempts += 1
        elapsed = time.monotonic() - self.started
        left = self.policy.seconds - elapsed
        why = describe_failure(err)
        if left <= 0:
            raise StorageError(
                f"cannot {self.action} {self.uri}: MinIO at {self.endpoint} did not answer for {elapsed:.0f}s "
                f"({self.attempts} attempts; last: {why}); check that it is up and reachable from the pod. Nothing "
                "half-written is committed: a retry of the pod resumes from what was", transient=True) from err
        pause = min(self.delay, left)
        log.warning("storage unavailable; retrying", extra={
            "action": self.action, "uri": str(self.uri), "endpoint": self.endpoint, "error": why,
            "attempt": self.attempts, "retry_in_seconds": round(pause, 2), "gives_up_in_seconds": round(left, 1)})
        time.sleep(pause)
        self.delay = min(self.delay * 2, self.policy.max_delay)


def describe_failure(err: BaseException) -> str:
    if isinstance(err, S3Error):
        return f"{err.code}: {err.message}"
    if isinstance(err, urllib3.exceptions.MaxRetryError) and err.reason is not None:
        return f"{type(err.reason).__name__}: {err.reason}"
    return f"{type(err).__name__}: {err}"
