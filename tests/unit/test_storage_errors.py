"""Storage errors carry whether a retry can help: the fine-tune job's exit code (and so whether the
Job's podFailurePolicy fails the run at once) depends on it."""

from __future__ import annotations

import pytest
from minio import Minio
from minio.error import S3Error
from urllib3 import HTTPResponse

from sampleforge.jobs.common.storage import ObjectStore, S3Uri


def s3_error(code: str) -> S3Error:
    return S3Error(HTTPResponse(status=503 if code == "SlowDown" else 404), code, f"{code} message", "/b/k",
                   "req-1", "host-1")


@pytest.mark.parametrize(("code", "transient"), [
    ("SlowDown", True), ("InternalError", True), ("ServiceUnavailable", True),
    ("NoSuchKey", False), ("AccessDenied", False), ("NoSuchBucket", False),
])
def test_server_trouble_is_transient_and_wrong_requests_are_not(code: str, transient: bool) -> None:
    store = ObjectStore(Minio("127.0.0.1:9", access_key="a", secret_key="b"))
    err = store._fail(s3_error(code), S3Uri("b", "k"), "read")
    assert err.transient is transient
    assert "s3://b/k" in str(err)
