"""``sampleforge-job``: the single command of every run pod. It reads the run's kind from the
environment the operator rendered and hands over to that kind's entry point, so one image and one
command serve both kinds (and the Job spec never encodes which module to run)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from sampleforge.api import jobenv
from sampleforge.api.constants import Kind


def _entry_point(kind: str) -> Callable[[], int]:
    if kind == Kind.AUGMENTATION_RUN:
        from sampleforge.jobs.augment.entrypoint import main as augment_main

        return augment_main
    if kind == Kind.FINE_TUNE_RUN:
        from sampleforge.jobs.finetune.entrypoint import main as finetune_main

        return finetune_main
    raise KeyError(kind)


def main() -> int:
    kind = os.environ.get(jobenv.RUN_KIND, "")
    try:
        entry = _entry_point(kind)
    except KeyError:
        print(f"{jobenv.RUN_KIND}={kind!r} is not a sampleforge run kind "
              f"(expected {Kind.AUGMENTATION_RUN} or {Kind.FINE_TUNE_RUN})", file=sys.stderr)
        return jobenv.EXIT_INVALID_CONFIG
    return entry()


if __name__ == "__main__":
    sys.exit(main())
