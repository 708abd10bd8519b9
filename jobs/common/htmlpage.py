"""The frame of a job's ``report.html``: one self-contained page (inline CSS, inline SVG charts, one
small inline script in the head), readable offline and from an object store's browser.

The page's Content-Security-Policy allows nothing from outside (``default-src 'none'``) and only the
one script whose hash it names, so a report cannot load anything from the network, and text that got
through unescaped could not run. The script checks the page in the browser that opens it: every
``<figure class="plot">`` must hold an ``<svg>`` with drawn content and a laid-out size; it writes what
it found (once the document is parsed) on ``<html>`` (``data-plots``, ``data-plots-rendered``, ``data-plots-failed``,
``data-errors``), which the tests read back from a real headless browser.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence

from .svg import esc

__all__ = ["CHECK_SCRIPT", "figure", "page", "section", "table", "tiles"]

CHECK_SCRIPT = """(function () {
  var root = document.documentElement, errors = [];
  function failed(text) { errors.push(text); root.setAttribute("data-errors", errors.join(" | ")); }
  window.addEventListener("error", function (event) { failed(String(event.message)); });
  document.addEventListener("securitypolicyviolation", function (event) {
    failed("blocked " + event.violatedDirective + ": " + event.blockedURI);
  });
  document.addEventListener("DOMContentLoaded", function () {
    var figures = document.querySelectorAll("figure.plot"), rendered = 0, broken = [];
    for (var i = 0; i < figures.length; i++) {
      var svg = figures[i].querySelector("svg"), box = null;
      try { box = svg ? svg.getBBox() : null; } catch (e) { box = null; }
      var drawn = svg ? svg.querySelectorAll("rect, polyline, circle, path, line").length : 0;
      if (box && box.width > 0 && box.height > 0 && drawn > 0) { rendered++; }
      else { broken.push(figures[i].getAttribute("data-plot") || String(i)); }
    }
    root.setAttribute("data-plots", String(figures.length));
    root.setAttribute("data-plots-rendered", String(rendered));
    if (broken.length) { root.setAttribute("data-plots-failed", broken.join(",")); }
  });
})();"""

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(CHECK_SCRIPT.encode()).digest()).decode()
_CSP = f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-{_SCRIPT_HASH}'"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1080px;
       padding: 24px; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.meta { color: #555; } code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.tile { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.tile b { display: block; font-size: 1.4em; } .tile span { color: #555; font-size: 0.9em; }
figure.plot { margin: 16px 0; overflow-x: auto; } figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin: 12px 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f6f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
ins { background: #c8f0c8; text-decoration: none; } del { background: #f8c8c8; }
.note { color: #555; font-size: 0.92em; } pre { background: #f6f6f6; padding: 8px; overflow-x: auto; }
"""


def page(title: str, body: Iterable[str]) -> str:
    """The whole document; ``body`` is already-escaped HTML."""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>", f"<script>{CHECK_SCRIPT}</script>", "</head>",
        "<body>", *body, "</body>", "</html>", ""])


def section(title: str, anchor: str, *parts: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>\n' + "\n".join(parts) + "\n</section>"


def figure(name: str, svg: str, caption: str = "") -> str:
    """A chart; ``name`` identifies it to the page's check (``data-plot``)."""
    text = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure class="plot" data-plot="{esc(name)}">{svg}{text}</figure>'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Iterable[int] = (),
          raw: Iterable[int] = ()) -> str:
    """A table; columns in ``numeric`` align right, cells of columns in ``raw`` are already HTML."""
    right, html_cells = set(numeric), set(raw)
    lines = ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = str(cell) if i in html_cells else esc("" if cell is None else cell)
            cells.append(f'<td class="num">{text}</td>' if i in right else f"<td>{text}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def tiles(items: Iterable[tuple[str, str]]) -> str:
    """Headline figures: (value, what it is)."""
    return '<div class="tiles">' + "".join(f'<div class="tile"><b>{esc(v)}</b><span>{esc(k)}</span></div>'
                                           for v, k in items) + "</div>"
