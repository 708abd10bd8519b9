"""One server process of the testbed: started in its own session, waited on, stopped for sure.

Each server gets its own process group so that stopping it also stops anything it spawned, and a
registry of everything started in this interpreter is drained at exit: a crashed test session must
not leave an etcd or a MinIO behind on the machine.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sampleforge.testbed._errors import TestbedError

_RUNNING: set[ManagedProcess] = set()


class ManagedProcess:
    """A server binary with a log file, a readiness probe and a guaranteed stop."""

    def __init__(self, name: str, argv: Sequence[str | os.PathLike[str]], log_path: Path,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise TestbedError(f"{self.name} has not been started")
        return self._proc.pid

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=self.env, cwd=self.cwd, start_new_session=True)
        _RUNNING.add(self)
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log written)"

    def wait_ready(self, probe: Callable[[], bool], timeout: float, what: str = "ready") -> None:
        """Poll ``probe`` until it answers True; fail fast, with the log, if the process dies."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                code = self._proc.returncode if self._proc else None
                raise TestbedError(f"{self.name} exited (code {code}) before it was {what}; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            with contextlib.suppress(Exception):  # not answering yet is exactly what we wait out
                if probe():
                    return
            if time.monotonic() > deadline:
                raise TestbedError(f"{self.name} was not {what} after {timeout:.0f}s; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.2)

    def detach(self) -> None:
        """Let this server outlive the interpreter (it is no longer stopped at exit)."""
        _RUNNING.discard(self)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``grace`` seconds."""
        proc = self._proc
        _RUNNING.discard(self)
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
        # Children that ignored SIGTERM but outlived their leader share the group id.
        _signal_group(proc.pid, signal.SIGKILL)


    def pause(self) -> None:
        """SIGSTOP the process group: a server that hangs (alive, answering nothing) until resumed."""
        if self._proc is None or self._proc.poll() is not None:
            raise TestbedError(f"{self.name} is not running, so it cannot be paused")
        _signal_group(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the process group after :meth:`pause`."""
        if self._proc is not None and self._proc.poll() is None:
            _signal_group(self._proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the process group at once: a crash, an OOM kill, a lost node."""
        proc = self._proc
        _RUNNING.discard(self)
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(pgid: int, grace: float = 10.0) -> None:
    """Stop a server started by another interpreter (``sampleforge-testbed down`` after ``up --keep``)."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)


@atexit.register
def _stop_everything() -> None:
    for proc in list(_RUNNING):
        proc.stop(grace=5)
