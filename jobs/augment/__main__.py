"""``python -m sampleforge.jobs.augment``: see :mod:`.entrypoint`."""

from sampleforge.jobs.augment.entrypoint import main

raise SystemExit(main())
