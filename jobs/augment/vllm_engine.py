"""The ``vllm`` generation engine: vLLM's offline batch engine (``vllm.LLM``) on the pod's GPU.

vLLM schedules every prompt of a call at once with continuous batching and paged attention, so one
GPU generates many times what ``generate()`` of transformers does on it. :class:`VllmGenerator` has
the interface of :class:`~.transformers_engine.TextGenerator` (``kind``, ``prompt``, ``format``,
``generate``, ``stats``): the three generation augmenters run unchanged on it.

Decisions, and why:

* **Lazy and optional.** ``vllm`` is imported when a run selects the engine, never at module import:
  the operator, the tests and a job image without vLLM never need it. It is installed only in the
  GPU image target that is built for it (Dockerfile target ``job-vllm``; vLLM pins its own torch).
* **Fail fast, naming the field.** Before any model is fetched, :func:`require_vllm` really imports
  vLLM and asks torch for a CUDA device; without either the run fails at once with
  :class:`~.errors.ConfigError` (reason InvalidSpec, a do-not-retry exit code) whose message names
  ``spec.augmenters[i].engine`` and the fix. A model vLLM cannot load is a
  :class:`~.errors.ModelError` (ModelUnavailable), as with the transformers engine.
* **The same questions as the transformers engine.** Prompts are formatted with the model's chat
  template (or used plainly), tokenised here exactly as the transformers engine does (so a chat
  prompt gets no second BOS) and sent as token ids; identical requests are generated once.
* **Determinism: per-request seeds.** Each request carries its own ``SamplingParams(seed=...)``
  (the row-keyed seed of :func:`~.generation.request_seed`), so vLLM draws its tokens from a
  generator of that request alone: a row's text does not depend on which rows share the call, the
  shard count or the batch size. Temperature 0 is greedy decoding. The model's own
  generation_config.json sampling defaults are not applied (``generation_config="vllm"``): the spec
  decides. (Bit-identity with the transformers engine is not a goal: kernels and the sampler differ.)
* **GPU memory.** One engine takes at most 85 % of the GPU, less when another engine of the pod
  (backTranslation's way back, another model) already holds memory: the share is computed from the
  memory NVML reports free at load time (:func:`memory_utilization`).
* **Load time apart from generation time.** Like every engine: log line ``model loaded``, manifest
  ``augmenters.<name>.summary`` (``loadSeconds``, ``generationSeconds``, ``generatedPerSecond``,
  ``completionTokens``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .engines import END_OF_TURN, TOP_P, EngineStats, chat_input
from .errors import ConfigError, ModelError
from .prompts import Prompt

log = logging.getLogger(__name__)

__all__ = [
    "MAX_GPU_SHARE",
    "VllmGenerator",
    "engine_args",
    "memory_utilization",
    "require_cuda",
    "require_vllm",
    "sampling_args",
    "tensor_parallel_size",
    "unique_requests",
]

#: Most of the GPU's memory one vLLM engine may take (weights, activations and its KV cache); the
#: rest stays for CUDA's own context and the run's other models (an embedding filter, a classifier).
MAX_GPU_SHARE = 0.85
#: What the messages tell users to do about the image.
_IMAGE_FIX = ("run the job image built with vLLM (the Dockerfile's job-vllm target) through spec.image, "
              "or use engine transformers or openai")


def require_vllm(field_path: str) -> Any:
    """The imported ``vllm`` module, after checking that this pod can run it: the package imports and
    torch sees a CUDA device. Raises :class:`ConfigError` naming ``field_path`` (the entry's
    ``engine``) otherwise."""
    try:
        import vllm
    except Exception as err:  # ImportError, or a broken install failing at import
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise ConfigError(f"{field_path} is vllm, but vLLM cannot be imported in this pod ({detail}); "
                          f"{_IMAGE_FIX}") from err
    require_cuda(field_path)
    return vllm


def require_cuda(field_path: str) -> int:
    """The number of CUDA devices the pod sees; raises :class:`ConfigError` naming ``field_path``
    when there is none (vLLM's engine runs on the GPU only)."""
    try:
        import torch

        count = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception as err:  # a torch without CUDA support, a broken driver
        raise ConfigError(f"{field_path} is vllm, which needs a CUDA GPU, but torch cannot query one "
                          f"({type(err).__name__}: {' '.join(str(err).split())[:200]}); {_IMAGE_FIX}") from err
    if count < 1:
        raise ConfigError(f"{field_path} is vllm, which needs a CUDA GPU, but this pod sees none "
                          "(torch.cuda.is_available() is false); set spec.resources.gpus to at least 1 so the pod "
                          "gets an NVIDIA GPU, or use engine transformers or openai")
    return count


def tensor_parallel_size(devices: int, attention_heads: int | None) -> int:
    """How many of the pod's GPUs one engine spreads a model over: the most (at most ``devices``)
    that divide its attention heads, as vLLM's tensor parallelism needs; 1 when the heads are unknown."""
    if attention_heads is None or attention_heads < 1:
        return 1
    return max(d for d in range(1, max(1, devices) + 1) if attention_heads % d == 0)


def memory_utilization(free_bytes: int, total_bytes: int) -> float:
    """``gpu_memory_utilization`` for a new engine: :data:`MAX_GPU_SHARE` of the GPU, or 90 % of what
    is still free when less is (another engine or model of the pod holds the rest)."""
    if total_bytes <= 0:
        return MAX_GPU_SHARE
    return round(min(MAX_GPU_SHARE, 0.9 * free_bytes / total_bytes), 4)


def engine_args(model: str, tokenizer: str, tensor_parallel: int, utilization: float) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM``: the model and tokenizer paths, its GPUs and memory share;
    sampling defaults come from the spec alone (``generation_config="vllm"``), and nothing is
    downloaded from a hub for an s3:// model (the directory is local)."""
    return {
        "model": model,
        "tokenizer": tokenizer,
        "tensor_parallel_size": int(tensor_parallel),
        "gpu_memory_utilization": float(utilization),
        "dtype": "auto",
        "seed": 0,
        "generation_config": "vllm",
        "trust_remote_code": False,
    }


def sampling_args(max_new_tokens: int, temperature: float, top_p: float, seed: int,
                  stop_token_ids: Sequence[int]) -> dict[str, Any]:
    """Keyword arguments of one request's ``vllm.SamplingParams``. Sampling (temperature > 0) draws
    from the nucleus ``top_p`` with the request's own ``seed``; greedy decoding needs neither."""
    args: dict[str, Any] = {
        "n": 1,
        "max_tokens": int(max_new_tokens),
        "temperature": float(temperature),
        "stop_token_ids": [int(t) for t in stop_token_ids],
        "skip_special_tokens": True,
    }
    if temperature > 0:
        args["top_p"] = float(top_p)
        args["seed"] = int(seed)
    return args


def unique_requests(inputs: Sequence[str], seeds: Sequence[int], sampling: bool) -> tuple[list[tuple[str, int]],
                                                                                          list[int]]:
    """The distinct (prompt, seed) requests, in first-seen order, and for each input the index of its
    request. Greedy decoding ignores the seed, so identical prompts are one request."""
    unique: dict[tuple[str, int], int] = {}
    index = [unique.setdefault((text, int(seed) if sampling else 0), len(unique))
             for text, seed in zip(inputs, seeds, strict=True)]
    return list(unique), index


def _gpu_memory() -> tuple[int, int]:
    """(free, total) bytes of the pod's fullest GPU. Through NVML (vLLM depends on nvidia-ml-py): it
    sees the memory an earlier engine's process holds, and creates no CUDA context here (after which
    vLLM would have to spawn its engine process instead of forking it). (1, 1), all free, when
    neither NVML nor an existing CUDA context can tell."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            infos = [pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
                     for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
        fullest = min(infos, key=lambda m: int(m.free) / max(1, int(m.total)))
        return int(fullest.free), int(fullest.total)
    except Exception:  # noqa: BLE001 -- no NVML library or driver: ask torch, if it is on the GPU already
        import torch

        cuda: Any = torch.cuda
        if cuda.is_initialized():
            free, total = cuda.mem_get_info()
            return int(free), int(total)
        return 1, 1


def _config(path: str) -> dict[str, Any]:
    """The model directory's config.json, or {} (a GGUF file, a hub id)."""
    try:
        document = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


class VllmGenerator:
    """A model loaded into vLLM's offline engine, driven like :class:`~.transformers_engine.TextGenerator`."""

    def __init__(self, llm: Any, sampling_params: Any, tokenizer: Any, model: str, top_p: float,
                 load_seconds: float = 0.0, max_positions: int | None = None) -> None:
        self.llm = llm
        self._sampling_params = sampling_params
        self.tokenizer = tokenizer
        self.top_p = top_p
        self.max_positions = max_positions
        self.stats = EngineStats("vllm", model, load_seconds=load_seconds)
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.stop_ids = self._stop_ids()

    @classmethod
    def load(cls, location: Any, field_path: str) -> VllmGenerator:
        """Load ``location`` (a :class:`~.models.ModelLocation`) into a new ``vllm.LLM``."""
        vllm = require_vllm(field_path)
        import torch

        started = time.monotonic()
        config = _config(location.path)
        if config.get("is_encoder_decoder"):
            raise ModelError(f"{field_path}: {location.ref or location.path} is an encoder-decoder (seq2seq) model, "
                             "which vLLM's engine does not run; use engine transformers for Marian, T5 or BART models")
        model = str(Path(location.path) / location.gguf_file) if location.gguf_file else location.path
        heads = config.get("num_attention_heads")
        free, total = _gpu_memory()
        args = engine_args(model, location.path, tensor_parallel_size(torch.cuda.device_count(),
                                                                       heads if isinstance(heads, int) else None),
                           memory_utilization(int(free), int(total)))
        try:
            llm = vllm.LLM(**args)
        except Exception as err:  # vLLM raises many kinds for a model it cannot load
            what = f"{location.ref or location.path}" + (f" (GGUF file {location.gguf_file})" if location.gguf_file else "")
            raise ModelError(
                f"{field_path}: {what} does not load with vLLM ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:300]}); name a decoder-only model vLLM supports, saved with "
                "save_pretrained, or use engine transformers") from err
        try:  # the transformers engine's tokenizer: prompts are formatted and tokenised exactly as there
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(location.path, **location.load_kwargs())
        except Exception as err:  # OSError, ValueError, ... for files transformers cannot read
            raise ModelError(f"{field_path}: the tokenizer of {location.ref or location.path} does not load "
                             f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from err
        model_config = getattr(llm, "model_config", None) or getattr(getattr(llm, "llm_engine", None),
                                                                     "model_config", None)
        max_len = getattr(model_config, "max_model_len", None)
        generator = cls(llm, vllm.SamplingParams, tokenizer, location.ref or location.path, TOP_P,
                        time.monotonic() - started, max_len if isinstance(max_len, int) else None)
        log.info("model loaded", extra={"engine": "vllm", "model": generator.stats.model, "kind": generator.kind,
                                        "device": "cuda", "tensor_parallel_size": args["tensor_parallel_size"],
                                        "gpu_memory_utilization": args["gpu_memory_utilization"],
                                        "load_seconds": round(generator.stats.load_seconds, 3)})
        return generator

    @property
    def kind(self) -> str:
        """``chat`` (a chat template) or ``plain``; vLLM runs no seq2seq models."""
        return "chat" if self.chat else "plain"

    def _stop_ids(self) -> list[int]:
        ids: list[int] = []
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if isinstance(eos, int):
            ids.append(eos)
        if self.chat:
            vocab = self.tokenizer.get_vocab()
            ids += [vocab[t] for t in END_OF_TURN if t in vocab and vocab[t] not in ids]
        return ids

    def prompt(self, spec_template: str | None, defaults: Any) -> Any:
        """The spec's template, else the built-in one (with its examples for a chat model)."""
        if spec_template:
            return Prompt(spec_template)
        return Prompt(defaults.chat, defaults.examples) if self.chat else Prompt(defaults.plain)

    def format(self, prompt: str, shots: Sequence[tuple[str, str]] = ()) -> str:
        """The model input for a rendered prompt (:func:`~.engines.chat_input`), as the transformers engine's."""
        return chat_input(self.tokenizer, self.chat, prompt, shots)

    def encode(self, text: str, max_new_tokens: int) -> list[int]:
        """Token ids of a formatted input, cut from the left to leave room for the answer."""
        ids: list[int] = list(self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])
        if self.max_positions is None:
            return ids
        return ids[-max(1, self.max_positions - max_new_tokens):]

    def requests(self, inputs: Sequence[str], seeds: Sequence[int], settings: Any) -> tuple[list[dict[str, Any]],
                                                                                           list[Any], list[int]]:
        """(prompts as token ids, one SamplingParams each, the request index of each input)."""
        unique, index = unique_requests(inputs, seeds, settings.sampling)
        prompts = [{"prompt_token_ids": self.encode(text, settings.max_new_tokens)} for text, _ in unique]
        params = [self._sampling_params(**sampling_args(settings.max_new_tokens, settings.temperature, self.top_p,
                                                        seed, self.stop_ids)) for _, seed in unique]
        return prompts, params, index

    def generate(self, inputs: Sequence[Any], seeds: Sequence[int], settings: Any) -> list[str]:
        """The new text for each input (strings, as :meth:`format` makes them; typed as the other engines'
        ``generate``, which the pipeline calls through one union), all requests in one call of the engine."""
        started = time.monotonic()
        prompts, params, index = self.requests(inputs, seeds, settings)
        if not prompts:
            return []
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        texts = [str(o.outputs[0].text) for o in outputs]
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        self.stats.add(requests=len(prompts), generated=len(prompts), completion_tokens=tokens)
        self.stats.generation_seconds += time.monotonic() - started
        return [texts[i] for i in index]
