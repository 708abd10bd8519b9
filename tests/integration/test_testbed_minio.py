"""MinIO is a real S3 server: objects round-trip, large files go multipart, prefixes list, and bad
credentials fail with a clear S3 error rather than a hang."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from minio import Minio
from minio.error import S3Error

from sampleforge.testbed import Testbed

pytestmark = pytest.mark.integration


class TestMinio:
    def test_put_and_get_round_trip(self, s3: Minio, bucket: str) -> None:
        payload = b"query\ttitle\tlabel\nrunning shoes\tNike Pegasus 41\t2\n"
        s3.put_object(bucket, "raw/train.tsv", io.BytesIO(payload), len(payload), content_type="text/tab-separated-values")
        response = s3.get_object(bucket, "raw/train.tsv")
        try:
            assert response.read() == payload
        finally:
            response.close()
            response.release_conn()

    def test_multipart_upload_of_a_file_over_10_mib(self, s3: Minio, bucket: str, tmp_path: Path) -> None:
        path = tmp_path / "big.bin"
        data = os.urandom(12 * 1024 * 1024)
        path.write_bytes(data)
        result = s3.fput_object(bucket, "models/big.bin", str(path), part_size=5 * 1024 * 1024)
        # An S3 multipart ETag is "<md5 of part md5s>-<parts>": proof that it really went multipart.
        assert result.etag is not None and result.etag.endswith("-3")
        stat = s3.stat_object(bucket, "models/big.bin")
        assert stat.size == len(data)
        downloaded = tmp_path / "back.bin"
        s3.fget_object(bucket, "models/big.bin", str(downloaded))
        assert hashlib.sha256(downloaded.read_bytes()).digest() == hashlib.sha256(data).digest()

    def test_listing_by_prefix(self, s3: Minio, bucket: str) -> None:
        for key in ("runs/a/part-0.parquet", "runs/a/part-1.parquet", "runs/b/part-0.parquet", "other.txt"):
            s3.put_object(bucket, key, io.BytesIO(b"x"), 1)
        under_a = sorted(o.object_name or "" for o in s3.list_objects(bucket, prefix="runs/a/", recursive=True))
        assert under_a == ["runs/a/part-0.parquet", "runs/a/part-1.parquet"]
        top = sorted(o.object_name or "" for o in s3.list_objects(bucket, prefix="runs/"))
        assert top == ["runs/a/", "runs/b/"]

    def test_wrong_credentials_fail_with_a_clear_error(self, testbed: Testbed, bucket: str) -> None:
        wrong = Minio(testbed.minio.endpoint, access_key=testbed.minio.access_key, secret_key="not-the-secret",
                      secure=False)
        with pytest.raises(S3Error) as err:
            wrong.bucket_exists(bucket)
        assert err.value.code == "SignatureDoesNotMatch"
        unknown = Minio(testbed.minio.endpoint, access_key="nobody", secret_key="nothing-at-all", secure=False)
        with pytest.raises(S3Error) as err2:
            unknown.list_buckets()
        assert err2.value.code == "InvalidAccessKeyId"
