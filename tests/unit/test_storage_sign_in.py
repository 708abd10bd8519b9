"""How a process signs in to S3 (sampleforge.api.s3auth) and what the job makes of the environment
the operator renders: keys when given, else the standard AWS chain; a CA bundle trusted for https.
No servers: the credentials chain is asked for what it would use, not used."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from minio.credentials.providers import ChainedProvider, StaticProvider

from sampleforge.api import jobenv, s3auth
from sampleforge.api.common import Storage
from sampleforge.jobs.common.outage import StorageError
from sampleforge.jobs.common.storage import ObjectStore


def self_signed_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_keys_are_used_as_given_and_their_absence_means_the_chain() -> None:
    http = s3auth.http_client()
    assert isinstance(s3auth.credentials("ak", "sk", http), StaticProvider)
    assert isinstance(s3auth.credentials(None, None, http), ChainedProvider)


def test_the_chain_reads_aws_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    found = s3auth.credentials(None, None, s3auth.http_client()).retrieve()
    assert found is not None and found.access_key == "from-env"


def test_a_ca_bundle_is_trusted_beside_the_system_certificates() -> None:
    pem = self_signed_pem()
    default = s3auth.http_client().connection_pool_kw["ssl_context"].get_ca_certs()
    trusted = s3auth.http_client(pem).connection_pool_kw["ssl_context"].get_ca_certs()
    assert len(trusted) == len(default) + 1
    assert any(dict(x[0] for x in c["subject"]).get("commonName") == "test-ca" for c in trusted)


class TestJobEnvironment:
    BASE: ClassVar[dict[str, str]] = {jobenv.S3_ENDPOINT: "127.0.0.1:9000", jobenv.S3_SECURE: "false"}

    def test_without_keys_the_job_signs_in_with_the_pods_chain(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
        store = ObjectStore.from_env(self.BASE)
        assert isinstance(store.client._provider, ChainedProvider)

    def test_a_chain_that_cannot_sign_in_fails_at_the_start_naming_what_to_check(
            self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        # Web identity with a token file that is not there: the chain stops at reading it (no
        # request leaves the machine), as a pod whose projected token was not mounted would.
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv(jobenv.AWS_WEB_IDENTITY_TOKEN_FILE, str(tmp_path / "no-token"))
        monkeypatch.setenv(jobenv.AWS_ROLE_ARN, "arn:aws:iam::1:role/r")
        with pytest.raises(StorageError, match=r"cannot sign in to 127\.0\.0\.1:9000: .*spec\.storage\.webIdentity"):
            ObjectStore.from_env(self.BASE)

    def test_half_a_key_pair_is_an_error_naming_both_variables(self) -> None:
        with pytest.raises(StorageError, match=f"{jobenv.S3_ACCESS_KEY} and {jobenv.S3_SECRET_KEY}"):
            ObjectStore.from_env({**self.BASE, jobenv.S3_ACCESS_KEY: "ak"})

    def test_the_ca_file_is_read_and_a_missing_one_names_the_spec_field(self, tmp_path: Path) -> None:
        ca = tmp_path / "ca.crt"
        ca.write_text(self_signed_pem())
        keys = {jobenv.S3_ACCESS_KEY: "ak", jobenv.S3_SECRET_KEY: "sk"}
        ObjectStore.from_env({**self.BASE, **keys, jobenv.S3_SECURE: "true", jobenv.S3_CA_FILE: str(ca)})
        with pytest.raises(StorageError, match=r"spec\.storage\.caBundle"):
            ObjectStore.from_env({**self.BASE, jobenv.S3_CA_FILE: str(tmp_path / "absent.crt")})


class TestSpecRules:
    def test_keys_and_web_identity_exclude_each_other(self) -> None:
        with pytest.raises(ValueError, match="credentialsSecret and webIdentity"):
            Storage.model_validate({"endpoint": "m:9000", "credentialsSecret": "s",
                                    "webIdentity": {"roleArn": "arn:aws:iam::1:role/r"}})

    def test_a_ca_bundle_needs_https(self) -> None:
        with pytest.raises(ValueError, match="secure: true"):
            Storage.model_validate({"endpoint": "m:9000", "caBundle": {"name": "ca"}})

    def test_credentials_keys_need_the_secret(self) -> None:
        with pytest.raises(ValueError, match="credentialsKeys names keys of credentialsSecret"):
            Storage.model_validate({"endpoint": "m:9000", "credentialsKeys": {"accessKey": "a"}})
