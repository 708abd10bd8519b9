"""The ``openai`` generation engine: any OpenAI-compatible chat completions endpoint.

Teams serve their models behind such an endpoint (vLLM, SGLang, TGI, llama.cpp, KServe, a gateway,
a hosted model); a serving engine batches across requests far better than ``generate()`` in the pod,
and the pod then needs no accelerator and loads nothing. :class:`OpenAIGenerator` has the interface
of :class:`~.transformers_engine.TextGenerator` (``kind``, ``prompt``, ``format``, ``generate``), so the three
generation augmenters run unchanged on either engine.

Decisions, and why:

* **Standard library only** (urllib and a thread pool): the jobs image gains no HTTP stack, and one
  blocking request per thread is all that bounded concurrency needs.
* **Bounded concurrency** (``openai.concurrency`` requests in flight per pod): a shared endpoint must
  not be flooded by one run's shards.
* **Retries** (:class:`RetryPolicy`): 429, any 5xx, a timeout and a connection error are retried with
  exponential backoff and full jitter, honouring ``Retry-After``; other 4xx answers are final for
  that request. 401/403 fail the run at once (every request would get it).
* **Failures are rows, not crashes**: a request that still fails, or that the request budget
  (``openai.maxRequests``, split evenly across shards) no longer covers, yields :class:`Failed`; the
  augmenter counts it as not generated, per reason, in the manifest. Only an endpoint that is down
  fails the run: at start (the probe of ``/models``) or when every request of a batch failed to
  reach it. That is :class:`~.errors.ModelError`, the model-unavailable exit code, so the Job fails
  at once with a reason instead of retrying pods against a dead endpoint.
* **Determinism**: each request carries ``seed`` derived from the row key (the same seed the
  transformers engine uses), so a rerun asks the same questions; servers that honour ``seed`` answer
  the same. Identical requests within a call are sent once.
* **The key** is read from the environment (rendered from the Secret) and sent only as a bearer
  header; error messages are cut short and have it masked, so it reaches no log, status or output.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sampleforge.api import jobenv

from .engines import EngineStats, Failed
from .errors import ConfigError, ModelError
from .prompts import Prompt, Templates

log = logging.getLogger(__name__)
__all__ = [
    "CONNECTION_REASONS",
    "OpenAIClient",
    "OpenAIGenerator",
    "RequestBudget",
    "RetryPolicy",
    "chat_body",
    "wire_seed",
]

#: Reasons that mean the endpoint could not be reached or could not answer at all: when every
#: request of a batch ends with one of them, the endpoint is down, and the run fails.
CONNECTION_REASONS = frozenset({"connection error", "timeout"})
#: Why a request was not sent: the run's request budget was spent.
BUDGET_EXHAUSTED = "request budget exhausted (openai.maxRequests)"
#: Longest piece of an error answer quoted in a message (bodies can be whole HTML pages).
_QUOTE = 200


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before trying a request again.

    Full jitter (a uniform draw up to the exponential bound) spreads the retries of many pods that
    were throttled at the same moment, instead of having them all come back together.
    """

    max_retries: int = 5
    base_seconds: float = 0.5
    cap_seconds: float = 30.0

    @staticmethod
    def retryable(status: int | None) -> bool:
        """``status`` is the HTTP status, or None for a timeout or connection error."""
        return status is None or status == 429 or 500 <= status <= 599

    def delay(self, attempt: int, draw: float, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0 is the first); ``draw`` is
        uniform in [0, 1). A server's ``Retry-After`` wins when it is longer, capped like the rest."""
        bound = min(self.cap_seconds, self.base_seconds * 2.0 ** attempt)
        wait = bound * draw
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap_seconds))
        return wait


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: a number, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RequestBudget:
    """The requests (attempts, retries included: each costs) this pod may still send."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    @classmethod
    def for_shard(cls, run_limit: int | None, shards: int) -> RequestBudget:
        """An even share of the run's ``maxRequests`` (rounded up, so the shares cover it)."""
        if run_limit is None:
            return cls(None)
        return cls(-(-run_limit // max(1, shards)))

    def take(self) -> bool:
        """Spend one request; False (and nothing spent) when none is left."""
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                return False
            self.used += 1
            return True


def wire_seed(seed: int) -> int:
    """The seed as sent: 31 bits, which every server's seed type holds (llama.cpp's is 32-bit), with
    every bit counting (modulo the prime 2^31 - 1), so seeds that differ only in high bits still differ."""
    return int(seed) % 0x7FFFFFFF


def chat_body(model: str, messages: Sequence[tuple[str, str]], max_tokens: int, temperature: float,
              top_p: float, seed: int) -> dict[str, Any]:
    """The JSON body of one chat completions request. Greedy decoding (temperature 0) sends no
    top_p: some servers reject a nucleus without sampling."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": role, "content": content} for role, content in messages],
        "max_tokens": int(max_tokens),
        "temperature": float(temperature),
        "seed": wire_seed(seed),
        "n": 1,
        "stream": False,
    }
    if temperature > 0:
        body["top_p"] = float(top_p)
    return body


def answer_text(document: Any) -> str | None:
    """The first choice's text of a chat completion answer, or None when it has none."""
    try:
        content = document["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


class OpenAIClient:
    """HTTP to one endpoint with one key: retries, the budget, and errors that name spec fields."""

    def __init__(self, endpoint: str, api_key: str | None, field_path: str, *, timeout: float,
                 policy: RetryPolicy, budget: RequestBudget, stats: EngineStats,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._api_key = api_key
        self.field_path = field_path
        self.timeout = timeout
        self.policy = policy
        self.budget = budget
        self.stats = stats
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()

    def _mask(self, text: str) -> str:
        text = " ".join(text.split())[:_QUOTE]
        return text.replace(self._api_key, "***") if self._api_key else text

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _once(self, path: str, body: dict[str, Any] | None) -> tuple[int | None, Any, str, float | None]:
        """(status or None, parsed JSON or None, reason or error text, Retry-After)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.endpoint + path, data=data, headers=self._headers(),
                                         method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
                status = int(response.status)
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", "replace") if err.fp is not None else ""
            return err.code, None, self._mask(text), parse_retry_after(err.headers.get("Retry-After"))
        except TimeoutError:
            return None, None, "timeout", None
        except urllib.error.URLError as err:
            timed_out = isinstance(err.reason, TimeoutError)
            return None, None, "timeout" if timed_out else "connection error", None
        except (ConnectionError, http.client.HTTPException, OSError):
            return None, None, "connection error", None
        try:
            return status, json.loads(raw), "", None
        except ValueError:
            return status, None, "malformed response (not JSON)", None

    def _fatal(self, path: str, status: int, detail: str) -> ModelError | None:
        """An answer that every request would get: the run cannot work, and the message says which
        field to fix."""
        if status in (401, 403):
            return ModelError(
                f"{self.field_path}.openai.apiKeySecret: {self.endpoint} refused the API key (HTTP {status}: "
                f"{detail or 'no detail'}); put a valid key in the Secret it names, or set it if the endpoint "
                "needs one")
        if status == 404 and path == "/chat/completions":
            return ModelError(
                f"{self.field_path}.openai.endpoint: {self.endpoint}/chat/completions does not exist (HTTP 404: "
                f"{detail or 'no detail'}); give the API's base URL including its version path (…/v1), and a "
                f"model it serves in {self.field_path}.model")
        return None

    def request(self, path: str, body: dict[str, Any] | None) -> tuple[Any, str | None]:
        """(parsed answer, None) or (None, why it failed), after retries; raises ModelError for an
        answer that rules out every request (bad key, wrong URL)."""
        attempt = 0
        while True:
            if not self.budget.take():
                return None, BUDGET_EXHAUSTED
            self.stats.add(attempts=1)
            status, document, detail, retry_after = self._once(path, body)
            if status is not None and 200 <= status < 300:
                return (document, None) if document is not None else (None, detail)
            if status is not None:
                fatal = self._fatal(path, status, detail)
                if fatal is not None:
                    raise fatal
            reason = f"HTTP {status}" if status is not None else detail
            if not self.policy.retryable(status) or attempt >= self.policy.max_retries:
                return None, reason
            with self._rng_lock:
                draw = self._rng.random()
            self.stats.add(retries=1)
            self._sleep(self.policy.delay(attempt, draw, retry_after))
            attempt += 1

    def served_models(self, model: str) -> None:
        """Check at start that the endpoint answers and serves ``model``; a down endpoint or an
        unknown model fails the run here, before any row is read."""
        document, reason = self.request("/models", None)
        if reason is not None:
            if reason.startswith("HTTP 404"):  # some gateways do not list models: the first request will tell
                return
            raise ModelError(
                f"{self.field_path}.openai.endpoint: {self.endpoint} does not answer ({reason} after "
                f"{self.policy.max_retries} retries); start the server or fix the URL")
        ids = [m.get("id") for m in (document or {}).get("data") or [] if isinstance(m, dict)]
        if ids and model not in ids:
            listed = ", ".join(str(i) for i in ids[:10]) + (" …" if len(ids) > 10 else "")
            raise ModelError(f"{self.field_path}.model: {self.endpoint} does not serve {model!r} (it serves "
                             f"{listed}); set model to one of those names")


def api_key_from_env(index: int, field_path: str, expected: bool) -> str | None:
    """The key the operator rendered from ``openai.apiKeySecret`` (None when none is configured)."""
    name = jobenv.llm_api_key_env(index)
    key = os.environ.get(name) or None
    if expected and key is None:
        raise ConfigError(f"{field_path}.openai.apiKeySecret is set but the pod has no {name} variable, which "
                          "the operator renders from that Secret; run the job through the operator, or set it")
    return key


class OpenAIGenerator:
    """A model behind an OpenAI-compatible endpoint, driven like :class:`~.transformers_engine.TextGenerator`.

    Prompts go to ``/chat/completions`` as messages: the server applies the model's chat template,
    so the built-in chat prompts (with their example turns) are used.
    """

    kind = "chat"

    def __init__(self, client: OpenAIClient, model: str, concurrency: int, top_p: float) -> None:
        self.client = client
        self.model = model
        self.concurrency = concurrency
        self.top_p = top_p
        self.stats = client.stats

    def prompt(self, spec_template: str | None, defaults: Templates) -> Any:
        return Prompt(spec_template) if spec_template else Prompt(defaults.chat, defaults.examples)

    def format(self, prompt: str, shots: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
        """The conversation for a rendered prompt: the example turns, then the user's turn. A tuple,
        so identical requests compare equal and are sent once."""
        messages: list[tuple[str, str]] = []
        for user, answer in shots:
            messages += [("user", user), ("assistant", answer)]
        messages.append(("user", prompt))
        return tuple(messages)

    def generate(self, inputs: Sequence[Any], seeds: Sequence[int], settings: Any) -> list[str | Failed]:
        """The answer to each conversation, or :class:`Failed`; raises ModelError when none of the
        requests reached the endpoint."""
        started = time.monotonic()
        unique: dict[tuple[Any, int], int] = {}
        for messages, seed in zip(inputs, seeds, strict=True):
            unique.setdefault((messages, seed if settings.sampling else 0), len(unique))
        requests = list(unique)

        def one(request: tuple[Any, int]) -> str | Failed:
            messages, seed = request
            body = chat_body(self.model, messages, settings.max_new_tokens, settings.temperature, self.top_p, seed)
            sent = time.monotonic()
            document, reason = self.client.request("/chat/completions", body)
            text = answer_text(document) if reason is None else None
            if text is None:
                reason = reason or "malformed response (no choices[0].message.content)"
                self.stats.fail(reason)
                return Failed(reason)
            usage = document.get("usage") if isinstance(document, dict) else None
            tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
            self.stats.answered(time.monotonic() - sent, tokens if isinstance(tokens, int) else 0)
            return text

        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)),
                                thread_name_prefix="openai") as pool:
            answers = list(pool.map(one, requests))
        failures = [a.reason for a in answers if isinstance(a, Failed)]
        self.stats.add(requests=len(requests), generated=len(requests) - len(failures))
        self.stats.generation_seconds += time.monotonic() - started
        if failures and len(failures) == len(requests) and set(failures) <= CONNECTION_REASONS:
            raise ModelError(
                f"{self.client.field_path}.openai.endpoint: {self.client.endpoint} stopped answering: all "
                f"{len(requests)} requests of a batch failed ({', '.join(sorted(set(failures)))}) after "
                f"{self.client.policy.max_retries} retries each; check the server, then rerun: committed shards are kept")
        return [answers[unique[(messages, seed if settings.sampling else 0)]]
                for messages, seed in zip(inputs, seeds, strict=True)]


def build_openai_generator(entry: Any, index: int, field_path: str, model: str, shards: int, top_p: float,
                           client: OpenAIClient | None = None) -> OpenAIGenerator:
    """The engine for ``spec.augmenters[index]`` (``entry.openai`` set), checked against the endpoint.
    ``client``: an earlier generator's of the same entry (backTranslation's way back), so both models
    share one budget and one set of counts."""
    settings = entry.openai
    started = time.monotonic()
    if client is None:
        key = api_key_from_env(index, field_path, settings.api_key_secret is not None)
        client = OpenAIClient(settings.endpoint, key, field_path, timeout=float(settings.timeout_seconds),
                              policy=RetryPolicy(max_retries=int(settings.max_retries)),
                              budget=RequestBudget.for_shard(settings.max_requests, shards),
                              stats=EngineStats("openai", model))
    else:
        client.stats.model = f"{client.stats.model}, {model}"
    client.served_models(model)
    client.stats.load_seconds += time.monotonic() - started
    log.info("model loaded", extra={"engine": "openai", "model": model, "endpoint": client.endpoint,
                                    "load_seconds": round(time.monotonic() - started, 3)})
    return OpenAIGenerator(client, model, int(settings.concurrency), top_p)
