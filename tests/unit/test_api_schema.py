"""The pydantic models and the generated CRD schema agree, and both reject bad specs clearly.

No server here: a small checker below applies the CRD's OpenAPI part (types, bounds, patterns,
required, pruning of unknown fields) and its defaulting, so these tests show that what pydantic
accepts the API server's schema accepts too, that server defaults equal pydantic defaults, and that
everything the operator writes to status survives (nothing pruned). CEL rules need a real server:
tests/integration/test_crd_validation.py applies the same fixtures there.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from sampleforge.api import (
    API_VERSION,
    AugmentationResults,
    AugmentationRun,
    AugmentationRunSpec,
    AugmentationRunStatus,
    BestMetric,
    Condition,
    FineTuneResults,
    FineTuneRun,
    FineTuneRunSpec,
    FineTuneRunStatus,
    Kind,
    Phase,
    Progress,
    RunOutputs,
    Step,
    _crdgen,
)
from sampleforge.api._unions import FlatUnion, forbidden_message, required_message
from sampleforge.api.augmentation import CLIP_UNION, DEDUP_UNION
from sampleforge.api.augmenters import AUGMENTER_UNION, RebalanceAugmenter
from sampleforge.api.common import ConfigMapKeySelector, CredentialsKeys, Storage
from sampleforge.api.fields import normalized_s3_uri, s3_locations_overlap
from sampleforge.api.finetune import METHOD_UNION

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
FIXTURES = sorted((REPO / "tests/fixtures/invalid").glob("*.yaml"))
RUN_MODELS: dict[str, type[AugmentationRun | FineTuneRun]] = {
    "AugmentationRun": AugmentationRun,
    "FineTuneRun": FineTuneRun,
}
SPEC_MODELS: dict[str, type[BaseModel]] = {"AugmentationRun": AugmentationRunSpec, "FineTuneRun": FineTuneRunSpec}
NOW = datetime(2026, 11, 28, 1, 2, 3, tzinfo=UTC)


def crd_schema(kind: str, part: str) -> dict[str, Any]:
    kd = next(k for k in _crdgen.KINDS if k.kind.value == kind)
    schema: dict[str, Any] = _crdgen.build_crd(kd)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"][part]  # type: ignore[no-any-return]


def headers(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#\s*(expect|field):\s*(.+)$", line)
        if match:
            found.setdefault(match[1], []).append(match[2].strip())
    return found


def conforms(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """What the API server's OpenAPI validation (not CEL) and pruning would object to."""
    problems: list[str] = []
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            return [f"{path}: not an int or string"]
    else:
        expected = {
            "object": dict,
            "array": list,
            "string": str,
            "boolean": bool,
            "integer": int,
            "number": int | float,
        }[schema["type"]]
        if not isinstance(value, expected) or (isinstance(value, bool) and schema["type"] != "boolean"):
            return [f"{path}: expected {schema['type']}, got {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and (value < low or (schema.get("exclusiveMinimum") and value == low)):
            problems.append(f"{path}: {value} below minimum {low}")
        if high is not None and (value > high or (schema.get("exclusiveMaximum") and value == high)):
            problems.append(f"{path}: {value} above maximum {high}")
    if isinstance(value, str):
        if len(value) > schema.get("maxLength", len(value)) or len(value) < schema.get("minLength", 0):
            problems.append(f"{path}: length {len(value)} out of bounds")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            problems.append(f"{path}: {len(value)} items out of bounds")
        for i, item in enumerate(value):
            problems += conforms(schema["items"], item, f"{path}[{i}]")
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        if not schema.get("minProperties", 0) <= len(value) <= schema.get("maxProperties", len(value)):
            problems.append(f"{path}: {len(value)} entries out of bounds")
        problems += [f"{path}.{name}: required" for name in schema.get("required", []) if name not in value]
        for key, item in value.items():
            if "properties" in schema:
                if key not in schema["properties"]:
                    problems.append(f"{path}.{key}: unknown field, the API server would prune it")
                else:
                    problems += conforms(schema["properties"][key], item, f"{path}.{key}")
            elif "additionalProperties" in schema:
                problems += conforms(schema["additionalProperties"], item, f"{path}.{key}")
    return problems


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: fill defaults inside objects that exist."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, prop in schema["properties"].items():
            if name not in out and "default" in prop:
                out[name] = copy.deepcopy(prop["default"])
            if name in out:
                out[name] = apply_defaults(prop, out[name])
        return out
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: apply_defaults(schema["additionalProperties"], v) for k, v in value.items()}
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def leaf_paths(schema: dict[str, Any], path: str = "") -> set[str]:
    """Dotted paths of every property in a schema (list items as [], map values as {})."""
    paths = {path} if path else set()
    for name, child in schema.get("properties", {}).items():
        paths |= leaf_paths(child, f"{path}.{name}" if path else name)
    if "items" in schema:
        paths |= leaf_paths(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        paths |= leaf_paths(schema["additionalProperties"], f"{path}{{}}")
    return paths


def covered_paths(schema: dict[str, Any], value: Any, path: str = "") -> set[str]:
    """The schema paths (as :func:`leaf_paths` spells them) that ``value`` sets."""
    out = {path} if path else set()
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return out
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key in schema["properties"]:
                out |= covered_paths(schema["properties"][key], item, f"{path}.{key}" if path else key)
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for item in value.values():
            out |= covered_paths(schema["additionalProperties"], item, f"{path}{{}}")
    if isinstance(value, list) and "items" in schema:
        for item in value:
            out |= covered_paths(schema["items"], item, f"{path}[]")
    return out


class TestImportIsolation:
    def test_importing_the_schema_needs_neither_kopf_nor_kubernetes_nor_torch(self) -> None:
        code = (
            "import sys, sampleforge.api, sampleforge.api._crdgen; "
            "print(sorted(m for m in ('kopf', 'kubernetes', 'torch', 'transformers') if m in sys.modules))"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
class TestExamples:
    def test_validates_with_the_models(self, path: Path) -> None:
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
        run = RUN_MODELS[body["kind"]].model_validate(body)
        assert run.api_version == API_VERSION
        assert run.to_kube() == RUN_MODELS[body["kind"]].model_validate(run.to_kube()).to_kube()

    def test_conforms_to_the_crd_schema(self, path: Path) -> None:
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert conforms(crd_schema(body["kind"], "spec"), body["spec"]) == []

    def test_server_defaults_equal_pydantic_defaults(self, path: Path) -> None:
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
        model = SPEC_MODELS[body["kind"]]
        defaulted = apply_defaults(crd_schema(body["kind"], "spec"), body["spec"])
        assert model.model_validate(defaulted) == model.model_validate(body["spec"])


class TestExampleSet:
    def test_the_documented_examples_exist(self) -> None:
        names = {p.name for p in EXAMPLES}
        assert {"augmentationrun.yaml", "finetunerun.yaml", "finetunerun-baseline.yaml"} <= names

    def test_finetune_example_trains_on_the_augmentation_example(self) -> None:
        aug = yaml.safe_load((REPO / "examples/augmentationrun.yaml").read_text())
        ft = FineTuneRun.model_validate(yaml.safe_load((REPO / "examples/finetunerun.yaml").read_text()))
        base = FineTuneRun.model_validate(yaml.safe_load((REPO / "examples/finetunerun-baseline.yaml").read_text()))
        assert ft.spec.data.from_augmentation_run == aug["metadata"]["name"]
        assert base.spec.data.uri == aug["spec"]["source"]["uri"] and base.spec.data.from_augmentation_run is None

    def test_complete_augmentation_example_uses_every_augmenter_with_every_parameter(self) -> None:
        spec = AugmentationRunSpec.model_validate(
            yaml.safe_load((REPO / "examples/augmentationrun-complete.yaml").read_text())["spec"]
        )
        raw = yaml.safe_load((REPO / "examples/augmentationrun-complete.yaml").read_text())["spec"]["augmenters"]
        assert [a.type for a in spec.augmenters] == list(AUGMENTER_UNION.by_tag)
        common = {"name", "fraction", "maxRows"}  # every type has these; showing each once is enough
        for item in raw:
            model = AUGMENTER_UNION.by_tag[item["type"]]
            params = {info.alias or name for name, info in model.model_fields.items()}
            missing = params - set(item) - common
            if item.get("engine") != "openai":  # its settings exist only beside engine: openai
                missing.discard("openai")
            assert not missing, f"{item['type']} in the complete example lacks {sorted(missing)}"
        assert common <= {key for item in raw for key in item}
        assert any(item.get("engine") == "openai" for item in raw), "show the openai engine's settings once"

    WEB_IDENTITY_PATHS: ClassVar[set[str]] = {"storage.webIdentity", "storage.webIdentity.roleArn",
                                              "storage.webIdentity.audience", "storage.webIdentity.stsEndpoint"}

    @pytest.mark.parametrize("kind", ["AugmentationRun", "FineTuneRun"])
    def test_complete_examples_set_every_spec_field(self, kind: str) -> None:
        name = {"AugmentationRun": "augmentationrun-complete.yaml", "FineTuneRun": "finetunerun-complete.yaml"}[kind]
        spec = yaml.safe_load((REPO / "examples" / name).read_text())["spec"]
        schema = crd_schema(kind, "spec")
        wanted = {p for p in leaf_paths(schema) if not p.startswith(("affinity.", "augmenters[].", "method."))}
        present = covered_paths(schema, spec)
        # Options that exclude each other can't all appear in one manifest; union parameters of the
        # variants not chosen can't either; fine-tuning reads no image column.
        not_showable = {
            "AugmentationRun": {"preprocess.clipOutliers.z", *self.WEB_IDENTITY_PATHS},
            "FineTuneRun": {"storage.credentialsSecret", "storage.credentialsKeys", "storage.credentialsKeys.accessKey",
                            "storage.credentialsKeys.secretKey", "data.fromAugmentationRun", "data.eval", "training.warmupSteps", "data.columns.image",
                            "twoTower", "twoTower.temperature", "twoTower.sharedEncoder",
                            "twoTower.hardNegatives"},  # task twoTower only
        }[kind]
        assert wanted - present - not_showable == set()


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
class TestInvalidFixtures:
    def test_has_one_expectation_and_one_field(self, path: Path) -> None:
        found = headers(path)
        assert len(found.get("expect", [])) == 1 and len(found.get("field", [])) == 1, path.name
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert body["apiVersion"] == API_VERSION and body["kind"] in RUN_MODELS
        assert found["field"][0].startswith("spec."), "field names the offending spec path, e.g. spec.output.uri"

    def test_pydantic_rejects_it_naming_the_field(self, path: Path) -> None:
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
        field = headers(path)["field"][0]
        with pytest.raises(ValidationError) as err:
            RUN_MODELS[body["kind"]].model_validate(body)
        leaf = re.sub(r"\[\d+\]$", "", field.split(".")[-1])
        text = str(err.value)
        assert leaf in text, f"the error does not name {leaf}:\n{text}"


class TestInvalidFixtureSet:
    def test_enough_fixtures_for_both_kinds(self) -> None:
        kinds = [yaml.safe_load(p.read_text())["kind"] for p in FIXTURES]
        assert len(FIXTURES) >= 18
        assert kinds.count("AugmentationRun") >= 9 and kinds.count("FineTuneRun") >= 9

    def test_each_fixture_is_valid_once_its_one_mistake_is_fixed(self) -> None:
        # Guards against fixtures that fail for a second, unintended reason: the minimal base that
        # the fixtures share must itself be valid.
        aug = {
            "storage": {"endpoint": "minio.data:9000", "credentialsSecret": "minio-creds"},
            "source": {"uri": "s3://datasets/train.parquet"},
            "augmenters": [{"type": "typo"}],
            "output": {"uri": "s3://datasets/out/"},
        }
        ft = {
            "storage": {"endpoint": "minio.data:9000", "credentialsSecret": "minio-creds"},
            "model": "org/encoder",
            "task": "relevance",
            "data": {"uri": "s3://datasets/train.parquet"},
            "output": {"uri": "s3://models/out/"},
        }
        AugmentationRunSpec.model_validate(aug)
        FineTuneRunSpec.model_validate(ft)


def _errors(model: type[BaseModel], spec: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as err:
        model.model_validate(spec)
    return str(err.value)


BASE_AUG: dict[str, Any] = {
    "storage": {"endpoint": "minio.data:9000", "credentialsSecret": "minio-creds"},
    "source": {"uri": "s3://datasets/train.parquet", "columns": {"attributes": ["brand", "color"]}},
    "augmenters": [{"type": "typo"}],
    "output": {"uri": "s3://datasets/out/"},
}
BASE_FT: dict[str, Any] = {
    "storage": {"endpoint": "minio.data:9000", "credentialsSecret": "minio-creds"},
    "model": "org/encoder",
    "task": "relevance",
    "data": {"uri": "s3://datasets/train.parquet"},
    "output": {"uri": "s3://models/out/"},
}


class TestPydanticValidation:
    def test_snake_case_input_is_accepted_and_camel_case_is_written(self) -> None:
        spec = FineTuneRunSpec.model_validate({**BASE_FT, "training": {"batch_size": 8, "learning_rate": 1.0e-4}})
        assert spec.training.batch_size == 8
        assert spec.to_kube()["training"]["batchSize"] == 8 and "batch_size" not in spec.to_kube()["training"]

    def test_a_misspelt_field_is_named(self) -> None:
        assert "parallelsm" in _errors(AugmentationRunSpec, {**BASE_AUG, "parallelsm": 4})

    def test_a_parameter_of_another_augmenter_type_is_named_with_the_types_it_belongs_to(self) -> None:
        text = _errors(AugmentationRunSpec, {**BASE_AUG, "augmenters": [{"type": "typo", "perQuery": 3}]})
        assert "perQuery applies only when type is hardNegative" in text

    def test_snake_case_parameter_of_another_type_is_caught_too(self) -> None:
        text = _errors(AugmentationRunSpec, {**BASE_AUG, "augmenters": [{"type": "typo", "per_query": 3}]})
        assert "perQuery applies only when type is hardNegative" in text

    def test_a_missing_parameter_is_named_with_the_type_that_needs_it(self) -> None:
        text = _errors(AugmentationRunSpec, {**BASE_AUG, "augmenters": [{"type": "paraphrase"}]})
        assert "model is required when type is paraphrase" in text

    def test_an_unknown_augmenter_type_lists_the_known_ones(self) -> None:
        text = _errors(AugmentationRunSpec, {**BASE_AUG, "augmenters": [{"type": "shuffle"}]})
        assert "'shuffle'" in text and "'hardNegative'" in text

    def test_lora_parameters_without_lora(self) -> None:
        text = _errors(FineTuneRunSpec, {**BASE_FT, "method": {"type": "prefixTuning", "dropout": 0.1}})
        assert "dropout applies only when type is lora or adalora" in text

    def test_adalora_target_rank_above_initial_rank(self) -> None:
        text = _errors(FineTuneRunSpec, {**BASE_FT, "method": {"type": "adalora", "rank": 16}})
        assert "rank (the target rank) must not exceed initialRank" in text

    def test_duplicate_attribute_columns(self) -> None:
        spec = {**BASE_AUG, "source": {"uri": "s3://data/train.parquet", "columns": {"attributes": ["brand", "brand"]}}}
        assert "lists 'brand' twice" in _errors(AugmentationRunSpec, spec)

    def test_integer_label_keys_become_strings(self) -> None:
        spec = AugmentationRunSpec.model_validate(
            {**BASE_AUG, "augmenters": [{"type": "rebalance", "targetDistribution": {0: 0.5, 1: 0.5}}]}
        )
        rebalance = spec.augmenters[0]
        assert isinstance(rebalance, RebalanceAugmenter)
        assert rebalance.target_distribution == {"0": 0.5, "1": 0.5}

    def test_learning_rate_given_as_a_string_is_rejected_like_the_api_server_does(self) -> None:
        text = _errors(FineTuneRunSpec, {**BASE_FT, "training": {"learningRate": "3e-5"}})
        assert "learningRate" in text

    def test_names_of_augmenters_of_the_same_type_must_differ(self) -> None:
        spec = {**BASE_AUG, "augmenters": [{"type": "typo"}, {"type": "typo", "name": "typo"}]}
        assert "augmenters must have distinct names" in _errors(AugmentationRunSpec, spec)
        ok = {**BASE_AUG, "augmenters": [{"type": "typo"}, {"type": "typo", "name": "heavyTypos"}]}
        parsed = AugmentationRunSpec.model_validate(ok)
        assert [a.display_name() for a in parsed.augmenters] == ["typo", "heavyTypos"]



def _validations(node: Any) -> list[tuple[str, list[str]]]:
    """(path, CEL rules) of every schema node below ``node`` that has rules."""
    found: list[tuple[str, list[str]]] = []

    def walk(n: Any, path: str) -> None:
        if isinstance(n, dict):
            rules = [v["rule"] for v in n.get("x-kubernetes-validations", [])]
            if rules:
                found.append((path, rules))
            for key, child in n.items():
                walk(child, f"{path}.{key}")
        elif isinstance(n, list):
            for i, child in enumerate(n):
                walk(child, f"{path}[{i}]")

    walk(node, "")
    return found


DOT_SEGMENT_CEL = "!self.matches('/[.][.]?(/|$)')"


class TestS3UriPathSegments:
    @pytest.mark.parametrize("kind", ["AugmentationRun", "FineTuneRun"])
    def test_every_uri_field_of_the_crd_refuses_dot_segments(self, kind: str) -> None:
        uri_nodes = [(path, rules) for path, rules in _validations(crd_schema(kind, "spec"))
                     if any("s3://" in r for r in rules)]
        assert len(uri_nodes) >= (6 if kind == "AugmentationRun" else 4)
        missing = [path for path, rules in uri_nodes if DOT_SEGMENT_CEL not in rules]
        assert not missing, f"URI fields without the dot-segment rule: {missing}"

    @pytest.mark.parametrize(
        ("kind", "change", "field"),
        [
            ("AugmentationRun", {"source": {"uri": "s3://datasets/a/../train.parquet"}}, "uri"),
            ("AugmentationRun", {"source": {"uri": "s3://datasets/./train.parquet"}}, "uri"),
            ("AugmentationRun", {"source": {"uri": "s3://datasets/a/.."}}, "uri"),
            ("AugmentationRun", {"output": {"uri": "s3://datasets/out/../"}}, "uri"),
            ("AugmentationRun", {"filters": {"evalSplit": "s3://datasets/./eval.parquet"}}, "evalSplit"),
            ("AugmentationRun", {"augmenters": [{"type": "synonym", "lexicon": "s3://lex/../x.tsv"}]}, "lexicon"),
            ("AugmentationRun", {"augmenters": [{"type": "paraphrase", "model": "s3://models/./m/"}]}, "model"),
            ("FineTuneRun", {"data": {"uri": "s3://datasets/../train.parquet"}}, "uri"),
            ("FineTuneRun", {"data": {"uri": "s3://datasets/train.parquet", "eval": "s3://datasets/x/../e.parquet"}},
             "eval"),
            ("FineTuneRun", {"output": {"uri": "s3://models/./out/"}}, "uri"),
            ("FineTuneRun", {"model": "s3://models/enc/../other/"}, "model"),
        ],
    )
    def test_pydantic_refuses_dot_segments_naming_the_field(self, kind: str, change: dict[str, Any],
                                                            field: str) -> None:
        base = BASE_AUG if kind == "AugmentationRun" else BASE_FT
        text = _errors(SPEC_MODELS[kind], {**base, **change})
        assert "must not contain '.' or '..' path segments" in text
        assert field in text

    @pytest.mark.parametrize("uri", ["s3://datasets/.hidden/train.parquet", "s3://datasets/a.b/.../x..y/",
                                     "s3://datasets/v1.0/", "s3://my.bucket/train.parquet"])
    def test_dots_inside_names_are_fine(self, uri: str) -> None:
        AugmentationRunSpec.model_validate({**BASE_AUG, "source": {"uri": uri, "format": "parquet"}})


class TestInputOutputOverlap:
    @pytest.mark.parametrize(
        ("a", "b", "overlap"),
        [
            ("s3://d/shoes/", "s3://d/shoes/augmented/", True),
            ("s3://d/shoes/train.parquet", "s3://d/shoes/", True),
            ("s3://d/shoes/", "s3://d/shoes/", True),
            ("s3://d/shoes/train.parquet", "s3://d/shoes/train.parquet/out/", True),
            ("s3://d/shoes/", "s3://d/shoes2/", False),
            ("s3://d/shoes/train.parquet", "s3://d/shoes/train.parquet2/", False),
            ("s3://d/shoes/train.parquet", "s3://d/out/", False),
            ("s3://d/shoes/", "s3://e/shoes/", False),
            ("s3://d/shoes", "s3://d/shoes/x/", True),
            # '..' and '.' aliases (refused by the schema) are resolved before comparing.
            ("s3://d/other/../shoes/", "s3://d/shoes/augmented/", True),
            ("s3://d/shoes/", "s3://d/shoes/./augmented/", True),
            ("s3://d/shoes/x/..", "s3://d/shoes/out/", True),
            ("s3://d/../../shoes/", "s3://d/shoes/", True),
            ("s3://d/shoes/a/../b/", "s3://d/shoes/a/", False),
        ],
    )
    def test_locations_overlap_in_either_direction(self, a: str, b: str, overlap: bool) -> None:
        assert s3_locations_overlap(a, b) is overlap
        assert s3_locations_overlap(b, a) is overlap

    def test_normalisation_keeps_the_bucket_and_a_trailing_slash(self) -> None:
        assert normalized_s3_uri("s3://d/a/./b/../c") == "s3://d/a/c"
        assert normalized_s3_uri("s3://d/a/b/..") == "s3://d/a/"
        assert normalized_s3_uri("s3://d/../x/") == "s3://d/x/"
        assert normalized_s3_uri("s3://d/a/b/") == "s3://d/a/b/"

    @pytest.mark.parametrize(
        ("source", "output"),
        [
            ("s3://datasets/shoes/", "s3://datasets/shoes/augmented/"),
            ("s3://datasets/shoes/train.parquet", "s3://datasets/shoes/"),
            ("s3://datasets/shoes/", "s3://datasets/shoes/"),
        ],
    )
    def test_augmentation_output_overlapping_the_source_is_refused(self, source: str, output: str) -> None:
        spec = {**BASE_AUG, "source": {"uri": source, "format": "parquet"}, "output": {"uri": output}}
        assert "output.uri and source.uri overlap" in _errors(AugmentationRunSpec, spec)

    def test_augmentation_output_overlapping_the_eval_split_is_refused(self) -> None:
        spec = {**BASE_AUG, "filters": {"evalSplit": "s3://datasets/out/eval.parquet"}}
        assert "output.uri and filters.evalSplit overlap" in _errors(AugmentationRunSpec, spec)

    def test_siblings_with_a_common_name_prefix_are_accepted(self) -> None:
        AugmentationRunSpec.model_validate({**BASE_AUG, "source": {"uri": "s3://datasets/shoes/"},
                                            "output": {"uri": "s3://datasets/shoes-augmented/"}})
        FineTuneRunSpec.model_validate({**BASE_FT, "data": {"uri": "s3://models/train.parquet"},
                                        "output": {"uri": "s3://models/train/"}})

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            ({"uri": "s3://models/out/train.parquet"}, "output.uri and data.uri overlap"),
            ({"uri": "s3://models/"}, "output.uri and data.uri overlap"),
            ({"uri": "s3://datasets/train.parquet", "eval": "s3://models/out/eval/"}, "output.uri and data.eval overlap"),
        ],
    )
    def test_finetune_output_overlapping_its_data_is_refused(self, data: dict[str, Any], message: str) -> None:
        assert message in _errors(FineTuneRunSpec, {**BASE_FT, "data": data})

    @pytest.mark.parametrize("kind", ["AugmentationRun", "FineTuneRun"])
    def test_the_crd_carries_the_overlap_rules_at_output_uri(self, kind: str) -> None:
        rules = crd_schema(kind, "spec")["x-kubernetes-validations"]
        overlap = [r for r in rules if "overlap" in r["message"]]
        assert len(overlap) == 2 and all(r["fieldPath"] == ".output.uri" for r in overlap)
        assert all("startsWith" in r["rule"] and "endsWith('/')" in r["rule"] for r in overlap)


class TestDefaults:
    def test_crd_defaults_conform_to_their_own_schema(self) -> None:
        def check(node: dict[str, Any], path: str) -> list[str]:
            problems = []
            if "default" in node:
                problems += conforms(node, node["default"], path)
            for name, child in node.get("properties", {}).items():
                problems += check(child, f"{path}.{name}")
            for key in ("items", "additionalProperties"):
                if isinstance(node.get(key), dict):
                    problems += check(node[key], f"{path}[{key}]")
            return problems

        for kind in RUN_MODELS:
            assert check(crd_schema(kind, "spec"), "spec") == []

    @pytest.mark.parametrize(
        ("kind", "spec"),
        [
            (
                "AugmentationRun",
                {
                    **BASE_AUG,
                    "storage": {**BASE_AUG["storage"], "credentialsKeys": {}},
                    "source": {"uri": "s3://data/t.csv", "columns": {}},
                    "preprocess": {"clipOutliers": {"method": "quantile"}},
                    "filters": {"dedup": {"method": "minhash"}, "similarity": {}, "length": {}, "labelConsistency": {}},
                    "output": {"uri": "s3://data/out/"},
                    "resources": {},
                    "hubToken": {"name": "hf"},
                },
            ),
            (
                "FineTuneRun",
                {
                    **BASE_FT,
                    "method": {"type": "lora"},
                    "training": {},
                    "distribution": {},
                    "checkpoint": {},
                    "evaluation": {"metrics": ["mrr"], "earlyStopping": {"metric": "mrr"}},
                    "output": {"uri": "s3://models/out/"},
                    "tolerations": [{"key": "gpu"}],
                },
            ),
        ],
        ids=["AugmentationRun", "FineTuneRun"],
    )
    def test_every_crd_default_equals_the_pydantic_default(self, kind: str, spec: dict[str, Any]) -> None:
        defaulted = apply_defaults(crd_schema(kind, "spec"), spec)
        assert defaulted != spec  # the server would fill something in
        model = SPEC_MODELS[kind]
        assert model.model_validate(defaulted) == model.model_validate(spec)


class TestFlatUnionsMatchTheCrd:
    @pytest.mark.parametrize(
        ("union", "kind", "path"),
        [
            (AUGMENTER_UNION, "AugmentationRun", ["augmenters", "items"]),
            (CLIP_UNION, "AugmentationRun", ["preprocess", "clipOutliers"]),
            (DEDUP_UNION, "AugmentationRun", ["filters", "dedup"]),
            (METHOD_UNION, "FineTuneRun", ["method"]),
        ],
        ids=["augmenters", "clipOutliers", "dedup", "method"],
    )
    def test_generated_rules_are_the_ones_pydantic_applies(self, union: FlatUnion, kind: str, path: list[str]) -> None:
        node = crd_schema(kind, "spec")
        for part in path:
            node = node["items"] if part == "items" else node["properties"][part]
        messages = {r["message"] for r in node.get("x-kubernetes-validations", [])}
        for name, tags in union.restricted().items():
            message = forbidden_message(name, union.tag_key, tags)
            assert message in messages, f"the CRD has no rule forbidding {name} outside {tags}"
            other = next(t for t in union.by_tag if t not in tags)
            with pytest.raises(ValueError, match=re.escape(message)):
                union.check({union.tag_key: other, name: None})
        for tag in union.by_tag:
            for name in union.required_by(tag):
                assert required_message(name, union.tag_key, tag) in messages
        assert set(node["properties"]) == set(union.owners)
        assert node["properties"][union.tag_key]["enum"] == list(union.by_tag)


class TestStatus:
    AUG = AugmentationRunStatus(
        phase=Phase.SUCCEEDED,
        observed_generation=2,
        conditions=[
            Condition(
                type="Ready",
                status="True",
                observed_generation=2,
                last_transition_time=NOW,
                reason="Succeeded",
                message="wrote 184213 rows",
            )
        ],
        start_time=NOW,
        completion_time=NOW,
        job_name="shoes-2026q4-augment",
        progress=Progress(done=10, total=10, percent=100, rate=2.5, eta_seconds=0, eta="0s", last_heartbeat_time=NOW,
                          stage="first pass over the source"),
        outputs=RunOutputs(
            uri="s3://data/out/",
            manifest_uri="s3://data/out/manifest.json",
            model_uri="s3://models/model/",
            rejected_rows_uri="s3://data/out/rejected/",
            report_uri="s3://data/out/report.html",
            metrics_uri="s3://models/out/metrics.json",
            model_card_uri="s3://models/model/README.md",
        ),
        storage=Storage(endpoint="minio.data:9000", credentials_secret="team-minio",
                        credentials_keys=CredentialsKeys(access_key="a", secret_key="s"),
                        ca_bundle=ConfigMapKeySelector(name="minio-ca"), secure=True, region="eu-west-1"),
        results=AugmentationResults(
            samples_in=100, samples_out=184213, per_augmenter={"typo": 30}, filtered={"dedup": 3}, rejected_rows=2
        ),
        stage=Step.REDUCE,
    )
    FT = FineTuneRunStatus(
        **AUG.model_dump(exclude={"results", "stage"}),
        results=FineTuneResults(
            step=500,
            epoch=1.5,
            loss=0.31,
            latest_metrics={"ndcg@10": 0.61},
            best_metric=BestMetric(name="ndcg@10", value=0.612, step=400),
            checkpoint_uri="s3://models/out/checkpoints/500/",
            rejected_rows=1,
        ),
    )

    @pytest.mark.parametrize("kind", ["AugmentationRun", "FineTuneRun"])
    def test_a_full_status_survives_the_schema_unpruned(self, kind: str) -> None:
        status = self.AUG if kind == "AugmentationRun" else self.FT
        body = status.to_kube()
        # webIdentity excludes credentialsSecret (a rule of the model), so it is added to the document
        # only, for the schema's sake.
        body["storage"]["webIdentity"] = {"roleArn": "arn:aws:iam::1:role/r", "audience": "sts.amazonaws.com",
                                          "stsEndpoint": "https://sts.example"}
        schema = crd_schema(kind, "status")
        assert conforms(schema, body) == []
        # The instance above sets every field the schema has, so a new status field must be added here.
        assert leaf_paths(schema) == covered_paths(schema, body)

    def test_times_are_rfc3339_utc(self) -> None:
        assert self.AUG.to_kube()["startTime"] == "2026-11-28T01:02:03Z"

    def test_conditions_are_a_map_keyed_by_type(self) -> None:
        node = crd_schema("FineTuneRun", "status")["properties"]["conditions"]
        assert node["x-kubernetes-list-type"] == "map" and node["x-kubernetes-list-map-keys"] == ["type"]
        assert "type" in node["items"]["required"]

    def test_phases_in_the_schema_are_the_phase_constants(self) -> None:
        assert crd_schema("AugmentationRun", "status")["properties"]["phase"]["enum"] == [p.value for p in Phase]


class TestHelpers:
    def test_top_level_models_default_to_this_api_version_and_kind(self) -> None:
        aug = AugmentationRun.model_validate({"spec": BASE_AUG})
        ft = FineTuneRun.model_validate({"spec": BASE_FT})
        assert (aug.api_version, aug.kind) == (API_VERSION, Kind.AUGMENTATION_RUN.value)
        assert (ft.api_version, ft.kind) == (API_VERSION, Kind.FINE_TUNE_RUN.value)

    def test_gpus_per_pod(self) -> None:
        assert FineTuneRunSpec.model_validate(BASE_FT).gpus_per_pod() == 1
        assert FineTuneRunSpec.model_validate({**BASE_FT, "resources": {"gpus": 2}}).gpus_per_pod() == 2
        assert FineTuneRunSpec.model_validate({**BASE_FT, "distribution": {"gpusPerNode": 8}}).gpus_per_pod() == 8

    def test_effective_metrics_and_eval_fraction(self) -> None:
        spec = FineTuneRunSpec.model_validate({**BASE_FT, "task": "ctr"})
        assert spec.effective_metrics() == ("auc", "logLoss") and spec.eval_fraction() == 0.05
        with_eval = FineTuneRunSpec.model_validate(
            {**BASE_FT, "data": {**BASE_FT["data"], "eval": "s3://data/e.jsonl"}}
        )
        assert with_eval.eval_fraction() is None

    def test_early_stopping_mode_follows_the_metric(self) -> None:
        spec = FineTuneRunSpec.model_validate(
            {**BASE_FT, "evaluation": {"metrics": ["rmse", "mrr"], "earlyStopping": {"metric": "rmse"}}}
        )
        assert spec.evaluation.early_stopping is not None
        assert spec.evaluation.early_stopping.effective_mode() == "min"

    def test_method_defaults_to_full_fine_tuning(self) -> None:
        assert FineTuneRunSpec.model_validate(BASE_FT).method.type == "full"

    def test_storage_secret_keys_default(self) -> None:
        storage = AugmentationRunSpec.model_validate(BASE_AUG).storage
        assert (storage.access_key_key(), storage.secret_key_key()) == ("accessKey", "secretKey")
