"""``python -m sampleforge.jobs.finetune``: see :mod:`.entrypoint`."""

from sampleforge.jobs.finetune.entrypoint import main

raise SystemExit(main())
