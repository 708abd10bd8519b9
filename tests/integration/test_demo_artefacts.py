"""What the demo keeps after its testbed is gone, copied out of a real MinIO and API server."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from minio import Minio

from sampleforge.testbed import Testbed
from sampleforge.testbed._demo import look_further, save_artefacts

pytestmark = pytest.mark.integration


def _put(s3: Minio, bucket: str, key: str, data: bytes) -> None:
    s3.put_object(bucket, key, io.BytesIO(data), len(data))


def test_reports_metrics_and_model_card_are_kept_and_named(testbed: Testbed, s3: Minio, bucket: str,
                                                           tmp_path: Path) -> None:
    prefix = "models/ranker/"
    for key, data in {f"{prefix}manifest.json": b"{}", f"{prefix}metrics.json": b'{"best": 0.99}',
                      f"{prefix}report.html": b"<html></html>", f"{prefix}report.md": b"# report",
                      f"{prefix}model/model.safetensors": b"\0" * 64, f"{prefix}model/README.md": b"# card",
                      f"{prefix}checkpoints/step-10/state.json": b"{}"}.items():
        _put(s3, bucket, key, data)
    statuses = {"ranker": {"phase": "Succeeded", "outputs": {
        "uri": f"s3://{bucket}/{prefix}", "modelUri": f"s3://{bucket}/{prefix}model/",
        "modelCardUri": f"s3://{bucket}/{prefix}model/README.md"}},
        "never-ran": {"phase": "Failed"}}
    dest = tmp_path / "last"
    (dest / "stale").mkdir(parents=True)  # an earlier demo's files go
    # The API server's discovery learns the CRDs' category a moment after the session installed them.
    deadline = time.monotonic() + 60
    while testbed.kubectl("get", "sampleforge", "-A", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the sampleforge category never appeared in discovery"
        time.sleep(1)

    save_artefacts(testbed, statuses, dest)

    kept = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert kept == ["outputs/ranker/manifest.json", "outputs/ranker/metrics.json", "outputs/ranker/model/README.md",
                    "outputs/ranker/report.html", "outputs/ranker/report.md", "runs.yaml"]
    assert (dest / "outputs/ranker/model/README.md").read_text() == "# card"
    text = look_further(dest)
    assert f"reports, manifests and metrics: {dest / 'outputs'}" in text and "operator log" not in text
