"""kopf handler registrations: the runs' (one loop over both kinds), the children's and startup.

Importing this package registers every handler with kopf's default registry.
"""

from sampleforge.operator.handlers import children, runs, startup

__all__ = ["children", "runs", "startup"]
