"""The CRD generator: files in sync, deterministic output, and schemas the API server accepts.

The API server rejects CRDs whose schema is not structural and CEL rules whose estimated cost is
unbounded; these tests check those properties without a server, so a model change that would break
``kubectl apply -f crds/`` fails here first.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sampleforge.api import _crdgen
from sampleforge.api.constants import CATEGORY, GROUP, SHORT_NAMES, VERSION, Kind, crd_name

REPO = Path(__file__).resolve().parents[2]
KINDS = {kd.kind: kd for kd in _crdgen.KINDS}
#: The only places where unknown fields are kept on purpose (free-form Pod affinity).
FREE_FORM_PATHS = {"spec.affinity"}
FREE_FORM_PATHS_PREFIXES = tuple(f"{p}." for p in FREE_FORM_PATHS)


def crd(kind: Kind) -> dict[str, Any]:
    built: dict[str, Any] = _crdgen.build_crd(KINDS[kind])
    return built


def root_schema(kind: Kind) -> dict[str, Any]:
    schema: dict[str, Any] = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with a dotted path (``[]`` for list items, ``{}`` for map values)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


ALL_NODES = [(kind, path, node) for kind in Kind for path, node in walk(root_schema(kind))]


def violations(check: Any) -> list[str]:
    """Run ``check(kind, path, node)`` over every node of both CRDs; collect what it reports."""
    found: list[str] = []
    for kind, path, node in ALL_NODES:
        found.extend(f"{kind.value} {path or '<root>'}: {problem}" for problem in check(path, node))
    return found


class TestFilesInSync:
    def test_generated_files_match_the_models(self) -> None:
        diff = _crdgen.check(REPO)
        assert diff == "", f"CRDs drifted from sampleforge.api; run `python -m sampleforge.api.crdgen`:\n{diff}"

    @pytest.mark.parametrize("kind", list(Kind))
    def test_chart_crds_are_byte_identical(self, kind: Kind) -> None:
        name = f"{crd_name(kind)}.yaml"
        assert (REPO / "crds" / name).read_bytes() == (REPO / "charts/sampleforge/files/crds" / name).read_bytes()

    def test_check_mode_exits_nonzero_with_a_diff_on_drift(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert _crdgen.main(["--root", str(tmp_path)]) == 0
        target = tmp_path / "charts/sampleforge/files/crds" / f"{crd_name(Kind.FINE_TUNE_RUN)}.yaml"
        target.write_text(target.read_text().replace("maxItems: 16", "maxItems: 17"))
        capsys.readouterr()
        assert _crdgen.main(["--check", "--root", str(tmp_path)]) == 1
        out = capsys.readouterr()
        assert re.search(r"^-\s+maxItems: 17$", out.out, re.MULTILINE) and re.search(
            r"^\+\s+maxItems: 16$", out.out, re.MULTILINE
        )
        assert "out of date" in out.err
        assert _crdgen.main(["--root", str(tmp_path)]) == 0
        assert _crdgen.main(["--check", "--root", str(tmp_path)]) == 0

    def test_check_mode_reports_a_missing_file(self, tmp_path: Path) -> None:
        _crdgen.write(tmp_path)
        (tmp_path / "crds" / f"{crd_name(Kind.AUGMENTATION_RUN)}.yaml").unlink()
        assert "+++ b/crds/augmentationruns.sampleforge.io.yaml" in _crdgen.check(tmp_path)

    def test_stale_generated_files_are_reported_and_removed(self, tmp_path: Path) -> None:
        _crdgen.write(tmp_path)
        stale = tmp_path / "crds" / "oldruns.sampleforge.io.yaml"
        stale.write_text(_crdgen.HEADER + "kind: CustomResourceDefinition\n")
        hand_written = tmp_path / "crds" / "kustomization.yaml"
        hand_written.write_text("resources: []\n")
        assert "stale generated file: crds/oldruns.sampleforge.io.yaml" in _crdgen.check(tmp_path)
        _crdgen.write(tmp_path)
        assert not stale.exists() and hand_written.exists()

    def test_output_does_not_depend_on_hash_seed(self) -> None:
        code = "from sampleforge.api import _crdgen; print(''.join(_crdgen.render(_crdgen.build_crd(k)) for k in _crdgen.KINDS))"
        outputs = {
            subprocess.run(
                [sys.executable, "-c", code],
                env={**os.environ, "PYTHONHASHSEED": seed},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for seed in ("1", "2")
        }
        assert len(outputs) == 1

    @pytest.mark.parametrize("kind", list(Kind))
    def test_files_start_with_the_do_not_edit_header(self, kind: Kind) -> None:
        text = (REPO / "crds" / f"{crd_name(kind)}.yaml").read_text(encoding="utf-8")
        assert text.startswith("# Generated by ") and "do not edit" in text.splitlines()[0]
        assert yaml.safe_load(text) == crd(kind)


class TestReferenceCoversTheSchema:
    """docs/reference.md documents every field the API server accepts, spec and status alike."""

    #: Fields documented as the parameters of a union's variants (augmenter types, methods) rather
    #: than as dotted paths.
    UNIONS = ("spec.augmenters[].", "spec.method.")

    @pytest.mark.parametrize("kind", list(Kind))
    def test_every_schema_field_has_a_row(self, kind: Kind) -> None:
        from sampleforge.api._docgen import reference_markdown

        reference = reference_markdown()
        missing = []
        for path, _ in walk(root_schema(kind)):
            if not path.startswith(("spec.", "status.")) or "{}" in path or path.endswith("[]"):
                continue
            if path.startswith(FREE_FORM_PATHS_PREFIXES):
                continue
            union = next((u for u in self.UNIONS if path.startswith(u)), None)
            if union is not None:
                leaf = path.removeprefix(union).split(".")[0].removesuffix("[]")
                if f"`{leaf}` (" not in reference and leaf not in {"type", "name", "fraction", "maxRows"}:
                    missing.append(path)
                continue
            dotted = path.split(".", 1)[1]
            if f"| `{dotted}` |" not in reference:
                missing.append(path)
        assert not missing, f"fields without a row in docs/reference.md: {missing}"


class TestCrdMetadata:
    @pytest.mark.parametrize("kind", list(Kind))
    def test_names_scope_and_version(self, kind: Kind) -> None:
        spec = crd(kind)["spec"]
        assert spec["group"] == GROUP and spec["scope"] == "Namespaced"
        assert spec["names"]["kind"] == kind.value
        assert spec["names"]["shortNames"] == list(SHORT_NAMES[kind])
        assert spec["names"]["categories"] == [CATEGORY]
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
        assert version["subresources"] == {"status": {}}

    def test_short_names_are_unique_across_kinds(self) -> None:
        names = [n for kind in Kind for n in SHORT_NAMES[kind]]
        assert len(names) == len(set(names))

    @pytest.mark.parametrize("kind", list(Kind))
    def test_printer_columns_point_at_schema_fields_of_the_same_type(self, kind: Kind) -> None:
        nodes = dict(walk(root_schema(kind)))
        columns = crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
        assert [c["name"] for c in columns if not c.get("priority")][:2] == ["Phase", "Reason"]  # why it is in its phase, by default
        for col in columns:
            path = col["jsonPath"].lstrip(".")
            if path == "metadata.creationTimestamp":
                assert col["type"] == "date"
                continue
            path = re.sub(r"\[\?\(.*\)\]", "[]", path)  # a filter selects list items
            assert path in nodes, f"column {col['name']} points at {path}, which is not in the schema"
            assert nodes[path]["type"] == col["type"], col["name"]

    def test_augmentation_shows_samples_and_finetune_shows_the_best_metric(self) -> None:
        aug = [c["jsonPath"] for c in crd(Kind.AUGMENTATION_RUN)["spec"]["versions"][0]["additionalPrinterColumns"]]
        ft = [c["jsonPath"] for c in crd(Kind.FINE_TUNE_RUN)["spec"]["versions"][0]["additionalPrinterColumns"]]
        assert ".status.results.samplesOut" in aug and ".status.progress.eta" in aug
        assert {".status.results.bestMetric.name", ".status.results.bestMetric.value"} <= set(ft)


class TestStructuralSchema:
    def test_every_node_is_typed(self) -> None:
        def check(path: str, node: dict[str, Any]) -> Iterator[str]:
            for banned in ("$ref", "$defs", "oneOf", "allOf", "not", "nullable", "const", "discriminator", "title"):
                if banned in node:
                    yield f"has {banned}"
            if "anyOf" in node:  # only the int-or-string form is structural
                if not (
                    node.get("x-kubernetes-int-or-string") is True
                    and node["anyOf"] == [{"type": "integer"}, {"type": "string"}]
                    and "type" not in node
                ):
                    yield "anyOf that is not the int-or-string form"
            elif node.get("type") not in ("object", "array", "string", "integer", "number", "boolean"):
                yield f"no valid type: {node.get('type')}"
            if "additionalProperties" in node and (
                not isinstance(node["additionalProperties"], dict) or "properties" in node
            ):
                yield "additionalProperties must be a schema and exclude properties"

        assert violations(check) == []

    def test_every_property_is_described(self) -> None:
        def check(path: str, node: dict[str, Any]) -> Iterator[str]:
            # metadata is the standard ObjectMeta; list items and map values are described by their container
            if path != "metadata" and not path.endswith(("[]", "{}")) and not node.get("description", "").strip():
                yield "no description"

        assert violations(check) == []

    def test_unknown_fields_are_kept_only_where_free_form(self) -> None:
        kept = {path for _, path, node in ALL_NODES if node.get("x-kubernetes-preserve-unknown-fields")}
        assert kept == FREE_FORM_PATHS

    def test_strings_lists_and_maps_are_bounded(self) -> None:
        # CEL cost estimates multiply these bounds; an unbounded one can make the CRD unacceptable.
        def check(path: str, node: dict[str, Any]) -> Iterator[str]:
            if path in ("apiVersion", "kind", "metadata") or node.get("x-kubernetes-preserve-unknown-fields"):
                return
            kind_of = node.get("type")
            bounded = "maxLength" in node or "enum" in node or node.get("format") == "date-time"
            if kind_of == "string" and not bounded:
                yield "unbounded string"
            if kind_of == "array" and "maxItems" not in node:
                yield "unbounded list"
            if kind_of == "object" and "additionalProperties" in node and "maxProperties" not in node:
                yield "unbounded map"
            if node.get("x-kubernetes-int-or-string") and "maxLength" not in node:
                yield "unbounded int-or-string"

        assert violations(check) == []

    def test_cel_rules_have_messages_and_valid_field_paths(self) -> None:
        def check(path: str, node: dict[str, Any]) -> Iterator[str]:
            for rule in node.get("x-kubernetes-validations", []):
                if not (rule.get("rule", "").strip() and rule.get("message", "").strip()):
                    yield f"rule without rule text or message: {rule}"
                if "\\" in rule["rule"]:
                    yield "backslash in a CEL rule; use [.] style classes instead"
                target = node
                for part in rule.get("fieldPath", "").lstrip(".").split(".") if "fieldPath" in rule else []:
                    if part not in target.get("properties", {}):
                        yield f"fieldPath {rule['fieldPath']} is not in the schema"
                        break
                    target = target["properties"][part]
                if rule.get("reason", "FieldValueInvalid") not in (
                    "FieldValueInvalid",
                    "FieldValueForbidden",
                    "FieldValueRequired",
                ):
                    yield f"reason {rule['reason']} (FieldValueDuplicate makes the API server drop the message)"

        assert violations(check) == []

    def test_forbidden_fields_have_no_default(self) -> None:
        # A default the API server injects must never trip a rule that forbids the field.
        def check(path: str, node: dict[str, Any]) -> Iterator[str]:
            for rule in node.get("x-kubernetes-validations", []):
                if rule.get("reason") == "FieldValueForbidden" and "fieldPath" in rule:
                    prop = node["properties"][rule["fieldPath"].lstrip(".").split(".")[0]]
                    if "default" in prop:
                        yield f"{rule['fieldPath']} has a default but may be forbidden"

        assert violations(check) == []

    def test_required_lists_are_sorted_and_name_existing_properties(self) -> None:
        def check(path: str, node: dict[str, Any]) -> Iterator[str]:
            required = node.get("required", [])
            if required != sorted(required) or not set(required) <= set(node.get("properties", {})):
                yield f"bad required list {required}"

        assert violations(check) == []

    @pytest.mark.parametrize(
        ("kind", "field"),
        [
            (Kind.FINE_TUNE_RUN, "spec.model"),
            (Kind.FINE_TUNE_RUN, "spec.task"),
            (Kind.FINE_TUNE_RUN, "spec.data"),
            (Kind.FINE_TUNE_RUN, "spec.output"),
            (Kind.AUGMENTATION_RUN, "spec.source"),
            (Kind.AUGMENTATION_RUN, "spec.augmenters"),
            (Kind.AUGMENTATION_RUN, "spec.output"),
        ],
    )
    def test_immutable_fields_carry_a_transition_rule(self, kind: Kind, field: str) -> None:
        node = dict(walk(root_schema(kind)))[field]
        rules = {r["rule"]: r["message"] for r in node.get("x-kubernetes-validations", [])}
        name = field.split(".")[-1]
        assert rules.get("self == oldSelf") == f"{name} is immutable once created; create a new run"

    def test_the_checks_above_can_fail(self) -> None:
        # Guard against a walk that silently visits nothing.
        assert len(ALL_NODES) > 300
        assert any(n.get("x-kubernetes-validations") for _, _, n in ALL_NODES)
