"""Storage calls ride through a short MinIO outage and give up with a *transient* error after a
bounded time; a streaming read cut half-way resumes at the byte it reached, from the same object
only. And the augmentation job turns storage that is down into an ordinary, retryable exit code,
never into the do-not-retry code of an unreadable dataset.

MinIO is played here by a small local HTTP server that answers what the minio client asks (the real
server is stopped and restarted under a running job in tests/integration/test_job_storage_outage.py).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from sampleforge.api import jobenv, s3auth
from sampleforge.jobs.augment.errors import ModelError, SourceError
from sampleforge.jobs.common.outage import RETRY_SECONDS_ENV, RetryPolicy, StorageError, caused_by_outage
from sampleforge.jobs.common.storage import ObjectStore, S3Uri

BODY = bytes(range(256)) * 4096  # 1 MiB
ETAG = '"0123456789abcdef0123456789abcdef"'
FAST = RetryPolicy(seconds=1.5, first_delay=0.05, max_delay=0.2)

Handler = Callable[[BaseHTTPRequestHandler], None]


class FakeS3:
    """A local HTTP endpoint whose answer to each request is ``answer(request)``; it records every
    request's method, path and headers."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.answer: Handler = lambda request: _error(request, 404, "NoSuchKey")
        fake = self

        class Handle(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                fake.requests.append((self.command, self.path, dict(self.headers)))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                fake.answer(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handle)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def store(self, policy: RetryPolicy = FAST) -> ObjectStore:
        return ObjectStore(_client(self.port), policy)


def _client(port: int) -> Minio:
    """A client without urllib3's own retries, so that every retry seen here is the store's."""
    return Minio(f"127.0.0.1:{port}", access_key="a", secret_key="b", secure=False, region="us-east-1",
                 http_client=s3auth.http_client(timeout=5.0))


def _error(request: BaseHTTPRequestHandler, status: int, code: str) -> None:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{code}</Message>'
            "<Resource>/bkt/k</Resource><RequestId>1</RequestId><HostId>1</HostId></Error>").encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/xml")
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(body)


def _object(request: BaseHTTPRequestHandler, data: bytes = BODY, *, cut_at: int | None = None) -> None:
    """The object, honouring ``Range: bytes=N-``; ``cut_at`` sends that many bytes of the body and
    then drops the connection, as a MinIO that is stopped mid-response does."""
    start = 0
    ranged = request.headers.get("Range")
    if ranged:
        start = int(ranged.removeprefix("bytes=").split("-")[0])
    part = data[start:]
    request.send_response(206 if ranged else 200)
    request.send_header("Content-Type", "application/octet-stream")
    request.send_header("Content-Length", str(len(part)))
    request.send_header("ETag", ETAG)
    request.end_headers()
    if request.command == "HEAD":
        return
    if cut_at is None:
        request.wfile.write(part)
        return
    request.wfile.write(part[:cut_at])
    request.wfile.flush()
    request.close_connection = True
    request.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def fake() -> Iterator[FakeS3]:
    server = FakeS3()
    yield server
    server.stop()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestOutages:
    def test_storage_that_stays_down_gives_up_in_bounded_time_with_a_transient_error(
            self, caplog: pytest.LogCaptureFixture) -> None:
        store = ObjectStore(_client(_closed_port()), FAST)
        started = time.monotonic()
        with pytest.raises(StorageError) as err:
            store.read_bytes(S3Uri("bkt", "k"))
        assert time.monotonic() - started < FAST.seconds + 5
        assert err.value.transient, "an outage must never read as a wrong request"
        assert "did not answer" in str(err.value) and store.endpoint in str(err.value) and "s3://bkt/k" in str(err.value)
        retries = [r for r in caplog.records if r.getMessage() == "storage unavailable; retrying"]
        assert len(retries) >= 2, "each retry is logged"
        assert retries[0].action == "read"  # type: ignore[attr-defined]

    def test_a_call_made_while_storage_is_down_succeeds_once_it_is_back(self) -> None:
        port = _closed_port()
        store = ObjectStore(_client(port), RetryPolicy(seconds=30, first_delay=0.1, max_delay=0.3))
        servers: list[FakeS3] = []

        def come_back() -> None:
            time.sleep(1.0)
            server = FakeS3(port)
            server.answer = _object
            servers.append(server)

        threading.Thread(target=come_back, daemon=True).start()
        try:
            assert store.read_bytes(S3Uri("bkt", "k")) == BODY
        finally:
            for server in servers:
                server.stop()

    def test_server_trouble_is_retried_and_a_wrong_request_is_not(self, fake: FakeS3) -> None:
        answers = iter([lambda r: _error(r, 503, "SlowDown"), lambda r: _error(r, 500, "InternalError")])
        fake.answer = lambda request: next(answers, _object)(request)
        assert fake.store().read_bytes(S3Uri("bkt", "k")) == BODY
        assert len([r for r in fake.requests if r[0] == "GET"]) >= 3

        fake.requests.clear()
        fake.answer = lambda request: _error(request, 404, "NoSuchKey")
        started = time.monotonic()
        with pytest.raises(StorageError) as err:
            fake.store().read_bytes(S3Uri("bkt", "k"))
        assert not err.value.transient and "does not exist" in str(err.value)
        assert len(fake.requests) == 1 and time.monotonic() - started < 1

    def test_a_listing_cut_off_goes_on_after_the_last_key(self, fake: FakeS3) -> None:
        pages = {None: ["p/a", "p/b"], "p/b": ["p/c"]}
        calls: list[str | None] = []

        def answer(request: BaseHTTPRequestHandler) -> None:
            after = None
            for pair in request.path.partition("?")[2].split("&"):
                key, _, value = pair.partition("=")
                if key == "start-after":
                    after = value.replace("%2F", "/")
            calls.append(after)
            keys = pages[after]
            contents = "".join(f"<Contents><Key>{k}</Key><Size>1</Size><ETag>&quot;e&quot;</ETag></Contents>"
                               for k in keys)
            truncated = "true" if after is None else "false"
            body = (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>bkt</Name><Prefix>p/</Prefix>'
                    f"<KeyCount>{len(keys)}</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>{truncated}</IsTruncated>"
                    f"{contents}{'<NextContinuationToken>t</NextContinuationToken>' if after is None else ''}"
                    "</ListBucketResult>").encode()
            if len(calls) == 2:  # the second page's request: the server is gone for a moment
                _error(request, 503, "XMinioServerNotInitialized")
                return
            request.send_response(200)
            request.send_header("Content-Type", "application/xml")
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)

        # The first page asks for the next with a continuation token; after the failure the store
        # starts again after the last key it gave, so page two comes from start-after=p/b.
        fake.answer = answer
        listed = [uri.key for uri, _, _ in fake.store().list(S3Uri("bkt", "p/"))]
        assert listed == ["p/a", "p/b", "p/c"]


class TestResumedReads:
    def test_a_body_cut_half_way_resumes_at_the_byte_it_reached_from_the_same_object(self, fake: FakeS3) -> None:
        gets = 0

        def answer(request: BaseHTTPRequestHandler) -> None:
            nonlocal gets
            gets += 1
            _object(request, cut_at=300_000 if gets == 1 else None)

        fake.answer = answer
        with fake.store().open(S3Uri("bkt", "k")) as stream:
            assert stream.read() == BODY
        first, resumed = [headers for method, _, headers in fake.requests if method == "GET"]
        assert "Range" not in first
        offset = int(resumed["Range"].removeprefix("bytes=").split("-")[0])
        assert 0 < offset <= 300_000, "asked again only for what it had not read"
        assert resumed["If-Match"] == ETAG, "and only from the object it started reading"

    def test_an_object_replaced_while_it_was_read_is_an_error_not_a_splice(self, fake: FakeS3) -> None:
        gets = 0

        def answer(request: BaseHTTPRequestHandler) -> None:
            nonlocal gets
            gets += 1
            if gets == 1:
                _object(request, cut_at=100_000)
            else:
                _error(request, 412, "PreconditionFailed")

        fake.answer = answer
        with pytest.raises(StorageError) as err, fake.store().open(S3Uri("bkt", "k")) as stream:
            stream.read()
        assert "replaced while it was being read" in str(err.value) and not err.value.transient


class TestWhatAnOutageMeansForTheJob:
    def test_an_outage_under_a_dataset_or_model_error_is_transient(self) -> None:
        down = StorageError("MinIO did not answer", transient=True)
        wrong = StorageError("NoSuchKey")
        for wrapper in (SourceError, ModelError):
            try:
                raise wrapper("spec.source.uri: cannot be read") from down
            except wrapper as err:
                assert caused_by_outage(err)
            try:
                raise wrapper("spec.source.uri: cannot be read") from wrong
            except wrapper as err:
                assert not caused_by_outage(err)

    def test_the_augmentation_job_exits_retryable_when_minio_is_busy_while_it_lists_the_source(
            self, fake: FakeS3, tmp_path: Path) -> None:
        """Without the fix: the 503 on the source's stat became DatasetUnreadable, exit 4, and the
        Job's podFailurePolicy failed the run at once, for a MinIO that was only restarting."""
        from sampleforge.jobs.augment.entrypoint import main

        def answer(request: BaseHTTPRequestHandler) -> None:
            if request.path.rstrip("/") == "/out" and request.command == "HEAD":  # the output bucket exists
                request.send_response(200)
                request.send_header("Content-Length", "0")
                request.end_headers()
            else:
                _error(request, 503, "SlowDown")

        fake.answer = answer
        spec = {"storage": {"endpoint": f"127.0.0.1:{fake.port}"},
                "source": {"uri": "s3://data/train.jsonl", "columns": {"query": "q", "item": "t", "label": "l"}},
                "augmenters": [{"type": "typo"}], "output": {"uri": "s3://out/run/"}}
        env = {jobenv.RUN_KIND: "AugmentationRun", jobenv.RUN_NAME: "r", jobenv.RUN_NAMESPACE: "ns",
               jobenv.RUN_SPEC: json.dumps(spec), jobenv.S3_ENDPOINT: f"127.0.0.1:{fake.port}",
               jobenv.S3_REGION: "us-east-1", jobenv.S3_ACCESS_KEY: "a", jobenv.S3_SECRET_KEY: "b",
               jobenv.CACHE_DIR: str(tmp_path), RETRY_SECONDS_ENV: "0.5", "SAMPLEFORGE_PROGRESS": "0"}
        code = main(env)
        assert code == jobenv.EXIT_FAILED, f"exit {code}: an outage must leave the Job free to retry"
        assert any(r[0] == "HEAD" and r[1].startswith("/data/train.jsonl") for r in fake.requests)


def test_the_retry_budget_comes_from_the_environment() -> None:
    assert RetryPolicy.from_env({}).seconds == 300
    assert RetryPolicy.from_env({RETRY_SECONDS_ENV: "20"}).seconds == 20
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(StorageError, match=RETRY_SECONDS_ENV):
            RetryPolicy.from_env({RETRY_SECONDS_ENV: bad})


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
