"""Fixtures shared by the unit tests."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sampleforge.api.augmentation import Columns
from sampleforge.jobs.common.storage import S3Uri


class LocalStore:
    """The part of :class:`~sampleforge.jobs.common.storage.ObjectStore` the fine-tune reader and the
    augmentation writers use, over objects in memory; it records which thread downloaded what."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.downloads: list[tuple[str, str]] = []

    def put(self, uri: str, data: bytes) -> str:
        self.objects[uri] = data
        return uri

    def put_rows(self, uri: str, rows: list[dict[str, Any]]) -> str:
        return self.put(uri, "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode())

    def exists(self, uri: S3Uri) -> bool:
        return str(uri) in self.objects

    def etag(self, uri: S3Uri) -> str:
        return hashlib.md5(self.objects[str(uri)]).hexdigest()

    def list(self, prefix: S3Uri) -> Iterator[tuple[S3Uri, int, str]]:
        for key in sorted(self.objects):
            if key.startswith(str(prefix)):
                uri = S3Uri.parse(key)
                yield uri, len(self.objects[key]), self.etag(uri)

    def download_file(self, uri: S3Uri, path: Path) -> None:
        self.downloads.append((threading.current_thread().name, str(uri)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.objects[str(uri)])

    def read_bytes(self, uri: S3Uri) -> bytes:
        return self.read_range(uri)

    def read_range(self, uri: S3Uri, offset: int = 0, length: int = 0) -> bytes:
        data = self.objects[str(uri)]
        return data[offset : offset + length] if length else data[offset:]

    def write_bytes(self, uri: S3Uri, data: bytes, content_type: str = "application/octet-stream") -> str:
        self.objects[str(uri)] = bytes(data)
        return hashlib.md5(data).hexdigest()

    def upload_file(self, uri: S3Uri, path: Path, content_type: str = "application/octet-stream") -> str:
        return self.write_bytes(uri, path.read_bytes(), content_type)

    def remove(self, uri: S3Uri) -> None:
        del self.objects[str(uri)]

    def read_manifest(self, prefix: S3Uri) -> dict[str, Any] | None:
        data = self.objects.get(str(prefix.join("manifest.json")))
        return None if data is None else dict(json.loads(data))

    def commit(self, prefix: str, files: dict[str, bytes], **manifest: Any) -> str:
        """Objects under ``prefix`` and a manifest listing them with size and sha256."""
        entries = []
        for name, data in files.items():
            self.put(prefix + name, data)
            entries.append({"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        self.put(prefix + "manifest.json", json.dumps({"files": entries, **manifest}).encode())
        return prefix


@pytest.fixture
def local_store() -> LocalStore:
    return LocalStore()


@pytest.fixture
def read_rows(tmp_path: Path) -> Iterator[Any]:
    """``read_rows(rows, columns, need_label=True, extra=None, fmt="jsonl")``: the fine-tune reader's
    Examples and Rejected for ``rows`` written as one file (and ``extra`` as a second one)."""
    from sampleforge.jobs.finetune.data import read_dataset

    count = 0

    def read(rows: list[dict[str, Any]] | bytes, columns: Columns | None = None, need_label: bool = True,
             extra: list[dict[str, Any]] | None = None, fmt: str = "jsonl") -> Any:
        nonlocal count
        count += 1
        store = LocalStore()
        prefix = f"s3://b/read-{count}/"
        if isinstance(rows, bytes):
            store.put(f"{prefix}part-0.{fmt}", rows)
        else:
            store.put_rows(f"{prefix}part-0.jsonl", rows)
        if extra is not None:
            store.put_rows(f"{prefix}part-1.jsonl", extra)
        dataset = read_dataset(store, prefix, None, columns or Columns(), "data", need_label,  # type: ignore[arg-type]
                               tmp_path / f"data-{count}")
        return dataset.examples, dataset.rejected

    yield read
    shutil.rmtree(tmp_path, ignore_errors=True)
