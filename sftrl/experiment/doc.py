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
        """A PNG with its caption; build captions with `caption(...)` so each states n, seeds and the interval."""
        self.figures[name] = png
        b64 = base64.b64encode(png).decode()
        self.html.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        self.md.append(f"![{caption}](figures/{name}.png)\n\n")


SYMBOLS = {
    "rl.algo.kl.coef": "β", "rl.hybrid.weight_kwargs.value": "λ", "rl.algo.entropy.kwargs.coef": "entropy coef",
    "rl.hybrid.route_kwargs.gamma": "γ", "rl.hybrid.offpolicy_kwargs.gamma": "γ", "rl.optim.lr": "RL lr",
    "sft.optim.lr": "SFT lr", "rl.rollout.temperature": "T", "rl.rollout.group_size": "G",
}
"""Short names of settings in labels ("β = 0.04"); any other setting goes by its last key part."""

KEY_NAMES = {
    "rl.algo.kl.coef": "KL coefficient β", "rl.algo.surrogate_kwargs": "clip range ε",
    "rl.algo.entropy.kwargs": "entropy bonus", "rl.hybrid.weight_kwargs": "SFT weight λ",
    "rl.optim.lr": "RL learning rate", "sft.optim.lr": "SFT learning rate",
    "rl.rollout.temperature": "sampling temperature", "rl.hybrid.route_kwargs": "routing threshold",
}
"""Readable names of swept config keys, for figure titles (the key itself follows in brackets)."""

METRIC_NAMES = {
    "acc_strict": "greedy accuracy", "acc_flexible": "greedy accuracy (flexible extraction)",
    "pass@1_sampled": "sampled pass@1", "len_mean": "mean response length", "distinct_answers": "distinct answers",
    "majority_share": "majority share", "reward/mean": "mean reward",
    "reward/gain_vs_ref": "reward gain over the reference (same samples)", "reward/accuracy": "rollout accuracy",
    "policy/kl": "KL to the reference", "policy/entropy": "policy entropy", "loss/pg": "policy-gradient loss",
    "loss/sft": "SFT loss", "loss/kl": "KL loss term", "loss/entropy": "entropy bonus term",
    "rollout/len_mean": "mean response length in tokens", "loss/total": "total loss", "policy/clip_low": "clipped fraction (low side)",
    "policy/clip_high": "clipped fraction (high side)", "groups/zero_std_frac": "groups with equal rewards",
    "entropy/coef": "entropy coefficient", "sft/weight": "SFT weight λ", "sft/routed_frac": "routed fraction",
}
"""Readable metric names: whole keys, or the last part of eval/<task>/<name> keys."""


def metric_name(key: str) -> str:
    """'eval/arith/acc_strict' -> 'greedy accuracy (arith)'; 'policy/kl' -> 'KL to the reference'."""
    if key in METRIC_NAMES:
        return METRIC_NAMES[key]
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "eval":
        return f"{METRIC_NAMES.get(parts[2], parts[2])} ({parts[1]})"
    return key


def metric_title(key: str) -> str:
    """'policy entropy (policy/entropy)': the readable name with the key, or the key alone."""
    name = metric_name(key)
    return key if name == key else f"{name} ({key})"


def key_name(key: str) -> str:
    """A swept config key for a title: 'KL coefficient β (rl.algo.kl.coef)'."""
    return f"{KEY_NAMES[key]} ({key})" if key in KEY_NAMES else key


def label(v, key: str | None = None) -> str:
    """A config value as text a reviewer reads: {"eps_high": 0.1, "eps_low": 0.1} is 'ε = 0.1'
    ('ε_low = 0.1, ε_high = 0.2' when they differ); settings under `key` use `SYMBOLS`
    ({"value": 0.3} of rl.hybrid.weight_kwargs is 'λ = 0.3'); other dicts 'k = v, ...'; lists
    'a, b' ([...] around dicts); numbers, strings and None as str() writes them."""
    if isinstance(v, dict):
        if not v:
            return "{}"
        items = dict(v)
        parts = []
        if "eps_low" in items and "eps_high" in items:
            lo, hi = items.pop("eps_low"), items.pop("eps_high")
            parts.append(f"ε = {label(lo)}" if lo == hi else f"ε_low = {label(lo)}, ε_high = {label(hi)}")
        for k, x in sorted(items.items()):
            full = f"{key}.{k}" if key else k
            name = SYMBOLS.get(full, k)
            parts.append(f"{name} = ({label(x, full)})" if isinstance(x, dict) and x else f"{name} = {label(x, full)}")
        return ", ".join(parts)
    if isinstance(v, (list, tuple)):
        inner = [label(x, key) for x in v]
        return "; ".join(f"[{x}]" for x in inner) if any(isinstance(x, dict) for x in v) else ", ".join(inner) or "[]"
    return str(v)


def setting(key: str, v) -> str:
    """One swept setting as 'β = 0.04' (dict values as `label` writes them)."""
    return label(v, key) if isinstance(v, dict) and v else f"{SYMBOLS.get(key, key.rsplit('.', 1)[-1])} = {label(v, key)}"


def caption(what: str, *, runs: int, seeds, interval: str) -> str:
    """A figure caption that says what is drawn, from how many runs and seeds, and which interval."""
    seeds = list(seeds)
    return f"{what.rstrip('.')}. n = {runs} runs, {len(seeds)} seeds ({', '.join(map(str, seeds))}); {interval}."
