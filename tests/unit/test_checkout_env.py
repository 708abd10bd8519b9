"""One Python environment per checkout (hack/checkout_env.py): keyed by the checkout's path, so a second
clone never imports the first one's code, while the cache around it stays shared."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("checkout_env", REPO / "hack" / "checkout_env.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


env = _load()


def test_two_checkouts_get_two_venvs_and_one_checkout_always_the_same(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, second = tmp_path / "a" / "main", tmp_path / "b" / "main"  # same folder name, different clones
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    assert env.venv_dir(first, cache) != env.venv_dir(second, cache)
    assert env.venv_dir(first, cache) == env.venv_dir(first, cache)
    assert env.venv_dir(first, cache) == env.venv_dir(tmp_path / "a" / ".." / "a" / "main", cache)
    link = tmp_path / "link"
    link.symlink_to(first)
    assert env.venv_dir(link, cache) == env.venv_dir(first, cache), "a symlink to a clone is that clone"
    venv = env.venv_dir(first, cache)
    assert venv.parent == cache / "venvs" and venv.name.startswith("main-"), venv


def test_the_key_is_a_safe_readable_directory_name(tmp_path: Path) -> None:
    odd = tmp_path / "my clone (copy)"
    key = env.checkout_key(odd)
    assert key.startswith("my_clone_copy_-") and "/" not in key and " " not in key, key


def test_the_makefile_and_bootstrap_use_this_checkouts_venv(tmp_path: Path) -> None:
    """What `make venv-path` prints is the keyed venv under SAMPLEFORGE_CACHE (the old shared
    ``$SAMPLEFORGE_CACHE/venv`` is no checkout's)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    cache = tmp_path / "cache"
    environ = {k: v for k, v in os.environ.items() if k not in ("VENV", "SAMPLEFORGE_VENV", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run([make, "-s", "--no-print-directory", "-C", str(REPO), "venv-path"],
                          env={**environ, "SAMPLEFORGE_CACHE": str(cache)}, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == env.venv_dir(REPO, cache)
    bootstrap = (REPO / "hack" / "bootstrap.sh").read_text()
    assert 'checkout_env.py" venv' in bootstrap and '"$CACHE/venv"' not in bootstrap


def test_link_mode_hardlinks_on_one_file_system_and_respects_the_user(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UV_LINK_MODE", raising=False)
    assert env.link_mode(tmp_path / "venvs" / "x", tmp_path / "uv") == "hardlink"  # neither exists yet: parents
    monkeypatch.setenv("UV_LINK_MODE", "symlink")
    assert env.link_mode(tmp_path / "venvs" / "x", tmp_path / "uv") == "symlink"


def test_prune_removes_only_the_venvs_of_checkouts_that_are_gone(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    alive, gone = tmp_path / "alive", tmp_path / "gone"
    for checkout in (alive, gone):
        checkout.mkdir()
        (checkout / "pyproject.toml").write_text("")
        venv = env.venv_dir(checkout, cache)
        venv.mkdir(parents=True)
        (venv / env.OWNER_FILE).write_text(f"{checkout}\n")
        env.work_dir("lint", checkout, cache).mkdir(parents=True)
    unowned = cache / "venvs" / "someone-else"
    unowned.mkdir()
    (gone / "pyproject.toml").unlink()
    gone.rmdir()
    expected = [env.venv_dir(gone, cache), env.work_dir("lint", gone, cache)]
    assert env.prune(cache, dry_run=True) == expected
    assert all(path.exists() for path in expected)
    assert env.prune(cache) == expected
    assert not any(path.exists() for path in expected)
    assert env.venv_dir(alive, cache).exists() and env.work_dir("lint", alive, cache).exists() and unowned.exists()


def test_the_script_prints_the_venv(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "hack" / "checkout_env.py"), "venv", "--checkout",
                           str(tmp_path), "--cache", str(tmp_path / "c")], capture_output=True, text=True, check=True)
    assert Path(done.stdout.strip()) == env.venv_dir(tmp_path, tmp_path / "c")
