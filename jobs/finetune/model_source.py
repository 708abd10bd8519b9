"""Where the base model comes from: a model hub id, or an ``s3://`` model directory in MinIO.

The second is the one that must work on a cluster with no route to a hub. The directory is
mirrored into the pod's cache (``SAMPLEFORGE_CACHE_DIR``), so a restarted pod on the same node
does not download it again, and every file is verified:

* a directory sampleforge published (it has a ``manifest.json``) is checked against the sha256
  recorded in the manifest;
* a directory a user uploaded is checked against the object's ETag, which for a single-part upload
  is the MD5 of its content (multipart ETags are not content hashes; size is checked for those).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from sampleforge.jobs.common.outage import StorageError
from sampleforge.jobs.common.storage import MANIFEST_NAME, ObjectStore, S3Uri

from .errors import ModelUnavailableError

log = logging.getLogger(__name__)

_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")
_INDEX = ".sampleforge-etags.json"


@dataclass(frozen=True)
class ModelSource:
    """What ``from_pretrained`` is given: a local directory, or a hub id it resolves itself."""

    #: spec.model as the user wrote it.
    ref: str
    #: A local directory or a hub id.
    location: str

    @property
    def is_local(self) -> bool:
        return self.location != self.ref or Path(self.location).is_dir()


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` while mirroring into it: two processes sharing a cache
    (two pods on a node-local cache, or benchmark runs) would otherwise download the same file to
    the same temporary name at once."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory.parent / f".{directory.name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mirror(store: ObjectStore, prefix: S3Uri, directory: Path, show_progress: bool) -> None:
    """Download what is new or changed under ``prefix``; verify it; keep an ETag index."""
    with _exclusive(directory):
        _mirror_locked(store, prefix, directory, show_progress)


def _mirror_locked(store: ObjectStore, prefix: S3Uri, directory: Path, show_progress: bool) -> None:
    index_path = directory / _INDEX
    index: dict[str, str] = json.loads(index_path.read_text()) if index_path.exists() else {}
    root = S3Uri(prefix.bucket, prefix.key.rstrip("/") + "/")
    listing = list(store.list(root))
    if not listing:
        raise ModelUnavailableError(f"spec.model {prefix} is empty or does not exist; upload the model directory "
                                    "(config.json, weights, tokenizer files) there, or fix the URI")
    todo = [(u, size, etag) for u, size, etag in listing
            if not ((directory / u.key[len(root.key):]).is_file()
                    and (directory / u.key[len(root.key):]).stat().st_size == size
                    and index.get(u.key[len(root.key):]) == etag)]
    total = sum(size for _, size, _ in todo)
    log.info("model download", extra={"model": str(prefix), "files": len(todo), "bytes": total,
                                      "cached_files": len(listing) - len(todo)})
    with tqdm(total=total, unit="B", unit_scale=True, desc="model", disable=not show_progress or not todo) as bar:
        for uri, size, etag in todo:
            rel = uri.key[len(root.key):]
            target = directory / rel
            store.download_file(uri, target)
            if target.stat().st_size != size:
                raise ModelUnavailableError(f"{uri} downloaded with {target.stat().st_size} bytes, expected {size}")
            if _PLAIN_MD5.match(etag.strip('"')) and _md5(target) != etag.strip('"'):
                raise ModelUnavailableError(f"{uri} does not match its ETag (MD5): the download was corrupted; retry")
            index[rel] = etag
            bar.update(size)
    directory.mkdir(parents=True, exist_ok=True)
    index_path.write_text(json.dumps(index, indent=1, sort_keys=True))


def resolve_model(ref: str, store: ObjectStore | None, cache_dir: Path, show_progress: bool = False) -> ModelSource:
    """A local model directory for ``ref`` (spec.model), downloading an ``s3://`` one into the cache.

    Hub ids are passed through: ``from_pretrained`` resolves them (with its own cache and the
    HF_TOKEN the operator sets from spec.hubToken), and :func:`load_failure` words its errors.
    """
    if not ref.startswith("s3://"):
        local = Path(ref)
        return ModelSource(ref, str(local) if local.is_dir() else ref)
    if store is None:
        raise ModelUnavailableError(f"spec.model is {ref} but no MinIO connection is configured")
    prefix = S3Uri.parse(ref)
    directory = cache_dir / "models" / hashlib.sha256(ref.encode()).hexdigest()[:16]
    try:
        if store.exists(prefix.join(MANIFEST_NAME)):
            manifest = store.download_committed(prefix, directory)
            # A published sampleforge output keeps the model under model/.
            if (directory / "model" / "config.json").exists() and not (directory / "config.json").exists():
                directory = directory / "model"
            log.info("model verified against its manifest", extra={"model": ref, "files": len(manifest["files"])})
        else:
            _mirror(store, prefix, directory, show_progress)
    except StorageError as err:
        raise ModelUnavailableError(f"spec.model {ref} cannot be downloaded: {err}") from err
    if not (directory / "config.json").exists():
        raise ModelUnavailableError(f"spec.model {ref} has no config.json: it is not a transformers model directory "
                                    "(save it with save_pretrained and upload the whole directory)")
    return ModelSource(ref, str(directory))


def load_failure(source: ModelSource, err: Exception) -> ModelUnavailableError:
    """The error to raise when ``from_pretrained`` fails, worded for the person who wrote spec.model."""
    if source.ref.startswith("s3://"):
        return ModelUnavailableError(f"spec.model {source.ref} was downloaded but does not load with transformers: "
                                     f"{err}")
    return ModelUnavailableError(
        f"spec.model {source.ref!r} could not be loaded from the model hub: {err}. If the cluster has no route to "
        "the hub, upload the model directory to MinIO and set spec.model to its s3:// URI; for a gated or private "
        "model set spec.hubToken")
