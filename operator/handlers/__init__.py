"""kopf handler registrations, one module per kind, plus the children and startup handlers.

Importing this package registers every handler with kopf's default registry.
"""

from sampleforge.operator.handlers import augmentation_run, children, finetune_run, startup

__all__ = ["augmentation_run", "children", "finetune_run", "startup"]
