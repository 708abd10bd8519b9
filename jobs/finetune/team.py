"""The training processes of one pod share its cache directory, so they can split the work of
preparing the data (reading files into Arrow, tokenising) instead of each doing all of it.

A :class:`Team` is those processes: process ``index`` of ``size`` makes the parts whose number is
``index`` modulo ``size``, then waits until every other part exists. Parts are files written
atomically (:func:`.mapped.write_ipc`), so "exists" means "whole", and a restarted pod reuses what
an earlier attempt finished.

Waiting is done on the files, not with a collective: a process whose part fails writes a
``<part>.failed`` note with the error, and the others raise that error too, at once, instead of
hanging in a barrier until torchrun kills them. The one collective, before any work, makes sure no
process reads a note an earlier attempt left behind.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sampleforge.jobs.common.outage import StorageError

__all__ = ["PartFailed", "Team"]

#: How often a waiting process looks for the other processes' parts.
POLL_SECONDS = 0.2


class PartFailed(RuntimeError):
    """Another process of the team failed to make its part; the message is its error's."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def _failure_note(part: Path) -> Path:
    return part.with_name(part.name + ".failed")


@dataclass(frozen=True)
class Team:
    """This process's place among the processes that share the cache directory."""

    index: int = 0
    size: int = 1
    #: A collective every process of the run calls (accelerate's ``wait_for_everyone``); None alone.
    barrier: Callable[[], None] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], barrier: Callable[[], None] | None) -> Team:
        """The processes of this pod, as torchrun numbers them (LOCAL_RANK of LOCAL_WORLD_SIZE)."""
        size = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
        return cls(int(env.get("LOCAL_RANK", "0")), size, barrier if size > 1 else None)

    def share(self, count: int) -> range:
        """The part numbers this process makes, of ``count``."""
        return range(self.index, count, self.size)

    def make(self, parts: Sequence[Path], build: Callable[[int, Path], None]) -> None:
        """Make this process's parts (``build(number, path)`` writes ``path`` atomically) unless an
        earlier attempt did, then wait until all of ``parts`` exist."""
        if self.size == 1:
            for number, path in enumerate(parts):
                if not path.exists():
                    build(number, path)
            return
        mine = list(self.share(len(parts)))
        for number in mine:
            _failure_note(parts[number]).unlink(missing_ok=True)
        if self.barrier is not None:
            self.barrier()
        for number in mine:
            if parts[number].exists():
                continue
            try:
                build(number, parts[number])
            except BaseException as err:
                cause = err.__cause__
                transient = isinstance(cause, StorageError) and cause.transient
                note = _failure_note(parts[number])
                staging = note.with_name(f".{note.name}.{os.getpid()}.tmp")
                staging.write_text(json.dumps({"message": str(err), "transient": transient}))
                os.replace(staging, note)
                raise
        self._wait(parts)

    def _wait(self, parts: Sequence[Path]) -> None:
        pending = [p for p in parts if not p.exists()]
        while pending:
            for path in pending:
                note = _failure_note(path)
                if note.exists():
                    failure = json.loads(note.read_text())
                    raise PartFailed(failure["message"], bool(failure["transient"]))
            time.sleep(POLL_SECONDS)
            pending = [p for p in pending if not p.exists()]
