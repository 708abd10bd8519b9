"""Publishing the trained model: files first, ``manifest.json`` last.

Layout under spec.output.uri::

    model/sampleforge_model.json   task, base model, method, head, labels: what loading needs
    model/encoder/ (or query_encoder/ + item_encoder/)   save_pretrained: config.json +
                                   model.safetensors (full) or adapter_config.json +
                                   adapter_model.safetensors (lora, adalora, prefixTuning)
    model/encoder-merged/          lora/adalora with output.mergeAdapter: adapter merged in
    model/head.safetensors         cross-encoders: the head and the dense-feature standardisation
    model/preprocess.json          trained on an AugmentationRun's output with dense features: its
                                   preprocessing, which the head applies (serving passes raw values)
    model/tokenizer.json ...       the tokenizer
    model/config.json, model.safetensors   cross-encoders without dense features: a transformers
                                   sequence-classification model (AutoModelForSequenceClassification);
                                   two-tower with one encoder: the encoder, with sentence-transformers'
                                   modules.json, sentence_bert_config.json, 1_Pooling/, 2_Normalize/
    model/query/, model/item/      two-tower with two encoders: one sentence-transformers directory each
    model/onnx/model.onnx          output.onnx: the same model as an ONNX graph (query/onnx/, item/onnx/)
                                   (see :mod:`.standard`)
    model/README.md                the model card
    metrics.json                   final and best metrics, evaluation history, loss curve, throughput
    report.html                    loss and metric curves, evaluation tables (htmlreport.py)
    predictions.parquet            evaluation predictions, for independent checks
    rejected_rows.jsonl            rows set aside as unusable, with the reason (when any)
    manifest.json                  written LAST

:mod:`.published` loads this layout back.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from sampleforge.api.finetune import FineTuneRunSpec
from sampleforge.jobs.common.storage import ObjectStore, S3Uri

from .methods import is_adapter
from .modeling import SEQUENCE_CLASSIFICATION_HEAD, CrossEncoder, DenseTransform, HeadConfig, encoders
from .standard import write_standard_formats

log = logging.getLogger(__name__)

MODEL_DIR = "model"
MODEL_CONFIG = "sampleforge_model.json"
HEAD_FILE = "head.safetensors"
PREPROCESS_FILE = "preprocess.json"
FORMAT_VERSION = 1


def calibration_for_model(calibration: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of the recipe's calibration record that decides (the rest is measurement)."""
    if calibration is None:
        return None
    return {k: calibration[k] for k in ("method", "threshold", "positiveLabel", "offsets", "objective", "tunedOn")
            if k in calibration}


def save_model(model: torch.nn.Module, tokenizer: Any, head: HeadConfig, labels: dict[str, Any],
               spec: FineTuneRunSpec, directory: Path, calibration: dict[str, Any] | None = None,
               preprocess: DenseTransform | None = None,
               sample: tuple[list[str], list[str] | None] = ([], None)) -> dict[str, Any]:
    """Write the (unwrapped) model into ``directory``; returns the model description.
    ``calibration`` (evaluation.calibration's tuned decision) is what ``predict()`` applies;
    ``preprocess`` (the AugmentationRun's preprocess.json) is shipped as ``preprocess.json``: the
    head applies it (its dense_low/high, dense_mean/std buffers), so serving passes raw features.
    ``sample``: evaluation (queries, items) texts the ONNX export (output.onnx) is checked on."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    # First: it merges adapters into copies, before the mergeAdapter copy below consumes them.
    standard = write_standard_formats(model, tokenizer, head, labels, spec, directory, calibration, sample)
    parts = encoders(model)
    adapter = any(is_adapter(e) for e in parts.values())
    merged: list[str] = []
    for name, encoder in parts.items():
        encoder.save_pretrained(directory / name, safe_serialization=True)  # type: ignore[operator]
        if is_adapter(encoder):
            _point_adapter_at(directory / name, spec.model)
            if spec.output.merge_adapter:
                # merge_and_unload folds the adapter into the base weights (the encoder is not used afterwards).
                encoder.merge_and_unload().save_pretrained(directory / f"{name}-merged", safe_serialization=True)  # type: ignore[operator]
                merged.append(f"{name}-merged")
    if isinstance(model, CrossEncoder):
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                 if not k.startswith("encoder.")}
        save_file(state, str(directory / HEAD_FILE))
    description = {
        "formatVersion": FORMAT_VERSION,
        "task": str(spec.task),
        "baseModel": spec.model,
        "method": spec.method.to_kube(),
        "head": {**asdict(head), "task": str(head.task)},
        "pooling": (head.pooling if spec.task == "twoTower" else "sequenceClassification"
                    if head.head_style == SEQUENCE_CLASSIFICATION_HEAD else "cls"),
        "standardFormats": standard,
        "maxLength": spec.training.max_length,
        "encoders": list(parts),
        "adapter": adapter,
        "merged": merged,
        "labels": labels,
        **({"calibration": calibration} if calibration is not None else {}),
        **({"densePreprocess": {"file": PREPROCESS_FILE, "features": list(preprocess.names),
                                "transform": "x' = (clip(x, clipLow, clipHigh) - center) / scale, inside the head; "
                                             "pass raw features"}} if preprocess is not None else {}),
    }
    if preprocess is not None:
        (directory / PREPROCESS_FILE).write_text(json.dumps(
            {k: v for k, v in preprocess.document.items() if k != "statsFile"}, indent=2, sort_keys=True))
    (directory / MODEL_CONFIG).write_text(json.dumps(description, indent=2, sort_keys=True))
    return description


def _point_adapter_at(directory: Path, base_model: str) -> None:
    """peft records the local cache path it loaded the base from; record spec.model instead."""
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_model
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def write_predictions(predictions: dict[str, list[Any]], path: Path) -> None:
    pq.write_table(pa.Table.from_pydict(predictions), str(path))


def write_rejected(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def commit_output(store: ObjectStore, output: S3Uri, staging: Path, manifest: dict[str, Any]) -> S3Uri:
    """Upload everything under ``staging`` to the output prefix, then the manifest that vouches for it."""
    entries = store.upload_directory(staging, output)
    return store.commit(output, {**manifest, "files": entries})


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows if v is not None]
    return "\n".join(lines)


def model_card(spec: FineTuneRunSpec, run: dict[str, str], data: dict[str, Any], results: dict[str, Any],
               description: dict[str, Any], world_size: int) -> str:
    """README.md for the model directory: what it is, what it was trained on and how, how good it is."""
    t, d = spec.training, spec.distribution
    task_text = {
        "relevance": "query-item relevance classification (cross-encoder)",
        "relevanceRegression": "query-item relevance regression (cross-encoder)",
        "ctr": "click-through-rate prediction (cross-encoder"
               + (" with dense features)" if description["head"]["num_dense"] else ")"),
        "twoTower": "two-tower retrieval (query and item encoders, in-batch negatives)",
    }[str(spec.task)]
    tags = ["sampleforge", str(spec.task), spec.method.type]
    front = ["---", f"base_model: {spec.model}", f"library_name: {'peft' if description['adapter'] else 'transformers'}",
             "tags:", *[f"- {tag}" for tag in tags], "---"]
    method = spec.method.to_kube()
    hyper = [("method", ", ".join(f"{k}={v}" for k, v in method.items())), ("epochs", t.epochs),
             ("max steps", t.max_steps), ("steps done", results.get("step")), ("batch size per process", t.batch_size),
             ("processes", world_size), ("gradient accumulation", d.gradient_accumulation_steps),
             ("effective batch size", t.batch_size * world_size * d.gradient_accumulation_steps),
             ("learning rate", t.learning_rate), ("scheduler", t.scheduler),
             ("warmup", t.warmup_steps if t.warmup_steps is not None else f"ratio {t.warmup_ratio or 0}"),
             ("weight decay", t.weight_decay), ("gradient clipping", t.gradient_clipping or "off"),
             ("max length", t.max_length), ("mixed precision", d.mixed_precision),
             ("gradient checkpointing", d.gradient_checkpointing), ("seed", t.seed),
             ("loss", t.loss if spec.task != "twoTower" else None),
             ("hard negatives", f"{results['hardNegatives']['trained']} judged-irrelevant rows "
              f"({spec.two_tower_options().hard_negatives})" if results.get("hardNegatives") else None),
             ("class weights", ", ".join(f"{k}: {v:.4g}" for k, v in results["classWeights"].items())
              + f" ({t.class_weights.type})" if t.class_weights and "classWeights" in results else None)]
    final = results.get("final", {})
    best = results.get("best")
    lines = [
        *front, "",
        f"# {run.get('name', 'model')}", "",
        (f"Fine-tuned from `{spec.model}` for {task_text} by the sampleforge FineTuneRun "
         f"`{run.get('namespace', '')}/{run.get('name', '')}` (uid `{run.get('uid', '')}`)."), "",
        "## Training data", "",
        _table([("training rows", data["train"]["rows"]), ("training source", data["train"]["uri"]),
                ("evaluation rows", data["eval"]["rows"]), ("evaluation source", data["eval"]["uri"]),
                ("rows set aside (see rejected_rows.jsonl)", data["rejectedRows"]),
                ("augmentation run", data.get("fromAugmentationRun"))]), "",
    ]
    if data.get("augmentationManifest"):
        lines += ["Augmentation manifest of the training data (as committed by the AugmentationRun):", "",
                  "```json", json.dumps(data["augmentationManifest"], indent=2, sort_keys=True, default=str)[:20000],
                  "```", ""]
    lines += ["## Hyperparameters", "", _table(hyper), "", "## Results", "",
              _table([(k, f"{v:.4f}") for k, v in final.items()]), ""]
    if results.get("rankingQueries") is not None:
        skipped = results.get("rankingQueriesSkipped", {})
        lines += [(f"Ranking metrics are averaged over the {results['rankingQueries']} evaluation queries with at "
                   "least two candidates and at least one relevant one; left out: "
                   f"{skipped.get('singleCandidate', 0)} with a single candidate (it ranks first whatever the "
                   f"model does) and {skipped.get('noRelevant', 0)} with no relevant candidate."), ""]
    if best:
        lines += [f"Best {best['name']}: {best['value']:.4f} at step {best['step']}"
                  + (" (stopped early)" if results.get("stoppedEarly") else "") + ".", ""]
    published = results.get("publishedStep")
    if published is not None and published != results.get("step"):
        lines += [(f"The published weights are step {published}'s, the best evaluation's (training ran to step "
                   f"{results.get('step')}); the results above are measured on them."), ""]
    calibration = results.get("calibration")
    if calibration:
        decided = (f"a threshold of {calibration['threshold']:.4f} on the probability of label "
                   f"`{calibration['positiveLabel']}`" if calibration["method"] == "threshold"
                   else "per-label log-prior offsets " + ", ".join(f"`{k}` {v:+.3f}"
                                                                  for k, v in calibration["offsets"].items()))
        lines += ["## Decision calibration", "",
                  (f"Predictions use {decided}, tuned to maximise {calibration['objective']} on the "
                   f"{calibration['rows']} rows of the evaluation split (the one early stopping watches; "
                   "evaluation.calibration). The calibrated decision metrics below are measured on "
                   f"{calibration.get('calibratedMeasuredOn', 'those same rows')}; judge the model on a test set "
                   "the run never saw. The results above are at the uncalibrated decision (argmax, or 0.5 for "
                   "ctr)."), "",
                  _table([(k, f"{calibration['uncalibrated'][k]:.4f} -> {v:.4f}")
                          for k, v in calibration["calibrated"].items()]), ""]
    if description.get("densePreprocess"):
        lines += ["## Dense features", "",
                  ("The training data's dense features were clipped and normalised by the AugmentationRun "
                   "(`preprocess.json`, shipped here); the model applies that transform itself, so pass raw "
                   "values, in this order: " + ", ".join(f"`{n}`" for n in description["densePreprocess"]["features"])
                   + "."), ""]
    if description["labels"].get("classes"):
        lines += ["## Labels", "", _table([(str(i), c) for i, c in enumerate(description["labels"]["classes"])]), ""]
    lines += ["## How to use", "", *standard_usage(spec, description), ("With sampleforge itself (every task and "
              "method, dense features included):"), "", "```python",
              "from sampleforge.jobs.finetune.published import load_published",
              "model = load_published('path/to/model')  # this directory, downloaded",
              "scores = model.score(['running shoes'], ['Nike Pegasus 41'])" if spec.task != "twoTower"
              else "queries, items = model.embed_queries(['running shoes']), model.embed_items(['Nike Pegasus 41'])",
              "```", ""]
    return "\n".join(lines)


def standard_usage(spec: FineTuneRunSpec, description: dict[str, Any]) -> list[str]:
    """The model card's lines on loading the standard-format files (:mod:`.standard`), if any."""
    standard = description.get("standardFormats") or {}
    m = spec.training.max_length
    if standard.get("transformers"):
        score = standard_score_line(str(spec.task))
        lines = [("With transformers alone (this directory is a sequence-classification model; `config.json` "
                 "`sampleforge` says how the job turns logits into its score and decision, calibration included):"),
                 "", "```python", "import torch",
                 "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                 "model = AutoModelForSequenceClassification.from_pretrained('path/to/model').eval()",
                 "tokenizer = AutoTokenizer.from_pretrained('path/to/model')",
                 (f"inputs = tokenizer(['running shoes'], ['Nike Pegasus 41'], padding=True, truncation=True, "
                 f"max_length={m}, return_tensors='pt')"),
                 "with torch.no_grad():", "    logits = model(**inputs).logits", score, "```", ""]
        if standard.get("onnx"):
            lines += [("`onnx/model.onnx` is the same model for onnxruntime: inputs `input_ids`, `attention_mask`, "
                      "`token_type_ids` (int64), output `logits`."), ""]
        return lines
    towers = standard.get("sentenceTransformers")
    if towers:
        query, item = (("'path/to/model'", "'path/to/model'") if "encoder" in towers
                       else ("'path/to/model/query'", "'path/to/model/item'"))
        lines = ["With sentence-transformers alone (" + ("this directory is" if "encoder" in towers else
                 "`query/` and `item/` are") + f" sentence-transformers models: {description.get('pooling')} "
                 "pooling, normalised, so the dot product is the cosine similarity the job ranked by):", "",
                 "```python", "from sentence_transformers import SentenceTransformer",
                 f"queries = SentenceTransformer({query}).encode(['running shoes'])",
                 f"items = SentenceTransformer({item}).encode(['Nike Pegasus 41'])",
                 "similarity = queries @ items.T", "```", ""]
        if any(t.get("onnx") for t in towers.values()):
            lines += [("`onnx/model.onnx` in each model directory is the same encoder for onnxruntime: inputs "
                      "`input_ids`, `attention_mask`, `token_type_ids`, outputs `last_hidden_state` and the pooled, "
                      "normalised `sentence_embedding`."), ""]
        return lines
    return [f"No standard-format copy: {standard.get('reason', 'see sampleforge_model.json')}.", ""]


def standard_score_line(task: str) -> str:
    """The model card's line turning logits into the job's score, per task."""
    if task == "relevance":
        return ("probabilities = logits.softmax(-1); score = probabilities @ torch.tensor(model.config.sampleforge"
                "['classGrades'])  # expected grade, as the ranking metrics")
    if task == "ctr":
        return "click_probability = logits[:, 0].sigmoid()"
    return "relevance = logits[:, 0]"
