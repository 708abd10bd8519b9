"""kopf's last-handled record stays small whatever the spec's size, and still tells changes apart.

The storage is the one the operator configures at startup; kopf's own diff function decides here,
as in the operator, whether a spec change is seen (the ``on.update(field="spec")`` handlers) and
that nothing else is.
"""

from __future__ import annotations

import json
from typing import Any

import kopf
from kopf._cogs.structs import diffs, patches

from sampleforge.api.constants import ANNOTATION_PREFIX
from sampleforge.operator.diffbase import DigestDiffBaseStorage

KEY = f"{ANNOTATION_PREFIX}/last-handled-configuration"


def run(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "sampleforge.io/v1alpha1", "kind": "AugmentationRun",
            "metadata": {"name": "r", "namespace": "ns", "uid": "u1", "labels": {"team": "search"},
                         "annotations": dict(annotations or {})},
            "spec": spec, "status": {"phase": "Running"}}


BIG_SPEC = {"source": {"uri": "s3://datasets/train.parquet",
                       "columns": {"denseFeatures": [f"f{i}_" + "x" * 300 for i in range(900)]}},
            "augmenters": [{"type": "typo"}], "output": {"uri": "s3://datasets/out/"}}


def stored_annotation(storage: DigestDiffBaseStorage, body: dict[str, Any]) -> str:
    patch = patches.Patch()
    storage.store(body=kopf.Body(body), patch=patch, essence=storage.build(body=kopf.Body(body)))
    return str(patch["metadata"]["annotations"][KEY])


class TestDigestDiffBase:
    def setup_method(self) -> None:
        self.storage = DigestDiffBaseStorage(prefix=ANNOTATION_PREFIX)

    def test_the_record_of_a_large_spec_is_a_few_hundred_bytes(self) -> None:
        body = run(BIG_SPEC, annotations={"note": "y" * 100_000})
        assert len(json.dumps(BIG_SPEC)) > 256 * 1024
        record = stored_annotation(self.storage, body)
        assert len(record) < 512
        assert "xxxx" not in record and "denseFeatures" not in record and "yyyy" not in record
        # kopf's default storage would have copied the whole spec into the annotation.
        default = patches.Patch()
        plain = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATION_PREFIX)
        plain.store(body=kopf.Body(body), patch=default, essence=plain.build(body=kopf.Body(body)))
        assert len(default["metadata"]["annotations"][KEY]) > 256 * 1024

    def test_unchanged_object_has_no_diff_after_a_round_trip(self) -> None:
        body = run(BIG_SPEC)
        body["metadata"]["annotations"][KEY] = stored_annotation(self.storage, body)
        old = self.storage.fetch(body=kopf.Body(body))
        new = self.storage.build(body=kopf.Body(body))
        assert old is not None and not diffs.diff(old, new)

    def test_a_spec_change_is_a_diff_at_spec(self) -> None:
        body = run(BIG_SPEC)
        body["metadata"]["annotations"][KEY] = stored_annotation(self.storage, body)
        changed = json.loads(json.dumps(body))
        changed["spec"]["parallelism"] = 4
        diff = diffs.diff(self.storage.fetch(body=kopf.Body(changed)), self.storage.build(body=kopf.Body(changed)))
        assert diff and all(item.field[0] == "spec" for item in diff)
        # which is what on.update(field="spec") filters on
        assert diffs.reduce(diff, ["spec"])

    def test_status_and_label_changes_are_not_spec_changes(self) -> None:
        body = run(BIG_SPEC)
        body["metadata"]["annotations"][KEY] = stored_annotation(self.storage, body)
        changed = json.loads(json.dumps(body))
        changed["status"]["phase"] = "Succeeded"
        changed["metadata"]["labels"]["team"] = "recs"
        diff = diffs.diff(self.storage.fetch(body=kopf.Body(changed)), self.storage.build(body=kopf.Body(changed)))
        assert not diffs.reduce(diff, ["spec"])

    def test_a_full_record_from_an_earlier_operator_is_no_spec_change(self) -> None:
        body = run({"source": {"uri": "s3://datasets/a.parquet"}, "augmenters": [{"type": "typo"}],
                    "output": {"uri": "s3://datasets/out/"}})
        plain = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATION_PREFIX)
        patch = patches.Patch()
        plain.store(body=kopf.Body(body), patch=patch, essence=plain.build(body=kopf.Body(body)))
        body["metadata"]["annotations"][KEY] = patch["metadata"]["annotations"][KEY]
        old = self.storage.fetch(body=kopf.Body(body))
        assert old is not None and not diffs.diff(old, self.storage.build(body=kopf.Body(body)))
