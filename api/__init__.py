"""The one schema of sampleforge's custom resources: AugmentationRun and FineTuneRun.

The operator validates and renders runs with these models, the jobs read their configuration with
them, and the CRDs in ``crds/`` and the Helm chart are generated from them
(``python -m sampleforge.api.crdgen``). Importing this package needs only pydantic and the standard
library: never kopf, kubernetes or torch, so both the operator image and the job image can use it.

Parse what the API server stores (camelCase keys)::

    spec = AugmentationRunSpec.model_validate(body["spec"])

and write status the API server keeps (nothing is pruned, unset fields are left out)::

    patch.status.update(status.to_kube())
"""

from __future__ import annotations

from .augmentation import (
    AugmentationOutput,
    AugmentationRun,
    AugmentationRunSpec,
    Columns,
    Filters,
    Preprocess,
    Source,
)
from .augmenters import Augmenter, AugmenterSpec
from .common import CommonRunSpec, Resources, SecretKeySelector, Storage, Toleration
from .constants import (
    ANNOTATION_PREFIX,
    API_VERSION,
    GROUP,
    KUEUE_QUEUE_LABEL,
    VERSION,
    ConditionStatus,
    ConditionType,
    Kind,
    Phase,
    Reason,
    Step,
)
from .finetune import (
    DEFAULT_METRICS,
    FineTuneData,
    FineTuneOutput,
    FineTuneRun,
    FineTuneRunSpec,
    Method,
    Task,
)
from .status import (
    AugmentationResults,
    AugmentationRunStatus,
    BestMetric,
    Condition,
    FineTuneResults,
    FineTuneRunStatus,
    Progress,
    RunOutputs,
)

__all__ = [
    "ANNOTATION_PREFIX",
    "API_VERSION",
    "DEFAULT_METRICS",
    "GROUP",
    "KUEUE_QUEUE_LABEL",
    "VERSION",
    "AugmentationOutput",
    "AugmentationResults",
    "AugmentationRun",
    "AugmentationRunSpec",
    "AugmentationRunStatus",
    "Augmenter",
    "AugmenterSpec",
    "BestMetric",
    "Columns",
    "CommonRunSpec",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "Filters",
    "FineTuneData",
    "FineTuneOutput",
    "FineTuneResults",
    "FineTuneRun",
    "FineTuneRunSpec",
    "FineTuneRunStatus",
    "Kind",
    "Method",
    "Phase",
    "Preprocess",
    "Progress",
    "Reason",
    "Resources",
    "RunOutputs",
    "SecretKeySelector",
    "Source",
    "Step",
    "Storage",
    "Task",
    "Toleration",
]
