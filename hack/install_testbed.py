#!/usr/bin/env python3
"""Install the real components that the tests and the demo run against, pinned and idempotent.

Everything lands in a cache outside the repository (``$SAMPLEFORGE_CACHE``, default
``~/.cache/sampleforge``) so a second run, a fresh clone and CI on the same machine reuse it. Each
binary gets a stamp that records exactly what produced it (pinned version, the wrapper module's
go.mod/go.sum, the flags, the Go version); a component whose stamp still matches is not rebuilt, so
a warm run takes seconds.

Only the standard library is used here: this runs before the project's virtual environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERSIONS_FILE = REPO / "hack" / "testbed-versions.toml"
# A fixed build date keeps the stamped binaries reproducible.
BUILD_DATE = "2026-01-01T00:00:00Z"


def cache_dir() -> Path:
    return Path(os.environ.get("SAMPLEFORGE_CACHE", Path.home() / ".cache" / "sampleforge"))


@dataclass(frozen=True)
class GoBuild:
    """One binary built with the go command, from a wrapper module of ours or with `go install`."""

    name: str
    package: str
    version: str
    wrapper: Path | None = None  # hack/gomod/<x>: built with `go build` inside it
    ldflags: tuple[str, ...] = field(default=())

    def fingerprint(self, go_version: str) -> str:
        digest = hashlib.sha256()
        for part in (self.package, self.version, go_version, *self.ldflags):
            digest.update(part.encode() + b"\0")
        if self.wrapper is not None:
            for name in ("go.mod", "go.sum"):
                digest.update((self.wrapper / name).read_bytes())
        return digest.hexdigest()


def kubernetes_ldflags(version: str) -> tuple[str, ...]:
    """Stamp the release the way upstream does; unstamped binaries say v0.0.0-master."""
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={BUILD_DATE}",
        ]
    return tuple(flags)


def planned_builds(pins: dict) -> list[GoBuild]:
    kube = pins["kubernetes"]["version"]
    kube_flags = kubernetes_ldflags(kube)
    kube_dir = REPO / "hack" / "gomod" / "kubernetes"
    builds = [
        GoBuild("etcd", "go.etcd.io/etcd/server/v3", pins["etcd"]["version"],
                wrapper=REPO / "hack" / "gomod" / "etcd", ldflags=("-s", "-w")),
    ]
    for cmd in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"):
        builds.append(GoBuild(cmd, f"k8s.io/kubernetes/cmd/{cmd}", kube, wrapper=kube_dir, ldflags=kube_flags))
    builds.append(GoBuild("minio", pins["minio"]["module"], pins["minio"]["version"], ldflags=("-s", "-w")))
    helm = pins["helm"]["version"]
    builds.append(GoBuild("helm", pins["helm"]["module"], helm,
                          ldflags=("-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={helm}")))
    kwok = pins["kwok"]["version"]
    builds.append(GoBuild("kwok", pins["kwok"]["module"], kwok,
                          ldflags=("-s", "-w", f"-X sigs.k8s.io/kwok/pkg/consts.Version={kwok}")))
    kueue = pins["kueue"]["version"]
    builds.append(GoBuild("kueue", pins["kueue"]["module"], kueue,
                          ldflags=("-s", "-w", f"-X sigs.k8s.io/kueue/pkg/version.GitVersion={kueue}",
                                   f"-X sigs.k8s.io/kueue/pkg/version.BuildDate={BUILD_DATE}")))
    actionlint = pins["actionlint"]["version"]
    builds.append(GoBuild("actionlint", pins["actionlint"]["module"], actionlint,
                          ldflags=("-s", "-w", f"-X github.com/rhysd/actionlint.version={actionlint}")))
    return builds


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOFLAGS", "-mod=mod")
    # GOCACHE and GOMODCACHE stay at the go command's defaults, which are outside the repository.
    return env


def run_with_heartbeat(cmd: list[str], cwd: Path, env: dict[str, str], label: str, log: Path) -> None:
    """Run a long build, printing a line every 30 s so nobody mistakes it for a hang."""
    started = time.monotonic()
    compiled = 0
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(30):
                print(f"      … {label}: {compiled} packages compiled, {time.monotonic() - started:.0f}s", flush=True)

        ticker = threading.Thread(target=beat, daemon=True)
        ticker.start()
        for line in proc.stdout:
            sink.write(line)
            if not line.startswith(("go: ", "#")):
                compiled += 1
        rc = proc.wait()
        stop.set()
    if rc != 0:
        tail = log.read_text().splitlines()[-30:]
        raise SystemExit(f"building {label} failed (exit {rc}); full log: {log}\n" + "\n".join(tail))


def install_go(build: GoBuild, bindir: Path, stamps: Path, go_version: str, logs: Path) -> str:
    target = bindir / build.name
    stamp = stamps / f"{build.name}.json"
    fingerprint = build.fingerprint(go_version)
    if target.exists() and stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint:
        return "cached"
    env = go_env()
    ldflags = ["-ldflags", " ".join(build.ldflags)] if build.ldflags else []
    if build.wrapper is not None:
        cmd = ["go", "build", "-v", "-trimpath", "-tags", "tools", *ldflags, "-o", str(target) + ".tmp", build.package]
        cwd = build.wrapper
    else:
        env["GOBIN"] = str(bindir / ".gobin")
        cmd = ["go", "install", "-v", "-trimpath", *ldflags, f"{build.package}@{build.version}"]
        cwd = REPO
    run_with_heartbeat(cmd, cwd, env, build.name, logs / f"{build.name}.log")
    if build.wrapper is None:
        (bindir / ".gobin" / Path(build.package).name).replace(str(target) + ".tmp")
    # Rename last, then stamp: an interrupted build never leaves a binary that looks finished.
    Path(str(target) + ".tmp").replace(target)
    stamp.write_text(json.dumps({"version": build.version, "fingerprint": fingerprint}, indent=1))
    return "built"


def install_kueue_crds(pins: dict, root: Path, stamps: Path) -> str:
    """Copy the pinned Kueue release's CRDs from the module's source (in the Go module cache, where
    building the manager put it) into the cache, where sampleforge.testbed installs them from."""
    version = pins["kueue"]["version"]
    target = root / "kueue" / "crds"
    stamp = stamps / "kueue-crds.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("version") == version and any(target.glob("*.yaml")):
        return "cached"
    module = f"{pins['kueue']['source']}@{version}"
    found = subprocess.run(["go", "mod", "download", "-json", module], cwd=root, env=go_env(), check=False,
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise SystemExit(f"go mod download {module} failed: {found.stdout}{found.stderr}")
    bases = Path(json.loads(found.stdout)["Dir"]) / "config" / "components" / "crd" / "bases"
    crds = sorted(bases.glob("*.yaml"))
    if not crds:
        raise SystemExit(f"no CRDs in {bases}")
    staging = target.with_name("crds.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for crd in crds:
        shutil.copyfile(crd, staging / crd.name)  # copyfile: not the module cache's read-only mode
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)
    stamp.write_text(json.dumps({"version": version, "files": [c.name for c in crds]}, indent=1))
    return f"copied {len(crds)} CRDs"


def install_debian(packages: dict[str, list[str]], bindir: Path) -> str:
    binaries = [b for names in packages.values() for b in names]
    missing = [p for p, names in packages.items() if not all(shutil.which(b, path="/usr/bin") for b in names)]
    if not missing:
        status = "cached"
    else:
        apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run([*apt, "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run([*apt, "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        status = f"installed {', '.join(missing)}"
    for b in binaries:
        link = bindir / b
        if not link.exists():
            link.symlink_to(f"/usr/bin/{b}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="install just these components (default: all)")
    args = parser.parse_args(argv)

    pins = tomllib.loads(VERSIONS_FILE.read_text())
    root = cache_dir()
    bindir, stamps, logs = root / "bin", root / "stamps", root / "logs"
    for d in (bindir, stamps, logs):
        d.mkdir(parents=True, exist_ok=True)
    go_version = subprocess.run(["go", "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout.strip()

    builds = [b for b in planned_builds(pins) if not args.only or b.name in args.only]
    want_debian = not args.only or "debian" in args.only
    total = len(builds) + int(want_debian)
    print(f"sampleforge testbed → {bindir} ({go_version}, Kubernetes {pins['kubernetes']['version']})", flush=True)
    started_all = time.monotonic()
    for i, build in enumerate(builds, 1):
        print(f"[{i}/{total}] {build.name} {build.version}", flush=True)
        t0 = time.monotonic()
        status = install_go(build, bindir, stamps, go_version, logs)
        print(f"      {status} in {time.monotonic() - t0:.1f}s", flush=True)
        if build.name == "kueue":
            t0 = time.monotonic()
            status = install_kueue_crds(pins, root, stamps)
            print(f"      Kueue CRDs: {status} in {time.monotonic() - t0:.1f}s", flush=True)
    if want_debian:
        print(f"[{total}/{total}] Debian packages: {', '.join(pins['debian'])}", flush=True)
        t0 = time.monotonic()
        status = install_debian(pins["debian"], bindir)
        print(f"      {status} in {time.monotonic() - t0:.1f}s", flush=True)
    print(f"testbed ready in {time.monotonic() - started_all:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
