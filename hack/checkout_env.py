#!/usr/bin/env python3
"""Where a checkout's own Python environment lives: one virtual environment per checkout, in the cache.

The Go-built testbed (``bin/``, ``kueue/``, ``llamacpp/``, ``stamps/`` under ``$SAMPLEFORGE_CACHE``) is
shared by every clone on the machine, but the project is installed *editable*, so a virtual environment
belongs to exactly one checkout: a second clone (CI's fresh one, a benchmark in another folder) must
never import the first clone's code, and deleting a clone must not break the others. Each checkout
therefore gets ``$SAMPLEFORGE_CACHE/venvs/<folder name>-<hash of its absolute path>``, filled by uv
from uv's own shared cache, so torch and the rest are linked, not downloaded or unpacked again.

    python3 hack/checkout_env.py venv        # this checkout's venv (what the Makefile and bootstrap use)
    python3 hack/checkout_env.py link-mode   # how uv should put files from its cache into that venv
    python3 hack/checkout_env.py key         # <folder name>-<hash>: also names its scratch directories
    python3 hack/checkout_env.py prune       # remove the venvs of checkouts that no longer exist

Only the standard library is used here, like the other scripts in hack/: it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Written into each venv: which checkout it belongs to (what `prune` reads).
OWNER_FILE = "sampleforge-checkout"
#: Scratch directories a checkout has in the cache besides its venv (see work_dir), pruned with it.
WORK_PURPOSES = ("lint",)


def cache_dir() -> Path:
    """The cache shared by every checkout (as in testbed/_paths.py)."""
    return Path(os.environ.get("SAMPLEFORGE_CACHE", Path.home() / ".cache" / "sampleforge"))


def checkout_key(checkout: Path) -> str:
    """``<folder name>-<12 hex digits>``: readable, and unique per absolute, symlink-resolved path (two
    clones both called ``main`` differ in the hash; the same clone reached through a symlink does not)."""
    resolved = Path(checkout).resolve()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", resolved.name)[:40] or "root"
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return f"{name}-{digest}"


def venv_dir(checkout: Path = REPO, cache: Path | None = None) -> Path:
    """The virtual environment of ``checkout``."""
    return (cache if cache is not None else cache_dir()) / "venvs" / checkout_key(checkout)


def work_dir(purpose: str, checkout: Path = REPO, cache: Path | None = None) -> Path:
    """A scratch directory of ``checkout``'s own in the cache (for example the type checker's)."""
    return (cache if cache is not None else cache_dir()) / purpose / checkout_key(checkout)


def uv_cache_dir() -> Path:
    """uv's cache as uv itself finds it (``UV_CACHE_DIR``, else ``$XDG_CACHE_HOME/uv``, else ``~/.cache/uv``)."""
    if os.environ.get("UV_CACHE_DIR"):
        return Path(os.environ["UV_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uv"


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def link_mode(venv: Path, uv_cache: Path) -> str:
    """``hardlink`` when the venv and uv's cache share a file system (an install then costs no disk and
    seconds), ``copy`` when they do not (a hard link cannot cross file systems; uv would try, warn and
    copy anyway). A ``UV_LINK_MODE`` the user set wins."""
    if os.environ.get("UV_LINK_MODE"):
        return os.environ["UV_LINK_MODE"]
    same = os.stat(_existing(venv)).st_dev == os.stat(_existing(uv_cache)).st_dev
    return "hardlink" if same else "copy"


def prune(cache: Path | None = None, dry_run: bool = False) -> list[Path]:
    """Remove the venvs whose checkout is gone, with the checkout's scratch directories (a venv without
    an owner file, such as the single shared one of earlier versions, is left alone)."""
    root = cache if cache is not None else cache_dir()
    removed = []
    for venv in sorted((root / "venvs").glob("*")):
        owner = venv / OWNER_FILE
        if not owner.is_file():
            continue
        checkout = Path(owner.read_text().strip())
        if (checkout / "pyproject.toml").is_file() and venv_dir(checkout, cache) == venv:
            continue
        for path in (venv, *(root / purpose / venv.name for purpose in WORK_PURPOSES)):
            if path.exists():
                if not dry_run:
                    shutil.rmtree(path)
                removed.append(path)
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["venv", "key", "link-mode", "prune"])
    parser.add_argument("--checkout", type=Path, default=REPO, help="the checkout (default: this one)")
    parser.add_argument("--cache", type=Path, default=None, help="the shared cache (default: $SAMPLEFORGE_CACHE)")
    parser.add_argument("--venv", type=Path, default=None, help="link-mode: for this venv (default: the checkout's)")
    parser.add_argument("--dry-run", action="store_true", help="prune: only list what would be removed")
    args = parser.parse_args(argv)
    if args.what == "venv":
        print(venv_dir(args.checkout, args.cache))
    elif args.what == "key":
        print(checkout_key(args.checkout))
    elif args.what == "link-mode":
        print(link_mode(args.venv or venv_dir(args.checkout, args.cache), uv_cache_dir()))
    else:
        for venv in prune(args.cache, dry_run=args.dry_run):
            print(f"{'would remove' if args.dry_run else 'removed'} {venv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
