"""docs/runbooks.md against the alert rules and the condition reasons it documents.

An alert whose runbook_url leads nowhere, or a reason that a run can show but no runbook explains,
leaves the person on call without help exactly when they need it; the reasons are defined in
api/constants.py and grow with the operator, so the runbook is checked against them rather than
reviewed by eye.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sampleforge.api import Reason

REPO = Path(__file__).resolve().parents[2]
RUNBOOKS = REPO / "docs" / "runbooks.md"
RULES = REPO / "charts" / "sampleforge" / "alerts" / "sampleforge-rules.yaml"
#: Where the runbook is published: the project's repository (its images are ghcr.io/sampleforge/...).
RUNBOOK_BASE = "https://github.com/sampleforge/sampleforge/blob/main/docs/runbooks.md"


def anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections(level: int = 3) -> dict[str, tuple[str, str]]:
    """anchor -> (the level-2 section it is in, its text) of every heading of ``level``."""
    out: dict[str, tuple[str, str]] = {}
    parent = ""
    current: str | None = None
    for line in RUNBOOKS.read_text().splitlines():
        if line.startswith("## "):
            parent, current = line[3:].strip(), None
        elif line.startswith("#" * level + " "):
            current = anchor(line[level + 1:])
            assert current not in out, f"two sections have the anchor #{current}"
            out[current] = (parent, "")
        elif current is not None:
            out[current] = (parent, out[current][1] + line + "\n")
    return out


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    return rules


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_links_to_its_own_runbook_section(rule: dict[str, Any]) -> None:
    url = rule["annotations"].get("runbook_url")
    assert url == f"{RUNBOOK_BASE}#{anchor(rule['alert'])}", f"{rule['alert']}: runbook_url {url}"
    found = sections()
    assert anchor(rule["alert"]) in found, f"docs/runbooks.md has no section ### {rule['alert']}"
    assert found[anchor(rule["alert"])][0] == "Alerts"


@pytest.mark.parametrize("reason", list(Reason), ids=str)
def test_every_condition_reason_has_a_runbook_section(reason: Reason) -> None:
    """SampleforgeRunFailed's description links to ``#{{ $labels.reason | toLower }}``: the
    heading must be the reason itself, so that its anchor is the reason in lower case."""
    found = sections()
    assert reason.lower() in found, f"docs/runbooks.md has no section ### {reason}"
    assert found[reason.lower()][0] == "Condition reasons"


def test_every_section_says_what_it_means_how_to_confirm_and_what_to_do() -> None:
    for name, (_, text) in sections().items():
        for part in ("**Means:**", "**Confirm:**", "**Do:**"):
            assert part in text, f"#{name} lacks {part}"


def test_run_failed_links_to_the_runbook_of_its_reason() -> None:
    rule = next(r for r in alert_rules() if r["alert"] == "SampleforgeRunFailed")
    assert f"{RUNBOOK_BASE}#{{{{ $labels.reason | toLower }}}}" in rule["annotations"]["description"]


def test_links_inside_the_runbook_lead_somewhere() -> None:
    text = RUNBOOKS.read_text()
    targets = set(sections()) | set(sections(level=2))
    for fragment in re.findall(r"\]\(#([^)]+)\)", text):
        assert fragment in targets, f"link to #{fragment} has no section"
    for path in re.findall(r"\]\((?!https?:|#)([^)#]+)", text):
        assert (RUNBOOKS.parent / path).resolve().exists(), f"link to {path} leads nowhere"


def test_readme_lists_the_runbook() -> None:
    assert "(docs/runbooks.md)" in (REPO / "README.md").read_text()
