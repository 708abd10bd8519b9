"""The published model in the formats standard serving stacks load, beside this project's own layout.

* A cross-encoder without dense features (its head is the architecture's sequence-classification
  head, :data:`~.modeling.SEQUENCE_CLASSIFICATION_HEAD`): ``model/`` itself is a transformers
  sequence-classification directory (``config.json`` with ``id2label``, ``model.safetensors``, the
  tokenizer), so ``AutoModelForSequenceClassification.from_pretrained("model")`` gives the logits the
  job evaluated. ``config.json`` ``sampleforge`` says how to turn them into the job's score and
  decision (expected grade, sigmoid, calibrated threshold or per-label offsets).
* A two-tower model: ``model/`` (one shared encoder) or ``model/query/`` and ``model/item/`` (two) are
  sentence-transformers directories (Transformer -> Pooling -> Normalize, with the pooling mode the
  job trained with), so ``SentenceTransformer(dir).encode(texts)`` gives the job's embeddings.
* With ``output.onnx``: ``onnx/model.onnx`` in each of those directories (a cross-encoder's
  ``logits``; an encoder's ``last_hidden_state`` and ``sentence_embedding``), run with onnxruntime
  against PyTorch on evaluation texts before it is published.

lora/adalora adapters are merged into a copy of the encoder for these files; a prefix-tuning adapter
cannot be merged, so such a model is published in this project's layout only (``standardFormats``
in ``sampleforge_model.json`` says why).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn

from sampleforge.api.finetune import FineTuneRunSpec, Task
from sampleforge.jobs.common.pooling import Pooling, pool, sentence_transformers_files

from .methods import is_adapter, load_config_hidden
from .modeling import SEQUENCE_CLASSIFICATION_HEAD, CrossEncoder, HeadConfig, TwoTower

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
#: Largest absolute difference between onnxruntime and PyTorch outputs accepted (fp32 on CPU).
ONNX_TOLERANCE = 1e-3
#: Texts the ONNX check runs (the first evaluation texts), and the opset it exports to.
ONNX_CHECK_TEXTS = 16
ONNX_OPSET = 18


class StandardFormatError(RuntimeError):
    """An export that does not reproduce the job's outputs: published files must not lie."""


def plain_encoder(encoder: nn.Module) -> nn.Module | None:
    """The encoder without peft: itself, a merged copy of a lora/adalora adapter (the training model
    is left as it is), or None for an adapter that cannot be merged (prefix tuning)."""
    if not is_adapter(encoder):
        return encoder
    assert isinstance(encoder, PeftModel)
    if encoder.peft_config[encoder.active_adapter].is_prompt_learning:
        return None
    merged: nn.Module = copy.deepcopy(encoder).merge_and_unload()
    return merged


def decision_config(task: Task, labels: dict[str, Any], calibration: dict[str, Any] | None) -> dict[str, Any]:
    """``config.json`` ``sampleforge``: how the job turns the logits into its score and its decision."""
    if task == Task.RELEVANCE:
        grades = labels.get("classGrades")
        score = ("expected grade: softmax(logits) @ classGrades" if grades is not None
                 else "the largest class probability, softmax(logits).max()")
        decision = "argmax of softmax(logits) over id2label"
    elif task == Task.CTR:
        score = "click probability: sigmoid(logits[:, 0])"
        decision = "click (label 1) when sigmoid(logits[:, 0]) >= 0.5"
    else:
        score = "the predicted relevance: logits[:, 0] (no activation)"
        decision = "none (regression)"
    out: dict[str, Any] = {"task": str(task), "score": score, "decision": decision,
                           **({"classGrades": labels["classGrades"]} if labels.get("classGrades") is not None else {})}
    if calibration is not None:
        if calibration["method"] == "threshold":
            apply = (f"predict label {calibration['positiveLabel']!r} when its probability "
                     f"({'sigmoid(logits[:, 0])' if task == Task.CTR else 'softmax(logits)[:, id]'}) "
                     f">= threshold, else the other label")
        else:
            apply = "argmax over labels of log(softmax(logits)) + offsets[label]"
        out["calibration"] = {**calibration, "apply": apply}
        out["decision"] = apply + " (evaluation.calibration, tuned on the run's evaluation split)"
    return out


def _texts(inputs: Any, pairs: bool, max_length: int, texts: Sequence[str], items: Sequence[str] | None) -> Any:
    return inputs(list(texts), list(items) if pairs and items is not None else None, padding=True,
                  truncation="longest_first" if pairs else True, max_length=max_length, return_tensors="pt")


class _Logits(nn.Module):
    """A sequence classifier as an ONNX graph: token ids in, logits out."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(input_ids=input_ids, attention_mask=attention_mask,
                                               token_type_ids=token_type_ids).logits
        return logits


class _Embeddings(nn.Module):
    """An encoder with the job's pooling and normalisation as an ONNX graph."""

    def __init__(self, encoder: nn.Module, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden: torch.Tensor = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                            token_type_ids=token_type_ids).last_hidden_state
        return hidden, F.normalize(pool(hidden, attention_mask, self.pooling).float(), dim=-1)


def export_onnx(module: nn.Module, example: dict[str, torch.Tensor], check: dict[str, torch.Tensor],
                outputs: list[str], path: Path) -> float:
    """Export ``module`` (inputs input_ids, attention_mask, token_type_ids; batch and sequence
    dynamic) with torch.export to ``path``, run it with onnxruntime on ``check`` and return the
    largest absolute difference from PyTorch's outputs (every output compared)."""
    import onnxruntime

    names = ["input_ids", "attention_mask", "token_type_ids"]
    module = module.eval().cpu()
    dynamic = torch.export.Dim.DYNAMIC
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The exporter's notes about optional torchvision ops and renamed axes: not about this graph.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, tuple(example[n] for n in names), dynamo=True, input_names=names,
                                    output_names=outputs, opset_version=ONNX_OPSET,
                                    dynamic_shapes={n: {0: dynamic, 1: dynamic} for n in names}, verbose=False)
        assert program is not None
        program.save(str(path), external_data=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: check[n].numpy() for n in names})
    with torch.no_grad():
        expected = module(*(check[n] for n in names))
    expected_list = list(expected) if isinstance(expected, tuple) else [expected]
    return max(float(np.abs(np.asarray(g) - e.float().numpy()).max()) for g, e in zip(got, expected_list, strict=True))


def _example(tokenizer: Any, texts: Sequence[str], items: Sequence[str] | None, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenised inputs with token_type_ids (zeros for single texts, as the models default to)."""
    encoded = dict(_texts(tokenizer, items is not None, max_length, texts, items))
    if "token_type_ids" not in encoded:
        encoded["token_type_ids"] = torch.zeros_like(encoded["input_ids"])
    return {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _check(difference: float, path: Path) -> dict[str, Any]:
    if not difference <= ONNX_TOLERANCE:
        raise StandardFormatError(f"the ONNX export {path.name} differs from the PyTorch model by {difference:.3g} "
                                  f"(more than {ONNX_TOLERANCE}) on evaluation texts; not publishing it")
    log.info("onnx export checked", extra={"file": str(path), "max_abs_difference": difference})
    return {"maxAbsDifference": difference, "checkedTexts": ONNX_CHECK_TEXTS, "runtime": "onnxruntime"}


def write_standard_formats(model: nn.Module, tokenizer: Any, head: HeadConfig, labels: dict[str, Any],
                           spec: FineTuneRunSpec, directory: Path, calibration: dict[str, Any] | None,
                           sample: tuple[Sequence[str], Sequence[str] | None]) -> dict[str, Any]:
    """Write the standard-format files into ``directory`` (model/, which already holds the tokenizer);
    returns what was written, for ``sampleforge_model.json`` ``standardFormats``. ``sample``:
    evaluation (queries, items) for the ONNX check (items None for two-tower)."""
    max_length = spec.training.max_length
    texts = list(sample[0])[:ONNX_CHECK_TEXTS] or ["a query"]
    items = None if sample[1] is None else (list(sample[1])[:ONNX_CHECK_TEXTS] or ["an item"])
    # Two rows at least: torch.export specialises a dimension of size 1.
    texts, items = (texts * 2, None if items is None else items * 2) if len(texts) < 2 else (texts, items)
    if isinstance(model, CrossEncoder):
        classifier = model.classifier
        if head.head_style != SEQUENCE_CLASSIFICATION_HEAD or classifier is None:
            return {"transformers": None, "reason": "a head with dense features is not a transformers "
                    "sequence-classification model: load it with sampleforge.jobs.finetune.published"}
        encoder = plain_encoder(model.encoder)
        if encoder is None:
            return {"transformers": None, "reason": "a prefix-tuning adapter cannot be merged into the encoder"}
        prefix = classifier.base_model_prefix
        saved_config = classifier.config
        config = copy.deepcopy(saved_config)
        names = (list(labels.get("classes") or []) if head.task == Task.RELEVANCE
                 else ["click" if head.task == Task.CTR else "relevance"])
        config.id2label = {i: str(n) for i, n in enumerate(names)}
        config.label2id = {str(n): i for i, n in enumerate(names)}
        problem_types: dict[Task, Literal["single_label_classification", "multi_label_classification",
                                          "regression"]] = {
            Task.RELEVANCE: "single_label_classification", Task.CTR: "multi_label_classification",
            Task.RELEVANCE_REGRESSION: "regression"}
        config.problem_type = problem_types[head.task]
        config.sampleforge = decision_config(head.task, labels, calibration)
        setattr(classifier, prefix, encoder)
        classifier.config = config
        try:
            classifier.save_pretrained(directory, safe_serialization=True)
            out: dict[str, Any] = {"transformers": {"path": ".", "class": "AutoModelForSequenceClassification",
                                                    "architecture": type(classifier).__name__}}
            if spec.output.onnx:
                path = directory / ONNX_DIR / ONNX_FILE
                difference = export_onnx(_Logits(copy.deepcopy(classifier)),
                                         _example(tokenizer, texts[:2], None if items is None else items[:2],
                                                  max_length),
                                         _example(tokenizer, texts, items, max_length), ["logits"], path)
                out["onnx"] = {"path": f"{ONNX_DIR}/{ONNX_FILE}", "inputs": ["input_ids", "attention_mask",
                                                                            "token_type_ids"],
                               "outputs": ["logits"], **_check(difference, path)}
        finally:
            setattr(classifier, prefix, model.encoder)
            classifier.config = saved_config
        return out
    assert isinstance(model, TwoTower)
    towers = ({".": model.query_encoder} if model.item_encoder is None
              else {"query": model.query_encoder, "item": model.item_encoder})
    pooling = Pooling(head.pooling, True, "training")
    written: dict[str, Any] = {}
    for name, tower in towers.items():
        encoder = plain_encoder(tower)
        if encoder is None:
            return {"sentenceTransformers": None, "reason": "a prefix-tuning adapter cannot be merged into the encoder"}
        target = directory if name == "." else directory / name
        encoder.save_pretrained(target, safe_serialization=True)  # type: ignore[operator]
        if name != ".":
            tokenizer.save_pretrained(target)
        width = int(load_config_hidden(encoder).hidden_size)
        sentence_transformers_files(target, pooling, width, max_length)
        entry: dict[str, Any] = {"path": name, "pooling": head.pooling, "normalize": True}
        if spec.output.onnx:
            path = target / ONNX_DIR / ONNX_FILE
            difference = export_onnx(_Embeddings(copy.deepcopy(encoder), head.pooling),
                                     _example(tokenizer, texts[:2], None, max_length),
                                     _example(tokenizer, texts, None, max_length),
                                     ["last_hidden_state", "sentence_embedding"], path)
            entry["onnx"] = {"path": f"{ONNX_DIR}/{ONNX_FILE}" if name == "." else f"{name}/{ONNX_DIR}/{ONNX_FILE}",
                             "inputs": ["input_ids", "attention_mask", "token_type_ids"],
                             "outputs": ["last_hidden_state", "sentence_embedding"], **_check(difference, path)}
        written["encoder" if name == "." else name] = entry
    return {"sentenceTransformers": written}

