"""The Argo CD health check (charts/sampleforge/argocd/health.lua), run by a real Lua interpreter.

Argo CD evaluates health scripts with gopher-lua, a Lua 5.1: the script is run here with every
Debian Lua interpreter found (lua5.1 first, the dialect Argo CD speaks; lua5.4 as well), with the
object in the global ``obj`` as Argo CD sets it. These cases use hand-written status objects that
cover each branch; tests/integration/test_chart.py runs the same script on statuses the operator
actually wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "charts" / "sampleforge" / "argocd"
HEALTH_LUA = ARGOCD / "health.lua"
KINDS = ("AugmentationRun", "FineTuneRun")
#: Debian package names of the interpreters; lua5.1 matches Argo CD's gopher-lua.
INTERPRETERS = ("lua5.1", "lua5.4")

_HARNESS = """
obj = {obj}
local hs = dofile({script})
io.write(tostring(hs.status), "\\n", tostring(hs.message))
"""


def lua_literal(value: Any) -> str:
    """A Python JSON value as a Lua table constructor, the shape Argo CD hands to the script:
    objects become tables with string keys, lists 1-indexed tables, null is absent (nil)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # Lua strings are bytes: escape every byte outside a safe ASCII set as three decimal digits.
        safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.:/@"
        return '"' + "".join(chr(b) if b in safe else f"\\{b:03d}" for b in value.encode()) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()
                               if v is not None) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def interpreters() -> list[str]:
    found = [name for name in INTERPRETERS if shutil.which(name)]
    if not found:
        message = f"no Lua interpreter ({' or '.join(INTERPRETERS)}; Debian packages of the same names)"
        if os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("SAMPLEFORGE_REQUIRE_TESTBED") == "1":
            pytest.fail(message + ": CI must run the Argo CD health checks")
        pytest.skip(message)
    return found


def health(obj: dict[str, Any], interpreter: str = "lua5.1") -> tuple[str, str]:
    """(status, message) that Argo CD would show for ``obj``."""
    program = _HARNESS.format(obj=lua_literal(obj), script=lua_literal(str(HEALTH_LUA)))
    result = subprocess.run([interpreter, "-"], input=program, capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, f"{interpreter} failed: {result.stderr}"
    status, _, message = result.stdout.partition("\n")
    return status, message


def run(phase: str | None, conditions: list[dict[str, Any]] | None = None, generation: int = 1,
        observed: int | None = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "sampleforge.io/v1alpha1", "kind": "AugmentationRun",
                            "metadata": {"name": "r", "namespace": "ns", "generation": generation}}
    if phase is not None:
        body["status"] = {"phase": phase, "observedGeneration": observed, "conditions": conditions or []}
    return body


def cond(type_: str, status: str, reason: str = "R", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


CASES = [
    ("no status yet", run(None), "Progressing", "Waiting for the sampleforge operator"),
    ("pending", run("Pending", [cond("Reconciling", "True", message="Job j created; waiting for its pods"),
                                cond("Stalled", "False")]), "Progressing", "waiting for its pods"),
    ("running", run("Running", [cond("Reconciling", "True", message="Job j: 1 pod(s) active, 1 running")]),
     "Progressing", "1 running"),
    ("waiting", run("Waiting", [cond("Waiting", "True", message="waiting for AugmentationRun shoes"),
                                cond("Reconciling", "True")]), "Progressing", "waiting for AugmentationRun shoes"),
    ("succeeded", run("Succeeded", [cond("Ready", "True", message="Job j completed")]), "Healthy", "Job j completed"),
    ("failed", run("Failed", [cond("Failed", "True", message="Job j failed: BackoffLimitExceeded"),
                              cond("Stalled", "True")]), "Degraded", "BackoffLimitExceeded"),
    ("stalled while pending", run("Pending", [cond("Stalled", "True", "SecretNotFound", "Secret s not found"),
                                              cond("Reconciling", "False")]), "Degraded", "Secret s not found"),
    ("suspended", run("Suspended", [cond("Suspended", "True", message="set spec.suspend to false to resume")]),
     "Suspended", "spec.suspend"),
    ("spec change not yet observed", run("Succeeded", [cond("Ready", "True")], generation=3, observed=2),
     "Progressing", "generation 3"),
]


@pytest.mark.parametrize(("case", "obj", "status", "message"), CASES, ids=[c[0] for c in CASES])
def test_health(case: str, obj: dict[str, Any], status: str, message: str) -> None:
    for interpreter in interpreters():
        got_status, got_message = health(obj, interpreter)
        assert (got_status, message in got_message) == (status, True), \
            f"{case} under {interpreter}: got {got_status!r} {got_message!r}"


def test_lua_literal_round_trips_awkward_strings() -> None:
    """Messages with quotes, newlines and non-ASCII must reach the script intact."""
    text = 'pod "x"\nexited → 7 \\ done'
    program = f"io.write(({lua_literal({'m': [text]})})['m'][1])"
    result = subprocess.run([interpreters()[0], "-"], input=program.encode(), capture_output=True, check=True,
                            timeout=30)
    assert result.stdout.decode() == text


def test_the_script_is_lua_5_1_and_has_no_globals_but_obj() -> None:
    """gopher-lua is 5.1: no goto, integer division or bitwise operators; and a script that sets
    globals could leak state into the next resource Argo CD checks in the same Lua state."""
    source = HEALTH_LUA.read_text()
    for construct in ("goto ", "//", " & ", " | ", "<<", ">>"):
        assert construct not in source, f"{construct!r} is not Lua 5.1"
    luac = shutil.which("luac5.1")
    if luac is None:
        pytest.skip("luac5.1 (Debian package lua5.1) is needed to list the script's global accesses")
    listing = subprocess.run([luac, "-p", "-l", str(HEALTH_LUA)], capture_output=True, text=True, check=True,
                             timeout=30).stdout
    read = {line.rsplit(";", 1)[-1].strip() for line in listing.splitlines() if "GETGLOBAL" in line}
    written = {line.rsplit(";", 1)[-1].strip() for line in listing.splitlines() if "SETGLOBAL" in line}
    assert read <= {"obj", "ipairs", "tostring"}, read
    assert not written, f"the script sets globals: {written}"


@pytest.mark.parametrize("path", ["argocd-cm-patch.yaml", "argo-cd-values.yaml"])
def test_argocd_configuration_snippets_hold_the_script_verbatim_for_both_kinds(path: str) -> None:
    doc = yaml.safe_load((ARGOCD / path).read_text())
    data = doc["data"] if "data" in doc else doc["configs"]["cm"]
    want = {f"resource.customizations.health.sampleforge.io_{kind}" for kind in KINDS}
    assert set(data) == want
    script = HEALTH_LUA.read_text()
    for key in want:
        assert data[key] == script, f"{path}: {key} differs from health.lua; copy health.lua into it again"


def test_status_fields_read_by_the_script_exist_in_the_crds() -> None:
    """The script reads status.phase, .observedGeneration and .conditions[].type/status/message:
    the CRDs must define exactly those (a rename would leave Argo CD on 'Progressing' forever)."""
    for kind in ("augmentationruns", "finetuneruns"):
        crd = yaml.safe_load((REPO / "crds" / f"{kind}.sampleforge.io.yaml").read_text())
        status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        assert {"phase", "observedGeneration", "conditions"} <= set(status)
        phases = set(status["phase"].get("enum", []))
        assert phases >= {"Pending", "Running", "Succeeded", "Failed", "Suspended"}, json.dumps(status["phase"])
        assert {"type", "status", "message"} <= set(status["conditions"]["items"]["properties"])
