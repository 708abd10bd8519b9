"""One instance of each model per pod, whichever augmenters and filters name it: encoders and
classifiers (:mod:`.embedding`), generators (:mod:`.generation`, :mod:`.vllm_engine`), each loaded
from where :mod:`.models` finds it. Kept apart from the model classes so that none of them imports
another's module.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from sampleforge.jobs.common.storage import ObjectStore

from .embedding import PairClassifier, TextEncoder
from .models import locate_model
from .transformers_engine import TextGenerator
from .vllm_engine import VllmGenerator

log = logging.getLogger(__name__)

__all__ = ["ModelCache"]


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
        return self._get("generator", ref, field_path, TextGenerator, allow_gguf=True)  # type: ignore[no-any-return]

    def vllm_generator(self, ref: str, field_path: str) -> VllmGenerator:
        """The same model in vLLM's offline engine (the ``vllm`` engine; needs vLLM and a CUDA GPU)."""
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
