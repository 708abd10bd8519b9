"""What every augmenter is built on: row randomness that depends only on (seed, name, row), batches
and their runs of consecutive row ids, label coercion, and the registry of augmenter types."""

from __future__ import annotations

import numpy as np
import pytest

from sampleforge.api.augmentation import AugmentationRunSpec
from sampleforge.api.augmenters import GanAugmenter, MixupAugmenter, TypoAugmenter
from sampleforge.jobs.augment.catalog import check_supported, needs_of
from sampleforge.jobs.augment.errors import ConfigError
from sampleforge.jobs.augment.labels import LabelError, Labels
from sampleforge.jobs.augment.randomness import RowRandomness
from sampleforge.jobs.augment.registry import register_row_augmenter, registered_types, registration
from sampleforge.jobs.augment.rows import ColumnRoles, RowBatch


class TestRowRandomness:
    def test_a_rows_numbers_do_not_depend_on_its_batch(self) -> None:
        random = RowRandomness(42, "typo")
        whole = random.uniform(np.arange(1000), "select")
        pieces = np.concatenate([random.uniform(np.arange(0, 333), "select"),
                                 random.uniform(np.arange(333, 1000), "select")])
        alone = random.uniform([777], "select")
        assert np.array_equal(whole, pieces)
        assert alone[0] == whole[777]

    def test_seed_name_and_stream_each_change_the_numbers(self) -> None:
        rows = np.arange(500)
        base = RowRandomness(42, "typo").uniform(rows, "select")
        for other in (RowRandomness(43, "typo").uniform(rows, "select"),
                      RowRandomness(42, "typo-2").uniform(rows, "select"),
                      RowRandomness(42, "typo").uniform(rows, "count")):
            assert np.mean(np.isclose(base, other)) < 0.01

    def test_numbers_are_uniform_on_the_unit_interval(self) -> None:
        u = RowRandomness(7, "x").uniform(np.arange(200_000))
        assert u.min() >= 0.0 and u.max() < 1.0
        assert abs(u.mean() - 0.5) < 0.005
        counts = np.histogram(u, bins=10, range=(0, 1))[0]
        assert counts.min() > 0.97 * 20_000 and counts.max() < 1.03 * 20_000

    def test_generators_and_derived_seeds_are_reproducible(self) -> None:
        a, b = RowRandomness(1, "swap"), RowRandomness(1, "swap")
        assert a.generator(12).integers(1 << 30, size=5).tolist() == b.generator(12).integers(1 << 30, size=5).tolist()
        assert a.generator(12).random() != a.generator(13).random()
        assert a.generator(12, "x").random() != a.generator(12, "y").random()
        seeds = {a.derived_seed(p) for p in ("query", "item", "")}
        assert len(seeds) == 3 and all(0 <= s < 2**63 for s in seeds)


ROLES = ColumnRoles(query="q", item="t", label="y", attributes=("brand",))


def _batch(ids: list[int]) -> RowBatch:
    n = len(ids)
    return RowBatch(ROLES, np.asarray(ids, dtype=np.int64),
                    {"q": [f"q{i}" for i in ids], "t": [f"t{i}" for i in ids], "y": [0] * n, "brand": [None] * n})


class TestRowBatch:
    def test_contiguous_runs_split_at_gaps_and_skip_unselected_runs(self) -> None:
        batch = _batch([10, 11, 12, 14, 15, 20])
        assert list(batch.contiguous_runs()) == [(0, 3), (3, 5), (5, 6)]
        mask = np.array([False, False, False, False, True, False])
        assert list(batch.contiguous_runs(mask)) == [(3, 5)]

    def test_rows_and_take(self) -> None:
        batch = _batch([3, 4, 5])
        assert batch.row(1) == {"q": "q4", "t": "t4", "y": 0, "brand": None}
        picked = batch.take([2, 0])
        assert picked.row_ids.tolist() == [5, 3] and picked.queries == ["q5", "q3"]
        assert ROLES.all == ("q", "t", "y", "brand")


class TestLabels:
    def test_coercion_to_the_source_type(self) -> None:
        assert Labels("int").coerce("2", "f") == 2
        assert Labels("float").coerce(1, "f") == 1.0
        assert Labels("string").coerce(0, "f") == "0"
        with pytest.raises(LabelError, match="spec.augmenters\\[0\\].label"):
            Labels("int").coerce("irrelevant", "spec.augmenters[0].label")
        with pytest.raises(LabelError):
            Labels("int").coerce(1.5, "f")

    def test_lowest_label(self) -> None:
        assert Labels("string", {"2": 5, "0": 3, "1": 9}).lowest("f") == "0"
        assert Labels("int", {"10": 1, "9": 1}).lowest("f") == 9
        with pytest.raises(LabelError, match="not numbers"):
            Labels("string", {"Exact": 3, "Irrelevant": 1}).lowest("spec.augmenters[2].label")

    def test_keys_match_integral_floats_to_integer_names(self) -> None:
        assert Labels("int").key(1) == "1" and Labels("string").key(1.0) == "1"
        assert Labels("float").key(1.0) == "1.0"


class TestRegistry:
    def test_built_in_types_are_registered(self) -> None:
        assert {"typo", "synonym", "randomInsert", "randomSwap", "randomDelete", "charNoise", "attributeDrop",
                "attributeReorder", "attributeSwap", "hardNegative", "rebalance"} <= set(registered_types())

    def test_registration_rejects_unknown_needs_classes_and_double_registration(self) -> None:
        with pytest.raises(ValueError, match="unknown needs"):
            register_row_augmenter(GanAugmenter, needs=("gpu",))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not an augmenter of the schema"):
            register_row_augmenter(AugmentationRunSpec)  # type: ignore[type-var]

        def factory(entry: object, build: object) -> object:
            raise AssertionError

        with pytest.raises(ValueError, match="registered twice"):
            register_row_augmenter(TypoAugmenter)(factory)  # type: ignore[arg-type]

    def test_a_factory_gets_only_entries_of_its_spec_class(self) -> None:
        found = registration("typo")
        assert found is not None and found.needs == frozenset()
        with pytest.raises(TypeError, match="builds from TypoAugmenter, not MixupAugmenter"):
            found.build(MixupAugmenter(type="mixup"), None)  # type: ignore[arg-type]

    def test_types_without_an_implementation_are_a_configuration_error(self, monkeypatch: pytest.MonkeyPatch
                                                                        ) -> None:
        # A job image older than the operator's CRD: the schema knows the type, the image does not.
        from sampleforge.jobs.augment import registry

        monkeypatch.delitem(registry._REGISTRY, "mixup")
        spec = AugmentationRunSpec.model_validate({
            "storage": {"endpoint": "minio:9000", "credentialsSecret": "s"},
            "source": {"uri": "s3://data/train.parquet", "columns": {"denseFeatures": ["f1"]}},
            "augmenters": [{"type": "typo"}, {"type": "mixup"}], "output": {"uri": "s3://data/out/"}})
        with pytest.raises(ConfigError, match=r"spec.augmenters\[1\] has type 'mixup'"):
            check_supported(spec)

    def test_needs_come_from_the_configured_types(self) -> None:
        spec = AugmentationRunSpec.model_validate({
            "storage": {"endpoint": "minio:9000", "credentialsSecret": "s"},
            "source": {"uri": "s3://data/train.parquet", "columns": {"attributes": ["brand"]}},
            "augmenters": [{"type": "hardNegative"}, {"type": "attributeSwap", "attributes": ["brand"], "label": 0}],
            "output": {"uri": "s3://data/out/"}})
        assert needs_of(spec) == frozenset({"itemPool", "attributeValues"})


def test_every_augmenter_type_of_the_schema_is_implemented() -> None:
    """The CRD accepts exactly the types this job image can run."""
    from sampleforge.api.augmenters import AUGMENTER_UNION
    from sampleforge.jobs.augment import catalog  # noqa: F401 -- registers every family

    assert set(AUGMENTER_UNION.by_tag) == set(registered_types())
