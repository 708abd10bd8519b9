"""Storage errors carry whether a retry can help: the fine-tune job's exit code (and so whether the
Job's podFailurePolicy fails the run at once) depends on it. And a download is checked against the
entry that vouches for it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from minio import Minio
from minio.error import S3Error
from urllib3 import HTTPResponse

from sampleforge.jobs.common.storage import ObjectStore, S3Uri, content_matches


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


def test_content_matches_checks_size_and_sha256_of_files_and_bytes(tmp_path: Path) -> None:
    data = b"part bytes\n" * 100
    digest = hashlib.sha256(data).hexdigest()
    path = tmp_path / "part"
    path.write_bytes(data)
    assert content_matches(data, len(data), digest) and content_matches(path, len(data), digest)
    # a truncated download, a changed byte of the same size, an entry of another size
    path.write_bytes(data[:-1])
    assert not content_matches(path, len(data), digest) and not content_matches(data[:-1], len(data), digest)
    changed = b"P" + data[1:]
    assert not content_matches(changed, len(data), digest)
    assert not content_matches(data, len(data) + 1, digest)
