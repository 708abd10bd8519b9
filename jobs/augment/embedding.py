"""Models the augmentation job runs: sentence encoders (hard negatives, similarity filter), pair
classifiers (label-consistency teacher) and text generators (paraphrase, doc2query, back-translation;
see :mod:`.generation`), loaded once per run by :class:`ModelCache`.

A model is named as in the spec (:data:`~sampleforge.api.fields.ModelRef`): an ``s3://`` model
directory in MinIO, which works with no network (it is mirrored into the pod's cache directory,
reusing files whose ETag has not changed), or a hub id that transformers resolves with its own cache
and ``HF_TOKEN``. A generator's directory may hold, instead of a transformers model, a single
``*.gguf`` file (llama.cpp's format, how small instruct models are commonly shipped): transformers
de-quantises it on load (:func:`locate_model` says which it is). Encoders pool the last hidden state
as the model's own sentence-transformers files say (``modules.json`` and its Pooling module's config:
CLS for BGE-style models, mean for MiniLM; :mod:`sampleforge.jobs.common.pooling`), mean pooling when
it has none, and L2-normalise, so cosine similarity is a dot product. Inference is batched, on the
GPU when there is one, in a fixed order, so the same texts give
the same vectors.

torch and transformers are imported on first use: a run without model-based steps never pays for them.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from sampleforge.jobs.common.pooling import PoolingConfigError, model_pooling, pool
from sampleforge.jobs.common.storage import ObjectStore, S3Uri, StorageError

from .errors import ModelError

if TYPE_CHECKING:  # imported when first used: it imports this module
    from .generation import TextGenerator
    from .vllm_engine import VllmGenerator

log = logging.getLogger(__name__)

__all__ = ["ModelCache", "ModelLocation", "PairClassifier", "TextEncoder", "locate_model", "resolve_model"]


@dataclass(frozen=True)
class ModelLocation:
    """Where a model's files are: a local directory or a hub id, and the GGUF file in it, if that is
    what it holds (transformers then takes ``gguf_file=`` on every ``from_pretrained``)."""

    path: str
    gguf_file: str | None = None
    #: The spec's name for the model (the s3:// URI or hub id), for error messages.
    ref: str = ""

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained`` besides the path."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def _download(ref: str, store: ObjectStore | None, cache_dir: Path, field_path: str) -> Path:
    """Mirror an ``s3://`` model directory into ``cache_dir`` (unchanged files are not fetched again)."""
    if store is None:
        raise ModelError(f"{field_path} is {ref} but no MinIO connection is configured")
    prefix = S3Uri.parse(ref)
    directory = cache_dir / "models" / hashlib.sha256(ref.encode()).hexdigest()[:16]
    try:
        store.download_prefix(S3Uri(prefix.bucket, prefix.key.rstrip("/") + "/"), directory)
    except StorageError as err:
        raise ModelError(f"{field_path} {ref} cannot be downloaded: {err}") from err
    return directory


def _directory_model(directory: Path, ref: str, field_path: str, allow_gguf: bool) -> ModelLocation:
    """A transformers directory (config.json) or, when ``allow_gguf``, one holding exactly one GGUF file."""
    if (directory / "config.json").exists():
        return ModelLocation(str(directory), ref=ref)
    ggufs = sorted(p.name for p in directory.glob("*.gguf"))
    if allow_gguf and len(ggufs) == 1:
        return ModelLocation(str(directory), ggufs[0], ref)
    if allow_gguf and ggufs:
        raise ModelError(f"{field_path} {ref} holds {len(ggufs)} GGUF files ({', '.join(ggufs[:5])}); which one to "
                         "load is ambiguous: keep exactly one *.gguf in the directory")
    what = "a config.json (save the model with save_pretrained and upload the whole directory)"
    if allow_gguf:
        what += " or a single *.gguf file"
    raise ModelError(f"{field_path} {ref} has neither {what}: it is not a model directory")


def _hub_model(ref: str, allow_gguf: bool) -> ModelLocation:
    """A hub id as it is, or with the repository's single GGUF file when it has no config.json.

    Looking the files up is best effort (no network, or HF_HUB_OFFLINE): when it fails, transformers
    resolves the id itself and reports what is missing.
    """
    plain = ModelLocation(ref, ref=ref)
    if not allow_gguf:
        return plain
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return plain
    try:
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(ref)
    except Exception:  # noqa: BLE001 -- offline or unknown repo: let from_pretrained say what is wrong
        return plain
    ggufs = sorted(f for f in files if f.endswith(".gguf") and "/" not in f)
    if "config.json" not in files and len(ggufs) == 1:
        return ModelLocation(ref, ggufs[0], ref)
    return plain


def locate_model(ref: str, store: ObjectStore | None, cache_dir: Path, field_path: str, *,
                 allow_gguf: bool = False) -> ModelLocation:
    """Where the model ``ref`` is: a local directory (for ``s3://`` refs, downloaded into ``cache_dir``),
    or the hub id itself; with the GGUF file to load when ``allow_gguf`` and that is what it holds."""
    if ref.startswith("s3://"):
        return _directory_model(_download(ref, store, cache_dir, field_path), ref, field_path, allow_gguf)
    local = Path(ref)
    if local.is_dir():
        return _directory_model(local, ref, field_path, allow_gguf)
    return _hub_model(ref, allow_gguf)


def resolve_model(ref: str, store: ObjectStore | None, cache_dir: Path, field_path: str) -> str:
    """A local transformers directory (for ``s3://`` refs, downloaded into ``cache_dir``) or the hub id
    itself: for the encoders and classifiers, which have no GGUF form."""
    return locate_model(ref, store, cache_dir, field_path).path


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

    def generator(self, ref: str, field_path: str) -> TextGenerator:
        """A text generator (causal LM or seq2seq; transformers directory or GGUF file)."""
        from .generation import TextGenerator

        return self._get("generator", ref, field_path, TextGenerator, allow_gguf=True)  # type: ignore[no-any-return]

    def vllm_generator(self, ref: str, field_path: str) -> VllmGenerator:
        """The same model in vLLM's offline engine (the ``vllm`` engine; needs vLLM and a CUDA GPU)."""
        from .vllm_engine import VllmGenerator

        return self._get("vllm", ref, field_path, VllmGenerator.load, allow_gguf=True)  # type: ignore[no-any-return]

    def _get(self, kind: str, ref: str, field_path: str, build: Any, allow_gguf: bool = False) -> Any:
        with self._lock:
            key = (kind, ref)
            if key not in self._models:
                location = locate_model(ref, self.store, self.cache_dir, field_path, allow_gguf=allow_gguf)
                log.info("loading model", extra={"model": ref, "kind": kind, "location": location.path,
                                                 "gguf_file": location.gguf_file})
                self._models[key] = build(location if allow_gguf else location.path, field_path)
            return self._models[key]
