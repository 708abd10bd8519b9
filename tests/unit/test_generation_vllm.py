"""The ``vllm`` engine where no GPU is lent, and the transformers engine's token-budget batching.

* The spec: ``engine: vllm`` is accepted only beside ``resources.gpus >= 1`` (the same rule is a CEL
  rule of the CRD), and the rendered pod asks for ``nvidia.com/gpu``.
* Selecting vllm in a pod without vLLM or without a CUDA device fails at once with a do-not-retry
  error naming ``spec.augmenters[i].engine``: real import attempts and a real CUDA query, no mocks
  (where vLLM or a GPU is present the corresponding test is skipped; bench/gpu/ covers that side).
* The engine's request building: token ids, one ``SamplingParams`` argument set per request with the
  request's own seed, identical requests merged, against a real tokenizer of a tiny model.
* ``token_batches``: batches respect ``batchSize`` and ``maxBatchTokens``; outputs of the
  transformers engine are identical whatever the budget (greedy and seeded sampling).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_augment_generation import corpus_texts, tiny_causal_lm

from sampleforge.api import AugmentationRunSpec, jobenv
from sampleforge.api.constants import GPU_RESOURCE, Reason
from sampleforge.jobs.augment.catalog import build_augmenters
from sampleforge.jobs.augment.engines import TOP_P, EngineStats, GenerationSettings
from sampleforge.jobs.augment.errors import ConfigError
from sampleforge.jobs.augment.gencache import cache_key
from sampleforge.jobs.augment.generation import request_seed
from sampleforge.jobs.augment.modelcache import ModelCache
from sampleforge.jobs.augment.models import ModelLocation
from sampleforge.jobs.augment.prompts import DEFAULT_TEMPLATES
from sampleforge.jobs.augment.transformers_engine import TextGenerator, token_batches
from sampleforge.jobs.augment.vllm_engine import (
    MAX_GPU_SHARE,
    VllmGenerator,
    engine_args,
    memory_utilization,
    require_cuda,
    require_vllm,
    sampling_args,
    tensor_parallel_size,
    unique_requests,
)

REPO = Path(__file__).resolve().parents[2]
FIELD = "spec.augmenters[0].model"


def vllm_spec(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((REPO / "examples" / "augmentationrun.yaml").read_text())["spec"]
    raw["augmenters"] = [{"type": "paraphrase", "model": "s3://models/smollm2/", "engine": "vllm"}]
    raw["resources"] = {"gpus": 1}
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not None}


def has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# --- the spec and the pod -----------------------------------------------------------------------------


class TestSpec:
    def test_vllm_with_a_gpu_is_a_valid_engine_and_max_batch_tokens_defaults(self) -> None:
        spec = AugmentationRunSpec.model_validate(vllm_spec())
        entry = spec.augmenters[0]
        assert entry.engine == "vllm" and entry.openai is None
        assert entry.max_batch_tokens == 16384

    @pytest.mark.parametrize("resources", [None, {}, {"gpus": 0}, {"cpu": "8"}])
    def test_vllm_without_a_gpu_is_rejected_naming_resources_gpus(self, resources: dict[str, Any] | None) -> None:
        with pytest.raises(ValueError, match=r"engine vllm run vLLM on the pod's GPU: set resources\.gpus"):
            AugmentationRunSpec.model_validate(vllm_spec(resources=resources))

    def test_any_generation_type_with_vllm_needs_the_gpu(self) -> None:
        entries = [{"type": "paraphrase", "model": "org/m"},
                   {"type": "doc2query", "model": "org/m", "engine": "vllm", "name": "d2q"}]
        with pytest.raises(ValueError, match="resources.gpus"):
            AugmentationRunSpec.model_validate(vllm_spec(augmenters=entries, resources=None))
        assert AugmentationRunSpec.model_validate(vllm_spec(augmenters=entries)).augmenters[1].engine == "vllm"

    def test_vllm_takes_no_openai_settings(self) -> None:
        spec = vllm_spec()
        spec["augmenters"][0]["openai"] = {"endpoint": "http://llm:8000/v1"}
        with pytest.raises(ValueError, match="openai applies only when engine is openai"):
            AugmentationRunSpec.model_validate(spec)

    @pytest.mark.parametrize("tokens", [0, 63, 1_048_577])
    def test_max_batch_tokens_is_bounded(self, tokens: int) -> None:
        spec = vllm_spec()
        spec["augmenters"][0]["maxBatchTokens"] = tokens
        with pytest.raises(ValueError, match="max_batch_tokens|maxBatchTokens"):
            AugmentationRunSpec.model_validate(spec)

    def test_the_crd_carries_the_enum_and_the_gpu_rule(self) -> None:
        crd = yaml.safe_load((REPO / "crds" / "augmentationruns.sampleforge.io.yaml").read_text())
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        engine = spec["properties"]["augmenters"]["items"]["properties"]["engine"]
        assert engine["enum"] == ["transformers", "vllm", "openai"]
        assert "GPU" in engine["description"] and "job-vllm" in engine["description"]
        rules = [r for r in spec["x-kubernetes-validations"] if "vllm" in r["rule"]]
        assert len(rules) == 1 and rules[0]["fieldPath"] == ".resources.gpus"
        assert "self.resources.gpus >= 1" in rules[0]["rule"]


class TestRender:
    def test_a_vllm_run_asks_for_its_gpus_tolerates_gpu_nodes_and_gets_shared_memory(self) -> None:
        from sampleforge.operator.render import RunObject, render_job
        from sampleforge.operator.settings import Settings

        for gpus in (1, 2):
            body = {"apiVersion": "sampleforge.io/v1alpha1", "kind": "AugmentationRun",
                    "metadata": {"name": "vllm-run", "namespace": "search-ml", "generation": 1,
                                 "uid": "0b6c2a52-1f0e-4c53-9d8e-7f0a3c1e2d44"},
                    "spec": vllm_spec(resources={"gpus": gpus}, parallelism=2)}
            job = render_job(RunObject.from_body(body), Settings(), None)
            pod = job["spec"]["template"]["spec"]
            resources = pod["containers"][0]["resources"]
            assert resources["limits"][GPU_RESOURCE] == resources["requests"][GPU_RESOURCE] == str(gpus)
            assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            assert any(v["name"] == "dshm" for v in pod["volumes"])
            assert job["spec"]["parallelism"] == 2 and job["spec"]["completionMode"] == "Indexed"


# --- a pod that cannot run vLLM ------------------------------------------------------------------------


class TestUnavailable:
    @pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
    def test_without_the_package_the_run_fails_naming_the_engine_field(self) -> None:
        with pytest.raises(ConfigError) as caught:
            require_vllm("spec.augmenters[3].engine")
        err = caught.value
        assert str(err).startswith("spec.augmenters[3].engine is vllm, but vLLM cannot be imported in this pod")
        assert "No module named 'vllm'" in str(err) and "job-vllm" in str(err)
        assert err.reason is Reason.INVALID_SPEC and int(err.exit_code) == jobenv.EXIT_INVALID_CONFIG
        assert jobenv.EXIT_INVALID_CONFIG in jobenv.EXIT_NOT_RETRYABLE

    @pytest.mark.skipif(has_cuda(), reason="a CUDA device is visible here")
    def test_without_a_cuda_device_the_run_fails_naming_the_engine_field(self) -> None:
        with pytest.raises(ConfigError) as caught:
            require_cuda("spec.augmenters[0].engine")
        assert str(caught.value).startswith("spec.augmenters[0].engine is vllm, which needs a CUDA GPU, but this "
                                            "pod sees none")
        assert "spec.resources.gpus" in str(caught.value)
        assert int(caught.value.exit_code) == jobenv.EXIT_INVALID_CONFIG

    @pytest.mark.skipif(importlib.util.find_spec("vllm") is not None and has_cuda(), reason="vLLM can run here")
    def test_building_the_augmenter_fails_before_any_model_is_fetched(self, tmp_path: Path) -> None:
        spec = AugmentationRunSpec.model_validate(vllm_spec(augmenters=[
            {"type": "typo"}, {"type": "doc2query", "model": "s3://models/smollm2/", "engine": "vllm"}]))
        cache = ModelCache(None, tmp_path)  # no store: fetching the model would fail differently
        with pytest.raises(ConfigError, match=r"^spec\.augmenters\[1\]\.engine is vllm"):
            build_augmenters(spec, roles=None, labels=None, knowledge=None, store=None, models=cache)
        assert not (tmp_path / "models").exists()


# --- the engine's requests -------------------------------------------------------------------------------


class TestPureParts:
    def test_sampling_carries_the_request_seed_and_nucleus(self) -> None:
        seed = request_seed(123456789, "query", 2)
        args = sampling_args(24, 0.7, TOP_P, seed, [2, 5])
        assert args == {"n": 1, "max_tokens": 24, "temperature": 0.7, "top_p": TOP_P, "seed": seed,
                        "stop_token_ids": [2, 5], "skip_special_tokens": True}
        assert 0 <= args["seed"] < 2**63

    def test_greedy_sends_neither_seed_nor_nucleus(self) -> None:
        args = sampling_args(8, 0.0, TOP_P, 99, [])
        assert args["temperature"] == 0.0 and "seed" not in args and "top_p" not in args

    def test_identical_requests_are_merged_and_greedy_ignores_the_seed(self) -> None:
        inputs, seeds = ["a", "b", "a", "a"], [1, 2, 1, 3]
        sampled, index = unique_requests(inputs, seeds, sampling=True)
        assert sampled == [("a", 1), ("b", 2), ("a", 3)] and index == [0, 1, 0, 2]
        greedy, index = unique_requests(inputs, seeds, sampling=False)
        assert greedy == [("a", 0), ("b", 0)] and index == [0, 1, 0, 0]

    @pytest.mark.parametrize(("devices", "heads", "expected"), [
        (1, 32, 1), (4, 32, 4), (8, 12, 6), (3, 32, 2), (4, None, 1), (0, 32, 1), (2, 9, 1),
    ])
    def test_tensor_parallelism_divides_the_heads(self, devices: int, heads: int | None, expected: int) -> None:
        assert tensor_parallel_size(devices, heads) == expected

    def test_memory_share_leaves_room_for_what_the_pod_already_holds(self) -> None:
        gib = 2**30
        assert memory_utilization(140 * gib, 141 * gib) == MAX_GPU_SHARE
        assert memory_utilization(20 * gib, 141 * gib) == round(0.9 * 20 / 141, 4)
        assert memory_utilization(0, 0) == MAX_GPU_SHARE

    def test_free_memory_is_read_without_failing_where_there_is_no_gpu(self) -> None:
        from sampleforge.jobs.augment.vllm_engine import _gpu_memory

        free, total = _gpu_memory()  # NVML where there is a driver; else torch, or "all free"
        assert 0 <= free <= total and 0 < memory_utilization(free, total) <= MAX_GPU_SHARE

    def test_engine_args_take_the_spec_not_the_models_sampling_defaults(self) -> None:
        args = engine_args("/cache/models/ab/m.gguf", "/cache/models/ab", 2, 0.8)
        assert args["model"] == "/cache/models/ab/m.gguf" and args["tokenizer"] == "/cache/models/ab"
        assert args["tensor_parallel_size"] == 2 and args["gpu_memory_utilization"] == 0.8
        assert args["generation_config"] == "vllm" and args["trust_remote_code"] is False

    def test_the_cache_keeps_engines_apart(self) -> None:
        keys = {cache_key(e, "m", "p", 8, 0.7, TOP_P, 1) for e in ("transformers", "vllm", "openai")}
        assert len(keys) == 3

    def test_the_summary_reports_load_and_generation_apart(self) -> None:
        stats = EngineStats("vllm", "m", load_seconds=12.5, generation_seconds=2.0, requests=40, generated=40,
                            completion_tokens=600)
        summary = stats.summary()
        assert summary["loadSeconds"] == 12.5 and summary["generationSeconds"] == 2.0
        assert summary["generatedPerSecond"] == 20.0 and summary["completionTokens"] == 600
        assert "httpAttempts" not in summary


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus_texts(200)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("chat"), texts)


@pytest.fixture(scope="module")
def chat_model(tiny_dir: Path) -> TextGenerator:
    return TextGenerator(ModelLocation(str(tiny_dir)), FIELD)


def sampling_params_record(**kwargs: Any) -> dict[str, Any]:
    """Stands in for ``vllm.SamplingParams`` (which is a plain settings object): records its arguments."""
    return kwargs


class TestVllmRequests:
    """The generator's request building, with the model's real tokenizer (no vLLM needed for it)."""

    def generator(self, tiny_dir: Path, max_positions: int | None = None) -> VllmGenerator:
        from transformers import AutoTokenizer

        return VllmGenerator(None, sampling_params_record, AutoTokenizer.from_pretrained(tiny_dir), "tiny", TOP_P,
                             max_positions=max_positions)

    def test_prompts_are_formatted_and_tokenised_as_the_transformers_engine_does(
            self, tiny_dir: Path, chat_model: TextGenerator) -> None:
        engine = self.generator(tiny_dir)
        assert engine.kind == "chat" and engine.stats.engine == "vllm"
        defaults = DEFAULT_TEMPLATES["paraphrase/query"]
        assert engine.prompt(None, defaults) == chat_model.prompt(None, defaults)
        shown = engine.prompt(None, defaults).model_input(engine, "red running shoes")
        assert shown == chat_model.prompt(None, defaults).model_input(chat_model, "red running shoes")
        assert engine.encode(shown, 8) == chat_model._encode(shown, 8)
        assert engine.stop_ids == [engine.tokenizer.eos_token_id]  # </s>; the tiny chat has no end-of-turn token

    def test_each_request_has_its_own_seed_and_identical_ones_are_sent_once(self, tiny_dir: Path) -> None:
        engine = self.generator(tiny_dir)
        inputs = [engine.format(t) for t in ("red shoes", "blue kettle", "red shoes")]
        seeds = [request_seed(7, "query", 0), request_seed(8, "query", 0), request_seed(7, "query", 0)]
        prompts, params, index = engine.requests(inputs, seeds, GenerationSettings(4, 16, 0.8))
        assert index == [0, 1, 0] and len(prompts) == len(params) == 2
        assert [p["seed"] for p in params] == seeds[:2]
        assert all(p["max_tokens"] == 16 and p["temperature"] == 0.8 and p["top_p"] == TOP_P for p in params)
        assert prompts[0] == {"prompt_token_ids": engine.encode(inputs[0], 16)}
        greedy_prompts, greedy, index = engine.requests(inputs, seeds, GenerationSettings(4, 16, 0.0))
        assert len(greedy_prompts) == 2 and all("seed" not in p for p in greedy) and index == [0, 1, 0]

    def test_long_inputs_keep_their_end_within_the_context(self, tiny_dir: Path) -> None:
        engine = self.generator(tiny_dir, max_positions=40)
        text = engine.format(" ".join(["red running shoes"] * 40))
        ids = engine.encode(text, 16)
        assert len(ids) == 24 and ids == engine.encode(text, 0)[-24:]


# --- the transformers engine's batches ---------------------------------------------------------------------


class TestTokenBatches:
    def test_batches_respect_the_sequence_limit_and_the_token_budget(self) -> None:
        lengths = [5, 40, 3, 100, 7, 7, 60, 2, 300, 12]
        for batch_size, budget, new in [(4, 256, 16), (16, 512, 8), (2, None, 16), (16, 64, 32)]:
            batches = token_batches(lengths, batch_size, budget, new)
            assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
            flat = [i for b in batches for i in b]
            assert [lengths[i] for i in flat] == sorted(lengths)  # shortest first: little padding
            for batch in batches:
                assert len(batch) <= batch_size
                cost = len(batch) * (max(lengths[i] for i in batch) + new)
                assert budget is None or cost <= budget or len(batch) == 1

    def test_short_prompts_share_a_batch_and_long_ones_get_fewer_companions(self) -> None:
        lengths = [10] * 8 + [200] * 4
        batches = token_batches(lengths, 16, 1024, 24)
        assert batches[0] == list(range(8))  # 8 x 34 = 272 tokens
        assert [len(b) for b in batches[1:]] == [4]  # 4 x 224 = 896 tokens
        assert [len(b) for b in token_batches(lengths, 16, 500, 24)] == [8, 2, 2]

    def test_an_oversized_prompt_is_a_batch_of_its_own(self) -> None:
        assert token_batches([5000, 3], 8, 256, 16) == [[1], [0]]

    @pytest.mark.parametrize("temperature", [0.0, 0.9])
    def test_outputs_do_not_depend_on_the_token_budget(self, chat_model: TextGenerator, texts: list[str],
                                                       temperature: float) -> None:
        inputs = [chat_model.format(t) for t in texts[:5]] + [chat_model.format(" ".join(texts[150:156]))]
        seeds = [request_seed(i, "query", 0) for i in range(len(inputs))]
        lengths = sorted(len(chat_model._encode(x, 8)) for x in inputs)
        tight = lengths[0] + 8  # one sequence per batch for all but the shortest
        outputs = [chat_model.generate(inputs, seeds, GenerationSettings(16, 8, temperature, budget))
                   for budget in (None, 4096, 2 * (lengths[-1] + 8), tight)]
        assert all(o == outputs[0] for o in outputs[1:]) and all(outputs[0])

    def test_the_spec_budget_reaches_the_engine(self) -> None:
        from sampleforge.jobs.augment.generation import _settings

        spec = AugmentationRunSpec.model_validate(vllm_spec(augmenters=[
            {"type": "paraphrase", "model": "org/m", "maxBatchTokens": 2048, "batchSize": 8}], resources=None))
        assert _settings(spec.augmenters[0]) == GenerationSettings(8, 64, 0.7, 2048)
