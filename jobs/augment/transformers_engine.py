"""The ``transformers`` generation engine, the default: one transformers model in the pod.

:class:`TextGenerator` wraps one model, loaded once per run through
:meth:`~.modelcache.ModelCache.generator`: a causal LM (instruct models through their chat template,
others with a completion prompt) or a seq2seq model (Marian, T5, BART), from a transformers
directory or a single GGUF file.

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

torch and transformers are imported when a generator is built: a run without model-based types never pays.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Sequence
from typing import Any

from .engines import END_OF_TURN, TOP_P, EngineStats, GenerationSettings, chat_input
from .errors import ModelError
from .models import ModelLocation
from .prompts import Prompt, Templates

log = logging.getLogger(__name__)

__all__ = ["RowSampler", "TextGenerator", "token_batches"]


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
            ids += [vocab[t] for t in END_OF_TURN if t in vocab and vocab[t] not in ids]
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
        """The model input for a rendered prompt (:func:`~.engines.chat_input`)."""
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
