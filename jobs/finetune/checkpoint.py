"""Checkpoints in MinIO: saved every N steps and on SIGTERM, committed atomically, the newest K
kept, and the newest committed one resumed from.

Layout under spec.output.uri::

    checkpoints/step-000000500/state/...        accelerate save_state: model.safetensors,
                                                optimizer.bin, scheduler.bin, random_states_<rank>.pkl,
                                                custom_checkpoint_0.pkl (TrainingState)
    checkpoints/step-000000500/checkpoint.json  what it is: step, epoch, data position, seed, the
                                                configuration it was trained with, the label space
    checkpoints/step-000000500/_parts/node-<n>.json   per-node file lists (multi-node commit)
    checkpoints/step-000000500/manifest.json    written LAST: every file with size and sha256

The step of a checkpoint is read from its manifest, never parsed from the folder name. Every node
saves its own ranks' RNG state on its own disk and uploads it; the global main process writes the
manifest only after all nodes have reported their files, so a checkpoint is either complete or
invisible. Retention deletes a checkpoint's manifest first, for the same reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from sampleforge.api.finetune import FineTuneRunSpec, Task
from sampleforge.jobs.common.storage import MANIFEST_NAME, ObjectStore, S3Uri

from .errors import CheckpointMismatchError
from .launch import node_layout

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints/"
STATE = "state"
DESCRIPTION = "checkpoint.json"
PARTS = "_parts"
#: Configuration keys whose change makes a checkpoint impossible to load (parameter shapes differ).
STRUCTURAL = ("model", "task", "method", "twoTower")


def describe_config(spec: FineTuneRunSpec, input_uri: str | None, world_size: int) -> dict[str, Any]:
    """What a checkpoint records about the configuration it was trained with."""
    return {
        "model": spec.model,
        "task": str(spec.task),
        "method": spec.method.to_kube(),
        "data": {**spec.data.to_kube(), **({"inputUri": input_uri} if input_uri else {})},
        "training": spec.training.to_kube(),
        "gradientAccumulationSteps": spec.distribution.gradient_accumulation_steps,
        "mixedPrecision": spec.distribution.mixed_precision,
        "worldSize": world_size,
        # Only for two-tower runs, so that checkpoints of other tasks stay comparable across versions.
        **({"twoTower": {k: v for k, v in spec.two_tower_options().to_kube().items() if k != "hardNegatives"},
            # Which rows train as negatives is data, not model structure: a difference only warns.
            "hardNegatives": spec.two_tower_options().hard_negatives} if spec.task == Task.TWO_TOWER else {}),
    }


def compare_config(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(structural differences, other differences), each as 'key: saved -> current' lines."""

    def flat(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in doc.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and key not in STRUCTURAL:
                out.update(flat(value, name + "."))
            else:
                out[name] = value
        return out

    before, after = flat(saved), flat(current)
    structural: list[str] = []
    other: list[str] = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            line = f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
            (structural if key.split(".")[0] in STRUCTURAL else other).append(line)
    return structural, other


@dataclass(frozen=True)
class Committed:
    """A committed checkpoint: where it is and what its manifest says."""

    prefix: S3Uri
    step: int
    manifest: dict[str, Any]


class Checkpoints:
    """Save, list, rotate and fetch the run's checkpoints. ``save`` and ``fetch`` are collective:
    every rank calls them (accelerate's save_state and load_state are)."""

    def __init__(self, store: ObjectStore, output: S3Uri, local_root: Path, keep: int,
                 accelerator: Accelerator) -> None:
        self.store = store
        self.root = output.join(CHECKPOINTS)
        self.local_root = local_root
        self.keep = keep
        self.accelerator = accelerator

    # -- reading --------------------------------------------------------------------------------

    def committed(self) -> list[Committed]:
        """Every committed checkpoint, oldest first (by the step its manifest records)."""
        found = []
        for uri, _, _ in self.store.list(self.root):
            if uri.key.endswith("/" + MANIFEST_NAME):
                prefix = S3Uri(uri.bucket, uri.key[: -len(MANIFEST_NAME)])
                manifest = json.loads(self.store.read_bytes(uri))
                if manifest.get("kind") == "checkpoint" and isinstance(manifest.get("step"), int):
                    found.append(Committed(prefix, manifest["step"], manifest))
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> Committed | None:
        found = self.committed()
        return found[-1] if found else None

    def description(self, checkpoint: Committed) -> dict[str, Any]:
        document = json.loads(self.store.read_bytes(checkpoint.prefix.join(DESCRIPTION)))
        assert isinstance(document, dict)
        return document

    def check_compatible(self, checkpoint: Committed, current: dict[str, Any]) -> list[str]:
        """Raise when the checkpoint cannot be loaded into this configuration; return the other
        differences (the run continues with the spec's values, and says so)."""
        saved = self.description(checkpoint)["config"]
        structural, other = compare_config(saved, current)
        if structural:
            raise CheckpointMismatchError(
                f"the latest checkpoint {checkpoint.prefix} was trained with a different configuration: "
                f"{'; '.join(structural)}. Restore those spec fields, or delete {self.root} to start over")
        return other

    def at_step(self, step: int) -> Committed | None:
        return next((c for c in self.committed() if c.step == step), None)

    def fetch(self, checkpoint: Committed) -> Path:
        """Download a committed checkpoint (verified against its manifest) onto every node."""
        local = self.local_root / "resume" / checkpoint.prefix.name
        if self.accelerator.is_local_main_process:
            self.store.download_committed(checkpoint.prefix, local)
        self.accelerator.wait_for_everyone()
        return Path(local)

    # -- writing --------------------------------------------------------------------------------

    def save(self, step: int, description: dict[str, Any], protect: int | None = None) -> S3Uri:
        """Save the full training state at ``step`` and commit it; returns its prefix. Retention
        keeps the checkpoint of step ``protect`` (the best model's) besides the newest ``keep``."""
        name = f"step-{step:09d}"
        local = self.local_root / "save" / name
        prefix = self.root.join(name + "/")
        node, nodes = node_layout(os.environ)
        if self.accelerator.is_local_main_process and local.exists():
            shutil.rmtree(local)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(local / STATE))
        if self.accelerator.is_main_process:
            (local / DESCRIPTION).write_text(json.dumps(description, indent=2, sort_keys=True, default=str))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_local_main_process:
            entries = self.store.upload_directory(local, prefix)
            self.store.write_json(prefix.join(f"{PARTS}/node-{node}.json"), {"files": entries})
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            files: dict[str, dict[str, Any]] = {}
            for n in range(nodes):
                part = json.loads(self.store.read_bytes(prefix.join(f"{PARTS}/node-{n}.json")))
                files.update({e["path"]: e for e in part["files"]})
            self.store.commit(prefix, {
                "kind": "checkpoint", "step": step, "epoch": description.get("epoch"),
                "createdAt": datetime.now(UTC).isoformat(), "files": sorted(files.values(), key=lambda e: e["path"]),
            })
            log.info("checkpoint committed", extra={"step": step, "uri": str(prefix), "files": len(files)})
            self.rotate(protect)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_local_main_process:
            shutil.rmtree(local, ignore_errors=True)
        return prefix

    def rotate(self, protect: int | None = None) -> None:
        """Keep the newest ``keep`` committed checkpoints (and step ``protect``'s); delete older ones
        and any uncommitted leftovers of killed attempts. Manifest first, so nothing half-deleted
        looks committed."""
        committed = self.committed()
        keep = {c.prefix.key for c in committed[-self.keep:]} | {c.prefix.key for c in committed if c.step == protect}
        for checkpoint in committed:
            if checkpoint.prefix.key in keep:
                continue
            self.store.remove(checkpoint.prefix.join(MANIFEST_NAME))
        for uri, _, _ in list(self.store.list(self.root)):
            folder = uri.key[len(self.root.key):].split("/", 1)[0]
            if self.root.key + folder + "/" not in keep:
                self.store.remove(uri)
