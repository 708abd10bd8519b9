"""The testbed stops everything it starts and keeps the logs when asked to, including when the
interpreter that started it dies without cleaning up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sampleforge.testbed import Testbed, TestbedOptions

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for every practical purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class TestLifecycle:
    def test_stop_leaves_no_process_and_removes_the_workdir(self) -> None:
        tb = Testbed(TestbedOptions(controllers=False)).start()
        pids = [p.pid for p in tb.processes]
        workdir = tb.workdir
        assert len(pids) == 3  # minio, etcd, kube-apiserver
        assert all(_alive(pid) for pid in pids)
        tb.stop()
        assert not [pid for pid in pids if _alive(pid)]
        assert not workdir.exists()

    def test_an_exception_keeps_the_logs(self) -> None:
        with pytest.raises(RuntimeError, match="boom"), Testbed(TestbedOptions(kubernetes=False)) as tb:
            logs = tb.logs
            raise RuntimeError("boom")
        try:
            assert (logs / "minio.log").exists()
        finally:
            shutil.rmtree(logs.parent, ignore_errors=True)

    def test_interpreter_exit_without_stop_still_stops_servers(self, tmp_path: Path) -> None:
        script = textwrap.dedent(f"""
            import json
            from pathlib import Path
            from sampleforge.testbed import Testbed, TestbedOptions
            tb = Testbed(TestbedOptions(controllers=False, workdir=Path({str(tmp_path / 'wd')!r}))).start()
            print(json.dumps([p.pid for p in tb.processes]), flush=True)
            # no tb.stop(): the atexit hook must do it
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, check=True)
        pids = json.loads(out.stdout.strip().splitlines()[-1])
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in pids if _alive(p)]
