"""``report.md``: what a reviewer reads before trusting an augmented dataset.

Rendered from the manifest alone (so it can be regenerated from any committed output): the label
distribution before and after with text bars, rows added and dropped per augmenter (with the summary
an augmenter gives of itself, such as a GAN's fidelity metrics), drops per filter and reason, rows set
aside as malformed, and examples of augmented pairs next to their source.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["render_report"]

_BAR = 30
_ITEMS = 20


def _cell(text: Any, limit: int = 80) -> str:
    value = "" if text is None else str(text)
    value = value.replace("|", "\\|").replace("\n", " ")
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _share(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f} %" if total else "–"


def _bar(n: int, biggest: int) -> str:
    return "█" * max(1 if n else 0, round(_BAR * n / biggest)) if biggest else ""


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        shown = ", ".join(_value(v) for v in value[:_ITEMS])
        return shown + (f", … ({len(value) - _ITEMS} more)" if len(value) > _ITEMS else "")
    return _cell(value, 120)


def _summary_lines(summary: Mapping[str, Any], depth: int = 0) -> list[str]:
    """An augmenter's summary (e.g. a GAN's fidelity metrics) as a nested list; long mappings (one
    entry per feature) are cut to their first entries so the report stays readable."""
    lines = []
    indent = "  " * depth
    for n, (key, value) in enumerate(summary.items()):
        if n == _ITEMS:
            lines.append(f"{indent}- … ({len(summary) - _ITEMS} more in manifest.json)")
            break
        if isinstance(value, Mapping):
            lines.append(f"{indent}- {_cell(key)}:")
            lines += _summary_lines(value, depth + 1)
        else:
            lines.append(f"{indent}- {_cell(key)}: {_value(value)}")
    return lines


def render_report(manifest: Mapping[str, Any]) -> str:
    run = manifest.get("run", {})
    lines = [f"# Augmentation report: {run.get('namespace', '')}/{run.get('name', '')}", ""]
    lines += [
        (f"- source: `{manifest['source']['uri']}` ({len(manifest['source']['objects'])} object(s), "
         f"{manifest['rowsRead']} records)"),
        (f"- output: {manifest['rowsOut']} rows = {manifest['rowsIn']} source rows + "
         f"{manifest['generatedRows']} generated, in {len(manifest['files'])} {manifest['format']} part(s)"),
        f"- set aside as malformed or incomplete: {manifest['rejectedRows']} records",
        f"- seed {manifest['seed']}, {manifest['shards']} shard(s), committed {manifest['committedAt']}",
        "",
        "## Label distribution",
        "",
        "| label | before | share | after | share | after |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    before = manifest["labelDistribution"]["before"]
    after = manifest["labelDistribution"]["after"]
    total_before, total_after = sum(before.values()), sum(after.values())
    biggest = max([*after.values(), *before.values(), 0])
    for label in list(dict.fromkeys([*before, *after])):
        b, a = int(before.get(label, 0)), int(after.get(label, 0))
        lines.append(f"| {_cell(label)} | {b} | {_share(b, total_before)} | {a} | {_share(a, total_after)} | "
                     f"{_bar(a, biggest)} |")
    lines += ["", "## Augmenters", "", "| augmenter | type | label rule | produced | kept | dropped by filters |",
              "| --- | --- | --- | ---: | ---: | --- |"]
    for name, info in manifest["augmenters"].items():
        dropped = ", ".join(f"{f}: {sum(r.values())}" for f, r in info.get("dropped", {}).items()) or "–"
        lines.append(f"| {_cell(name)} | {info['type']} | {info['labelRule']} | {info['produced']} | "
                     f"{info['kept']} | {dropped} |")
        if info.get("sourceRowsRemoved"):
            lines.append(f"| {_cell(name)} (undersampling) | | | | −{info['sourceRowsRemoved']} source rows | |")
    for name, info in manifest["augmenters"].items():
        details = {**(info.get("summary") or {}), **({"judge": info["judge"]} if info.get("judge") else {})}
        if details:
            lines += ["", f"### {_cell(name)}", "", *_summary_lines(details)]
    lines += ["", "## Filters", ""]
    if manifest["filters"]:
        lines += ["| filter | reason | rows dropped |", "| --- | --- | ---: |"]
        for name, reasons in manifest["filters"].items():
            for reason, n in reasons.items():
                lines.append(f"| {name} | {_cell(reason)} | {n} |")
    else:
        lines.append("No generated row was dropped.")
    for name, note in manifest.get("filterNotes", {}).items():
        lines.append(f"\n- {name}: {note}")
    if manifest.get("redactions"):
        redacted = ", ".join(f"{k}: {v}" for k, v in manifest["redactions"].items())
        lines += ["", f"PII redacted (source and generated text): {redacted}"]
    if manifest.get("evalSplit"):
        split = manifest["evalSplit"]
        guarded: Mapping[str, int] = split.get("sourceRowsDropped") or {}
        lines += ["", (f"Leakage guard: evaluation split `{split['uri']}` ({split['rows']} rows); "
                       f"{split.get('sourceRowsInEvalSplit', 0)} source rows match what it holds out, "
                       f"{sum(guarded.values())} of them dropped (the others were already removed); rows "
                       "generated from them are dropped with them (filter evalSplit above).")]
        if guarded:
            lines += ["", "| source rows dropped because | rows |", "| --- | ---: |"]
            lines += [f"| {_cell(r)} | {n} |" for r, n in guarded.items()]
    if manifest["rejects"]["reasons"]:
        lines += ["", "## Rows set aside", "", "| reason | rows |", "| --- | ---: |"]
        lines += [f"| {_cell(r)} | {n} |" for r, n in manifest["rejects"]["reasons"].items()]
    if manifest.get("examples"):
        lines += ["", "## Examples", "", "| augmenter | source query | source item | → query | → item | label |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for e in manifest["examples"][:40]:
            s, g = e["source"], e["generated"]
            lines.append(f"| {_cell(e['augmenter'])} | {_cell(s['query'], 40)} | {_cell(s['item'], 50)} | "
                         f"{_cell(g['query'], 40)} | {_cell(g['item'], 50)} | {_cell(s['label'])} → "
                         f"{_cell(g['label'])} |")
    lines.append("")
    return "\n".join(lines)
