"""``sampleforge-testbed``: bring the local control plane and MinIO up, show that they serve, and
take them down again.

``up`` shows the cluster with kubectl and stops it when done; ``up --keep`` leaves it running and
prints how to point kubectl and a MinIO client at it, and ``down`` stops a kept testbed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from sampleforge.testbed._localnode import serve
from sampleforge.testbed._paths import cache_dir, kubernetes_version, missing_binaries
from sampleforge.testbed._process import stop_group
from sampleforge.testbed._testbed import Testbed, TestbedOptions

STATE_FILE = cache_dir() / "run" / "testbed.json"
SHOWCASE_BUCKET = "sampleforge-demo"


def _show(tb: Testbed, *args: str) -> None:
    print(f"\n$ kubectl {' '.join(args)}", flush=True)
    print(tb.kubectl(*args).stdout.rstrip(), flush=True)


def _showcase(tb: Testbed) -> None:
    """Prove with the user's own tools that the servers are real and answer."""
    _show(tb, "version", "--output=yaml")
    _show(tb, "get", "nodes", "--output=wide")
    _show(tb, "get", "--raw=/readyz")
    _show(tb, "auth", "can-i", "create", "jobs.batch", "--namespace=default")
    s3 = tb.minio_client()
    if not s3.bucket_exists(SHOWCASE_BUCKET):
        s3.make_bucket(SHOWCASE_BUCKET)
    print(f"\nMinIO at {tb.minio.endpoint}: buckets = {[b.name for b in s3.list_buckets()]}", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    missing = missing_binaries(("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
                                "kwok", "minio"))
    if missing:
        print(f"missing testbed binaries: {', '.join(missing)}; run `make testbed` first", file=sys.stderr)
        return 2
    if STATE_FILE.exists():
        print(f"a kept testbed is already running (see {STATE_FILE}); run `sampleforge-testbed down` first",
              file=sys.stderr)
        return 2
    options = TestbedOptions(controllers=not args.no_controllers, gpu_nodes=args.gpu_nodes)
    started = time.monotonic()
    print(f"starting etcd, kube-apiserver {kubernetes_version()}"
          f"{', kube-controller-manager, kube-scheduler, kwok' if options.controllers else ''} and MinIO …",
          flush=True)
    tb = Testbed(options).start()
    try:
        print(f"testbed up in {time.monotonic() - started:.1f}s (work directory {tb.workdir})", flush=True)
        _showcase(tb)
        if args.keep:
            tb.write_state(STATE_FILE)
            tb.detach()
            print(
                "\nThe testbed keeps running. Point your tools at it:\n"
                f"  export KUBECONFIG={tb.kubeconfig}\n"
                f"  kubectl get nodes     # kubectl is at {shutil.which('kubectl') or cache_dir() / 'bin/kubectl'}\n"
                f"  MinIO: endpoint http://{tb.minio.endpoint}, credentials in {STATE_FILE}\n"
                "Stop it with: make down   (sampleforge-testbed down)",
                flush=True,
            )
            return 0
    except BaseException:
        tb.stop(keep_workdir=True)
        raise
    tb.stop()
    print("\ntestbed stopped; nothing is left running.", flush=True)
    return 0


def cmd_down(_: argparse.Namespace) -> int:
    if not STATE_FILE.exists():
        print("no kept testbed is running", flush=True)
        return 0
    state = json.loads(STATE_FILE.read_text())
    # Reverse start order: clients of the API server first, etcd and MinIO last.
    for name, pid in reversed(list(state["pids"].items())):
        stop_group(pid)
        print(f"stopped {name} (pid {pid})", flush=True)
    shutil.rmtree(state["workdir"], ignore_errors=True)
    STATE_FILE.unlink()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sampleforge.testbed._demo import run_demo

    if STATE_FILE.exists():
        print(f"a kept testbed is already running (see {STATE_FILE}); run `make down` first", file=sys.stderr)
        return 2
    return run_demo(keep=args.keep)


def cmd_env(_: argparse.Namespace) -> int:
    if not STATE_FILE.exists():
        print("no kept testbed is running", file=sys.stderr)
        return 1
    state = json.loads(STATE_FILE.read_text())
    print(f"export KUBECONFIG={state['kubeconfig']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sampleforge-testbed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local control plane and MinIO and show that they serve")
    up.add_argument("--keep", action="store_true", help="leave it running; stop later with `down`")
    up.add_argument("--no-controllers", action="store_true",
                    help="API server and MinIO only (no controller-manager, scheduler, kwok)")
    up.add_argument("--gpu-nodes", type=int, default=2, help="fake GPU nodes to create (default 2)")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop a testbed left running by `up --keep`").set_defaults(func=cmd_down)
    sub.add_parser("env", help="print the export line for a kept testbed's kubeconfig").set_defaults(func=cmd_env)
    demo = sub.add_parser("demo", help="the end-to-end demo: augmentation and fine-tuning Jobs really run locally")
    demo.add_argument("--keep", action="store_true", help="leave it running; stop later with `down`")
    demo.set_defaults(func=cmd_demo)
    node = sub.add_parser("local-node", help=argparse.SUPPRESS)
    node.add_argument("--kubeconfig", type=Path, required=True)
    node.add_argument("--workdir", type=Path, required=True)
    node.add_argument("--name", default="local-0")
    node.set_defaults(func=lambda a: serve(a.kubeconfig, a.workdir, a.name))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
