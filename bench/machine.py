"""What the benchmarks record about the machine they ran on (imported by the scripts in this folder,
which Python puts first on the path when it runs one of them)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def publish(text: str, report: dict[str, Any], *, output: Path | None, quick: bool, markdown: Path,
            results: Path) -> None:
    """Print the report, then record it: to ``output`` when one is given, else, for a full run (not
    ``--quick``), as the benchmark's recorded Markdown and JSON under bench/results/."""
    document = json.dumps(report, indent=1, ensure_ascii=False)
    print(text)
    print(document)
    if output is not None:
        output.write_text(text)
    elif not quick:
        markdown.write_text(text)
        results.write_text(document + "\n")
