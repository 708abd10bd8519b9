"""How an embedding model turns token vectors into one sentence vector: read from the model's own
sentence-transformers files, and applied the same way everywhere (augmentation encoders, two-tower
training, published models).

A sentence-transformers model directory says it in ``modules.json`` (the module list) and its
``Pooling`` module's ``config.json``: CLS for BGE-style models, mean for MiniLM / MPNet ones, last
token for decoder embedders. Both the classic keys (``pooling_mode_cls_token: true``, ...) and the
newer ``pooling_mode: "cls"`` are read. A directory without those files (a plain transformers
encoder) keeps the default, mean pooling, and L2 normalisation.

:func:`sentence_transformers_files` writes the same files for a directory this project publishes, in
the classic format every sentence-transformers release reads.

Reading is pure (json); :func:`pool` imports torch on first use.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_POOLING", "MODES", "Pooling", "PoolingConfigError", "model_pooling", "pool", "read_pooling",
           "sentence_transformers_files"]

#: The pooling modes applied here, by sentence-transformers' names.
MODES = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens")

#: sentence-transformers' classic boolean keys, by mode.
_CLASSIC_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
_POOLING_TYPES = ("Pooling",)
_NORMALIZE_TYPES = ("Normalize",)


class PoolingConfigError(ValueError):
    """A model's pooling files ask for something this project does not apply (or are unreadable)."""


@dataclass(frozen=True)
class Pooling:
    """A pooling mode, whether vectors are L2-normalised after it, and where that was read."""

    mode: str = "mean"
    normalize: bool = True
    #: "modules.json" when read from the model's files, "default" otherwise.
    source: str = "default"

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "normalize": self.normalize, "source": self.source}


DEFAULT_POOLING = Pooling()


def _module_kind(entry: dict[str, Any]) -> str:
    """``sentence_transformers.models.Pooling`` (or ``....modules.pooling.Pooling``) -> ``Pooling``."""
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def _mode_of(config: dict[str, Any], where: str) -> str:
    if "pooling_mode" in config:
        value = config["pooling_mode"]
        modes = [value] if isinstance(value, str) else list(value)
    else:
        modes = [mode for mode, key in _CLASSIC_KEYS.items() if config.get(key)] or ["mean"]
    if len(modes) != 1:
        raise PoolingConfigError(f"{where} concatenates pooling modes {modes}; only one mode is supported")
    mode = str(modes[0])
    if mode not in MODES:
        raise PoolingConfigError(f"{where} asks for pooling mode {mode!r}; supported: {', '.join(MODES)}")
    return mode


def read_pooling(directory: str | Path) -> Pooling:
    """The pooling a model directory declares (``modules.json`` and its Pooling module's
    ``config.json``); :data:`DEFAULT_POOLING` when it has no ``modules.json`` or no Pooling module.
    Normalisation is on when the module list has a ``Normalize`` module, else off."""
    root = Path(directory)
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return DEFAULT_POOLING
    try:
        modules = json.loads(modules_file.read_text())
    except (OSError, ValueError) as err:
        raise PoolingConfigError(f"{modules_file} is not readable JSON: {err}") from err
    if not isinstance(modules, list):
        raise PoolingConfigError(f"{modules_file} is not a list of modules")
    kinds = [_module_kind(m) for m in modules if isinstance(m, dict)]
    pooling_entries = [m for m in modules if isinstance(m, dict) and _module_kind(m) in _POOLING_TYPES]
    if not pooling_entries:
        return DEFAULT_POOLING
    config_file = root / str(pooling_entries[0].get("path", "")) / "config.json"
    try:
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    except (OSError, ValueError) as err:
        raise PoolingConfigError(f"{config_file} is not readable JSON: {err}") from err
    mode = _mode_of(config, str(config_file))
    normalize = any(k in _NORMALIZE_TYPES for k in kinds)
    return Pooling(mode, normalize, "modules.json")


def model_pooling(location: str) -> Pooling:
    """The pooling of the model at ``location`` (what ``from_pretrained`` is given): read from a local
    directory, or for a hub id from the hub's cache or the hub (best effort: with no route to it, the
    default, mean pooling)."""
    local = Path(location)
    if local.is_dir():
        return read_pooling(local)
    try:
        from huggingface_hub import snapshot_download

        return read_pooling(snapshot_download(location, allow_patterns=["modules.json", "*/config.json"]))
    except PoolingConfigError:
        raise
    except Exception:  # noqa: BLE001 -- offline or unknown: loading the model itself says what is wrong
        log.info("the model's pooling files could not be read; mean pooling", extra={"model": location})
        return DEFAULT_POOLING


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per sequence from ``hidden`` (batch x tokens x width) and the attention ``mask``,
    as sentence-transformers' Pooling computes it for the same mode (before normalisation)."""
    import torch

    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    if mode == "mean_sqrt_len_tokens":
        return (hidden * weights).sum(1) / torch.sqrt(weights.sum(1).clamp(min=1e-9))
    if mode == "max":
        masked = hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min)
        return masked.max(dim=1).values
    if mode == "lasttoken":
        # The last non-padding token of each row, wherever the padding is (left or right).
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = (positions * mask.long()).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise PoolingConfigError(f"pooling mode {mode!r} is not supported; supported: {', '.join(MODES)}")


def sentence_transformers_files(directory: Path, pooling: Pooling, width: int, max_length: int) -> list[str]:
    """Write ``modules.json``, ``sentence_bert_config.json``, ``config_sentence_transformers.json``,
    ``1_Pooling/config.json`` (and ``2_Normalize/`` when normalising) into ``directory``, which already
    holds a transformers encoder (config.json, weights) and its tokenizer: sentence-transformers then
    loads it as Transformer -> Pooling [-> Normalize]. Returns the files written (relative paths)."""
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    pooling_config: dict[str, Any] = {"word_embedding_dimension": width}
    pooling_config.update({key: mode == pooling.mode for mode, key in _CLASSIC_KEYS.items()})
    files = {
        "modules.json": modules,
        "sentence_bert_config.json": {"max_seq_length": max_length, "do_lower_case": False},
        "config_sentence_transformers.json": {"similarity_fn_name": "cosine" if pooling.normalize else "dot",
                                              "prompts": {}, "default_prompt_name": None},
        "1_Pooling/config.json": pooling_config,
    }
    written = []
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2))
        written.append(name)
    if pooling.normalize:
        (directory / "2_Normalize").mkdir(exist_ok=True)
    return written
