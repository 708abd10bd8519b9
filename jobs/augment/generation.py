"""Model-based text generation: ``paraphrase``, ``doc2query`` and ``backTranslation``.

:class:`TextGenerator` wraps one transformers model, loaded once per run through
:meth:`~.modelcache.ModelCache.generator`: a causal LM (instruct models through their chat template,
others with a completion prompt) or a seq2seq model (Marian, T5, BART), from a transformers
directory or a single GGUF file. The three augmenters turn the selected rows of a batch into prompts
(:mod:`.prompts`), generate, clean the answers and return :class:`~.protocol.GeneratedRow` s.

Decisions, and why:

* **Row-keyed sampling.** Sampling uses no global random state: a logits processor
  (:class:`RowSampler`) draws each sequence's next token with that sequence's own
  ``torch.Generator``, seeded from ``(row key, field, variant)``, and ``generate`` runs greedily over
  its one-hot output. So a row's text depends on the seed, the augmenter's name and the row, not on
  which rows share its batch, the shard count or the batch size; runs are byte-identical. (Up to the
  floating-point effect of padding on a row's logits, which would have to move a draw across a
  token boundary to show.) ``temperature: 0`` is greedy decoding, and then one variant per row,
  since more would repeat it.
* **Dynamic batching by tokens.** Prompts are tokenised once, sorted by token length and cut into
  batches (:func:`token_batches`) of at most ``batchSize`` sequences and at most ``maxBatchTokens``
  tokens, counted as the batch's padded size (sequences x (longest prompt + ``maxNewTokens``)): short
  queries go many to a batch, long item texts few, so a batch pads little and its memory is bounded.
  Decoder-only models are padded on the left (what they continue from must be the last position).
  Identical requests (same prompt, and the same seed when sampling) are generated once. Since the
  sampler is per row, outputs do not depend on how the requests were batched.
* **Precision.** bf16 on a GPU that has it (fp16 on older ones), fp32 on CPU, where half precision
  is slow or unsupported.
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

* **Engines** (``engine``): ``transformers`` (the default) runs the model in the pod, as described
  above; ``vllm`` runs it with vLLM's offline batch engine on the pod's GPU (:mod:`.vllm_engine`:
  the same formatted prompts, one request per text with its own seed); ``openai`` sends the same
  prompts as chat requests to an OpenAI-compatible endpoint (:mod:`.openai_engine`). Either way the
  augmenters build requests, clean and judge answers the same; a request the endpoint could not
  answer is dropped and counted like any other unusable answer. Each
  engine records its load time apart from its generation time and rate (log line ``model loaded``,
  manifest ``augmenters.<name>.summary``, combined over every shard): a 26 s de-quantisation must not read as
  slow generation.
* **Generation cache**: answers are stored by what was asked (:mod:`.gencache`) under the run's
  output, so a retried pod or an edited, not yet committed run does not generate them again.

torch and transformers are imported when a generator is built: a run without these types never pays.
"""

from __future__ import annotations

import contextlib
import io
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

from .errors import ConfigError, ModelError
from .gencache import CachedGenerator
from .labels import LabelError
from .models import ModelLocation
from .openai_engine import EngineStats, Failed, OpenAIGenerator, build_openai_generator, chat_input
from .prompts import DEFAULT_TEMPLATES, Templates, clean_output, judge, normalized, render, script_language
from .protocol import BatchPlan, GeneratedRow
from .registry import BuildContext, register_row_augmenter
from .rows import RowBatch
from .vllm_engine import VllmGenerator, require_vllm

log = logging.getLogger(__name__)

__all__ = [
    "TOP_P",
    "BackTranslation",
    "Doc2Query",
    "GeneratingAugmenter",
    "GenerationSettings",
    "Paraphrase",
    "Prompt",
    "RowSampler",
    "TextGenerator",
    "request_seed",
    "token_batches",
]

#: Nucleus kept when sampling: tokens outside the top 95 % of probability mass are never drawn. Why:
#: with the whole vocabulary a small model now and then draws a junk token that derails the answer.
TOP_P = 0.95
#: End-of-turn tokens of common chat templates; generation also stops at them (an instruct model
#: ends its answer with one, which is often not the tokenizer's eos token).
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


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


def token_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None,
                  max_new_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` (prompt tokens per request) cut into batches, shortest prompts first.

    A batch holds at most ``batch_size`` requests, and its padded size, ``len(batch) * (longest
    prompt + max_new_tokens)`` (what generate() allocates for it), stays within ``max_batch_tokens``
    when that is set; a request that alone exceeds the budget gets a batch of its own. Ties keep
    input order, so the cut depends only on the lengths.
    """
    order = sorted(range(len(lengths)), key=lambda r: (lengths[r], r))
    batches: list[list[int]] = []
    current: list[int] = []
    for r in order:
        # Sorted ascending: the batch's longest prompt is the one being added.
        cost = (len(current) + 1) * (lengths[r] + max_new_tokens)
        if current and (len(current) >= batch_size or (max_batch_tokens is not None and cost > max_batch_tokens)):
            batches.append(current)
            current = []
        current.append(r)
    if current:
        batches.append(current)
    return batches


def request_seed(row_key: int, *parts: object) -> int:
    """A 63-bit torch seed for one generated text: the row's key mixed with what the text is for
    (field, variant, translation step), so each gets its own stream."""
    return splitmix64(row_key ^ fnv1a64("/".join(str(p) for p in parts))) >> 1


# --- the model ----------------------------------------------------------------------------------


def _device_and_dtype() -> tuple[Any, Any]:
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cpu"), torch.float32


def _load(location: ModelLocation, field_path: str, dtype: Any) -> tuple[Any, Any]:
    """(tokenizer, model); a seq2seq model when its config says encoder-decoder, else a causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    kwargs = location.load_kwargs()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the job log is JSON lines, with no room for progress bars
    try:
        tokenizer = AutoTokenizer.from_pretrained(location.path, **kwargs)
        if location.gguf_file:  # reading a GGUF's config costs as much as loading it: try causal first
            # De-quantising draws a tqdm bar that the switch above does not reach; the job's log
            # handler keeps its own reference to stderr, so log lines still get through.
            with contextlib.redirect_stderr(io.StringIO()):
                try:
                    model = AutoModelForCausalLM.from_pretrained(location.path, dtype=dtype, **kwargs)
                except ValueError:
                    model = AutoModelForSeq2SeqLM.from_pretrained(location.path, dtype=dtype, **kwargs)
        else:
            config = AutoConfig.from_pretrained(location.path)
            family = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
            model = family.from_pretrained(location.path, config=config, dtype=dtype)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as err:
        what = f"{location.ref or location.path}" + (f" (GGUF file {location.gguf_file})" if location.gguf_file else "")
        raise ModelError(
            f"{field_path}: {what} does not load as a text generation model with transformers "
            f"({type(err).__name__}: {' '.join(str(err).split())[:300]}); name a causal language model or a seq2seq model: a directory "
            "saved with save_pretrained (config.json, weights, tokenizer) or holding one *.gguf file") from err
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return tokenizer, model


class TextGenerator:
    """A loaded text generation model: formats prompts and generates for many of them at a time."""

    def __init__(self, location: ModelLocation, field_path: str) -> None:
        started = time.monotonic()
        self.stats = EngineStats("transformers", location.ref or location.path)
        self.device, dtype = _device_and_dtype()
        self.tokenizer, self.model = _load(location, field_path, dtype)
        self.model.to(self.device).eval()
        self.seq2seq = bool(getattr(self.model.config, "is_encoder_decoder", False))
        self.chat = not self.seq2seq and bool(getattr(self.tokenizer, "chat_template", None))
        self.stop_ids = self._stop_ids()
        pad = self.tokenizer.pad_token_id
        if pad is None and not self.stop_ids:
            raise ModelError(f"{field_path}: the tokenizer of {location.ref or location.path} has neither a pad nor "
                             "an end-of-sequence token, so batches cannot be padded; use a model whose tokenizer has one")
        self.pad_id = int(pad if pad is not None else self.stop_ids[0])
        self.max_positions = self._max_positions()
        self.stats.load_seconds = time.monotonic() - started
        log.info("model loaded", extra={"engine": "transformers", "model": self.stats.model, "kind": self.kind,
                                        "device": str(self.device), "load_seconds": round(self.stats.load_seconds, 3)})

    @property
    def kind(self) -> str:
        """``seq2seq``, ``chat`` (causal LM with a chat template) or ``plain`` (causal LM)."""
        return "seq2seq" if self.seq2seq else "chat" if self.chat else "plain"

    def _stop_ids(self) -> list[int]:
        ids: list[int] = []
        configured = self.model.generation_config.eos_token_id
        for value in (configured if isinstance(configured, list) else [configured]) + [self.tokenizer.eos_token_id]:
            if value is not None and int(value) not in ids:
                ids.append(int(value))
        if self.chat:
            vocab = self.tokenizer.get_vocab()
            ids += [vocab[t] for t in _END_OF_TURN if t in vocab and vocab[t] not in ids]
        return ids

    def _max_positions(self) -> int | None:
        for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
            value = getattr(self.model.config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def prompt(self, spec_template: str | None, defaults: Templates) -> Prompt:
        """The spec's template, else the built-in one for this kind of model (with its examples for a
        chat model; a spec template says everything the user wants the model to see)."""
        if spec_template:
            return Prompt(spec_template)
        if self.seq2seq:
            return Prompt("{text}")
        if not self.chat:
            return Prompt(defaults.plain)
        return Prompt(defaults.chat, defaults.examples)

    def format(self, prompt: str, shots: Sequence[tuple[str, str]] = ()) -> str:
        """The model input for a rendered prompt (:func:`~.openai_engine.chat_input`)."""
        return chat_input(self.tokenizer, self.chat, prompt, shots)

    def _encode(self, text: str, max_new_tokens: int) -> list[int]:
        # A chat-formatted input already has its special tokens written out.
        ids: list[int] = self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]
        if self.max_positions is None:
            return ids
        if self.seq2seq:
            return ids[: self.max_positions]
        room = max(1, self.max_positions - max_new_tokens)
        return ids[-room:]  # keep the end: that is where the answer starts

    def generate(self, inputs: Sequence[Any], seeds: Sequence[int], settings: GenerationSettings) -> list[str]:
        """The decoded new text for each input (already formatted), sampled with its seed when
        ``settings.temperature > 0``. Identical requests are generated once."""
        started = time.monotonic()
        unique: dict[tuple[str, int], int] = {}
        for text, seed in zip(inputs, seeds, strict=True):
            unique.setdefault((text, seed if settings.sampling else 0), len(unique))
        requests = list(unique)
        encoded = [self._encode(text, settings.max_new_tokens) for text, _ in requests]
        answers = [""] * len(requests)
        for chunk in token_batches([len(e) for e in encoded], settings.batch_size, settings.max_batch_tokens,
                                   settings.max_new_tokens):
            texts = self._run([encoded[r] for r in chunk], [requests[r][1] for r in chunk], settings)
            for r, text in zip(chunk, texts, strict=True):
                answers[r] = text
        self.stats.add(requests=len(requests), generated=len(requests))
        self.stats.generation_seconds += time.monotonic() - started
        return [answers[unique[(text, seed if settings.sampling else 0)]] for text, seed in zip(inputs, seeds,
                                                                                                   strict=True)]

    def _run(self, rows: list[list[int]], seeds: list[int], settings: GenerationSettings) -> list[str]:
        """One padded batch through ``model.generate``."""
        import torch
        from transformers import LogitsProcessorList

        width = max(len(r) for r in rows)
        padded, mask = [], []
        for ids in rows:
            fill = [self.pad_id] * (width - len(ids))
            padded.append(ids + fill if self.seq2seq else fill + ids)
            ones, zeros = [1] * len(ids), [0] * len(fill)
            mask.append(ones + zeros if self.seq2seq else zeros + ones)
        input_ids = torch.tensor(padded, dtype=torch.long, device=self.device)
        attention_mask = torch.tensor(mask, dtype=torch.long, device=self.device)
        processors = LogitsProcessorList([RowSampler(seeds, settings.temperature)] if settings.sampling else [])
        with torch.inference_mode():
            output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                         generation_config=self._generation_config(settings.max_new_tokens),
                                         logits_processor=processors)
        new = output[:, 1:] if self.seq2seq else output[:, width:]  # seq2seq: drop the decoder start token
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in new.tolist()]

    def _generation_config(self, max_new_tokens: int) -> Any:
        """Greedy search over the sampler's output, with only the model's special tokens carried over:
        a model's own sampling defaults (top_k, repetition penalty, beams) would make the output depend
        on its generation_config.json rather than on the spec."""
        from transformers import GenerationConfig

        base = self.model.generation_config
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1,
                                   "pad_token_id": self.pad_id, "eos_token_id": self.stop_ids or None,
                                   "bos_token_id": base.bos_token_id}
        if self.seq2seq:
            start = base.decoder_start_token_id
            if start is None:
                start = getattr(self.model.config, "decoder_start_token_id", None)
            options["decoder_start_token_id"] = start if start is not None else self.pad_id
            options["bad_words_ids"] = base.bad_words_ids  # Marian: never generate the pad token
        return GenerationConfig(**options)


#: What an engine generates from: a formatted prompt (transformers) or chat messages (openai).
ModelInput = str | tuple[tuple[str, str], ...]
#: Any engine, or any behind the cache: all have ``kind``, ``prompt``, ``format``, ``generate``
#: and ``stats``.
Generator = TextGenerator | VllmGenerator | OpenAIGenerator | CachedGenerator


@dataclass(frozen=True)
class Prompt:
    """A template and the example conversation turns (source text, answer) shown before it."""

    template: str
    examples: tuple[tuple[str, str], ...] = ()

    def model_input(self, generator: Generator, text: str, language: str | None = None) -> ModelInput:
        shots = [(render(self.template, source, language), answer) for source, answer in self.examples]
        return generator.format(render(self.template, text, language), shots)

    def instruction(self, language: str | None = None) -> str:
        """The prompt without the source text: a line of the answer found in it is an echo."""
        return render(self.template, "", language)

    @property
    def echoes(self) -> tuple[str, ...]:
        """Texts of the examples: an answer that repeats one is copied, not generated."""
        return tuple(t for pair in self.examples for t in pair)


class RowSampler:
    """Draws each sequence's next token with its own generator (temperature, then top-p), and returns
    scores that are -inf except for the drawn token, so greedy search takes it.

    Why not ``do_sample=True`` with a seeded global generator: its draws for one sequence depend on
    every other sequence in the batch. Here sequence ``i`` consumes only ``generators[i]``.
    Implemented as a transformers ``LogitsProcessor`` (duck-typed: generate calls it with
    ``(input_ids, scores)``).
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float = TOP_P) -> None:
        import torch

        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        draws = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        ranked, tokens = torch.sort(probs, dim=-1, descending=True, stable=True)
        nucleus = (ranked.cumsum(-1) - ranked) < self.top_p  # always keeps the most likely token
        cumulative = (ranked * nucleus).cumsum(-1)
        target = draws.to(cumulative.device, cumulative.dtype).unsqueeze(-1) * cumulative[:, -1:]
        pick = torch.searchsorted(cumulative, target).clamp(max=cumulative.shape[-1] - 1)
        chosen = tokens.gather(-1, pick)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, chosen, 0.0)


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
