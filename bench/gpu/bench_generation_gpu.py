"""Generation on a GPU: the job's vllm engine against its transformers engine, same prompts and model.

Both engines are the job's own classes (:class:`~sampleforge.jobs.augment.vllm_engine.VllmGenerator`,
:class:`~sampleforge.jobs.augment.transformers_engine.TextGenerator`), driven as the paraphrase augmenter
drives them: the built-in chat prompt, one row-keyed seed per request, all of a shard's requests in
one ``generate`` call (transformers cuts them into token-budget batches; vLLM schedules them itself).
Load time is measured apart from generation; each engine generates a warm-up set first.

The model: no hub can be reached on the GPU machine, so a model of SmolLM2-360M's shape (32 layers,
960 wide, grouped-query attention) with random weights and a BPE tokenizer trained on the prompts is
built locally, in bf16. Throughput does not depend on the weights; random weights rarely emit an
end-of-sequence token, so nearly every answer is ``maxNewTokens`` long in both engines (tokens/s
counts the tokens actually generated).

Checks (the exit status is 1 when one fails): every engine answers every row, mostly non-empty; the
same rows asked again in another order and batch composition give the same answers (reported as a
share: per-request seeds make sampling reproducible, but a kernel may round differently for another
batch size). Results: ``generation-gpu.json`` under --output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

#: SmolLM2-360M's shape (its config.json), vocabulary aside (the tokenizer trained here is smaller).
SHAPES: dict[str, dict[str, int]] = {
    "smollm2-360m": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                     "num_attention_heads": 15, "num_key_value_heads": 5},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
}
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
BRANDS = ["nike", "adidas", "apple", "lego", "ikea", "sony", "bosch", "philips", "samsung", "xiaomi", "levis", "puma"]
THINGS = ["running shoes", "phone case", "standing desk", "building set", "kettle 1.7 l", "noise cancelling headphones",
          "cordless drill", "electric toothbrush", "4k tv 55 inch", "smart watch", "slim fit jeans", "rain jacket"]
COLOURS = ["red", "black", "white", "blue", "green", "grey", "pink", "navy"]
EXTRAS = ["", "for men", "for women", "for kids", "size 42", "waterproof", "with free delivery", "2026 model",
          "under 50 euro", "wireless", "stainless steel", "pack of 3"]


def queries(n: int) -> list[str]:
    """``n`` distinct shopping queries of varied length (deterministic)."""
    out: list[str] = []
    i = 0
    while len(out) < n:
        b, t, c, e = (BRANDS[i % 12], THINGS[(i // 12) % 12], COLOURS[(i // 144) % 8], EXTRAS[(i * 7) % 12])
        words = [c, b, t, e] if i % 3 else [b, t, e, c, "best price", "near me"][: 2 + i % 5]
        text = " ".join(w for w in words if w)
        out.append(text if i < 1152 else f"{text} #{i}")
        i += 1
    return out


def build_model(directory: Path, shape: str, texts: list[str]) -> Path:
    """A random-weight Llama of ``shape`` in bf16 and a byte-level BPE tokenizer with a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from sampleforge.jobs.augment.prompts import DEFAULT_TEMPLATES

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    corpus = texts + [t for pair in DEFAULT_TEMPLATES["paraphrase/query"].examples for t in pair]
    corpus += [DEFAULT_TEMPLATES["paraphrase/query"].chat] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=4096, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), max_position_embeddings=2048, pad_token_id=fast.pad_token_id,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, tie_word_embeddings=True,
                         rope_theta=100000.0, **SHAPES[shape])
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    return directory


def measure(engine: Any, queries_: list[str], seeds: list[int], settings: Any, warmup: int) -> dict[str, Any]:
    """Generate for every query (after a warm-up set); rows/s and tokens/s of the timed call, and the
    share of a re-asked subset (another order, other companions) that came back the same."""
    from sampleforge.jobs.augment.prompts import DEFAULT_TEMPLATES

    prompt = engine.prompt(None, DEFAULT_TEMPLATES["paraphrase/query"])
    inputs = [prompt.model_input(engine, q) for q in queries_]
    engine.generate(inputs[:warmup], [s + 1 for s in seeds[:warmup]], settings)  # warm-up: other seeds
    before = (engine.stats.generated, engine.stats.generation_seconds)
    started = time.monotonic()
    answers = engine.generate(inputs, seeds, settings)
    seconds = time.monotonic() - started
    tokenizer = engine.tokenizer
    tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    subset = list(range(0, len(inputs), max(1, len(inputs) // 64)))[::-1]
    again = engine.generate([inputs[i] for i in subset], [seeds[i] for i in subset], settings)
    same = sum(a == answers[i] for a, i in zip(again, subset, strict=True))
    return {
        "rowsPerSecond": round(len(inputs) / seconds, 2), "tokensPerSecond": round(tokens / seconds, 1),
        "loadSeconds": round(engine.stats.load_seconds, 2), "seconds": round(seconds, 3), "rows": len(inputs),
        "tokens": tokens, "nonEmpty": sum(bool(a.strip()) for a in answers),
        "engineRowsPerSecond": round((engine.stats.generated - before[0])
                                     / max(1e-9, engine.stats.generation_seconds - before[1]), 2),
        "sameWhenReaskedInAnotherBatch": round(same / len(subset), 3),
        "sample": answers[:3],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--batch-size", type=int, default=256, help="transformers: most sequences per batch")
    parser.add_argument("--max-batch-tokens", type=int, default=65536, help="transformers: token budget per batch")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-360m")
    parser.add_argument("--work", type=Path, required=True, help="a scratch folder for the model")
    parser.add_argument("--output", type=Path, required=True, help="folder for generation-gpu.json")
    args = parser.parse_args(argv)

    import torch
    import transformers

    from sampleforge.jobs.augment.engines import GenerationSettings
    from sampleforge.jobs.augment.errors import ConfigError
    from sampleforge.jobs.augment.generation import request_seed
    from sampleforge.jobs.augment.models import ModelLocation
    from sampleforge.jobs.augment.transformers_engine import TextGenerator
    from sampleforge.jobs.augment.vllm_engine import VllmGenerator, require_vllm

    texts = queries(args.rows)
    seeds = [request_seed(i, "query", 0) for i in range(len(texts))]
    started = time.monotonic()
    model_dir = build_model(args.work / "model", args.shape, texts)
    print(f"model of shape {args.shape} built in {time.monotonic() - started:.1f} s: {model_dir}", flush=True)
    settings = GenerationSettings(args.batch_size, args.max_new_tokens, args.temperature, args.max_batch_tokens)
    location = ModelLocation(str(model_dir), ref=f"random-{args.shape}")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__},
        "model": f"random-weight Llama of SmolLM2-360M's shape ({args.shape}), bf16 on a GPU, BPE vocabulary of "
                 "4096 trained on the prompts",
        "rows": len(texts), "maxNewTokens": args.max_new_tokens, "temperature": args.temperature,
        "engines": {}, "vllmOverTransformers": None,
    }

    print("== transformers engine", flush=True)
    engine = TextGenerator(location, "bench.transformers")
    report["engines"]["transformers"] = {**measure(engine, texts, seeds, settings, args.warmup),
                                        "batchSize": args.batch_size, "maxBatchTokens": args.max_batch_tokens}
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(json.dumps(report["engines"]["transformers"]), flush=True)

    print("== vllm engine", flush=True)
    if importlib.util.find_spec("vllm") is None:
        report["engines"]["vllm"] = {"skipped": "vLLM is not installed on this machine (the job-vllm image has it)"}
    else:
        try:
            require_vllm("bench.engine")
        except ConfigError as err:
            report["engines"]["vllm"] = {"skipped": str(err)}
        else:
            import vllm

            report["machine"]["vllm"] = vllm.__version__
            engine = VllmGenerator.load(location, "bench.vllm")
            report["engines"]["vllm"] = measure(engine, texts, seeds, settings, args.warmup)
            print(json.dumps(report["engines"]["vllm"]), flush=True)
    tf, vl = report["engines"]["transformers"], report["engines"]["vllm"]
    if "rowsPerSecond" in vl:
        report["vllmOverTransformers"] = round(vl["rowsPerSecond"] / tf["rowsPerSecond"], 2)

    failures = [f"{name}: {result['nonEmpty']} of {result['rows']} answers non-empty"
                for name, result in report["engines"].items()
                if "rows" in result and result["nonEmpty"] < 0.95 * result["rows"]]
    report["checks"] = {"failures": failures, "passed": not failures}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "generation-gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output / 'generation-gpu.json'}")
    print(f"transformers: {tf['rowsPerSecond']} rows/s ({tf['tokensPerSecond']} tokens/s, load {tf['loadSeconds']} s); "
          + (f"vllm: {vl['rowsPerSecond']} rows/s ({vl['tokensPerSecond']} tokens/s, load {vl['loadSeconds']} s); "
             f"vllm/transformers: {report['vllmOverTransformers']}x" if "rowsPerSecond" in vl
             else f"vllm: skipped ({vl['skipped']})"))
    for failure in failures:
        print(f"CHECK FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
