"""The report's document builder: HTML and Markdown bodies written side by side.

Owns: `Doc` (sections, paragraphs, tables, figures: inline PNG in the HTML, files beside the
Markdown; named slots filled after the sections below them are written), the number formats `fmt`
and `fmt_p`, and `label` (a config value as text). What the sections say is `report.py`.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np


def fmt(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, (float, np.floating)) else str(v)


def fmt_p(v) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v:.3g}"


class Doc:
    """Builds the HTML and Markdown bodies side by side; figures go inline (HTML) and to files (MD)."""

    def __init__(self, fig_dir: Path):
        self.html: list[str] = []
        self.md: list[str] = []
        self.fig_dir = fig_dir
        self.figures: dict[str, bytes] = {}
        self.slots: dict[str, tuple[int, int]] = {}

    def section(self, sid: str, title: str) -> None:
        self.html.append(f'<section id="{sid}"><h2>{html.escape(title)}</h2>')
        self.md.append(f"\n## {title}\n")

    def end(self) -> None:
        self.html.append("</section>")

    def text(self, s: str) -> None:
        self.html.append(f"<p>{html.escape(s)}</p>")
        self.md.append(s + "\n\n")

    def slot(self, name: str) -> None:
        """Keep a place here for a part written later with `fill` (e.g. an opening that quotes numbers
        of sections further down); left unfilled it stays empty."""
        self.slots[name] = (len(self.html), len(self.md))
        self.html.append("")
        self.md.append("")

    def fill(self, name: str, part: Doc) -> None:
        """Put the body of `part` (another Doc) at the slot `name`; its figures join this document's."""
        i, j = self.slots.pop(name)
        self.html[i] = "".join(part.html)
        self.md[j] = "".join(part.md)
        self.figures.update(part.figures)

    def table(self, header: list[str], rows: list[list]) -> None:
        h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        self.html.append(f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>")
        esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
        self.md.append("\n| " + " | ".join(map(esc, header)) + " |\n|" + "---|" * len(header) + "\n" +
                       "".join("| " + " | ".join(map(esc, r)) + " |\n" for r in rows) + "\n")

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.figures[name] = png
        b64 = base64.b64encode(png).decode()
        self.html.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        self.md.append(f"![{caption}](figures/{name}.png)\n\n")


def label(v) -> str:
    return json.dumps(v, separators=(",", ":"), sort_keys=True) if isinstance(v, (dict, list)) else str(v)
