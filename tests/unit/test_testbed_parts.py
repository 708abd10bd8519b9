"""Pure parts of the testbed and its installer, tested without any server."""

from __future__ import annotations

import importlib.util
import re
import sys
import time
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sampleforge.testbed import TestbedError
from sampleforge.testbed._certs import ControlPlanePKI
from sampleforge.testbed._controlplane import write_kubeconfig
from sampleforge.testbed._kwok import GPU_RESOURCE, STAGES_FILE, gpu_node_manifest
from sampleforge.testbed._process import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_installer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("install_testbed", REPO_ROOT / "hack" / "install_testbed.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["install_testbed"] = module
    spec.loader.exec_module(module)
    return module


class TestPKI:
    def test_chain_names_and_roles(self, tmp_path: Path) -> None:
        pki = ControlPlanePKI.create(tmp_path)
        serving_ca = x509.load_pem_x509_certificate(pki.serving_ca.read_bytes())
        client_ca = x509.load_pem_x509_certificate(pki.client_ca.read_bytes())
        serving = x509.load_pem_x509_certificate(pki.serving_cert.read_bytes())
        admin = x509.load_pem_x509_certificate(pki.admin_cert.read_bytes())

        serving.verify_directly_issued_by(serving_ca)
        admin.verify_directly_issued_by(client_ca)
        with pytest.raises((ValueError, InvalidSignature)):  # other issuer name, or a signature that fails
            admin.verify_directly_issued_by(serving_ca)  # the two CAs really are separate

        sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "localhost" in sans.get_values_for_type(x509.DNSName)
        assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
        assert ExtendedKeyUsageOID.SERVER_AUTH in serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

        assert admin.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "admin"
        assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
        assert ExtendedKeyUsageOID.CLIENT_AUTH in admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    def test_private_keys_are_not_world_readable(self, tmp_path: Path) -> None:
        pki = ControlPlanePKI.create(tmp_path)
        for key in (pki.serving_key, pki.admin_key, pki.service_account_key):
            assert key.stat().st_mode & 0o077 == 0


class TestKubeconfig:
    def test_inlines_certificates_and_token(self, tmp_path: Path) -> None:
        pki = ControlPlanePKI.create(tmp_path / "pki")
        path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:6443", pki.serving_ca, pki.admin_cert,
                                pki.admin_key)
        config = yaml.safe_load(path.read_text())
        assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
        assert set(config["users"][0]["user"]) == {"client-certificate-data", "client-key-data"}
        token_path = write_kubeconfig(tmp_path / "kc2", "https://x", pki.serving_ca, token="abc", user="sa")
        assert yaml.safe_load(token_path.read_text())["users"][0] == {"name": "sa", "user": {"token": "abc"}}


class TestManagedProcess:
    def test_a_process_that_dies_reports_its_log(self, tmp_path: Path) -> None:
        proc = ManagedProcess("dies", ["sh", "-c", "echo 'cannot bind port'; exit 3"], tmp_path / "dies.log").start()
        with pytest.raises(TestbedError, match=r"(?s)exited \(code 3\).*cannot bind port"):
            proc.wait_ready(lambda: False, timeout=10)

    def test_readiness_timeout_names_the_server(self, tmp_path: Path) -> None:
        proc = ManagedProcess("slow", ["sleep", "30"], tmp_path / "slow.log").start()
        try:
            with pytest.raises(TestbedError, match="slow was not ready after 1s"):
                proc.wait_ready(lambda: False, timeout=1)
        finally:
            proc.stop()

    def test_stop_kills_the_whole_process_group(self, tmp_path: Path) -> None:
        pidfile = tmp_path / "child.pid"
        # The child ignores SIGTERM, as a misbehaving server might.
        proc = ManagedProcess("parent", ["sh", "-c", f"sh -c 'trap \"\" TERM; echo $$ > {pidfile}; sleep 60' & wait"],
                              tmp_path / "p.log").start()
        deadline = time.monotonic() + 5
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child = int(pidfile.read_text())
        proc.stop(grace=1)
        time.sleep(0.2)
        assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split(")")[1][:3]


class TestKwokConfig:
    def test_gpu_node_advertises_gpus_and_carries_the_gpu_taint(self) -> None:
        node = gpu_node_manifest("n0", gpus=4)
        assert node["status"]["allocatable"][GPU_RESOURCE] == "4"
        assert node["spec"]["taints"] == [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]

    def test_stages_cover_the_pod_and_node_lifecycle(self) -> None:
        stages = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(STAGES_FILE.read_text())}
        assert set(stages) == {"node-initialize", "node-heartbeat", "pod-running", "pod-succeed", "pod-fail",
                               "pod-delete", "pod-image-pull-error"}
        assert all(doc["kind"] == "Stage" for doc in stages.values())


class TestInstaller:
    def test_pins_agree_with_the_wrapper_modules(self) -> None:
        pins = tomllib.loads((REPO_ROOT / "hack" / "testbed-versions.toml").read_text())
        kube = pins["kubernetes"]["version"]
        gomod = (REPO_ROOT / "hack" / "gomod" / "kubernetes" / "go.mod").read_text()
        assert f"k8s.io/kubernetes {kube}" in gomod
        staging = "v0." + kube.split(".", 1)[1]
        replaces = re.findall(r"k8s\.io/([\w-]+) => k8s\.io/\1 (v\S+)", gomod)
        assert len(replaces) == 33
        assert {v for _, v in replaces} == {staging}
        etcd_mod = (REPO_ROOT / "hack" / "gomod" / "etcd" / "go.mod").read_text()
        assert f"go.etcd.io/etcd/server/v3 {pins['etcd']['version']}" in etcd_mod

    def test_kubernetes_binaries_are_version_stamped(self) -> None:
        installer = _load_installer()
        flags = " ".join(installer.kubernetes_ldflags("v1.36.3"))
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            assert f"-X {pkg}.gitVersion=v1.36.3" in flags
            assert f"-X {pkg}.gitMinor=36" in flags

    def test_fingerprint_changes_with_its_inputs(self) -> None:
        installer = _load_installer()
        base = installer.GoBuild("x", "example.com/x", "v1.0.0")
        assert base.fingerprint("go1.26.8") == installer.GoBuild("x", "example.com/x", "v1.0.0").fingerprint("go1.26.8")
        assert base.fingerprint("go1.26.8") != base.fingerprint("go1.27.0")
        assert base.fingerprint("go1.26.8") != installer.GoBuild("x", "example.com/x", "v1.0.1").fingerprint("go1.26.8")
        assert base.fingerprint("go1.26.8") != installer.GoBuild("x", "example.com/x", "v1.0.0",
                                                                 ldflags=("-s",)).fingerprint("go1.26.8")

    def test_ec_keys_are_used(self, tmp_path: Path) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        pki = ControlPlanePKI.create(tmp_path)
        assert isinstance(load_pem_private_key(pki.service_account_key.read_bytes(), None), ec.EllipticCurvePrivateKey)
