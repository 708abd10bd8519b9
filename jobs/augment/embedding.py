"""Models the augmentation job runs: sentence encoders (hard negatives, similarity filter) and pair
classifiers (label-consistency teacher), loaded once per run by :class:`ModelCache`.

A model is named as in the spec (:data:`~sampleforge.api.fields.ModelRef`): an ``s3://`` model
directory in MinIO, which works with no network (it is mirrored into the pod's cache directory,
reusing files whose ETag has not changed), or a hub id that transformers resolves with its own cache
and ``HF_TOKEN``. Encoders use mean pooling over the last hidden state and L2-normalise, which is
how sentence-transformers' all-MiniLM-L6-v2 was trained. Inference is batched, on the GPU when there
is one, in a fixed order, so the same texts give the same vectors.

torch and transformers are imported on first use: a run without model-based steps never pays for them.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sampleforge.jobs.common.storage import ObjectStore, S3Uri, StorageError

from .errors import ModelError

log = logging.getLogger(__name__)

__all__ = ["ModelCache", "PairClassifier", "TextEncoder", "resolve_model"]


def resolve_model(ref: str, store: ObjectStore | None, cache_dir: Path, field_path: str) -> str:
    """A local directory (for ``s3://`` refs, downloaded into ``cache_dir``) or the hub id itself."""
    if not ref.startswith("s3://"):
        local = Path(ref)
        return str(local) if local.is_dir() else ref
    if store is None:
        raise ModelError(f"{field_path} is {ref} but no MinIO connection is configured")
    prefix = S3Uri.parse(ref)
    directory = cache_dir / "models" / hashlib.sha256(ref.encode()).hexdigest()[:16]
    try:
        store.download_prefix(S3Uri(prefix.bucket, prefix.key.rstrip("/") + "/"), directory)
    except StorageError as err:
        raise ModelError(f"{field_path} {ref} cannot be downloaded: {err}") from err
    if not (directory / "config.json").exists():
        raise ModelError(f"{field_path} {ref} has no config.json: it is not a transformers model directory "
                         "(save it with save_pretrained and upload the whole directory)")
    return str(directory)


def _device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TextEncoder:
    """Sentence embeddings: mean-pooled, L2-normalised last hidden states."""

    def __init__(self, location: str, field_path: str, batch_size: int = 64, max_length: int = 128) -> None:
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location)
            self.model = AutoModel.from_pretrained(location)
        except (OSError, ValueError) as err:
            raise ModelError(f"{field_path}: the model at {location} does not load with transformers: {err}") from err
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
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
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


class ModelCache:
    """Loads each (kind, model) once per process; augmenters and filters share the instances."""

    def __init__(self, store: ObjectStore | None, cache_dir: Path) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def encoder(self, ref: str, field_path: str) -> TextEncoder:
        return self._get("encoder", ref, field_path, TextEncoder)  # type: ignore[no-any-return]

    def classifier(self, ref: str, field_path: str) -> PairClassifier:
        return self._get("classifier", ref, field_path, PairClassifier)  # type: ignore[no-any-return]

    def _get(self, kind: str, ref: str, field_path: str, build: Any) -> Any:
        with self._lock:
            key = (kind, ref)
            if key not in self._models:
                location = resolve_model(ref, self.store, self.cache_dir, field_path)
                log.info("loading model", extra={"model": ref, "kind": kind, "location": location})
                self._models[key] = build(location, field_path)
            return self._models[key]
