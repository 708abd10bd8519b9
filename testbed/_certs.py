"""The PKI an envtest-style control plane needs, made fresh for every testbed.

Two CAs keep the roles apart as a real cluster does: the serving CA signs the API server's TLS
certificate, the client CA signs the certificates clients authenticate with (the admin's CN=admin,
O=system:masters). A separate key pair signs service-account tokens, so TokenRequest works and RBAC
can be tested with real ServiceAccount identities. EC P-256 keys: fast to make, accepted everywhere.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=7)
_SERVING_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                  "kubernetes.default.svc.cluster.local")
_SERVING_IPS = ("127.0.0.1", "10.0.0.1")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class _Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, common_name: str) -> _Authority:
        key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(self, subject: x509.Name, *, server: bool, names: tuple[str, ...] = (),
              ips: tuple[str, ...] = ()) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = _key()
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names or ips:
            alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
            alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


def server_certificate(common_name: str, ips: tuple[str, ...] = ("127.0.0.1",),
                       names: tuple[str, ...] = ("localhost",)) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate, server key) as PEM: a private CA of its own, as a
    company's S3 endpoint behind an internal CA has."""
    authority = _Authority.create(f"{common_name}-ca")
    key, cert = authority.issue(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
                                server=True, names=names, ips=ips)
    return _cert_pem(authority.cert), _cert_pem(cert), _key_pem(key)


@dataclass(frozen=True)
class ControlPlanePKI:
    """Paths of the files the API server, controllers and clients are pointed at."""

    serving_ca: Path
    serving_cert: Path
    serving_key: Path
    client_ca: Path
    admin_cert: Path
    admin_key: Path
    service_account_key: Path
    service_account_pub: Path

    @classmethod
    def create(cls, directory: Path) -> ControlPlanePKI:
        directory.mkdir(parents=True, exist_ok=True)
        serving_ca = _Authority.create("sampleforge-testbed-serving-ca")
        client_ca = _Authority.create("sampleforge-testbed-client-ca")
        serving_key, serving_cert = serving_ca.issue(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
            server=True, names=_SERVING_NAMES, ips=_SERVING_IPS)
        admin_key, admin_cert = client_ca.issue(
            x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                       x509.NameAttribute(NameOID.COMMON_NAME, "admin")]), server=False)
        sa_key = _key()

        files = {
            "serving_ca": ("serving-ca.crt", _cert_pem(serving_ca.cert)),
            "serving_cert": ("apiserver.crt", _cert_pem(serving_cert)),
            "serving_key": ("apiserver.key", _key_pem(serving_key)),
            "client_ca": ("client-ca.crt", _cert_pem(client_ca.cert)),
            "admin_cert": ("admin.crt", _cert_pem(admin_cert)),
            "admin_key": ("admin.key", _key_pem(admin_key)),
            "service_account_key": ("sa.key", _key_pem(sa_key)),
            "service_account_pub": ("sa.pub", sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)),
        }
        paths: dict[str, Path] = {}
        for field_name, (filename, data) in files.items():
            path = directory / filename
            path.write_bytes(data)
            path.chmod(0o600)
            paths[field_name] = path
        return cls(**paths)
