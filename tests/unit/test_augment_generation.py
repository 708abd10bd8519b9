"""Unit tests of model-based generation: prompts and answer cleaning, model location (transformers
directory or GGUF), the row-keyed sampler, and the augmenters on tiny real models built from a config
(the builders live with the integration tests, which upload the same models to MinIO)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_augment_generation import corpus_texts, tiny_causal_lm, tiny_marian

from sampleforge.api.augmenters import BackTranslationAugmenter, Doc2QueryAugmenter, ParaphraseAugmenter
from sampleforge.jobs.augment.engines import GenerationSettings
from sampleforge.jobs.augment.errors import ConfigError, ModelError
from sampleforge.jobs.augment.generation import BackTranslation, Doc2Query, Paraphrase, item_text, request_seed
from sampleforge.jobs.augment.modelcache import ModelCache
from sampleforge.jobs.augment.models import ModelLocation, locate_model
from sampleforge.jobs.augment.prompts import (
    DEFAULT_TEMPLATES,
    MAX_SOURCE_CHARS,
    Prompt,
    clean_output,
    judge,
    language_name,
    normalized,
    render,
    script_language,
)
from sampleforge.jobs.augment.protocol import BatchPlan
from sampleforge.jobs.augment.randomness import RowRandomness
from sampleforge.jobs.augment.rows import ColumnRoles, RowBatch
from sampleforge.jobs.augment.transformers_engine import RowSampler, TextGenerator

FIELD = "spec.augmenters[0].model"


# --- prompts and cleaning ------------------------------------------------------------------------------


class TestPrompts:
    def test_render_is_literal_so_other_braces_survive(self) -> None:
        template = 'Rewrite {"query": "{text}"} as {json} for {languageName} ({language})'
        assert render(template, "red shoes") == 'Rewrite {"query": "red shoes"} as {json} for {languageName} ({language})'
        assert render(template, "x", "de") == 'Rewrite {"query": "x"} as {json} for German (de)'
        assert render("{text}", "a" * (MAX_SOURCE_CHARS + 50)) == "a" * MAX_SOURCE_CHARS

    def test_every_default_template_has_the_text_placeholder(self) -> None:
        for templates in DEFAULT_TEMPLATES.values():
            assert "{text}" in templates.chat and "{text}" in templates.plain

    def test_language_names_and_the_script_guess_for_the_way_back(self) -> None:
        assert (language_name("zh-Hans"), language_name("de"), language_name("pt-BR"), language_name("xx")) == \
            ("Simplified Chinese", "German", "Portuguese", "xx")
        assert script_language("小孩咳嗽感冒") == "zh"
        assert script_language("ワイヤレスイヤホン 無線") == "ja"
        assert script_language("무선 이어폰") == "ko"
        assert script_language("беспроводные наушники") == "ru"
        assert script_language("wireless earbuds 2nd gen") == "en"


class TestCleaning:
    @pytest.mark.parametrize(("output", "expected"), [
        ("Wireless BLE headphones", "Wireless BLE headphones"),
        ('Query: "cordless earphones"', "cordless earphones"),
        ("Here is the rewritten query:\n\n“cordless earphones”\n\nThis keeps the meaning.", "cordless earphones"),
        ("Sure! Here's a paraphrase: Rewritten query: cordless earphones.", "cordless earphones"),
        ("1. cordless earphones\n2. bluetooth earbuds", "cordless earphones"),
        ("- 'cordless earphones", "cordless earphones"),
        ("搜索词：无线耳机", "无线耳机"),
        ("Star Wars: The Clone Wars lego set", "Star Wars: The Clone Wars lego set"),
        ("men's shoes", "men's shoes"),
        ("", ""),
        ("   \n  \n", ""),
    ])
    def test_the_first_useful_line_without_labels_quotes_or_markers(self, output: str, expected: str) -> None:
        assert clean_output(output, "wireless headphones") == expected

    def test_an_echo_of_the_instruction_is_skipped(self) -> None:
        instruction = render(DEFAULT_TEMPLATES["paraphrase/query"].chat, "")
        output = "Rewrite the following product search query using different words\ncordless earphones"
        assert clean_output(output, "wireless headphones", instruction) == "cordless earphones"
        assert clean_output("Reply with only the rewritten query.", "x", instruction) == ""

    def test_a_full_stop_stays_only_when_the_source_has_one(self) -> None:
        assert clean_output("Cordless earphones.", "wireless headphones") == "Cordless earphones"
        assert clean_output("It is good.", "It works well.") == "It is good."

    def test_judge_names_why_an_answer_is_unusable(self) -> None:
        assert normalized("  Wireless, HEADPHONES! ") == "wireless headphones"
        assert judge("", "red shoes") == "empty output"
        assert judge("Red shoes.", "red shoes") == "identical to the source text"
        assert judge("Nike Air Max 90", "sneakers", ("x", "nike air max 90")) == "echo of the model input"
        assert judge("running sneakers", "red shoes", ("Nike Air Max 90",)) is None


# --- locating models -----------------------------------------------------------------------------------


class TestLocateModel:
    def test_a_transformers_directory_or_a_single_gguf(self, tmp_path: Path) -> None:
        plain, gguf = tmp_path / "plain", tmp_path / "gguf"
        plain.mkdir()
        gguf.mkdir()
        (plain / "config.json").write_text("{}")
        (gguf / "model.Q4_1.gguf").write_bytes(b"GGUF")
        assert locate_model(str(plain), None, tmp_path, FIELD) == ModelLocation(str(plain), None, str(plain))
        found = locate_model(str(gguf), None, tmp_path, FIELD, allow_gguf=True)
        assert (found.gguf_file, found.load_kwargs()) == ("model.Q4_1.gguf", {"gguf_file": "model.Q4_1.gguf"})
        assert locate_model("org/name", None, tmp_path, FIELD).path == "org/name"

    def test_ambiguous_or_empty_directories_name_the_field_and_the_fix(self, tmp_path: Path) -> None:
        (tmp_path / "a.gguf").write_bytes(b"GGUF")
        (tmp_path / "b.gguf").write_bytes(b"GGUF")
        with pytest.raises(ModelError, match=r"spec\.augmenters\[0\]\.model .* 2 GGUF files .* keep exactly one"):
            locate_model(str(tmp_path), None, tmp_path, FIELD, allow_gguf=True)
        with pytest.raises(ModelError, match=r"spec\.augmenters\[0\]\.model .*save_pretrained"):
            locate_model(str(tmp_path), None, tmp_path, FIELD)  # encoders have no GGUF form
        with pytest.raises(ModelError, match="no MinIO connection"):
            locate_model("s3://models/x/", None, tmp_path, FIELD, allow_gguf=True)

    def test_a_directory_that_does_not_load_is_a_model_error_naming_the_field(self, tmp_path: Path) -> None:
        (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
        cache = ModelCache(None, tmp_path / "cache")
        with pytest.raises(ModelError, match=r"^spec\.augmenters\[0\]\.model: .* does not load .*save_pretrained") as err:
            cache.generator(str(tmp_path), FIELD)
        assert isinstance(err.value, ConfigError)


# --- the sampler ---------------------------------------------------------------------------------------


class TestRowSampler:
    def test_a_sequence_draws_the_same_tokens_whatever_its_neighbours(self) -> None:
        import torch

        torch.manual_seed(3)
        scores = torch.randn(4, 50)
        together, alone = RowSampler([11, 22, 33, 44], 0.8), RowSampler([33], 0.8)
        draws = set()
        for _ in range(8):  # one call per generation step
            out = together(None, scores)
            assert torch.isinf(out).sum().item() == 4 * 49  # one finite score per sequence
            assert alone(None, scores[2:3]).argmax(-1).item() == out[2].argmax().item()
            draws.add(out[2].argmax().item())
        assert len(draws) > 1  # each step draws anew

    def test_draws_follow_the_temperature_and_stay_in_the_nucleus(self) -> None:
        import torch

        scores = torch.tensor([[4.0, 3.0, 0.0, -2.0, -9.0]])
        seeds = range(400)
        hot = [int(RowSampler([s], 2.0)(None, scores).argmax()) for s in seeds]
        cold = [int(RowSampler([s], 0.3)(None, scores).argmax()) for s in seeds]
        assert cold.count(0) > hot.count(0) > 200
        assert 4 not in hot  # e^-9 is far outside the top 95 %
        certain = torch.tensor([[10.0, 0.0, 0.0]])
        assert all(int(RowSampler([s], 1.0)(None, certain).argmax()) == 0 for s in seeds)

    def test_request_seeds_differ_by_row_field_and_variant(self) -> None:
        random = RowRandomness(7, "paraphrase")
        seeds = {request_seed(random.row_key(r), f, k) for r in range(20) for f in ("query", "item") for k in range(3)}
        assert len(seeds) == 120 and all(0 <= s < 2**63 for s in seeds)
        assert request_seed(random.row_key(5), "query", 0) == request_seed(RowRandomness(7, "paraphrase").row_key(5),
                                                                          "query", 0)


# --- tiny real models ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus_texts(200)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> TextGenerator:
    return TextGenerator(ModelLocation(str(tiny_causal_lm(tmp_path_factory.mktemp("chat"), texts))), FIELD)


@pytest.fixture(scope="module")
def marian(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> TextGenerator:
    return TextGenerator(ModelLocation(str(tiny_marian(tmp_path_factory.mktemp("marian"), texts, seed=1))), FIELD)


class TestTextGenerator:
    def test_kinds_formats_and_cpu_precision(self, chat_model: TextGenerator, marian: TextGenerator,
                                             tmp_path: Path, texts: list[str]) -> None:
        import torch

        plain = TextGenerator(ModelLocation(str(tiny_causal_lm(tmp_path, texts, chat=False))), FIELD)
        assert (chat_model.kind, plain.kind, marian.kind) == ("chat", "plain", "seq2seq")
        assert chat_model.format("hi") == "<|user|>hi\n<|assistant|>" and plain.format("hi") == "hi"
        assert chat_model.format("hi", [("a", "b")]) == "<|user|>a\n<|assistant|>b\n<|user|>hi\n<|assistant|>"
        assert chat_model.model.dtype == torch.float32 and str(chat_model.device) == "cpu"
        defaults = DEFAULT_TEMPLATES["doc2query"]
        assert chat_model.prompt(None, defaults) == Prompt(defaults.chat, defaults.examples)
        assert plain.prompt(None, defaults) == Prompt(defaults.plain)
        assert marian.prompt(None, defaults) == Prompt("{text}")
        assert chat_model.prompt("q: {text}", defaults) == Prompt("q: {text}")  # the spec's prompt, no examples
        shown = chat_model.prompt(None, defaults).model_input(chat_model, "Acme kettle 1.7 l")
        assert shown.count("<|user|>") == 3 and shown.endswith("Product: Acme kettle 1.7 l\n<|assistant|>")

    @pytest.mark.parametrize("temperature", [0.0, 0.9])
    def test_output_does_not_depend_on_batching_or_order(self, chat_model: TextGenerator, marian: TextGenerator,
                                                         texts: list[str], temperature: float) -> None:
        inputs = [chat_model.format(t) for t in texts[:6]] + [chat_model.format(texts[150])]
        seeds = [request_seed(i, "query", 0) for i in range(len(inputs))]
        for model in (chat_model, marian):
            batched = model.generate(inputs, seeds, GenerationSettings(4, 8, temperature))
            one_by_one = [model.generate([x], [s], GenerationSettings(1, 8, temperature))[0]
                          for x, s in zip(inputs, seeds, strict=True)]
            reversed_order = model.generate(inputs[::-1], seeds[::-1], GenerationSettings(16, 8, temperature))[::-1]
            assert batched == one_by_one == reversed_order
            assert all(batched)

    def test_sampling_varies_with_the_seed_and_greedy_does_not(self, chat_model: TextGenerator) -> None:
        prompt = [chat_model.format("red running shoes")] * 4
        sampled = chat_model.generate(prompt, [1, 2, 3, 4], GenerationSettings(4, 8, 1.0))
        greedy = chat_model.generate(prompt, [1, 2, 3, 4], GenerationSettings(4, 8, 0.0))
        assert len(set(sampled)) == 4 and len(set(greedy)) == 1
        assert sampled == chat_model.generate(prompt, [1, 2, 3, 4], GenerationSettings(2, 8, 1.0))

    def test_the_model_cache_loads_a_generator_once(self, tmp_path: Path, texts: list[str]) -> None:
        directory = str(tiny_causal_lm(tmp_path / "m", texts))
        cache = ModelCache(None, tmp_path / "cache")
        assert cache.generator(directory, FIELD) is cache.generator(directory, "spec.augmenters[1].model")


# --- the augmenters ------------------------------------------------------------------------------------

ROLES = ColumnRoles(query="q", item="title", label="label", attributes=("brand",))


def _batch(texts: list[str], n: int = 12, first_row: int = 100) -> RowBatch:
    queries = [t[:20] for t in texts[:n]]
    items = [texts[-1 - i] for i in range(n)]
    brands = [None if i % 3 else "acme" for i in range(n)]
    return RowBatch(ROLES, np.arange(first_row, first_row + n, dtype=np.int64),
                    {"q": queries, "title": items, "label": [i % 3 for i in range(n)], "brand": brands})


def _plan(batch: RowBatch, name: str, per_row: int, every: int = 2) -> BatchPlan:
    selected = np.array([i % every == 0 for i in range(len(batch))])
    return BatchPlan(selected, per_row, RowRandomness(7, name))


class TestAugmenters:
    def test_paraphrase_rows_respect_selection_budget_and_fields(self, chat_model: TextGenerator,
                                                                 texts: list[str]) -> None:
        batch = _batch(texts)
        plan = _plan(batch, "paraphrase", 2)
        aug = Paraphrase("paraphrase", chat_model, GenerationSettings(4, 8, 1.0), 3, ["query", "item"], None)
        rows = aug.augment(batch, plan)
        assert rows and all(plan.selected[r.source_row - 100] for r in rows)
        assert {r.variant for r in rows} <= {0, 1} and {r.label_rule for r in rows} == {"keep"}
        for row in rows:
            i = row.source_row - 100
            assert row.changes.keys() <= {"q", "title"}
            assert all(v and v != batch.row(i)[c] for c, v in row.changes.items())
        assert rows == aug.augment(batch, plan)  # no state carried between calls

    def test_a_row_gets_the_same_text_whatever_batch_it_is_in(self, chat_model: TextGenerator,
                                                              texts: list[str]) -> None:
        batch = _batch(texts)
        aug = Paraphrase("p", chat_model, GenerationSettings(3, 8, 0.8), 1, ["query"], "Say otherwise: {text}")
        whole = aug.augment(batch, _plan(batch, "p", 1, every=1))
        halves = []
        for part in (batch.take(range(5)), batch.take(range(5, 12))):
            halves += aug.augment(part, _plan(part, "p", 1, every=1))
        assert whole == sorted(halves, key=lambda r: r.source_row)

    def test_greedy_decoding_makes_one_variant_per_row(self, chat_model: TextGenerator, texts: list[str]) -> None:
        batch = _batch(texts)
        aug = Paraphrase("p", chat_model, GenerationSettings(8, 6, 0.0), 3, ["query"], None)
        rows = aug.augment(batch, _plan(batch, "p", 3))
        assert rows and {r.variant for r in rows} == {0}

    def test_doc2query_reads_title_and_attributes_and_assigns_the_label(self, chat_model: TextGenerator,
                                                                          texts: list[str]) -> None:
        batch = _batch(texts)
        assert item_text(batch, 0) == f"{batch.items[0]} (brand: acme)" and item_text(batch, 1) == batch.items[1]
        aug = Doc2Query("d2q", chat_model, GenerationSettings(4, 6, 0.7), 1, None, 0, "assign")
        rows = aug.augment(batch, _plan(batch, "d2q", 1))
        assert rows and all(r.changes.keys() == {"q", "label"} and r.changes["label"] == 0 for r in rows)
        assert {r.label_rule for r in rows} == {"assign"}
        kept = Doc2Query("d2q", chat_model, GenerationSettings(4, 6, 0.7), 1, None, None, "keep")
        assert all(r.changes.keys() == {"q"} for r in kept.augment(batch, _plan(batch, "d2q", 1)))

    def test_back_translation_goes_through_both_models(self, marian: TextGenerator, tmp_path: Path,
                                                       texts: list[str]) -> None:
        reverse = TextGenerator(ModelLocation(str(tiny_marian(tmp_path, texts, seed=2))), FIELD)
        batch = _batch(texts)
        plan = _plan(batch, "bt", 1)
        settings = GenerationSettings(8, 8, 0.9)
        two = BackTranslation("bt", marian, reverse, settings, 1, ["item"], "de", None).augment(batch, plan)
        one = BackTranslation("bt", marian, marian, settings, 1, ["item"], "de", None).augment(batch, plan)
        assert two and one and two != one
        assert all(r.changes.keys() == {"title"} for r in two + one)

    def test_an_answer_that_drops_a_brand_of_the_source_is_dropped_and_counted(self, chat_model: TextGenerator,
                                                                                 texts: list[str]) -> None:
        batch = _batch(texts)
        batch.columns["q"][0] = "acme kettle"  # row 0's brand is acme: a paraphrase must keep it
        aug = Paraphrase("p", chat_model, GenerationSettings(4, 6, 1.0), 1, ["query"], None)
        rows = aug.augment(batch, _plan(batch, "p", 1))
        written = [r for r in rows if r.unusable is None]
        assert all(r.source_row != 100 or "acme" in r.changes["q"].lower() for r in written)
        assert aug.dropped["lost an attribute value of the source text"] >= 1
        # Each drop also comes back as an unusable row, so the manifest counts it per reason.
        unusable = Counter(r.unusable for r in rows if r.unusable is not None)
        assert unusable == {k: v for k, v in aug.dropped.items() if v}
        assert all(not r.changes for r in rows if r.unusable is not None)


def test_factories_register_the_three_types() -> None:
    from sampleforge.jobs.augment import catalog  # noqa: F401 -- registration on import
    from sampleforge.jobs.augment.registry import registration

    specs: list[Any] = [ParaphraseAugmenter(type="paraphrase", model="org/m"),
                        Doc2QueryAugmenter(type="doc2query", model="org/m"),
                        BackTranslationAugmenter(type="backTranslation", model="org/m")]
    for entry in specs:
        assert registration(entry.type) is not None, entry.type
