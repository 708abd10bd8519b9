"""Model-based text generation: ``paraphrase``, ``doc2query`` and ``backTranslation``.

The three augmenters turn the selected rows of a batch into prompts (:mod:`.prompts`), have the
entry's engine generate (:mod:`.engines`), clean the answers and return
:class:`~.protocol.GeneratedRow` s.

Decisions, and why:

* **Row-keyed seeds.** Each text to generate gets a seed from its row's key, field, variant and step
  (:func:`request_seed`); every engine samples with it, so a row's text depends on the seed, the
  augmenter's name and the row, not on which rows share its batch, the shard count or the batch size.
* **Dropping and counting.** Answers are cleaned (:func:`~.prompts.clean_output`); an empty answer,
  one identical to its source text (case and punctuation aside), an echo of the input (the item
  doc2query read, a prompt example), a repeat of another variant of the same row, or one that lost
  an attribute value the source text had (a brand or model number: the label would no longer be
  true) is dropped. Each drop is returned as an ``unusable`` row, which the pipeline counts per
  reason in the manifest and report (filter ``notGenerated``); the job log line ``generated``
  (with rows per second, after every batch) carries the run's running totals.
* **Back-translation** runs two models: ``model`` into ``pivotLanguage`` and ``reverseModel`` (the same
  model when unset) back into the source text's language, guessed from its script
  (:func:`~.prompts.script_language`). A seq2seq model gets the text alone (or the spec's template,
  where ``{language}`` is the step's target tag: ``>>{language}<< {text}`` for multilingual Marian);
  an instruct model is asked to translate.
* **Engines** (``engine``): ``transformers`` (the default) runs the model in the pod
  (:mod:`.transformers_engine`); ``vllm`` runs it with vLLM's offline batch engine on the pod's GPU (:mod:`.vllm_engine`:
  the same formatted prompts, one request per text with its own seed); ``openai`` sends the same
  prompts as chat requests to an OpenAI-compatible endpoint (:mod:`.openai_engine`). Either way the
  augmenters build requests, clean and judge answers the same; a request the endpoint could not
  answer is dropped and counted like any other unusable answer. Each
  engine records its load time apart from its generation time and rate (log line ``model loaded``,
  manifest ``augmenters.<name>.summary``, combined over every shard): a 26 s de-quantisation must not read as
  slow generation.
* **Generation cache**: answers are stored by what was asked (:mod:`.gencache`) under the run's
  output, so a retried pod or an edited, not yet committed run does not generate them again.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sampleforge.api import jobenv
from sampleforge.api.augmenters import BackTranslationAugmenter, Doc2QueryAugmenter, ParaphraseAugmenter
from sampleforge.jobs.common.hashing import fnv1a64, splitmix64
from sampleforge.jobs.common.storage import S3Uri

from .engines import TOP_P, Failed, GenerationSettings, ModelInput
from .errors import ConfigError
from .gencache import CachedGenerator
from .labels import LabelError
from .openai_engine import OpenAIGenerator, build_openai_generator
from .prompts import DEFAULT_TEMPLATES, clean_output, judge, normalized, script_language
from .protocol import BatchPlan, GeneratedRow
from .registry import BuildContext, register_row_augmenter
from .rows import RowBatch
from .transformers_engine import TextGenerator
from .vllm_engine import VllmGenerator, require_vllm

log = logging.getLogger(__name__)

__all__ = [
    "BackTranslation",
    "Doc2Query",
    "GeneratingAugmenter",
    "Generator",
    "Paraphrase",
    "item_text",
    "request_seed",
]


def request_seed(row_key: int, *parts: object) -> int:
    """A 63-bit torch seed for one generated text: the row's key mixed with what the text is for
    (field, variant, translation step), so each gets its own stream."""
    return splitmix64(row_key ^ fnv1a64("/".join(str(p) for p in parts))) >> 1


#: Any engine, or any behind the cache: all have ``kind``, ``prompt``, ``format``, ``generate``
#: and ``stats``.
Generator = TextGenerator | VllmGenerator | OpenAIGenerator | CachedGenerator


# --- the augmenters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """One text to generate for one selected row."""

    position: int  # batch position of the row
    field: str  # "query" or "item": the column the answer replaces
    variant: int
    source: str  # the text the answer must differ from
    model_input: ModelInput
    instruction: str  # the prompt without the source text, to recognise an echo of it
    seed: int
    #: Texts the model was shown besides the instruction; an answer equal to one is an echo.
    echoes: tuple[str, ...] = ()


def _protected_values(batch: RowBatch, i: int, text: str) -> list[str]:
    """Attribute values of row ``i`` that its ``text`` mentions (the answer must keep them)."""
    key = f" {normalized(text)} "
    values = (v for v in batch.attributes(i).values() if v)
    return [v for v in values if normalized(v) and f" {normalized(v)} " in key]


#: Why a sampled answer is dropped when an earlier variant of the same row said the same.
REPEAT = "repeats another variant of the row"


@dataclass(frozen=True)
class Dropped:
    """An answer that did not make a row, and why (counted in the manifest)."""

    reason: str


class GeneratingAugmenter:
    """What the three types share: the model, the settings, answering requests and counting drops."""

    label_rule = "keep"

    def __init__(self, name: str, generator: Generator, settings: GenerationSettings, per_row: int) -> None:
        self.name = name
        self.generator = generator
        self.settings = settings
        # Greedy decoding gives one answer per prompt: more variants would only repeat it.
        self.variants = per_row if settings.sampling else 1
        #: Answers dropped, by reason (over the whole run; logged after every batch).
        self.dropped: Counter[str] = Counter()

    def _variants(self, plan: BatchPlan) -> int:
        return min(self.variants, plan.per_row or self.variants)

    @staticmethod
    def _texts(batch: RowBatch, selected: Sequence[int], plan: BatchPlan,
               fields: Sequence[str]) -> Iterator[tuple[int, int, str, str]]:
        """(position, row key, field, text) for each non-empty field of each selected row."""
        for i in selected:
            key = plan.random.row_key(int(batch.row_ids[i]))
            for field in fields:
                text = batch.queries[i] if field == "query" else batch.items[i]
                if text:
                    yield i, key, field, text

    def summary(self) -> dict[str, Any]:
        """The engine's load time, generation time and rate, and (openai) HTTP attempts, retries and
        failures by reason: this pod's figures, summed over shards in the manifest. Failed requests are also
        counted per reason, over every shard, under the filter ``notGenerated``."""
        out = self.generator.stats.summary()
        back = getattr(self, "back", None)
        if back is not None and back.stats is not self.generator.stats:
            out["reverse"] = back.stats.summary()
        caches = [g for g in (self.generator, back) if isinstance(g, CachedGenerator)]
        if caches:
            out["cache"] = {"hits": sum(c.hits for c in {id(c): c for c in caches}.values()),
                            "misses": sum(c.misses for c in {id(c): c for c in caches}.values()),
                            "prefix": caches[0].summary()["prefix"]}
        return out

    def _answer(self, requests: Sequence[_Request], batch: RowBatch, generator: Generator | None = None,
                stage: str = "") -> list[str | Dropped]:
        """The cleaned answer to each request, or why it was dropped. ``stage`` names an
        intermediate step (the pivot translation), whose answers are not final rows: its drops are
        counted under its name, and attribute values are not required in it (a translation may
        rightly render a brand in another script)."""
        model = generator or self.generator
        outputs = model.generate([r.model_input for r in requests], [r.seed for r in requests], self.settings)
        answers: list[str | Dropped] = []
        for request, output in zip(requests, outputs, strict=True):
            reason: str | None
            if isinstance(output, Failed):
                text, reason = "", f"request failed: {output.reason}"
            else:
                text = clean_output(output, request.source, request.instruction)
                reason = judge(text, request.source, request.echoes)
            if reason is None and not stage and any(f" {normalized(v)} " not in f" {normalized(text)} "
                                                    for v in _protected_values(batch, request.position,
                                                                               request.source)):
                reason = "lost an attribute value of the source text"
            if reason is not None:
                reason = f"{stage}: {reason}" if stage else reason
                self.dropped[reason] += 1
            answers.append(text if reason is None else Dropped(reason))
        return answers

    def _rows(self, batch: RowBatch, requests: Sequence[_Request], answers: Sequence[str | Dropped],
              extra: dict[str, Any] | None = None,
              earlier_drops: Sequence[tuple[_Request, Dropped]] = ()) -> list[GeneratedRow]:
        """One row per (source row, variant) with an answer; repeats of an earlier variant are dropped.
        Every drop (``earlier_drops`` are an earlier stage's) also becomes an ``unusable`` row, which
        the pipeline counts in the manifest instead of writing."""
        columns = {"query": batch.roles.query, "item": batch.roles.item}
        grouped: dict[tuple[int, int], dict[str, Any]] = {}
        seen: dict[tuple[int, str], set[str]] = {}
        drops = list(earlier_drops)
        for request, answer in zip(requests, answers, strict=True):
            if isinstance(answer, Dropped):
                drops.append((request, answer))
                continue
            earlier = seen.setdefault((request.position, request.field), set())
            if normalized(answer) in earlier:
                self.dropped[REPEAT] += 1
                drops.append((request, Dropped(REPEAT)))
                continue
            earlier.add(normalized(answer))
            grouped.setdefault((request.position, request.variant), {})[columns[request.field]] = answer
        rows = [GeneratedRow(int(batch.row_ids[i]), {**changes, **(extra or {})}, self.label_rule, k)
                for (i, k), changes in sorted(grouped.items())]
        return rows + [GeneratedRow(int(batch.row_ids[r.position]), {}, self.label_rule, r.variant, unusable=d.reason)
                       for r, d in drops]

    def _log(self, selected: int, requests: int, started: float) -> None:
        seconds = time.monotonic() - started
        stats = self.generator.stats
        rate = stats.generated / stats.generation_seconds if stats.generation_seconds > 0 else None
        log.info("generated", extra={"augmenter": self.name, "rows": selected, "requests": requests,
                                     "seconds": round(seconds, 3), "dropped": dict(self.dropped),
                                     "rows_per_second": round(selected / seconds, 2) if seconds > 0 else None,
                                     # The engine's own figures so far in this pod, model loading apart.
                                     "engine": stats.engine, "load_seconds": round(stats.load_seconds, 3),
                                     "generation_seconds": round(stats.generation_seconds, 3),
                                     "generated_per_second": round(rate, 3) if rate is not None else None})


class Paraphrase(GeneratingAugmenter):
    """Rewrites the query and/or item of each selected row (label kept)."""

    def __init__(self, name: str, generator: Generator, settings: GenerationSettings, per_row: int,
                 fields: Sequence[str], template: str | None) -> None:
        super().__init__(name, generator, settings, per_row)
        self.fields = tuple(fields)
        self.prompts = {f: generator.prompt(template, DEFAULT_TEMPLATES[f"paraphrase/{f}"]) for f in self.fields}

    def augment(self, batch: RowBatch, plan: BatchPlan) -> list[GeneratedRow]:
        started, selected = time.monotonic(), plan.selected_indices()
        requests = []
        for i, key, field, text in self._texts(batch, selected, plan, self.fields):
            prompt = self.prompts[field]
            model_input = prompt.model_input(self.generator, text)
            for k in range(self._variants(plan)):
                requests.append(_Request(i, field, k, text, model_input, prompt.instruction(),
                                         request_seed(key, field, k), prompt.echoes))
        rows = self._rows(batch, requests, self._answer(requests, batch))
        self._log(len(selected), len(requests), started)
        return rows


def item_text(batch: RowBatch, i: int) -> str:
    """What doc2query reads about an item: its title, then its attribute values by column name."""
    attributes = [f"{name.replace('_', ' ')}: {value}" for name, value in batch.attributes(i).items() if value]
    title = batch.items[i]
    return f"{title} ({'; '.join(attributes)})" if attributes else title


class Doc2Query(GeneratingAugmenter):
    """Generates queries for each selected row's item; the label is kept or set from the spec."""

    def __init__(self, name: str, generator: Generator, settings: GenerationSettings, per_row: int,
                 template: str | None, label: Any, label_rule: str) -> None:
        super().__init__(name, generator, settings, per_row)
        self.prompt = generator.prompt(template, DEFAULT_TEMPLATES["doc2query"])
        self.label = label
        self.label_rule = label_rule

    def augment(self, batch: RowBatch, plan: BatchPlan) -> list[GeneratedRow]:
        started, selected = time.monotonic(), plan.selected_indices()
        requests = []
        for i in selected:
            if not batch.items[i]:
                continue
            key = plan.random.row_key(int(batch.row_ids[i]))
            text = item_text(batch, i)
            model_input = self.prompt.model_input(self.generator, text)
            echoes = (batch.items[i], text, *self.prompt.echoes)
            for k in range(self._variants(plan)):
                requests.append(_Request(i, "query", k, batch.queries[i] or "", model_input,
                                         self.prompt.instruction(), request_seed(key, "query", k), echoes))
        extra = {batch.roles.label: self.label} if self.label_rule == "assign" else None
        rows = self._rows(batch, requests, self._answer(requests, batch), extra)
        self._log(len(selected), len(requests), started)
        return rows


class BackTranslation(GeneratingAugmenter):
    """Translates the query and/or item into the pivot language and back (label kept)."""

    def __init__(self, name: str, forward: Generator, back: Generator, settings: GenerationSettings,
                 per_row: int, fields: Sequence[str], pivot: str, template: str | None) -> None:
        super().__init__(name, forward, settings, per_row)
        self.back = back
        self.fields = tuple(fields)
        self.pivot = pivot
        self.forward_prompt = forward.prompt(template, DEFAULT_TEMPLATES["backTranslation"])
        self.back_prompt = back.prompt(template, DEFAULT_TEMPLATES["backTranslation"])

    def augment(self, batch: RowBatch, plan: BatchPlan) -> list[GeneratedRow]:
        started, selected = time.monotonic(), plan.selected_indices()
        there = []
        for i, key, field, text in self._texts(batch, selected, plan, self.fields):
            model_input = self.forward_prompt.model_input(self.generator, text, self.pivot)
            for k in range(self._variants(plan)):
                there.append(_Request(i, field, k, text, model_input, self.forward_prompt.instruction(self.pivot),
                                      request_seed(key, field, k, "forward")))
        pivots = self._answer(there, batch, stage="pivot")
        back, pivot_drops = [], []
        for request, pivot in zip(there, pivots, strict=True):
            if isinstance(pivot, Dropped):
                pivot_drops.append((request, pivot))
                continue
            language = script_language(request.source)
            key = plan.random.row_key(int(batch.row_ids[request.position]))
            back.append(_Request(request.position, request.field, request.variant, request.source,
                                 self.back_prompt.model_input(self.back, pivot, language),
                                 self.back_prompt.instruction(language),
                                 request_seed(key, request.field, request.variant, "back"), (pivot,)))
        rows = self._rows(batch, back, self._answer(back, batch, self.back), earlier_drops=pivot_drops)
        self._log(len(selected), len(there) + len(back), started)
        return rows


# --- factories ----------------------------------------------------------------------------------


def _settings(entry: Any) -> GenerationSettings:
    tokens = getattr(entry, "max_batch_tokens", None)
    return GenerationSettings(int(entry.batch_size), int(entry.max_new_tokens), float(entry.temperature),
                              int(tokens) if tokens is not None else None)


def _engine(entry: Any, build: BuildContext, ref: str, field: str) -> TextGenerator | VllmGenerator | OpenAIGenerator:
    """The engine the entry names, for model ``ref`` (spec field ``field``); each model is loaded once
    per pod (:class:`~.modelcache.ModelCache`) and shared by the augmenters that name it."""
    engine = getattr(entry, "engine", "transformers")
    if engine == "openai":
        shards = int(os.environ.get(jobenv.SHARD_COUNT) or 1)
        return build_openai_generator(entry, build.index, build.field_path, ref, shards, TOP_P)
    if engine == "vllm":
        require_vllm(f"{build.field_path}.engine")  # before the model is fetched: a clear error, fast
        return build.models.vllm_generator(ref, f"{build.field_path}.{field}")
    return build.models.generator(ref, f"{build.field_path}.{field}")


def _cached(engine: TextGenerator | VllmGenerator | OpenAIGenerator, build: BuildContext) -> Generator:
    """The engine behind the run's generation cache (where the run has a store: always, in a pod)."""
    if build.store is None:
        return engine
    return CachedGenerator(engine, build.store, S3Uri.parse(str(build.spec.output.uri)), TOP_P)


def _generator(entry: Any, build: BuildContext, ref: str, field: str) -> Generator:
    return _cached(_engine(entry, build, ref, field), build)


@register_row_augmenter(ParaphraseAugmenter)
def _build_paraphrase(entry: ParaphraseAugmenter, build: BuildContext) -> Paraphrase:
    generator = _generator(entry, build, entry.model, "model")
    return Paraphrase(entry.display_name(), generator, _settings(entry), entry.per_row, entry.fields,
                      entry.prompt_template)


@register_row_augmenter(Doc2QueryAugmenter)
def _build_doc2query(entry: Doc2QueryAugmenter, build: BuildContext) -> Doc2Query:
    try:
        label = build.labels.coerce(entry.label, f"{build.field_path}.label") if entry.label is not None else None
    except LabelError as err:
        raise ConfigError(str(err)) from err
    generator = _generator(entry, build, entry.model, "model")
    return Doc2Query(entry.display_name(), generator, _settings(entry), entry.per_row, entry.prompt_template, label,
                     "keep" if label is None else "assign")


@register_row_augmenter(BackTranslationAugmenter)
def _build_back_translation(entry: BackTranslationAugmenter, build: BuildContext) -> BackTranslation:
    forward = _generator(entry, build, entry.model, "model")
    back = forward
    if entry.reverse_model is not None and entry.reverse_model != entry.model:
        inner = forward.inner if isinstance(forward, CachedGenerator) else forward
        if isinstance(inner, OpenAIGenerator):  # the same endpoint, budget and counts
            back = _cached(build_openai_generator(entry, build.index, build.field_path, entry.reverse_model, 1,
                                                  TOP_P, client=inner.client), build)
        else:
            back = _generator(entry, build, entry.reverse_model, "reverseModel")
    return BackTranslation(entry.display_name(), forward, back, _settings(entry), entry.per_row, entry.fields,
                           entry.pivot_language, entry.prompt_template)
