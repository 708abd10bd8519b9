"""Spec parts both kinds share: where the data lives, and how the run's pods are scheduled.

``CommonRunSpec`` is a base class only to share field declarations; it has no behaviour. The
scheduling fields map one-to-one onto the batch/v1 Job and Pod fields of the same name, so users who
know Jobs know these.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ._base import ApiModel, Rule
from .constants import GPU_TYPE_NODE_LABEL
from .fields import Endpoint, Image, LabelKey, LabelValue, ObjectName, Quantity, SecretKey

#: Secret keys used when ``storage.credentialsKeys`` is unset.
DEFAULT_ACCESS_KEY_KEY = "accessKey"
DEFAULT_SECRET_KEY_KEY = "secretKey"


class CredentialsKeys(ApiModel):
    """Which keys of the credentials Secret hold the access key and the secret key."""

    access_key: SecretKey = Field(
        default=DEFAULT_ACCESS_KEY_KEY, description="Key in the Secret that holds the S3 access key."
    )
    secret_key: SecretKey = Field(
        default=DEFAULT_SECRET_KEY_KEY, description="Key in the Secret that holds the S3 secret key."
    )


#: Where the run's pods read the projected ServiceAccount token that web identity exchanges.
WEB_IDENTITY_AUDIENCE_DEFAULT = "sts.amazonaws.com"
#: An STS endpoint: an http(s) URL without query or fragment.
STS_ENDPOINT_PATTERN = "^https?://[^\\s/?#]+/?$"


class WebIdentity(ApiModel):
    """Temporary S3 credentials for the run's ServiceAccount, as IRSA does on EKS: the pods present a
    projected ServiceAccount token to STS AssumeRoleWithWebIdentity and get keys for ``roleArn``."""

    role_arn: str = Field(
        min_length=1, max_length=2048, pattern="^arn:[^\\s]+$",
        description="ARN of the role to assume: an IAM role whose trust policy admits this cluster's "
        "ServiceAccount tokens (AWS), or the role ARN a MinIO server with an OpenID Connect provider "
        "configured for the cluster's ServiceAccount issuer gives (arn:minio:iam:::role/...).",
    )
    audience: str = Field(
        default=WEB_IDENTITY_AUDIENCE_DEFAULT, min_length=1, max_length=128, pattern="^[^\\s]+$",
        description="Audience of the projected token: what STS accepts (sts.amazonaws.com on AWS; "
        "the OpenID client id configured in MinIO).",
    )
    sts_endpoint: str | None = Field(
        default=None, max_length=512, pattern=STS_ENDPOINT_PATTERN,
        description="URL of the STS service, e.g. https://sts.eu-west-1.amazonaws.com or the MinIO "
        "server's own URL. Unset: AWS's, regional when storage.region is set.",
    )


class ConfigMapKeySelector(ApiModel):
    """A key of a ConfigMap in the run's namespace."""

    name: ObjectName = Field(description="Name of the ConfigMap.")
    key: SecretKey = Field(default="ca.crt", description="Key inside the ConfigMap.")


class Storage(ApiModel):
    """The MinIO (S3-compatible) server the run reads from and writes to, and how the run signs in:
    with keys from a Secret (credentialsSecret), with temporary keys for its ServiceAccount
    (webIdentity), or, with neither, with whatever the pod's environment provides through the
    standard AWS chain (AWS_* variables an IRSA or Pod Identity webhook injects, or the node's
    instance role)."""

    kube_rules = (
        Rule(
            cel="!has(self.credentialsSecret) || !has(self.webIdentity)",
            message="credentialsSecret and webIdentity are two ways to sign in; set one of them, or neither "
            "to use the pods' own AWS credential chain",
            check=lambda s: s.credentials_secret is None or s.web_identity is None,
            field_path=".webIdentity",
        ),
        Rule(
            cel="!has(self.credentialsKeys) || has(self.credentialsSecret)",
            message="credentialsKeys names keys of credentialsSecret; set credentialsSecret or remove credentialsKeys",
            check=lambda s: s.credentials_keys is None or s.credentials_secret is not None,
            field_path=".credentialsKeys",
        ),
        Rule(
            cel="!has(self.caBundle) || self.secure",
            message="caBundle is trusted for https only; set secure: true or remove caBundle",
            check=lambda s: s.ca_bundle is None or s.secure,
            field_path=".caBundle",
        ),
    )

    endpoint: Endpoint = Field(description="MinIO endpoint as host:port, without a scheme, e.g. minio.data:9000.")
    credentials_secret: ObjectName | None = Field(
        default=None,
        description="Name of a Secret in the run's namespace holding the S3 access key and secret key "
        "(keys accessKey and secretKey unless credentialsKeys says otherwise). Never put credentials in the spec. "
        "Unset: webIdentity, else the pods' own AWS credential chain.",
    )
    credentials_keys: CredentialsKeys | None = Field(
        default=None, description="Key names inside credentialsSecret, when they are not accessKey and secretKey."
    )
    web_identity: WebIdentity | None = Field(
        default=None,
        description="Sign in with the run's ServiceAccount (spec.serviceAccountName) through STS "
        "AssumeRoleWithWebIdentity instead of keys in a Secret.",
    )
    ca_bundle: ConfigMapKeySelector | None = Field(
        default=None,
        description="ConfigMap key with the PEM certificates that sign the endpoint's (and STS's) https "
        "certificate, for servers behind a private CA; the pods and the operator trust them beside the "
        "system's. Needs secure: true.",
    )
    secure: bool = Field(default=False, description="Use https to reach the endpoint.")
    region: str | None = Field(
        default=None, min_length=1, max_length=64, description="S3 region name, when the server requires one."
    )

    def access_key_key(self) -> str:
        """The Secret key of the access key, default applied."""
        return self.credentials_keys.access_key if self.credentials_keys else DEFAULT_ACCESS_KEY_KEY

    def secret_key_key(self) -> str:
        """The Secret key of the secret key, default applied."""
        return self.credentials_keys.secret_key if self.credentials_keys else DEFAULT_SECRET_KEY_KEY


class SecretKeySelector(ApiModel):
    """A key of a Secret in the run's namespace."""

    name: ObjectName = Field(description="Name of the Secret.")
    key: SecretKey = Field(default="token", description="Key inside the Secret.")


class Resources(ApiModel):
    """What each pod of the run asks for."""

    kube_rules = (
        Rule(
            cel="!has(self.gpuType) || !has(self.gpus) || self.gpus > 0",
            message="gpuType needs gpus of at least 1; set gpus or remove gpuType",
            check=lambda r: r.gpu_type is None or r.gpus is None or r.gpus > 0,
            field_path=".gpuType",
        ),
    )

    gpus: int | None = Field(
        default=None,
        ge=0,
        le=16,
        description="GPUs per pod. Default: 0 for an AugmentationRun; distribution.gpusPerNode, else 1, "
        "for a FineTuneRun.",
    )
    gpu_type: LabelValue | None = Field(
        default=None,
        min_length=1,
        description="GPU model to schedule on, e.g. NVIDIA-H100-80GB-HBM3; becomes a node selector on the "
        f"operator's GPU product label ({GPU_TYPE_NODE_LABEL} by default).",
    )
    cpu: Quantity | None = Field(default=None, description="CPU request and limit per pod, e.g. 8 or 7500m.")
    memory: Quantity | None = Field(default=None, description="Memory request and limit per pod, e.g. 64Gi.")
    shared_memory: Quantity | None = Field(
        default=None,
        description="Size of the in-memory /dev/shm volume, e.g. 16Gi; PyTorch data loader workers and "
        "NCCL need more than the container default of 64Mi.",
    )


class Toleration(ApiModel):
    """A Pod toleration (core/v1 Toleration)."""

    kube_rules = (
        Rule(
            cel="!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="value must be empty when operator is Exists; remove value or use operator: Equal",
            check=lambda t: t.operator != "Exists" or not t.value,
            field_path=".value",
        ),
    )

    key: LabelKey | None = Field(
        default=None, description="Taint key to tolerate; empty with operator Exists means all."
    )
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: LabelValue | None = Field(default=None, description="Taint value to match when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class CommonRunSpec(ApiModel):
    """Fields every run has: storage access and pod scheduling."""

    storage: Storage | None = Field(
        default=None,
        description="The MinIO server that holds the inputs and receives the outputs. Unset: the operator's "
        "default (the chart's defaultStorage), so GitOps manifests need not repeat it; status.storage says "
        "which was used.",
    )
    image: Image | None = Field(
        default=None, description="Container image for the run's pods; the operator's configured job image when unset."
    )
    resources: Resources = Field(default_factory=Resources, description="What each pod of the run asks for.")
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=32, description="Node labels the run's pods must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Taints the run's pods tolerate, e.g. for GPU nodes."
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="Pod affinity and anti-affinity, exactly as in a Pod spec (core/v1 Affinity); passed "
        "through to the pods unchanged.",
    )
    priority_class_name: ObjectName | None = Field(default=None, description="PriorityClass of the run's pods.")
    service_account_name: ObjectName | None = Field(
        default=None, description="ServiceAccount the run's pods use; the namespace's default when unset."
    )
    hub_token: SecretKeySelector | None = Field(
        default=None,
        description="Secret key holding a model hub token, for hub models that need one. Not needed for s3:// models.",
    )
    suspend: bool = Field(
        default=False,
        description="Keep the run's Job suspended (no pods); set back to false to start or resume it.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the run when its Job has been active for longer than this."
    )
    backoff_limit: int = Field(
        default=3, ge=0, le=100, description="Pod failures the Job tolerates before the run fails."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the finished Job (not the run) this many seconds after it ends."
    )
    queue_name: LabelValue | None = Field(
        default=None,
        min_length=1,
        description="Kueue LocalQueue to submit the Job to (sets the kueue.x-k8s.io/queue-name label); "
        "Kueue then decides when it starts.",
    )
    heartbeat_timeout_seconds: int = Field(
        default=600,
        ge=30,
        le=86400,
        description="Fail the run when its pods have sent no progress heartbeat for this long.",
    )
