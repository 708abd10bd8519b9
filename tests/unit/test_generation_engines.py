"""The openai generation engine's pure parts: request bodies, the retry policy, the request budget,
failure counting, the key's handling, and what an unreachable endpoint does to a run.

No server stands in for a model here: where HTTP matters, requests go to a loopback port that nothing
listens on (a real refused connection). Generation against a real server is in
tests/integration/test_augment_openai.py.
"""

from __future__ import annotations

import random
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from sampleforge.api import AugmentationRunSpec, jobenv
from sampleforge.api.constants import Reason
from sampleforge.jobs.augment.engines import EngineStats, Failed, GenerationSettings
from sampleforge.jobs.augment.errors import ConfigError, ModelError
from sampleforge.jobs.augment.generation import request_seed
from sampleforge.jobs.augment.openai_engine import (
    BUDGET_EXHAUSTED,
    OpenAIClient,
    OpenAIGenerator,
    RequestBudget,
    RetryPolicy,
    answer_text,
    api_key_from_env,
    chat_body,
    parse_retry_after,
    wire_seed,
)
from sampleforge.jobs.augment.prompts import DEFAULT_TEMPLATES, Prompt

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client(endpoint: str, *, retries: int = 2, budget: int | None = None, key: str | None = None,
           sleeps: list[float] | None = None) -> OpenAIClient:
    waits = sleeps if sleeps is not None else []
    return OpenAIClient(endpoint, key, "spec.augmenters[2]", timeout=2.0, policy=RetryPolicy(max_retries=retries),
                        budget=RequestBudget(budget), stats=EngineStats("openai", "m"), sleep=waits.append,
                        rng=random.Random(7))


class TestRequestBody:
    def test_chat_body_carries_the_conversation_settings_and_a_31_bit_seed(self) -> None:
        messages = (("user", "rewrite: red shoes"), ("assistant", "crimson sneakers"), ("user", "rewrite: tv"))
        body = chat_body("smollm2", messages, 24, 0.7, 0.95, (1 << 62) + 12345)
        assert body["model"] == "smollm2" and body["max_tokens"] == 24 and body["n"] == 1
        assert body["messages"] == [{"role": r, "content": c} for r, c in messages]
        assert body["temperature"] == 0.7 and body["top_p"] == 0.95 and body["stream"] is False
        assert body["seed"] == wire_seed((1 << 62) + 12345) and 0 <= body["seed"] < 2**31

    def test_greedy_sends_no_nucleus(self) -> None:
        body = chat_body("m", (("user", "x"),), 8, 0.0, 0.95, 3)
        assert body["temperature"] == 0.0 and "top_p" not in body

    def test_seeds_differ_per_row_and_stay_in_range(self) -> None:
        seeds = {wire_seed(s) for s in (1, 2, 2**40 + 1, 2**62 + 7, 2**63 - 2)}
        assert len(seeds) == 5 and all(0 <= s < 2**31 for s in seeds)
        rows = {wire_seed(request_seed(key, "query", k)) for key in range(2000) for k in range(3)}
        assert len(rows) == 6000 and wire_seed(request_seed(5, "query", 0)) == wire_seed(request_seed(5, "query", 0))

    def test_the_chat_prompt_with_its_examples_becomes_turns(self) -> None:
        generator = OpenAIGenerator(client("http://127.0.0.1:1/v1"), "m", 2, 0.95)
        prompt = generator.prompt(None, DEFAULT_TEMPLATES["paraphrase/query"])
        messages = prompt.model_input(generator, "red running shoes")
        roles = [role for role, _ in messages]
        assert roles == ["user", "assistant", "user", "assistant", "user"]
        assert messages[-1][1].endswith("red running shoes") and messages[1][1] == "men's jogging sneakers"
        # A spec template is sent as it is, without the built-in examples.
        custom = generator.prompt("Rephrase: {text}", DEFAULT_TEMPLATES["paraphrase/query"])
        assert isinstance(custom, Prompt) and custom.model_input(generator, "tv") == (("user", "Rephrase: tv"),)

    @pytest.mark.parametrize(("document", "expected"), [
        ({"choices": [{"message": {"role": "assistant", "content": "blue sofa"}}]}, "blue sofa"),
        ({"choices": []}, None),
        ({"choices": [{"message": {"content": None}}]}, None),
        ({"error": "x"}, None),
        (None, None),
    ])
    def test_answer_text_reads_the_first_choice(self, document: Any, expected: str | None) -> None:
        assert answer_text(document) == expected


class TestRetryPolicy:
    @pytest.mark.parametrize(("status", "retry"), [(None, True), (429, True), (500, True), (503, True),
                                                   (599, True), (400, False), (404, False), (422, False)])
    def test_what_is_retried(self, status: int | None, retry: bool) -> None:
        assert RetryPolicy.retryable(status) is retry

    def test_backoff_grows_exponentially_with_full_jitter_and_a_cap(self) -> None:
        policy = RetryPolicy(max_retries=10, base_seconds=0.5, cap_seconds=8.0)
        assert [policy.delay(a, 0.999999) for a in range(6)] == pytest.approx([0.5, 1, 2, 4, 8, 8], rel=1e-5)
        assert policy.delay(3, 0.0) == 0.0 and policy.delay(3, 0.5) == pytest.approx(2.0)

    def test_retry_after_wins_when_longer_but_is_capped(self) -> None:
        policy = RetryPolicy(base_seconds=0.5, cap_seconds=30.0)
        assert policy.delay(0, 0.5, retry_after=7.0) == 7.0
        assert policy.delay(0, 0.5, retry_after=0.1) == 0.25
        assert policy.delay(0, 0.5, retry_after=3600.0) == 30.0

    def test_retry_after_as_seconds_or_an_http_date(self) -> None:
        assert parse_retry_after("3") == 3.0 and parse_retry_after("-2") == 0.0
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
        assert parse_retry_after(None) is None and parse_retry_after("soon") is None


class TestRequestBudget:
    def test_a_run_limit_is_shared_evenly_across_shards_rounding_up(self) -> None:
        assert RequestBudget.for_shard(10, 4).limit == 3
        assert RequestBudget.for_shard(8, 4).limit == 2
        assert RequestBudget.for_shard(None, 4).limit is None

    def test_take_stops_at_the_limit_even_under_concurrency(self) -> None:
        budget = RequestBudget(100)
        with ThreadPoolExecutor(8) as pool:
            taken = sum(pool.map(lambda _: budget.take(), range(500)))
        assert taken == 100 and budget.used == 100 and not budget.take()
        unlimited = RequestBudget(None)
        assert all(unlimited.take() for _ in range(1000))


class TestClientAgainstARefusedConnection:
    def test_connection_errors_are_retried_with_backoff_then_counted(self) -> None:
        sleeps: list[float] = []
        c = client(f"http://127.0.0.1:{closed_port()}/v1", retries=3, sleeps=sleeps)
        document, reason = c.request("/chat/completions", chat_body("m", (("user", "x"),), 4, 0.7, 0.95, 1))
        assert document is None and reason == "connection error"
        assert c.stats.attempts == 4 and c.stats.retries == 3 and len(sleeps) == 3
        assert all(0 <= s <= RetryPolicy().base_seconds * 2**i for i, s in enumerate(sleeps))

    def test_the_budget_stops_retries_and_counts_as_its_own_reason(self) -> None:
        c = client(f"http://127.0.0.1:{closed_port()}/v1", retries=5, budget=2)
        _, first = c.request("/chat/completions", {"model": "m"})
        _, second = c.request("/chat/completions", {"model": "m"})
        assert first == BUDGET_EXHAUSTED and second == BUDGET_EXHAUSTED and c.stats.attempts == 2

    def test_a_down_endpoint_fails_the_run_at_start_naming_the_field(self) -> None:
        c = client(f"http://127.0.0.1:{closed_port()}/v1", retries=1)
        with pytest.raises(ModelError) as err:
            c.served_models("m")
        assert err.value.reason == Reason.MODEL_UNAVAILABLE
        assert err.value.exit_code == jobenv.ExitCode.MODEL_UNAVAILABLE
        assert "spec.augmenters[2].openai.endpoint" in str(err.value) and "connection error" in str(err.value)

    def test_a_batch_that_reaches_nothing_fails_the_run_and_partial_failures_are_rows(self) -> None:
        generator = OpenAIGenerator(client(f"http://127.0.0.1:{closed_port()}/v1", retries=0), "m", 4, 0.95)
        settings = GenerationSettings(8, 8, 0.7)
        with pytest.raises(ModelError, match=r"spec\.augmenters\[2\]\.openai\.endpoint: .* stopped answering"):
            generator.generate([(("user", "a"),), (("user", "b"),)], [1, 2], settings)
        # Out of budget is not an outage: the rows are counted, the run goes on.
        spent = OpenAIGenerator(client(f"http://127.0.0.1:{closed_port()}/v1", retries=0, budget=0), "m", 4, 0.95)
        answers = spent.generate([(("user", "a"),), (("user", "a"),), (("user", "b"),)], [1, 1, 2], settings)
        assert answers == [Failed(BUDGET_EXHAUSTED)] * 3  # the identical request was asked once
        assert spent.stats.failed == {BUDGET_EXHAUSTED: 2} and spent.stats.requests == 2
        summary = spent.stats.summary()
        assert summary["engine"] == "openai" and summary["failed"] == {BUDGET_EXHAUSTED: 2}
        assert summary["generated"] == 0 and summary["httpAttempts"] == 0


class TestTheKey:
    def test_it_is_masked_in_anything_quoted_from_an_answer(self) -> None:
        c = client("http://127.0.0.1:1/v1", key="sk-secret-123")
        assert c._headers()["Authorization"] == "Bearer sk-secret-123"
        masked = c._mask("invalid key sk-secret-123\n  " + "x" * 500)
        assert "sk-secret-123" not in masked and "***" in masked and len(masked) <= 200

    def test_it_comes_from_the_variable_the_operator_renders(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(jobenv.llm_api_key_env(2), "k")
        assert api_key_from_env(2, "spec.augmenters[2]", True) == "k"
        monkeypatch.delenv(jobenv.llm_api_key_env(2))
        assert api_key_from_env(2, "spec.augmenters[2]", False) is None
        with pytest.raises(ConfigError, match=r"spec\.augmenters\[2\]\.openai\.apiKeySecret .*SAMPLEFORGE_LLM_API_KEY_2"):
            api_key_from_env(2, "spec.augmenters[2]", True)

    def test_the_job_log_masks_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from sampleforge.api.logs import redact

        monkeypatch.setenv(jobenv.llm_api_key_env(3), "sk-live-abcdef123")
        assert redact("answer: sk-live-abcdef123 was refused") == "answer: *** was refused"

    def test_the_operator_renders_it_from_the_secret_never_in_clear(self) -> None:
        from sampleforge.operator.render import RunObject, render_job
        from sampleforge.operator.settings import Settings

        body = yaml.safe_load((REPO / "examples" / "augmentationrun-complete.yaml").read_text())
        body["metadata"] = {"namespace": "search-ml", "uid": "0b6c2a52-1f0e-4c53-9d8e-7f0a3c1e2d44", "generation": 1,
                            **body["metadata"]}
        run = RunObject.from_body(body)
        keyed = {i: a.openai.api_key_secret for i, a in enumerate(run.spec.augmenters)
                 if getattr(getattr(a, "openai", None), "api_key_secret", None) is not None}
        assert len(keyed) >= 2, "the complete example shows keys for a generator and an llmJudge"
        job = render_job(run, Settings(), None)
        env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        for index, ref in keyed.items():
            assert env[jobenv.llm_api_key_env(index)] == {
                "name": jobenv.llm_api_key_env(index),
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        others = sorted(n for n in env if n.startswith(jobenv.LLM_API_KEY_PREFIX))
        # only the augmenters that name a key get one, each under its own position
        assert others == sorted(jobenv.llm_api_key_env(i) for i in keyed)


class TestSchema:
    def spec(self, **entry: Any) -> dict[str, Any]:
        raw = yaml.safe_load((REPO / "examples" / "augmentationrun.yaml").read_text())["spec"]
        raw["augmenters"] = [{"type": "doc2query", "model": "smollm2", **entry}]
        return dict(raw)

    def test_transformers_is_the_default_and_openai_needs_its_settings(self) -> None:
        assert AugmentationRunSpec.model_validate(self.spec()).augmenters[0].engine == "transformers"
        with pytest.raises(ValueError, match="openai is required when engine is openai"):
            AugmentationRunSpec.model_validate(self.spec(engine="openai"))
        with pytest.raises(ValueError, match="openai applies only when engine is openai"):
            AugmentationRunSpec.model_validate(self.spec(openai={"endpoint": "http://llm:8000/v1"}))
        ok = AugmentationRunSpec.model_validate(self.spec(engine="openai", openai={"endpoint": "http://llm:8000/v1"}))
        settings = ok.augmenters[0].openai
        assert settings is not None and settings.concurrency == 4 and settings.max_retries == 5
        assert settings.timeout_seconds == 60 and settings.max_requests is None and settings.api_key_secret is None

    @pytest.mark.parametrize("endpoint", ["llm:8000/v1", "ftp://llm/v1", "http://llm /v1", "http://llm/v1?x=1"])
    def test_the_endpoint_must_be_an_http_base_url(self, endpoint: str) -> None:
        with pytest.raises(ValueError, match="endpoint"):
            AugmentationRunSpec.model_validate(self.spec(engine="openai", openai={"endpoint": endpoint}))

    def test_there_is_no_inline_key(self) -> None:
        with pytest.raises(ValueError, match="apiKey"):
            AugmentationRunSpec.model_validate(self.spec(engine="openai", openai={"endpoint": "http://llm/v1",
                                                                                  "apiKey": "sk-1"}))


def test_stats_are_thread_safe() -> None:
    stats = EngineStats("openai", "m")

    def work() -> None:
        for _ in range(1000):
            stats.add(attempts=1)
            stats.fail("HTTP 503")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.attempts == 4000 and stats.failed["HTTP 503"] == 4000


def test_latency_percentiles_by_nearest_rank() -> None:
    stats = EngineStats("openai", "m")
    assert stats.percentile(0.5) is None and stats.summary()["latencySeconds"] == {"p50": None, "p99": None}
    for i in range(1, 101):
        stats.answered(i / 100, 3)
    assert stats.percentile(0.5) == 0.5 and stats.percentile(0.99) == 0.99 and stats.percentile(1.0) == 1.0
    assert stats.completion_tokens == 300 and stats.summary()["latencySeconds"] == {"p50": 0.5, "p99": 0.99}


class TestCacheKey:
    def test_every_input_of_the_answer_changes_the_key_and_nothing_else_does(self) -> None:
        from sampleforge.jobs.augment.gencache import _jsonable, cache_key

        messages = (("user", "rewrite: red shoes"),)
        base: dict[str, Any] = {"engine": "openai", "model": "m", "model_input": _jsonable(messages),
                                "max_new_tokens": 16, "temperature": 0.7, "top_p": 0.95, "seed": 42}
        key = cache_key(**base)
        assert len(key) == 64 and key == cache_key(**base)
        assert _jsonable(messages) == [["user", "rewrite: red shoes"]]
        for change in ({"engine": "transformers"}, {"model": "n"}, {"model_input": [["user", "rewrite: shoes"]]},
                       {"max_new_tokens": 17}, {"temperature": 0.8}, {"top_p": 0.9}, {"seed": 43}):
            assert cache_key(**{**base, **change}) != key, change
        # Greedy decoding: the nucleus does not matter, so it does not split the cache.
        greedy = {**base, "temperature": 0.0, "seed": 0}
        assert cache_key(**greedy) == cache_key(**{**greedy, "top_p": 0.5})
