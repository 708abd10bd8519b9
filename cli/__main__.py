"""``python -m sampleforge.cli``: the same program as ``kubectl-sampleforge``."""

from __future__ import annotations

from sampleforge.cli.app import main

if __name__ == "__main__":
    main()
