"""MinIO storage for the jobs: ``s3://`` URIs, streaming reads, multipart writes, cached
downloads of model directories, and the commit protocol every output follows.

The commit protocol: a job writes its data objects first and its ``manifest.json`` last. The
manifest lists every object it vouches for (key, size, sha256). Readers trust a prefix only when
its manifest exists, and read only the objects the manifest lists, so a job killed half-way leaves
nothing that looks finished, and leftovers of a failed attempt are never read.

Outages: every call rides through a MinIO that is restarting or briefly unreachable. A refused or
dropped connection, a timeout or a "try again" answer (5xx, throttling) is retried with exponential
backoff (1 s doubling to 30 s) for up to :attr:`RetryPolicy.seconds` (five minutes unless
``SAMPLEFORGE_S3_RETRY_SECONDS`` says otherwise), each retry logged; a streaming read that breaks
half-way resumes at the byte it reached, pinned to the object's ETag. Past the budget the call
raises a :class:`StorageError` with ``transient`` set: the pod exits with an ordinary code and the
Job's backoff retries it, resuming from what was committed, never with a do-not-retry code.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import urllib3
from minio import Minio
from minio.error import S3Error

from sampleforge.api import jobenv, s3auth
from sampleforge.api.common import Storage

from .objectio import ResumableBody
from .outage import (
    MAYBE_TRANSIENT,
    TRANSIENT_S3_CODES,
    UNAVAILABLE,
    Backoff,
    RetryPolicy,
    StorageError,
    is_transient,
)

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_PART_SIZE = 16 * 1024 * 1024
_T = TypeVar("_T")


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not uri.startswith("s3://"):
            raise StorageError(f"{uri!r} is not an s3:// URI; write it as s3://bucket/key")
        bucket, _, key = uri[len("s3://"):].partition("/")
        if not bucket:
            raise StorageError(f"{uri!r} names no bucket; write it as s3://bucket/key")
        return cls(bucket, key)

    def join(self, *parts: str) -> S3Uri:
        key = self.key
        for part in parts:
            key = f"{key.rstrip('/')}/{part.lstrip('/')}" if key else part.lstrip("/")
        return S3Uri(self.bucket, key)

    @property
    def name(self) -> str:
        return self.key.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_matches(content: Path | bytes, size: int, sha256: str) -> bool:
    """Whether a downloaded file (or an object's bytes) is what a manifest or index entry vouches
    for: the size first (cheap, and what a truncated download gets wrong), then the sha256."""
    if isinstance(content, bytes):
        return len(content) == int(size) and hashlib.sha256(content).hexdigest() == sha256
    return content.stat().st_size == int(size) and sha256_file(content) == sha256


class ObjectStore:
    """A thin, intention-revealing layer over the minio client; errors name the object."""

    def __init__(self, client: Minio, retry: RetryPolicy | None = None) -> None:
        self.client = client
        self.retry = retry if retry is not None else RetryPolicy()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ObjectStore:
        """The store the operator configured: endpoint and TLS from spec.storage, keys from its
        credentials Secret when it names one, else the pod's own AWS chain (web identity, ...)."""
        env = os.environ if env is None else env
        if not env.get(jobenv.S3_ENDPOINT):
            raise StorageError(f"environment variable {jobenv.S3_ENDPOINT} is not set; the operator sets it from "
                               "spec.storage.endpoint")
        keys = [env.get(jobenv.S3_ACCESS_KEY) or None, env.get(jobenv.S3_SECRET_KEY) or None]
        if (keys[0] is None) != (keys[1] is None):
            raise StorageError(f"set both {jobenv.S3_ACCESS_KEY} and {jobenv.S3_SECRET_KEY}, or neither to use the "
                               "pod's AWS credential chain")
        ca_file = env.get(jobenv.S3_CA_FILE)
        try:
            ca_pem = Path(ca_file).read_text(encoding="utf-8") if ca_file else None
        except OSError as err:
            raise StorageError(f"cannot read the CA bundle {ca_file} (spec.storage.caBundle): {err}") from err
        storage = Storage(endpoint=env[jobenv.S3_ENDPOINT], secure=env.get(jobenv.S3_SECURE, "") == "true",
                          region=env.get(jobenv.S3_REGION) or None)
        retry = RetryPolicy.from_env(env)
        # A MinIO restart must not fail a ten-hour job: urllib3 retries a blip at once (about 3 s),
        # then ObjectStore's own backoff takes over for up to retry.seconds (see the module docstring).
        # maxsize 10 as the minio client's own default: multipart uploads run parallel threads,
        # and urllib3's default of one connection per host discards the others with a warning.
        http = s3auth.http_client(ca_pem, timeout=300.0, maxsize=10, retries=urllib3.Retry(
            total=3, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504)))
        provider = s3auth.credentials(keys[0], keys[1], http, storage.region)
        if keys[0] is None:
            try:
                s3auth.sign_in(provider)
            except ValueError as err:
                raise StorageError(
                    f"cannot sign in to {storage.endpoint}: {err}. With spec.storage.webIdentity, check roleArn, "
                    "audience and stsEndpoint (STS must trust this cluster's ServiceAccount tokens for that role); "
                    "without it, give the pods AWS credentials or set spec.storage.credentialsSecret") from err
        return cls(s3auth.client(storage, http=http, provider=provider), retry)

    # -- errors and retries ----------------------------------------------------------------

    def call(self, action: str, uri: S3Uri | str, fn: Callable[[], _T]) -> _T:
        """``fn()``, a request to MinIO about ``uri``, retried through an outage (see the module
        docstring). An S3 error that is not the server's trouble (NoSuchKey, AccessDenied, ...) is
        raised as it is, at once, for the caller to name; an outage that outlasts the policy raises a
        transient :class:`StorageError`."""
        backoff: Backoff | None = None
        while True:
            try:
                return fn()
            except MAYBE_TRANSIENT as err:
                if not is_transient(err):
                    raise
                backoff = backoff or Backoff(self.retry, self.endpoint, action, uri)
                backoff.wait(err)

    @property
    def endpoint(self) -> str:
        return str(self.client._base_url.host)


    def _fail(self, err: S3Error, uri: S3Uri, action: str) -> StorageError:
        hints = {
            "NoSuchBucket": f"bucket {uri.bucket!r} does not exist; create it or fix the URI",
            "NoSuchKey": f"{uri} does not exist; check the URI",
            "AccessDenied": "access denied; check the credentials Secret and the bucket policy",
            "InvalidAccessKeyId": "the access key is unknown to the server; check the credentials Secret",
            "SignatureDoesNotMatch": "the secret key is wrong; check the credentials Secret",
        }
        return StorageError(f"cannot {action} {uri}: {hints.get(err.code or '', err.message or err.code)}",
                            transient=err.code in TRANSIENT_S3_CODES)

    # -- reading ---------------------------------------------------------------------------

    def exists(self, uri: S3Uri) -> bool:
        try:
            self.call("check", uri, lambda: self.client.stat_object(uri.bucket, uri.key))
            return True
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return False
            raise self._fail(err, uri, "check") from err

    def stat(self, uri: S3Uri) -> tuple[int, str]:
        """(size, ETag without quotes) of one object."""
        try:
            found = self.call("stat", uri, lambda: self.client.stat_object(uri.bucket, uri.key))
        except S3Error as err:
            raise self._fail(err, uri, "stat") from err
        return int(found.size or 0), str(found.etag or "").strip('"')

    def etag(self, uri: S3Uri) -> str:
        try:
            return str(self.call("stat", uri, lambda: self.client.stat_object(uri.bucket, uri.key)).etag)
        except S3Error as err:
            raise self._fail(err, uri, "stat") from err

    def bucket_exists(self, bucket: str) -> bool:
        try:
            return bool(self.call("check", f"s3://{bucket}", lambda: self.client.bucket_exists(bucket)))
        except S3Error as err:
            raise self._fail(err, S3Uri(bucket, ""), "check bucket") from err

    def read_bytes(self, uri: S3Uri) -> bytes:
        return self.read_range(uri)

    def read_range(self, uri: S3Uri, offset: int = 0, length: int = 0) -> bytes:
        """The object's bytes (``length`` of them from ``offset``; 0: to the end). A body cut short
        is asked for again."""
        def get() -> bytes:
            response = self.client.get_object(uri.bucket, uri.key, offset=offset, length=length)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        try:
            return self.call("read", uri, get)
        except S3Error as err:
            raise self._fail(err, uri, "read") from err

    def open(self, uri: S3Uri) -> IO[bytes]:
        """A streaming reader; the caller closes it. Nothing is held in memory beyond a buffer. If
        the connection breaks half-way, it resumes at the byte it reached, and only from the same
        object (same ETag): one replaced meanwhile is an error rather than a splice of two."""
        try:
            response = self.call("read", uri, lambda: self.client.get_object(uri.bucket, uri.key))
        except S3Error as err:
            raise self._fail(err, uri, "read") from err
        return io.BufferedReader(ResumableBody(self, uri, response), buffer_size=64 * 1024)

    def list(self, prefix: S3Uri, recursive: bool = True) -> Iterator[tuple[S3Uri, int, str]]:
        """(uri, size, etag) of every object under ``prefix``, in key order. A listing cut off by an
        outage goes on after the last key it gave."""
        after: str | None = None
        backoff: Backoff | None = None
        while True:
            try:
                for obj in self.client.list_objects(prefix.bucket, prefix=prefix.key, recursive=recursive,
                                                    start_after=after):
                    if obj.object_name:
                        after = obj.object_name
                    if obj.object_name and not obj.is_dir:
                        yield S3Uri(prefix.bucket, obj.object_name), int(obj.size or 0), str(obj.etag or "")
                return
            except S3Error as err:
                if not is_transient(err):
                    raise self._fail(err, prefix, "list") from err
                backoff = backoff or Backoff(self.retry, self.endpoint, "list", prefix)
                backoff.wait(err)
            except UNAVAILABLE as err:
                if not is_transient(err):
                    raise
                backoff = backoff or Backoff(self.retry, self.endpoint, "list", prefix)
                backoff.wait(err)

    def download_file(self, uri: S3Uri, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.call("download", uri, lambda: self.client.fget_object(uri.bucket, uri.key, str(path)))
        except S3Error as err:
            raise self._fail(err, uri, "download") from err

    # -- writing ---------------------------------------------------------------------------

    def write_bytes(self, uri: S3Uri, data: bytes, content_type: str = "application/octet-stream") -> str:
        try:
            result = self.call("write", uri, lambda: self.client.put_object(
                uri.bucket, uri.key, io.BytesIO(data), len(data), content_type=content_type))
        except S3Error as err:
            raise self._fail(err, uri, "write") from err
        return str(result.etag)

    def write_json(self, uri: S3Uri, document: Any) -> str:
        data = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False, default=str).encode()
        return self.write_bytes(uri, data, "application/json")

    def upload_file(self, uri: S3Uri, path: Path, content_type: str = "application/octet-stream") -> str:
        """Multipart for large files, so a multi-GB checkpoint never needs to fit in memory."""
        try:
            result = self.call("upload", uri, lambda: self.client.fput_object(
                uri.bucket, uri.key, str(path), content_type=content_type, part_size=_PART_SIZE))
        except S3Error as err:
            raise self._fail(err, uri, "upload") from err
        return str(result.etag)

    def remove(self, uri: S3Uri) -> None:
        try:
            self.call("delete", uri, lambda: self.client.remove_object(uri.bucket, uri.key))
        except S3Error as err:
            raise self._fail(err, uri, "delete") from err

    def delete_prefix(self, prefix: S3Uri) -> int:
        removed = 0
        for uri, _, _ in list(self.list(prefix)):
            self.remove(uri)
            removed += 1
        return removed

    # -- the commit protocol ---------------------------------------------------------------

    def commit(self, prefix: S3Uri, manifest: dict[str, Any]) -> S3Uri:
        """Write the manifest, and with it the claim that everything it lists is complete."""
        uri = prefix.join(MANIFEST_NAME)
        self.write_json(uri, manifest)
        return uri

    def read_manifest(self, prefix: S3Uri) -> dict[str, Any] | None:
        """The committed manifest under ``prefix``, or None when nothing is committed there."""
        uri = prefix.join(MANIFEST_NAME)
        if not self.exists(uri):
            return None
        document = json.loads(self.read_bytes(uri))
        if not isinstance(document, dict):
            raise StorageError(f"{uri} is not a JSON object; it was not written by sampleforge")
        return document

    def upload_directory(self, directory: Path, prefix: S3Uri) -> builtins.list[dict[str, Any]]:
        """Upload every file under ``directory``; return manifest entries (key, size, sha256)."""
        entries = []
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            rel = path.relative_to(directory).as_posix()
            self.upload_file(prefix.join(rel), path)
            entries.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
        return entries

    def download_committed(self, prefix: S3Uri, directory: Path) -> dict[str, Any]:
        """Download what a manifest lists into ``directory``, reusing files already there whose
        sha256 matches (a restarted pod does not download a model twice), and verify every file."""
        manifest = self.read_manifest(prefix)
        if manifest is None:
            raise StorageError(f"{prefix} has no {MANIFEST_NAME}: it was never committed (or is still being "
                               "written); point at a committed output")
        for entry in manifest.get("files", []):
            target = directory / entry["path"]
            if target.exists() and content_matches(target, entry["size"], entry["sha256"]):
                continue
            self.download_file(prefix.join(entry["path"]), target)
            if not content_matches(target, entry["size"], entry["sha256"]):
                raise StorageError(f"{prefix.join(entry['path'])} does not match the size and sha256 in its "
                                   "manifest; the object was changed after it was committed")
        return manifest

    def download_prefix(self, prefix: S3Uri, directory: Path) -> builtins.list[Path]:
        """Mirror every object under ``prefix`` (e.g. a model directory a user uploaded, with no
        manifest) into ``directory``. Files whose size and ETag match the last download are reused;
        the ETag index lives beside the files."""
        index_path = directory / ".sampleforge-etags.json"
        index: dict[str, str] = json.loads(index_path.read_text()) if index_path.exists() else {}
        root = prefix.key.rstrip("/") + "/" if prefix.key else ""
        paths = []
        for uri, size, etag in self.list(S3Uri(prefix.bucket, root)):
            rel = uri.key[len(root):]
            target = directory / rel
            if not (target.exists() and target.stat().st_size == size and index.get(rel) == etag):
                self.download_file(uri, target)
                index[rel] = etag
            paths.append(target)
        if not paths:
            raise StorageError(f"nothing found under {prefix}; check the URI (a model directory needs config.json "
                               "and the weights)")
        directory.mkdir(parents=True, exist_ok=True)
        index_path.write_text(json.dumps(index, indent=1, sort_keys=True))
        return paths
