"""The benchmark runner reads each recorded report's headline numbers back: the parsers and the
report formats live in different scripts, so this keeps them in step."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run_all", BENCH / "run_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


RUNNER = _runner()


@pytest.mark.parametrize("benchmark", RUNNER.BENCHMARKS, ids=lambda b: b.name)
def test_every_benchmark_has_a_script_and_a_recorded_result_with_a_readable_headline(benchmark: object) -> None:
    assert (BENCH / benchmark.script).is_file()  # type: ignore[attr-defined]
    result = benchmark.result  # type: ignore[attr-defined]
    assert result.is_file(), f"{result.name} is not recorded; run bench/run_all.py --only {benchmark.name}"  # type: ignore[attr-defined]
    headline = benchmark.headline(result.read_text())  # type: ignore[attr-defined]
    assert re.search(r"[0-9]", headline), headline


def test_the_summary_lists_every_benchmark_and_marks_failures() -> None:
    outcomes = [RUNNER.Outcome(RUNNER.BENCHMARKS[1], 0, 12.0, None), RUNNER.Outcome(RUNNER.BENCHMARKS[2], 3, 5.0, None)]
    table = RUNNER.summary(outcomes, quick=True)
    rows = [line for line in table.splitlines() if line.startswith("| [")]
    assert len(rows) == len(RUNNER.BENCHMARKS)
    assert "ok, 12 s" in rows[1] and "FAILED (exit 3), 5 s" in rows[2] and rows[0].endswith("| not run |")
    assert all("recorded:" in row for row in rows)  # quick runs never claim fresh numbers


def test_headline_parsers_reject_reports_without_their_numbers() -> None:
    for benchmark in RUNNER.BENCHMARKS:
        with pytest.raises((ValueError, IndexError)):
            benchmark.headline("# a report\n\nnothing measured\n")
