"""``python -m sampleforge.api.crdgen [--check]``: write (or verify) the generated CRDs.

The work is in ``_crdgen``; this module only makes it runnable with ``-m``.
"""

from __future__ import annotations

from ._crdgen import main

if __name__ == "__main__":
    raise SystemExit(main())
