"""``gan``, ``mixup`` and ``image`` end to end on the real MinIO.

Dense features are real: Walmart-Amazon's two prices, plus the word counts of the two titles (real
numeric features derived from the real texts). Images are pictures drawn here with Pillow and stored
in MinIO under the keys the image column names, plus a missing key and an object that is not an image.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from PIL import Image, ImageDraw
from test_augment_support import (
    generated,
    manifest,
    output_rows,
    parquet_bytes,
    put,
    run_all_shards,
    sources_by_row,
    spec,
    walmart_rows,
)

from sampleforge.testbed import Testbed

pytestmark = pytest.mark.integration

DENSE = ["price_left", "price_right", "query_words", "title_words"]
COLUMNS = {"query": "query", "item": "title", "label": "label", "id": "pair_id", "denseFeatures": DENSE}


def _dense_rows(n: int) -> list[dict[str, Any]]:
    rows = walmart_rows("train", n)
    for row in rows:
        row["query_words"] = float(len(row["query"].split()))
        row["title_words"] = float(len(row["title"].split()))
    return rows


def test_gan_and_mixup_on_real_prices(testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path) -> None:
    rows = _dense_rows(1200)
    uri = put(s3, bucket, "walmart/train.parquet", parquet_bytes(rows))
    run_spec = spec(bucket, {"uri": uri, "columns": COLUMNS}, [
        {"type": "gan", "samples": 500, "epochs": 25, "batchSize": 256, "latentDim": 16},
        {"type": "mixup", "alpha": 0.4, "perRow": 2, "fraction": 0.2},
    ], preprocess={"clipOutliers": {"method": "quantile", "lower": 0.01, "upper": 0.99},
                   "denseNormalization": "standard"}, parallelism=2)
    run_all_shards(testbed, run_spec, tmp_path, shards=2)
    found = manifest(s3, bucket)
    out = output_rows(s3, bucket)
    sources = sources_by_row(out)
    gan_rows = list(generated(out, "gan"))
    assert len(gan_rows) == 500 == found["augmenters"]["gan"]["kept"]  # exactly `samples`, over two shards
    for row in gan_rows:
        source = sources[row["sf_source_row"]]
        assert row["sf_label_rule"] == "condition" and row["label"] == source["label"]
        assert (row["query"], row["title"]) == (source["query"], source["title"])
    summary = found["augmenters"]["gan"]["summary"]
    quality = summary["fidelity"]
    assert summary["trainingRows"] == found["firstPass"]["sampleRows"] and summary["samples"] == 500
    assert set(quality["wasserstein1"]["perFeature"]) == set(DENSE)
    assert 0.0 <= quality["classifierAuc"] <= 1.0
    print("\ngan fidelity on Walmart-Amazon:", json.dumps({**quality, "trainingSeconds": summary["trainingSeconds"]}))
    mixed = list(generated(out, "mixup"))
    assert mixed and all(r["sf_label_rule"] == "dominant" for r in mixed)
    for row in mixed:
        source = sources[row["sf_source_row"]]
        assert row["label"] == source["label"] and row["pair_id"].startswith(source["pair_id"] + "~mixup~")
    report = s3.get_object(bucket, "out/report.md").read().decode()
    assert "### gan" in report and "classifierAuc" in report and "wasserstein1" in report


def _picture(seed: int, fmt: str) -> bytes:
    image = Image.new("RGB", (80, 60), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle((5 + seed % 20, 8, 40 + seed % 30, 50), fill=(40 * (seed % 6), 120, 200 - 20 * (seed % 7)))
    draw.text((45, 10), str(seed), fill=(0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _image_objects(s3: Minio, bucket: str) -> dict[str, str]:
    return {o.object_name: o.etag for o in s3.list_objects(bucket, prefix="out/images/", recursive=True)}


def test_image_edits_are_written_under_the_output_and_broken_images_counted(testbed: Testbed, s3: Minio,
                                                                           bucket: str, tmp_path: Path) -> None:
    rows = walmart_rows("valid", 30)
    for i, row in enumerate(rows):
        fmt = "JPEG" if i % 2 else "PNG"
        key = f"images/{row['pair_id']}.{'jpg' if fmt == 'JPEG' else 'png'}"
        if i == 3:
            key = "images/missing.png"  # never uploaded
        elif i == 4:
            put(s3, bucket, key, b"not an image at all")
        else:
            put(s3, bucket, key, _picture(i, fmt))
        row["image"] = f"s3://{bucket}/{key}" if i % 3 else key  # both forms: URI and bare key
    uri = put(s3, bucket, "walmart/valid.parquet", parquet_bytes(rows))
    columns = {"query": "query", "item": "title", "label": "label", "id": "pair_id", "image": "image"}
    run_spec = spec(bucket, {"uri": uri, "columns": columns},
                    [{"type": "image", "operations": ["flip", "rotate", "crop", "colorJitter", "blur"], "perRow": 2}])
    run_all_shards(testbed, run_spec, tmp_path)
    found = manifest(s3, bucket)
    assert found["augmenters"]["image"]["dropped"] == {
        "notGenerated": {"image not decodable": 1, "image not found": 1}}
    out = output_rows(s3, bucket)
    edited = list(generated(out, "image"))
    assert len(edited) == 2 * 28
    sources = sources_by_row(out)
    for row in edited:
        source = sources[row["sf_source_row"]]
        value = row["image"]
        stem = f"out/images/image/{row['sf_source_row']:012d}-"
        expected_key = value[len(f"s3://{bucket}/"):] if value.startswith("s3://") else value
        assert expected_key.startswith(stem) and value.startswith("s3://") == source["image"].startswith("s3://")
        original = Image.open(io.BytesIO(s3.get_object(bucket, source["image"].removeprefix(f"s3://{bucket}/")).read()))
        new = Image.open(io.BytesIO(s3.get_object(bucket, expected_key).read()))
        assert new.size == original.size and new.format == original.format
    objects = _image_objects(s3, bucket)
    assert len(objects) == 2 * 28
    # A retry of the run (manifest and shard marker gone) overwrites the same objects with the same bytes.
    for name in ("out/manifest.json", "out/_shards/0.json"):
        s3.remove_object(bucket, name)
    run_all_shards(testbed, run_spec, tmp_path)
    assert _image_objects(s3, bucket) == objects
