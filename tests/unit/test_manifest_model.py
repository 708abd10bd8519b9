"""The augmentation manifest's model (sampleforge.api.manifest): what the augmentation job writes and
what the fine-tune job and the operator read of it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from sampleforge.api.manifest import AugmentationManifest, CommittedCounts, CommittedData, describe
from sampleforge.jobs.augment.commit import assemble_manifest, committed_manifest

from .test_augment_manifest import SHARED, _marker


def written() -> str:
    """manifest.json as the job writes it today (ObjectStore.write_json's settings)."""
    markers = [_marker(0, rows=9, rows_in=4, read=5, rejected=1), _marker(1, rows=8, rows_in=3, read=3, rejected=0)]
    manifest = assemble_manifest(markers, committed_at=datetime(2026, 11, 28, 12, 0, tzinfo=UTC))
    manifest["artifacts"] = [{"path": "report.md", "size": 12, "sha256": "a" * 64}]
    return json.dumps(committed_manifest(manifest), indent=2, sort_keys=True, ensure_ascii=False, default=str)


def test_a_written_manifest_round_trips_byte_for_byte() -> None:
    text = written()
    model = AugmentationManifest.model_validate_json(text)
    assert json.dumps(model.document(), indent=2, sort_keys=True, ensure_ascii=False) == text
    assert model.rows_out == 17 and model.files[1].rows == 8 and model.files[0].sha256 == "h0"
    assert model.augmenters["typo"].kept == 6 and model.augmenters["negatives"].label_rule == "assign"
    assert model.rejects.files[0].path == "rejects/shard-00000.jsonl" and model.artifacts[0].rows is None
    assert model.columns.label == "grade" and model.eval_split is not None and model.preprocess is None
    assert "rows" not in model.document()["artifacts"][0], "keys that were not written are not added"


def test_a_manifest_missing_a_required_field_is_refused_naming_it() -> None:
    document = json.loads(written())
    del document["rowsIn"]
    document["files"][0].pop("sha256")
    with pytest.raises(ValidationError) as err:
        AugmentationManifest.model_validate(document)
    assert describe(err.value) == "files.0.sha256: Field required; rowsIn: Field required"


def test_the_writer_refuses_what_it_must_not_commit() -> None:
    document = json.loads(written())
    document["augmenters"]["typo"]["kept"] = -1
    with pytest.raises(ValidationError, match=r"augmenters\.typo\.kept"):
        committed_manifest(document)
    broken = _marker(0, rows=9, rows_in=4, read=5, rejected=0)
    broken["shared"] = {**SHARED, "format": "xlsx"}
    with pytest.raises(ValidationError, match=r"format"):
        assemble_manifest([broken])


def test_the_readers_views_read_a_written_manifest() -> None:
    text = written()
    data = CommittedData.model_validate_json(text)
    assert data.format == "parquet" and [f.path for f in data.files] == [
        "data/part-00000-00000.parquet", "data/part-00001-00000.parquet"]
    counts = CommittedCounts.model_validate_json(text)
    assert (counts.rows_read, counts.rows_in, counts.rows_out, counts.rejected_rows) == (8, 7, 17, 1)
    assert counts.rejects is not None and counts.rejects.rows == 1


@pytest.mark.parametrize("view", [CommittedData, CommittedCounts])
def test_every_key_a_reader_reads_is_one_the_writer_writes(view: type[Any]) -> None:
    full = AugmentationManifest.model_fields
    for name, info in view.model_fields.items():
        assert name in full and full[name].alias == info.alias, name
