"""Where a model named in the spec is (:data:`~sampleforge.api.fields.ModelRef`): an ``s3://`` model
directory in MinIO, which works with no network (it is mirrored into the pod's cache directory,
reusing files whose ETag has not changed), or a hub id that transformers resolves with its own cache
and ``HF_TOKEN``. A generator's directory may hold, instead of a transformers model, a single
``*.gguf`` file (llama.cpp's format, how small instruct models are commonly shipped): transformers
de-quantises it on load (:func:`locate_model` says which it is).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sampleforge.jobs.common.outage import StorageError
from sampleforge.jobs.common.storage import ObjectStore, S3Uri

from .errors import ModelError

__all__ = ["ModelLocation", "locate_model", "resolve_model"]


@dataclass(frozen=True)
class ModelLocation:
    """Where a model's files are: a local directory or a hub id, and the GGUF file in it, if that is
    what it holds (transformers then takes ``gguf_file=`` on every ``from_pretrained``)."""

    path: str
    gguf_file: str | None = None
    #: The spec's name for the model (the s3:// URI or hub id), for error messages.
    ref: str = ""

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained`` besides the path."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def _download(ref: str, store: ObjectStore | None, cache_dir: Path, field_path: str) -> Path:
    """Mirror an ``s3://`` model directory into ``cache_dir`` (unchanged files are not fetched again)."""
    if store is None:
        raise ModelError(f"{field_path} is {ref} but no MinIO connection is configured")
    prefix = S3Uri.parse(ref)
    directory = cache_dir / "models" / hashlib.sha256(ref.encode()).hexdigest()[:16]
    try:
        store.download_prefix(S3Uri(prefix.bucket, prefix.key.rstrip("/") + "/"), directory)
    except StorageError as err:
        raise ModelError(f"{field_path} {ref} cannot be downloaded: {err}") from err
    return directory


def _directory_model(directory: Path, ref: str, field_path: str, allow_gguf: bool) -> ModelLocation:
    """A transformers directory (config.json) or, when ``allow_gguf``, one holding exactly one GGUF file."""
    if (directory / "config.json").exists():
        return ModelLocation(str(directory), ref=ref)
    ggufs = sorted(p.name for p in directory.glob("*.gguf"))
    if allow_gguf and len(ggufs) == 1:
        return ModelLocation(str(directory), ggufs[0], ref)
    if allow_gguf and ggufs:
        raise ModelError(f"{field_path} {ref} holds {len(ggufs)} GGUF files ({', '.join(ggufs[:5])}); which one to "
                         "load is ambiguous: keep exactly one *.gguf in the directory")
    what = "a config.json (save the model with save_pretrained and upload the whole directory)"
    if allow_gguf:
        what += " or a single *.gguf file"
    raise ModelError(f"{field_path} {ref} has neither {what}: it is not a model directory")


def _hub_model(ref: str, allow_gguf: bool) -> ModelLocation:
    """A hub id as it is, or with the repository's single GGUF file when it has no config.json.

    Looking the files up is best effort (no network, or HF_HUB_OFFLINE): when it fails, transformers
    resolves the id itself and reports what is missing.
    """
    plain = ModelLocation(ref, ref=ref)
    if not allow_gguf:
        return plain
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return plain
    try:
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(ref)
    except Exception:  # noqa: BLE001 -- offline or unknown repo: let from_pretrained say what is wrong
        return plain
    ggufs = sorted(f for f in files if f.endswith(".gguf") and "/" not in f)
    if "config.json" not in files and len(ggufs) == 1:
        return ModelLocation(ref, ggufs[0], ref)
    return plain


def locate_model(ref: str, store: ObjectStore | None, cache_dir: Path, field_path: str, *,
                 allow_gguf: bool = False) -> ModelLocation:
    """Where the model ``ref`` is: a local directory (for ``s3://`` refs, downloaded into ``cache_dir``),
    or the hub id itself; with the GGUF file to load when ``allow_gguf`` and that is what it holds."""
    if ref.startswith("s3://"):
        return _directory_model(_download(ref, store, cache_dir, field_path), ref, field_path, allow_gguf)
    local = Path(ref)
    if local.is_dir():
        return _directory_model(local, ref, field_path, allow_gguf)
    return _hub_model(ref, allow_gguf)


def resolve_model(ref: str, store: ObjectStore | None, cache_dir: Path, field_path: str) -> str:
    """A local transformers directory (for ``s3://`` refs, downloaded into ``cache_dir``) or the hub id
    itself: for the encoders and classifiers, which have no GGUF form."""
    return locate_model(ref, store, cache_dir, field_path).path
