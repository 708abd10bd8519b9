"""How every process signs in to S3: the jobs in the run's pods, the operator reading what a run
committed, and the plugin fetching a report. One chain, so that what the spec says about signing
in means the same to each of them.

1. Keys, when the caller has them (spec.storage.credentialsSecret, passed to the pods as
   ``SAMPLEFORGE_S3_ACCESS_KEY`` / ``SAMPLEFORGE_S3_SECRET_KEY``).
2. Otherwise the standard AWS chain of the process's own environment: ``AWS_ACCESS_KEY_ID`` /
   ``AWS_SECRET_ACCESS_KEY``; then web identity (``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN``,
   exchanged at STS ``AWS_ENDPOINT_URL_STS``, or AWS's own STS): what spec.storage.webIdentity
   renders, and what an IRSA or Pod Identity webhook injects; then the ECS or EC2 metadata service
   (a node's instance role).

Temporary credentials are renewed by the minio client's provider before they expire. ``ca_pem``
(spec.storage.caBundle) is trusted beside the system's certificates, for the endpoint and STS alike.
"""

from __future__ import annotations

import os
import ssl

import urllib3
from minio import Minio
from minio.credentials.providers import (
    ChainedProvider,
    EnvAWSProvider,
    IamAwsProvider,
    Provider,
    StaticProvider,
)

from . import jobenv
from .common import Storage


def http_client(ca_pem: str | None = None, *, timeout: float = 60.0,
                retries: urllib3.Retry | None = None, maxsize: int = 10) -> urllib3.PoolManager:
    """A connection pool that trusts the system's certificates and ``ca_pem`` besides."""
    context = ssl.create_default_context()
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem)
    return urllib3.PoolManager(
        maxsize=maxsize, ssl_context=context,
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        retries=retries if retries is not None else urllib3.Retry(total=0, connect=0, read=0, redirect=2))


def credentials(access_key: str | None, secret_key: str | None, http: urllib3.PoolManager,
                region: str | None = None) -> Provider:
    """Keys when given, else the process's standard AWS chain (see the module's docstring)."""
    if access_key and secret_key:
        return StaticProvider(access_key, secret_key)
    return ChainedProvider([
        EnvAWSProvider(),
        IamAwsProvider(custom_endpoint=os.environ.get(jobenv.AWS_ENDPOINT_URL_STS) or None, http_client=http,
                       region=region),
    ])


def client(storage: Storage, access_key: str | None = None, secret_key: str | None = None, *,
           http: urllib3.PoolManager, endpoint: str | None = None, provider: Provider | None = None) -> Minio:
    """A client for ``storage``, signed in as the module's docstring says (``endpoint`` overrides the
    spec's, e.g. for a port-forward); ``http`` carries the trusted certificates and timeouts."""
    chosen = provider if provider is not None else credentials(access_key, secret_key, http, storage.region)
    return Minio(endpoint or storage.endpoint, credentials=chosen, secure=storage.secure, region=storage.region,
                 http_client=http)


#: What minio's providers raise: ValueError for an STS or metadata answer that is not a success,
#: OSError for a token file, urllib3's errors for a server that cannot be reached.
_SIGN_IN_ERRORS = (ValueError, KeyError, OSError, urllib3.exceptions.HTTPError)


def sign_in(provider: Provider) -> None:
    """Fetch credentials now, so that a role STS refuses or an environment without any fails at the
    start with its own message rather than inside the first request. ValueError says why: for a
    chain, what each of its providers answered (minio's chain only says that all of them failed)."""
    try:
        provider.retrieve()
        return
    except _SIGN_IN_ERRORS as err:
        failure = err
    reasons = []
    for member in getattr(provider, "_providers", None) or [provider]:
        try:
            member.retrieve()
        except _SIGN_IN_ERRORS as err:
            reasons.append(f"{type(member).__name__}: {err}")
    raise ValueError("; ".join(reasons) or f"{type(failure).__name__}: {failure}") from failure
