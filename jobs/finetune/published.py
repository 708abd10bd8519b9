"""Loading a published model directory (see :mod:`.publish`) back, to score pairs or embed text.

This is what a serving process or an offline evaluation imports; the integration tests use it to
prove that the published files reproduce the predictions the job recorded.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from sampleforge.api.finetune import Task

from .calibration import Decision
from .methods import freeze_unused_pooler, load_config_hidden
from .modeling import SEQUENCE_CLASSIFICATION_HEAD, CrossEncoder, HeadConfig, TwoTower, sequence_classifier_shell
from .publish import HEAD_FILE, MODEL_CONFIG


class PublishedModel:
    """A published model, ready for inference on CPU or a GPU."""

    def __init__(self, module: CrossEncoder | TwoTower, tokenizer: Any, description: dict[str, Any]) -> None:
        self.module = module.eval()
        self.tokenizer = tokenizer
        self.description = description
        self.max_length = int(description["maxLength"])
        self.prefix_tuning = description["method"]["type"] == "prefixTuning"

    def _inputs(self, texts: Sequence[str], pairs: Sequence[str] | None) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(list(texts), list(pairs) if pairs is not None else None, padding=True,
                                 truncation="longest_first" if pairs is not None else True,
                                 max_length=self.max_length, return_tensors="pt")
        if self.prefix_tuning:
            encoded.pop("token_type_ids", None)
        if pairs is None:
            encoded.pop("token_type_ids", None)
        device = next(self.module.parameters()).device
        return {k: v.to(device) for k, v in encoded.items()}

    @torch.no_grad()
    def logits(self, queries: Sequence[str], items: Sequence[str], dense: NDArray[np.float32] | None = None,
               batch_size: int = 64) -> NDArray[np.float32]:
        """Raw outputs of a cross-encoder for (query, item) pairs."""
        assert isinstance(self.module, CrossEncoder), "logits() is for cross-encoders; use embed_* for twoTower"
        out = []
        for start in range(0, len(queries), batch_size):
            inputs = self._inputs(queries[start:start + batch_size], items[start:start + batch_size])
            features = None if dense is None else torch.as_tensor(dense[start:start + batch_size])
            out.append(self.module(inputs, features).float().cpu().numpy())
        return np.concatenate(out)

    def score(self, queries: Sequence[str], items: Sequence[str],
              dense: NDArray[np.float32] | None = None) -> NDArray[np.float64]:
        """Ranking score per pair: expected grade (relevance), prediction (regression) or click
        probability (ctr), the same score the job's ranking metrics used."""
        logits = self.logits(queries, items, dense).astype(np.float64)
        task = Task(self.description["task"])
        if task == Task.RELEVANCE:
            probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
            grades = self.description["labels"].get("classGrades")
            scores: NDArray[np.float64] = probs @ np.asarray(grades) if grades is not None else probs.max(axis=1)
            return scores
        if task == Task.CTR:
            return np.asarray(1.0 / (1.0 + np.exp(-logits[:, 0])), dtype=np.float64)
        return np.asarray(logits[:, 0], dtype=np.float64)

    def predict(self, queries: Sequence[str], items: Sequence[str],
                dense: NDArray[np.float32] | None = None) -> list[str]:
        """Predicted label per pair (relevance classes, "0"/"1" for ctr), with the decision the run
        calibrated on its evaluation split (evaluation.calibration) when it did, so that serving
        decides as predictions.parquet recorded."""
        task = Task(self.description["task"])
        logits = self.logits(queries, items, dense).astype(np.float64)
        if task == Task.RELEVANCE:
            classes = tuple(self.description["labels"]["classes"])
            probabilities = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
        elif task == Task.CTR:
            classes = ("0", "1")
            probabilities = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        else:
            raise ValueError(f"predict() is for relevance and ctr models; this one is {task}: use score()")
        decision = Decision.from_json(self.description.get("calibration"), classes)
        return [classes[i] for i in decision.predict(probabilities)]

    @torch.no_grad()
    def _embed(self, texts: Sequence[str], items: bool, batch_size: int = 64) -> NDArray[np.float32]:
        assert isinstance(self.module, TwoTower), "embed_* is for twoTower models"
        encode = self.module.encode_items if items else self.module.encode_queries
        return np.concatenate([encode(self._inputs(texts[s:s + batch_size], None)).cpu().numpy()
                               for s in range(0, len(texts), batch_size)])

    def embed_queries(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self._embed(texts, items=False)

    def embed_items(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self._embed(texts, items=True)


def load_published(directory: str | Path, base_model: str | None = None, merged: bool = False) -> PublishedModel:
    """Load a published model directory. Adapter models need their base model: ``base_model``
    (a local directory or hub id), else the ``baseModel`` recorded at training time. With
    ``merged=True`` the merged copy is used and no base model is needed."""
    root = Path(directory)
    description = json.loads((root / MODEL_CONFIG).read_text())
    head_fields = dict(description["head"])
    head = HeadConfig(**{**head_fields, "task": Task(head_fields["task"])})

    def encoder(name: str) -> torch.nn.Module:
        loaded: torch.nn.Module
        if merged and f"{name}-merged" in description["merged"]:
            loaded = AutoModel.from_pretrained(root / f"{name}-merged")
            return loaded
        if not description["adapter"]:
            loaded = AutoModel.from_pretrained(root / name)
            return loaded
        base = AutoModel.from_pretrained(base_model or description["baseModel"])
        freeze_unused_pooler(base)
        with warnings.catch_warnings():
            # AdaLoRA records its rank pattern by parameter name (…lora_E) and peft then matches it
            # against module names and warns. Nothing is lost: AdaLoRA keeps full-rank tensors with
            # pruned ranks zeroed, and those load as saved (the integration tests compare scores).
            warnings.filterwarnings("ignore", "The following rank_pattern keys did not match", RuntimeWarning)
            return PeftModel.from_pretrained(base, root / name)

    module: CrossEncoder | TwoTower
    if head.task == Task.TWO_TOWER:
        names = description["encoders"]
        module = TwoTower(encoder(names[0]), encoder(names[1]) if len(names) > 1 else None, head)
    else:
        enc = encoder("encoder")
        config = load_config_hidden(enc)
        # The architecture's own head (sequenceClassification style): its modules, loaded from head.safetensors.
        shell = (sequence_classifier_shell(config, head.num_outputs)
                 if head.head_style == SEQUENCE_CLASSIFICATION_HEAD else None)
        module = CrossEncoder(enc, head, int(config.hidden_size), shell)
        missing, unexpected = module.load_state_dict(load_file(str(root / HEAD_FILE)), strict=False)
        if unexpected or any(not k.startswith("encoder.") for k in missing):
            raise ValueError(f"{root / HEAD_FILE} does not match the model: missing {missing}, unexpected {unexpected}")
    return PublishedModel(module, AutoTokenizer.from_pretrained(root), description)
