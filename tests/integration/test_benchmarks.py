"""Every benchmark still runs: ``bench/run_all.py --quick`` (tiny sizes, nothing written in the repo).
The numbers are recorded by full runs; this only keeps the scripts from rotting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1800)
def test_all_benchmarks_run_in_quick_mode() -> None:
    # The benchmarks start their own API server and MinIO from the testbed's binaries.
    before = {p: p.read_bytes() for p in (REPO / "bench" / "results").glob("*.md")}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run_all.py"), "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=1700, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| [")]
    benchmarks = len(list((REPO / "bench").glob("bench_*.py")))
    assert len(rows) == benchmarks and all(row.rstrip().split("|")[-2].strip().startswith("ok,") for row in rows), done.stdout
    assert {p: p.read_bytes() for p in (REPO / "bench" / "results").glob("*.md")} == before
