"""llama.cpp's OpenAI-compatible server with the job's own ``openai`` engine in front of it, as the LLM
benchmarks drive it (imported by the scripts in this folder). One definition, so the generation and
judge benchmarks measure the same client against the same server, and its start-up time is measured
apart from the rows in the same way."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sampleforge.jobs.augment.engines import EngineStats
    from sampleforge.jobs.augment.openai_engine import OpenAIGenerator
    from sampleforge.testbed import LlamaCppServer


@dataclass(frozen=True)
class ServedLlm:
    """A running server and the job's engine pointed at it."""

    server: LlamaCppServer
    generator: OpenAIGenerator
    #: The engine's own counters: requests, per-request latencies.
    stats: EngineStats
    #: Seconds from starting the server until /v1/models answered.
    load_seconds: float


@contextmanager
def served_llm(*, threads: int, concurrency: int, timeout: float) -> Iterator[ServedLlm]:
    """Start the testbed's llama.cpp server (SmolLM2-135M-Instruct) on ``threads`` compute threads,
    yield the job's engine against it with ``concurrency`` requests in flight and ``timeout`` seconds a
    request, and stop the server on the way out, whatever happened."""
    # Imported here, as the scripts do, so that `--help` does not pay for torch.
    from sampleforge.jobs.augment.engines import TOP_P, EngineStats
    from sampleforge.jobs.augment.openai_engine import OpenAIClient, OpenAIGenerator, RequestBudget, RetryPolicy
    from sampleforge.testbed import start_llamacpp

    with tempfile.TemporaryDirectory() as logs:
        started = time.monotonic()
        server = start_llamacpp(Path(logs), threads=threads)
        load_seconds = time.monotonic() - started
        try:
            stats = EngineStats("openai", server.model)
            client = OpenAIClient(server.base_url, None, "bench", timeout=timeout, policy=RetryPolicy(),
                                  budget=RequestBudget(None), stats=stats)
            yield ServedLlm(server, OpenAIGenerator(client, server.model, concurrency, TOP_P), stats, load_seconds)
        finally:
            server.stop()
