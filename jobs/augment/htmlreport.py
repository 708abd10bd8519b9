"""``report.html``: :mod:`.report`'s content as one self-contained page with charts.

Rendered from the manifest alone, like ``report.md``: the label distribution before and after, rows
kept and dropped per augmenter and per filter, text length histograms of the source rows and of the
output, each GAN's fidelity per feature, and example pairs with a word-level diff of the source
against the generated text. Everything that comes from data or users is escaped (see
:mod:`sampleforge.jobs.common.svg`); the page loads nothing from anywhere.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sampleforge.jobs.common.htmlpage import figure, page, section, table, tiles
from sampleforge.jobs.common.svg import Series, esc, fmt, grouped_bars, histogram, stacked_bars

__all__ = ["render_html_report", "word_diff"]

_MAX_CATEGORIES = 40
_MAX_EXAMPLES = 40
_BEFORE, _AFTER, _KEPT = "#56B4E9", "#0072B2", "#009E73"
_DROP_COLORS = ("#D55E00", "#E69F00", "#CC79A7", "#F0E442", "#000000", "#999999")
# Latin words and numbers stay whole; CJK, kana and hangul characters are words of their own (they are
# written without spaces); anything else (spaces, punctuation) is a token by itself.
_CJK = "\u2e80-\u9fff\uf900-\ufaff\uac00-\ud7af\u3040-\u30ff"
_TOKEN = re.compile(rf"\s+|[{_CJK}]|[^\W_{_CJK}]+|.", re.UNICODE | re.DOTALL)


def word_diff(source: Any, generated: Any) -> tuple[str, str]:
    """Escaped HTML of both texts, with the words only ``source`` has in ``<del>`` and the words only
    ``generated`` has in ``<ins>``."""
    a = _TOKEN.findall("" if source is None else str(source))
    b = _TOKEN.findall("" if generated is None else str(generated))
    left, right = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        old, new = esc("".join(a[i1:i2])), esc("".join(b[j1:j2]))
        if op == "equal":
            left.append(old)
            right.append(new)
            continue
        if old:
            left.append(f"<del>{old}</del>")
        if new:
            right.append(f"<ins>{new}</ins>")
    return "".join(left), "".join(right)


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _share(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f} %" if total else "–"


def _capped(names: Sequence[str], what: str) -> tuple[list[str], str]:
    shown = list(names[:_MAX_CATEGORIES])
    rest = len(names) - len(shown)
    return shown, (f" The chart shows the first {len(shown)} {what}; {rest} more are in the table." if rest else "")


def _header(manifest: Mapping[str, Any]) -> list[str]:
    run = manifest.get("run") or {}
    source = manifest.get("source") or {}
    name = f"{run.get('namespace', '')}/{run.get('name', '')}"
    return [
        f"<h1>Augmentation report: {esc(name)}</h1>",
        (f'<p class="meta">Source <code>{esc(source.get("uri", ""))}</code> '
         f'({len(source.get("objects") or [])} object(s)); seed {esc(manifest.get("seed"))}, '
         f'{esc(manifest.get("shards"))} shard(s), committed {esc(manifest.get("committedAt", ""))}; '
         f'{len(manifest.get("files") or [])} {esc(manifest.get("format", ""))} part(s).</p>'),
        tiles([(fmt(_count(manifest.get("rowsRead"))), "records read"),
               (fmt(_count(manifest.get("rowsIn"))), "source rows kept"),
               (fmt(_count(manifest.get("generatedRows"))), "rows generated"),
               (fmt(_count(manifest.get("rowsOut"))), "rows out"),
               (fmt(_count(manifest.get("rejectedRows"))), "records set aside")]),
    ]


def _labels(manifest: Mapping[str, Any]) -> str:
    dist = manifest.get("labelDistribution") or {}
    before, after = dist.get("before") or {}, dist.get("after") or {}
    labels = list(dict.fromkeys([*before, *after]))
    total_b, total_a = sum(map(_count, before.values())), sum(map(_count, after.values()))
    shown, note = _capped(labels, "labels")
    chart = grouped_bars("Rows per label", shown, [
        Series("before", [_count(before.get(k)) for k in shown], _BEFORE),
        Series("after", [_count(after.get(k)) for k in shown], _AFTER)], unit="rows")
    rows = [(k, _count(before.get(k)), _share(_count(before.get(k)), total_b), _count(after.get(k)),
             _share(_count(after.get(k)), total_a)) for k in labels]
    return section("Label distribution", "labels",
                   figure("labels", chart, "Source rows read (before) and rows written (after), per label." + note),
                   table(["label", "before", "share", "after", "share"], rows, numeric=(1, 2, 3, 4)))


def _augmenters(manifest: Mapping[str, Any]) -> str:
    augmenters: Mapping[str, Any] = manifest.get("augmenters") or {}
    if not augmenters:
        return section("Augmenters", "augmenters", '<p class="note">The run had no augmenters.</p>')
    names = list(augmenters)
    filters = list(dict.fromkeys(f for info in augmenters.values() for f in (info.get("dropped") or {})))
    dropped = {n: {f: sum(map(_count, (info.get("dropped") or {}).get(f, {}).values())) for f in filters}
               for n, info in augmenters.items()}
    series = [Series("kept", [_count(augmenters[n].get("kept")) for n in names], _KEPT)]
    series += [Series(f"dropped: {f}", [dropped[n][f] for n in names], _DROP_COLORS[i % len(_DROP_COLORS)])
               for i, f in enumerate(filters)]
    shown, note = _capped(names, "augmenters")
    chart = stacked_bars("Generated rows kept and dropped, per augmenter", shown,
                         [Series(s.name, list(s.values[: len(shown)]), s.color) for s in series], unit="rows")
    rows = []
    for n, info in augmenters.items():
        drops = ", ".join(f"{f}: {dropped[n][f]}" for f in filters if dropped[n][f]) or "–"
        rows.append((n, info.get("type", ""), info.get("labelRule", ""), _count(info.get("produced")),
                     _count(info.get("kept")), drops, _count(info.get("sourceRowsRemoved")) or ""))
    parts = [figure("augmenters", chart, "Each bar is every row an augmenter made: kept, or dropped by a filter "
                    "(budget, unchanged and unusable rows included)." + note),
             table(["augmenter", "type", "label rule", "produced", "kept", "dropped by filters",
                    "source rows removed"], rows, numeric=(3, 4, 6))]
    for n, info in augmenters.items():
        summary = {k: v for k, v in (info.get("summary") or {}).items() if k != "fidelity"}
        if summary:
            text = json.dumps(summary, indent=2, ensure_ascii=False, sort_keys=True, default=str)
            parts.append(f"<details><summary>{esc(n)}: what it reports of itself</summary><pre>{esc(text)}</pre>"
                         "</details>")
    return section("Augmenters", "augmenters", *parts)


def _filters(manifest: Mapping[str, Any]) -> str:
    filters: Mapping[str, Mapping[str, Any]] = manifest.get("filters") or {}
    parts = []
    if filters:
        names = list(filters)
        shown, note = _capped(names, "filters")
        chart = stacked_bars("Generated rows dropped, per filter", shown, [Series(
            "rows dropped", [sum(map(_count, filters[f].values())) for f in shown], _DROP_COLORS[0])], unit="rows")
        parts += [figure("filters", chart, "Rows each filter dropped, all reasons together." + note),
                  table(["filter", "reason", "rows dropped"],
                        [(f, r, _count(n)) for f, reasons in filters.items() for r, n in reasons.items()],
                        numeric=(2,))]
    else:
        parts.append('<p class="note">No generated row was dropped.</p>')
    for name, text in (manifest.get("filterNotes") or {}).items():
        parts.append(f'<p class="note">{esc(name)}: {esc(text)}</p>')
    if manifest.get("redactions"):
        parts.append(table(["PII redacted", "occurrences"], list(manifest["redactions"].items()), numeric=(1,)))
    split = manifest.get("evalSplit")
    if split:
        guarded = split.get("sourceRowsDropped") or {}
        parts.append(f'<p class="note">Leakage guard: evaluation split <code>{esc(split.get("uri", ""))}</code> '
                     f'({esc(split.get("rows", 0))} rows); {esc(split.get("sourceRowsInEvalSplit", 0))} source rows '
                     f"match what it holds out, {sum(map(_count, guarded.values()))} of them dropped.</p>")
    return section("Filters", "filters", *parts)


def _bin_labels(edges: Sequence[int], keys: Sequence[str]) -> list[str]:
    """Consecutive bins from the smallest to the largest one with rows, labelled by their range."""
    used = sorted({int(k) for k in keys})
    lo, hi = edges.index(used[0]), edges.index(used[-1])
    labels = []
    for i in range(lo, hi + 1):
        labels.append(f"{edges[i]}–{edges[i + 1] - 1}" if i + 1 < len(edges) else f"{edges[i]}+")
    return labels


def _lengths(manifest: Mapping[str, Any]) -> str | None:
    lengths = manifest.get("textLengths")
    if not lengths:
        return None
    edges = [int(e) for e in lengths.get("edges") or []]
    parts = []
    for text, what in (("query", "Query"), ("item", "Item")):
        before = (lengths.get("before") or {}).get(text) or {}
        after = (lengths.get("after") or {}).get(text) or {}
        keys = [k for k in (*before, *after) if str(k).isdigit() and int(k) in edges]
        if not keys:
            continue
        labels = _bin_labels(edges, keys)
        first = edges.index(min(int(k) for k in keys))
        bins = [str(edges[first + i]) for i in range(len(labels))]
        chart = histogram(f"{what} length ({lengths.get('unit', 'characters')})", labels, [
            Series("before", [_count(before.get(b)) for b in bins], _BEFORE),
            Series("after", [_count(after.get(b)) for b in bins], _AFTER)], x_label=lengths.get("unit", "characters"))
        parts.append(figure(f"length-{text}", chart,
                            f"{what} text length of the source rows read (before) and of the rows written (after)."))
    return section("Text lengths", "lengths", *parts) if parts else None


def _fidelity(manifest: Mapping[str, Any]) -> str | None:
    parts = []
    for name, info in (manifest.get("augmenters") or {}).items():
        quality = (info.get("summary") or {}).get("fidelity")
        if not isinstance(quality, Mapping):
            continue
        w1 = (quality.get("wasserstein1") or {}).get("perFeature") or {}
        ks = (quality.get("ks") or {}).get("perFeature") or {}
        features = list(dict.fromkeys([*w1, *ks]))
        shown, note = _capped(features, "features")
        chart = grouped_bars(f"{name}: distance of generated from real values, per feature", shown, [
            Series("Wasserstein-1 (std devs)", [float(w1.get(f, 0.0)) for f in shown], "#0072B2"),
            Series("Kolmogorov-Smirnov", [float(ks.get(f, 0.0)) for f in shown], "#E69F00")])
        corr = quality.get("correlationDiff") or {}
        caption = (f"Measured on {quality.get('rows', '?')} real rows against as many generated ones with the same "
                   f"labels; 0 is identical. Classifier AUC {fmt(float(quality.get('classifierAuc', float('nan'))))} "
                   "(0.5: real and generated rows cannot be told apart); correlation difference mean "
                   f"{fmt(float(corr.get('meanAbs', float('nan'))))}." + note)
        parts += [f"<h3>{esc(name)}</h3>", figure(f"fidelity-{name}", chart, caption),
                  table(["feature", "Wasserstein-1", "KS"],
                        [(f, fmt(float(w1.get(f, float("nan")))), fmt(float(ks.get(f, float("nan")))))
                         for f in features], numeric=(1, 2))]
    return section("GAN fidelity", "fidelity", *parts) if parts else None


def _examples(manifest: Mapping[str, Any]) -> str | None:
    examples = manifest.get("examples") or []
    if not examples:
        return None
    rows = []
    for e in examples[:_MAX_EXAMPLES]:
        source, generated = e.get("source") or {}, e.get("generated") or {}
        cells: list[str] = []
        for key in ("query", "item"):
            old, new = word_diff(source.get(key), generated.get(key))
            cells += [old, new]
        attributes = []
        for attr, value in (generated.get("attributes") or {}).items():
            before = (source.get("attributes") or {}).get(attr)
            if before != value:
                old, new = word_diff(before, value)
                attributes.append(f"{esc(attr)}: {old} → {new}")
        label = esc(source.get("label"))
        if generated.get("label") != source.get("label"):
            label = f"<del>{label}</del> → <ins>{esc(generated.get('label'))}</ins>"
        rows.append([esc(e.get("augmenter", "")), *cells, "<br>".join(attributes), label])
    return section("Examples", "examples",
                   '<p class="note">Generated rows next to their source row: <del>removed</del> and '
                   "<ins>added</ins> words.</p>",
                   table(["augmenter", "source query", "generated query", "source item", "generated item",
                          "attributes", "label"], rows, raw=range(7)))


def _rejects(manifest: Mapping[str, Any]) -> str | None:
    reasons = (manifest.get("rejects") or {}).get("reasons") or {}
    if not reasons:
        return None
    return section("Records set aside", "rejects", table(["reason", "records"], list(reasons.items()), numeric=(1,)),
                   '<p class="note">Each one is in the rejects/ files, with its position and reason.</p>')


def render_html_report(manifest: Mapping[str, Any]) -> str:
    run = manifest.get("run") or {}
    sections = [_labels(manifest), _augmenters(manifest), _filters(manifest), _lengths(manifest),
                _fidelity(manifest), _examples(manifest), _rejects(manifest)]
    return page(f"Augmentation report: {run.get('namespace', '')}/{run.get('name', '')}",
                [*_header(manifest), *(s for s in sections if s)])
