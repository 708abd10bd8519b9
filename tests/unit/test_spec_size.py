"""The largest spec the API server can accept still reaches the pods.

The whole spec goes to the pods as one ConfigMap, which holds at most 1 MiB. Each field of the CRD
is bounded (maxLength, maxItems, maxProperties) and a few CEL rules bound totals across fields, so
the largest accepted spec can be computed from the generated CRD itself: this test does, as compact
JSON, and fails when a new field is unbounded or the total grows past the budget. The budget is in
characters (what maxLength counts): 256 Ki characters are at most 1 MiB even if every character of
every free-text string took 4 bytes of UTF-8; an ordinary ASCII spec is a quarter of that.

``affinity`` is the one field the schema cannot bound (a core/v1 Affinity, passed through
unchanged, ``x-kubernetes-preserve-unknown-fields``): the operator applies it to the pod itself and
leaves it out of the ConfigMap, and the API server's request limit bounds it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest

from sampleforge.api import AugmentationRunSpec, _crdgen
from sampleforge.api._schema import structural_schema
from sampleforge.api._unions import FlatUnion
from sampleforge.api.augmentation import CLIP_UNION, DEDUP_UNION, MAX_AUGMENTER_LIST_ENTRIES
from sampleforge.api.augmenters import AUGMENTER_UNION
from sampleforge.api.finetune import METHOD_UNION
from sampleforge.operator.render import POD_ONLY_FIELDS, RunObject, render_spec_config_map

#: The largest spec, in characters of compact JSON, that the schema may accept.
MAX_SPEC_CHARACTERS = 256 * 1024
#: A ConfigMap's data may hold at most this many bytes (the API server refuses more).
CONFIG_MAP_LIMIT = 1024 * 1024
#: The longest JSON number (a float64 such as -1.2345678901234567e-308).
NUMBER = 24
#: The lists the CEL rule MAX_AUGMENTER_LIST_ENTRIES bounds together, in every augmenter.
BUDGETED = ("features", "attributes", "targetDistribution")
UNIONS: dict[frozenset[str], FlatUnion] = {frozenset(u.owners): u for u in
                                           (AUGMENTER_UNION, CLIP_UNION, DEDUP_UNION, METHOD_UNION)}


class Unbounded(Exception):
    pass


def _string(node: dict[str, Any], path: str) -> int:
    if "enum" in node:
        return max(len(str(e)) for e in node["enum"]) + 2
    if "maxLength" not in node:
        raise Unbounded(path)
    return int(node["maxLength"]) + 2


def largest(node: dict[str, Any], path: str, variant: bool = False, skip: tuple[str, ...] = ()) -> int:
    """Characters of the largest compact JSON value ``node`` accepts. A flat union (one schema
    with every variant's properties, the others refused by CEL) counts its largest variant."""
    props: dict[str, Any] = node.get("properties") or {}
    union = None if variant or not props else UNIONS.get(frozenset(props))
    if union is not None:
        return max(largest(structural_schema(v), f"{path}<{v.__name__}>", True, skip) for v in union.variants)
    if node.get("x-kubernetes-int-or-string"):
        return max(_string(node, path), NUMBER) if "maxLength" in node else NUMBER
    kind = node.get("type")
    if kind == "string":
        return _string(node, path)
    if kind in ("integer", "number"):
        return NUMBER
    if kind == "boolean":
        return 5
    if kind == "array":
        if "maxItems" not in node:
            raise Unbounded(path)
        return int(node["maxItems"]) * (largest(node["items"], f"{path}[]") + 1) + 1
    if kind == "object":
        if node.get("x-kubernetes-preserve-unknown-fields") and not props:
            raise Unbounded(path)
        total = 2 + sum(len(k) + 4 + largest(v, f"{path}.{k}") for k, v in props.items() if k not in skip)
        values = node.get("additionalProperties")
        if isinstance(values, dict):
            if "maxProperties" not in node:
                raise Unbounded(path)
            total += int(node["maxProperties"]) * (_key(node, path) + 2 + largest(values, f"{path}{{}}"))
        return total
    raise Unbounded(f"{path} (type {kind})")


def _key(node: dict[str, Any], path: str) -> int:
    """A map key's largest size: CRDs have no propertyNames, the generator bounds keys with a CEL
    rule ``self.all(k, ... size(k) <= N ...)`` instead."""
    for rule in node.get("x-kubernetes-validations", []):
        found = re.search(r"^self\.all\(k, .*size\(k\) <= (\d+)", rule["rule"])
        if found:
            return int(found[1]) + 2
    raise Unbounded(f"{path}{{key}}")


def spec_schema(kind: str) -> dict[str, Any]:
    kd = next(k for k in _crdgen.KINDS if k.kind.value == kind)
    schema: dict[str, Any] = _crdgen.build_crd(kd)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]  # type: ignore[no-any-return]


def largest_spec(kind: str) -> int:
    schema = json.loads(json.dumps(spec_schema(kind)))
    for field in POD_ONLY_FIELDS:
        schema["properties"].pop(field)
    if kind != "AugmentationRun":
        return largest(schema, "spec")
    # Every augmenter at its largest without the lists one rule bounds together, plus the most those
    # lists can hold between them (each entry at its largest).
    augmenters = schema["properties"].pop("augmenters")
    rest = largest(schema, "spec") + len("augmenters") + 4
    item = augmenters["items"]
    one = max(largest(structural_schema(v), f"augmenters[]<{v.__name__}>", True, BUDGETED)
              for v in AUGMENTER_UNION.variants)
    entry = 0
    for variant in AUGMENTER_UNION.variants:
        props = structural_schema(variant).get("properties", {})
        for name in BUDGETED:
            if name in props:
                node = props[name]
                single = largest(node["items"], name) if "items" in node else \
                    _key(node, name) + 2 + largest(node["additionalProperties"], name)
                entry = max(entry, single + len(name) + 5)  # the list's own key and brackets, at worst once each
    assert item["properties"].keys() >= set(BUDGETED)
    return rest + int(augmenters["maxItems"]) * (one + 1) + 2 + MAX_AUGMENTER_LIST_ENTRIES * entry


@pytest.mark.parametrize("kind", ["AugmentationRun", "FineTuneRun"])
def test_the_largest_accepted_spec_fits_a_config_map_with_room_to_spare(kind: str) -> None:
    size = largest_spec(kind)
    assert size <= MAX_SPEC_CHARACTERS, f"the largest {kind} spec has {size} characters"
    assert 4 * size <= CONFIG_MAP_LIMIT


@pytest.mark.parametrize("kind", ["AugmentationRun", "FineTuneRun"])
def test_only_the_pass_through_affinity_is_unbounded(kind: str) -> None:
    with pytest.raises(Unbounded, match=r"^spec\.affinity$"):
        largest(spec_schema(kind), "spec")


def test_the_augmenters_lists_are_bounded_together() -> None:
    base = {"storage": {"endpoint": "minio.data:9000", "credentialsSecret": "minio-creds"},
            "source": {"uri": "s3://datasets/train.parquet",
                       "columns": {"denseFeatures": [f"f{i}" for i in range(100)]}},
            "output": {"uri": "s3://datasets/out/"}}
    fits = [{"type": "gan", "name": f"gan{i}", "samples": 10, "features": [f"f{j}" for j in range(32)]} for i in range(4)]
    AugmentationRunSpec.model_validate({**base, "augmenters": fits})
    too_many = fits + [{"type": "mixup", "features": ["f1"]}]
    with pytest.raises(ValueError, match="may add up to at most 128"):
        AugmentationRunSpec.model_validate({**base, "augmenters": too_many})
    rule = next(r for r in spec_schema("AugmentationRun")["x-kubernetes-validations"]
                if "add up to at most" in r["message"])
    assert rule["fieldPath"] == ".augmenters" and ".sum() <= 128" in rule["rule"]


def test_the_affinity_stays_out_of_the_pods_spec_file() -> None:
    body = {"kind": "FineTuneRun", "metadata": {"name": "r", "namespace": "ns", "uid": "u"},
            "spec": {"storage": {"endpoint": "minio.data:9000", "credentialsSecret": "minio-creds"},
                     "model": "org/encoder", "task": "relevance", "data": {"uri": "s3://datasets/train.parquet"},
                     "output": {"uri": "s3://models/out/"},
                     "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                         "nodeSelectorTerms": [{"matchExpressions": [
                             {"key": "zone", "operator": "In", "values": ["z" * 60] * 5000}]}]}}}}}
    data = render_spec_config_map(RunObject.from_body(body))["data"]
    assert "affinity" not in json.loads(next(iter(data.values())))
    assert math.fsum(len(v.encode()) for v in data.values()) < 1024
