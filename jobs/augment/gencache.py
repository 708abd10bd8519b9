"""A content-addressed cache of generated texts, kept under the run's output prefix.

Why: generation is the expensive step of a run (seconds per row on a CPU, money per request on a
hosted endpoint). A pod that is preempted or fails mid-shard is retried by its Job and redoes its
shard; a run whose spec was edited before it committed (a filter, a budget) asks mostly the same
questions again. With the answers stored by what was asked, none of that pays twice.

The key is the SHA-256 of everything the answer depends on: the engine, the model, the exact model
input (formatted prompt, or chat messages), the new-token limit, temperature, nucleus and the
request's seed (0 when decoding greedily, where the seed does not matter). Only answers are stored;
a failed request (openai) is asked again next time. Entries live at
``<output.uri>/_cache/generation/<key[:2]>/<key>.json``; readers of the output never look there (they
read the files the manifest lists). Lookups list the cache prefix once per pod, so a miss costs no
request to the store. Hits and misses are in the augmenter's manifest summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sampleforge.jobs.common.storage import ObjectStore, S3Uri

from .engines import Failed

log = logging.getLogger(__name__)

__all__ = ["CACHE_DIR", "CachedGenerator", "cache_key"]

#: Where the entries go, under the run's output prefix.
CACHE_DIR = "_cache/generation/"
_IO_THREADS = 8


def cache_key(engine: str, model: str, model_input: Any, max_new_tokens: int, temperature: float, top_p: float,
              seed: int) -> str:
    """The entry's name: a digest of everything the answer depends on (``seed`` already 0 when greedy)."""
    document = {"engine": engine, "model": model, "input": model_input, "maxNewTokens": int(max_new_tokens),
                "temperature": float(temperature), "topP": float(top_p) if temperature > 0 else None,
                "seed": int(seed)}
    return hashlib.sha256(json.dumps(document, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class CachedGenerator:
    """Wraps an engine (transformers or openai): answers what the cache holds, generates the rest
    with the engine and stores those answers. Has the engine's interface."""

    def __init__(self, inner: Any, store: ObjectStore, prefix: S3Uri, top_p: float) -> None:
        self.inner = inner
        self.store = store
        self.prefix = prefix.join(CACHE_DIR)
        self.top_p = top_p
        self.stats = inner.stats
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._known: set[str] | None = None

    # The engine's interface, passed through.
    @property
    def kind(self) -> str:
        return str(self.inner.kind)

    def prompt(self, spec_template: str | None, defaults: Any) -> Any:
        return self.inner.prompt(spec_template, defaults)

    def format(self, prompt: str, shots: Sequence[tuple[str, str]] = ()) -> Any:
        return self.inner.format(prompt, shots)

    def summary(self) -> dict[str, Any]:
        return {"hits": self.hits, "misses": self.misses, "prefix": str(self.prefix)}

    def _entry(self, key: str) -> S3Uri:
        return self.prefix.join(f"{key[:2]}/{key}.json")

    def _known_keys(self) -> set[str]:
        if self._known is None:
            self._known = {uri.key.rsplit("/", 1)[-1].removesuffix(".json") for uri, _, _ in self.store.list(self.prefix)}
        return self._known

    def _read(self, key: str) -> str | None:
        try:
            text = json.loads(self.store.read_bytes(self._entry(key))).get("text")
        except Exception as err:  # noqa: BLE001 -- a damaged or vanished entry is a miss, never a failure
            log.warning("generation cache entry unreadable; generating again", extra={"key": key, "error": str(err)})
            return None
        return text if isinstance(text, str) else None

    def _write(self, key: str, text: str) -> None:
        try:
            self.store.write_json(self._entry(key), {"text": text})
        except Exception as err:  # noqa: BLE001 -- a cache that cannot be written only costs a later rerun
            log.warning("generation cache entry not written", extra={"key": key, "error": str(err)})

    def generate(self, inputs: Sequence[Any], seeds: Sequence[int], settings: Any) -> list[Any]:
        engine = str(self.inner.stats.engine)  # engines sample differently: each has its own entries
        keys = [cache_key(engine, self.inner.stats.model, _jsonable(i), settings.max_new_tokens, settings.temperature,
                          self.top_p, s if settings.sampling else 0) for i, s in zip(inputs, seeds, strict=True)]
        known = self._known_keys()
        answers: dict[str, Any] = {}
        wanted = sorted({k for k in keys if k in known})
        if wanted:
            with ThreadPoolExecutor(min(_IO_THREADS, len(wanted))) as pool:
                for key, text in zip(wanted, pool.map(self._read, wanted), strict=True):
                    if text is not None:
                        answers[key] = text
        missing = [i for i, k in enumerate(keys) if k not in answers]
        if missing:
            made = self.inner.generate([inputs[i] for i in missing], [seeds[i] for i in missing], settings)
            fresh: dict[str, str] = {}
            for i, text in zip(missing, made, strict=True):
                answers.setdefault(keys[i], text)
                if not isinstance(text, Failed):
                    fresh[keys[i]] = text
            if fresh:
                with ThreadPoolExecutor(min(_IO_THREADS, len(fresh))) as pool:
                    list(pool.map(lambda item: self._write(*item), fresh.items()))
                known.update(fresh)
        with self._lock:
            self.hits += len(keys) - len(missing)
            self.misses += len(missing)
        return [answers[k] for k in keys]


def _jsonable(model_input: Any) -> Any:
    """Chat messages (tuples) as lists, so the key is the same JSON whatever the container type."""
    if isinstance(model_input, tuple):
        return [_jsonable(part) for part in model_input]
    return model_input
