"""What every generation engine shares: the settings it generates with, the figures it reports, how
it says a request failed, and how an in-pod engine formats a prompt.

The engines are ``transformers`` (:mod:`.transformers_engine`, the default: the model in the pod),
``vllm`` (:mod:`.vllm_engine`: vLLM's offline engine on the pod's GPU) and ``openai``
(:mod:`.openai_engine`: an OpenAI-compatible endpoint). They have one interface (``kind``,
``prompt``, ``format``, ``generate`` and ``stats``), which the generation cache (:mod:`.gencache`)
keeps, so the generation augmenters (:mod:`.generation`) and the judge (:mod:`.judge`) run unchanged
on any of them.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["END_OF_TURN", "TOP_P", "EngineStats", "Failed", "GenerationSettings", "ModelInput", "chat_input"]

#: Nucleus kept when sampling: tokens outside the top 95 % of probability mass are never drawn. Why:
#: with the whole vocabulary a small model now and then draws a junk token that derails the answer.
TOP_P = 0.95
#: End-of-turn tokens of common chat templates; generation also stops at them (an instruct model
#: ends its answer with one, which is often not the tokenizer's eos token).
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
#: What an engine generates from: a formatted prompt (transformers) or chat messages (openai).
ModelInput = str | tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate: ``batchSize``, ``maxNewTokens``, ``temperature`` and ``maxBatchTokens`` (None:
    no token budget, batches of ``batchSize``) of the spec entry."""

    batch_size: int
    max_new_tokens: int
    temperature: float
    max_batch_tokens: int | None = None

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class Failed:
    """A request that produced no text, and why (a short, low-cardinality reason to count)."""

    reason: str


@dataclass
class EngineStats:
    """What the manifest says about an engine's work in this pod (``augmenters.<name>.summary``)."""

    engine: str
    model: str
    load_seconds: float = 0.0
    generation_seconds: float = 0.0
    #: Texts asked for (after identical requests were merged) and texts that came back.
    requests: int = 0
    generated: int = 0
    #: HTTP attempts (openai only), retries among them, and failures by reason.
    attempts: int = 0
    retries: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    #: Seconds each answered request took, retries included (openai), for p50 / p99.
    latencies: list[float] = field(default_factory=list)
    #: Completion tokens the endpoint reported (``usage``), where it reports them.
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def fail(self, reason: str) -> None:
        with self._lock:
            self.failed[reason] += 1

    def answered(self, seconds: float, tokens: int) -> None:
        with self._lock:
            self.latencies.append(seconds)
            self.completion_tokens += tokens

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of request latency, nearest rank; None before any answer."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered) - 1e-9) - 1))]

    def summary(self) -> dict[str, Any]:
        rate = self.generated / self.generation_seconds if self.generation_seconds > 0 else None
        out: dict[str, Any] = {
            "engine": self.engine, "model": self.model, "loadSeconds": round(self.load_seconds, 3),
            "generationSeconds": round(self.generation_seconds, 3), "requests": self.requests,
            "generated": self.generated, "generatedPerSecond": round(rate, 3) if rate is not None else None,
        }
        if self.engine == "vllm":  # vLLM reports the tokens it generated, like an endpoint's usage
            out["completionTokens"] = self.completion_tokens
        if self.engine == "openai":
            p50, p99 = self.percentile(0.5), self.percentile(0.99)
            out.update({"httpAttempts": self.attempts, "retries": self.retries,
                        "failed": dict(sorted(self.failed.items())), "completionTokens": self.completion_tokens,
                        "latencySeconds": {"p50": round(p50, 3) if p50 is not None else None,
                                           "p99": round(p99, 3) if p99 is not None else None}})
        return out


def chat_input(tokenizer: Any, chat: bool, prompt: str, shots: Sequence[tuple[str, str]] = ()) -> str:
    """The model input for a rendered prompt, the same for the in-pod engines (transformers, vLLM):
    with a chat template, the last user turn after the example turns ``shots`` (rendered prompt,
    answer); without one, the prompt itself."""
    if not chat:
        return prompt
    messages: list[dict[str, str]] = []
    for user, answer in shots:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": prompt})
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
