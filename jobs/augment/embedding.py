"""The augmentation job's non-generative models: sentence encoders (hard negatives, similarity filter)
and pair classifiers (label-consistency teacher), loaded once per pod by
:class:`~.modelcache.ModelCache` from where :mod:`.models` found them. Encoders pool the last hidden state
as the model's own sentence-transformers files say (``modules.json`` and its Pooling module's config:
CLS for BGE-style models, mean for MiniLM; :mod:`sampleforge.jobs.common.pooling`), mean pooling when
it has none, and L2-normalise, so cosine similarity is a dot product. Inference is batched, on the
GPU when there is one, in a fixed order, so the same texts give
the same vectors.

torch and transformers are imported on first use: a run without model-based steps never pays for them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sampleforge.jobs.common.pooling import PoolingConfigError, model_pooling, pool

from .errors import ModelError

log = logging.getLogger(__name__)

__all__ = ["PairClassifier", "TextEncoder"]


def _device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TextEncoder:
    """Sentence embeddings: last hidden states pooled as the model declares
    (:func:`~sampleforge.jobs.common.pooling.model_pooling`), L2-normalised."""

    def __init__(self, location: str, field_path: str, batch_size: int = 64, max_length: int = 128) -> None:
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location)
            self.model = AutoModel.from_pretrained(location)
            self.pooling = model_pooling(location)
        except PoolingConfigError as err:
            raise ModelError(f"{field_path}: the model at {location} has pooling files this job cannot apply: "
                             f"{err}") from err
        except (OSError, ValueError) as err:
            raise ModelError(f"{field_path}: the model at {location} does not load with transformers: {err}") from err
        log.info("encoder pooling", extra={"model": location, "pooling": self.pooling.mode,
                                           "pooling_source": self.pooling.source})
        self.device = _device()
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """One unit vector per text (rows x hidden size)."""
        import torch

        if not texts:
            return np.zeros((0, int(self.model.config.hidden_size)), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = list(texts[start : start + self.batch_size])
                enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                # Normalised whatever the model declares: similarity thresholds and mining are cosines.
                pooled = torch.nn.functional.normalize(pool(hidden, enc["attention_mask"], self.pooling.mode).float(),
                                                       dim=-1)
                out.append(pooled.cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def similarity(self, left: Sequence[str], right: Sequence[str]) -> NDArray[np.float32]:
        """Cosine similarity of ``left[i]`` and ``right[i]``; each distinct text is encoded once."""
        unique = sorted(set(left) | set(right))
        index = {t: i for i, t in enumerate(unique)}
        vectors = self.encode(unique)
        a = vectors[[index[t] for t in left]]
        b = vectors[[index[t] for t in right]]
        sims: NDArray[np.float32] = np.einsum("ij,ij->i", a, b)
        return sims


class PairClassifier:
    """A sequence-pair classifier (query, item) -> class probabilities, for the label-consistency check."""

    def __init__(self, location: str, field_path: str, batch_size: int = 32, max_length: int = 256) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location)
            self.model = AutoModelForSequenceClassification.from_pretrained(location)
        except (OSError, ValueError) as err:
            raise ModelError(f"{field_path}: the classifier at {location} does not load with transformers: "
                             f"{err}") from err
        self.device = _device()
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        id2label = getattr(self.model.config, "id2label", None) or {}
        self.class_names = [str(id2label.get(i, i)) for i in range(int(self.model.config.num_labels))]

    def class_index(self, label: Any) -> int | None:
        """The output index for a data label: by the model's label names, else a label that is itself
        a valid class index (graded labels 0, 1, 2 on a 3-class head); None when neither fits."""
        name = str(label)
        if name in self.class_names:
            return self.class_names.index(name)
        try:
            index = int(float(name))
        except ValueError:
            return None
        return index if 0 <= index < len(self.class_names) and float(name).is_integer() else None

    def probabilities(self, queries: Sequence[str], items: Sequence[str]) -> NDArray[np.float32]:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(queries), self.batch_size):
                enc = self.tokenizer(list(queries[start : start + self.batch_size]),
                                     list(items[start : start + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                logits = self.model(**enc).logits.float()
                out.append(torch.softmax(logits, dim=-1).cpu().numpy())
        if not out:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)
