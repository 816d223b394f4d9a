"""Report figures as PNG bytes: learning curves with bands, error bars, histograms, grouped bars,
and rliable's interval estimates and probability-of-improvement intervals.

Owns the drawing only: every function takes plain numbers already computed (means and interval
bounds from stats.py) and returns a small PNG (DPI dots per inch). Figures are built on
`matplotlib.figure.Figure` with the Agg canvas, never through pyplot, so no global figure state or
GUI backend is touched and the same inputs give the same bytes (no software/date metadata).
Does not compute statistics or read run directories.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 90
SIZE = (6.4, 3.4)                       # inches: 576 x 306 pixels at DPI


def _colors(n: int) -> list:
    from matplotlib import colormaps
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _axes(title: str, ylabel: str) -> tuple[Figure, object]:
    fig = Figure(figsize=SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(alpha=0.3, linewidth=0.6)
    ax.tick_params(labelsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=8)
    return fig, ax


def _png(fig: Figure, ax, n_series: int) -> bytes:
    if ax is not None and n_series > 1:
        ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def curves(title: str, series: dict, ylabel: str, xlabel: str = "step") -> bytes:
    """Lines against step (or any x) with shaded bands: `series` is {label: (x, mean, low, high)};
    a performance profile is drawn with it too (x = threshold tau)."""
    fig, ax = _axes(title, ylabel)
    for color, (label, (steps, mean, low, high)) in zip(_colors(len(series)), series.items()):
        steps, mean = np.asarray(steps, dtype=float), np.asarray(mean, dtype=float)
        ax.plot(steps, mean, color=color, label=label, linewidth=1.3, marker="o" if len(steps) <= 12 else None,
                markersize=3)
        ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel, fontsize=8)
    return _png(fig, ax, len(series))


def errorbars(title: str, labels: list[str], means, lows, highs, ylabel: str, points=None) -> bytes:
    """Means with [low, high] error bars at categorical positions; `points` (one list per label)
    are the single values, drawn as dots beside each bar."""
    fig, ax = _axes(title, ylabel)
    x = np.arange(len(labels), dtype=float)
    mean = np.asarray(means, dtype=float)
    err = np.clip(np.vstack([mean - np.asarray(lows, dtype=float), np.asarray(highs, dtype=float) - mean]), 0, None)
    ax.errorbar(x, mean, yerr=err, marker="o", markersize=5, capsize=4, linewidth=1.2, color="C0")
    for i, values in enumerate(points or []):
        ax.plot(np.full(len(values), x[i] + 0.12), values, linestyle="none", marker=".", color="0.4", markersize=4)
    ax.set_xticks(x, labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    return _png(fig, ax, 1)


def histograms(title: str, data: dict, xlabel: str, bins=None) -> bytes:
    """Outlined histograms on shared bins, as fractions of each series: `data` is {label: values}.
    Without `bins`: unit-wide bins for small integer data, else 20 equal bins."""
    fig, ax = _axes(title, "fraction")
    pooled = np.concatenate([np.asarray(v, dtype=float) for v in data.values()] or [np.zeros(0)])
    if bins is None and pooled.size:
        lo, hi = float(pooled.min()), float(pooled.max())
        integer = np.all(pooled == np.round(pooled)) and hi - lo <= 60
        bins = np.arange(lo - 0.5, hi + 1.5) if integer else (20 if hi > lo else [lo - 0.5, lo + 0.5])
    for color, (label, values) in zip(_colors(len(data)), data.items()):
        v = np.asarray(values, dtype=float)
        if v.size:
            ax.hist(v, bins=bins if bins is not None else 10, weights=np.full(v.size, 1.0 / v.size),
                    histtype="step", color=color, label=label, linewidth=1.4)
    ax.set_xlabel(xlabel, fontsize=8)
    return _png(fig, ax, len(data))


def grouped_bars(title: str, categories: list[str], series: dict, ylabel: str) -> bytes:
    """Bars per category, one per series, with CI whiskers: `series` is {label: (means, lows, highs)},
    each an array over `categories`; NaN means are left out."""
    fig, ax = _axes(title, ylabel)
    x = np.arange(len(categories), dtype=float)
    width = 0.8 / max(len(series), 1)
    for i, (color, (label, (means, lows, highs))) in enumerate(zip(_colors(len(series)), series.items())):
        mean = np.asarray(means, dtype=float)
        ok = np.isfinite(mean)
        err = np.clip(np.vstack([mean - np.asarray(lows, dtype=float), np.asarray(highs, dtype=float) - mean]), 0, None)
        pos = x + (i - (len(series) - 1) / 2) * width
        ax.bar(pos[ok], mean[ok], width=width, color=color, label=label, yerr=err[:, ok], capsize=3,
               error_kw={"linewidth": 1})
    ax.set_xticks(x, categories)
    return _png(fig, ax, len(series))


# -- rliable's figures -------------------------------------------------------------------------------
def interval_estimates(methods: list[str], panels: dict, xlabel: str) -> bytes:
    """rliable's interval-estimate figure: one panel per aggregate, a horizontal bar per method from
    low to high with a tick at the point; `panels` is {aggregate: [(point, low, high) per method]}."""
    fig = Figure(figsize=(SIZE[0], 0.9 + 0.32 * len(methods)), dpi=DPI)
    FigureCanvasAgg(fig)
    colors = _colors(len(methods))
    y = np.arange(len(methods), dtype=float)
    for j, (name, rows) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), j + 1)
        for i, (point, low, high) in enumerate(rows):
            ax.barh(y[i], high - low, left=low, height=0.6, color=colors[i], alpha=0.75)
            ax.vlines(point, y[i] - 0.3, y[i] + 0.3, color="k", linewidth=1.4)
        ax.set_yticks(y, methods if j == 0 else [""] * len(methods))
        ax.invert_yaxis()
        ax.set_title(name, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3, linewidth=0.6)
        ax.set_xlabel(xlabel, fontsize=7)
    return _png(fig, None, 1)


def improvement_intervals(pairs: list[str], rows, title: str) -> bytes:
    """rliable's probability-of-improvement figure: P(X > Y) per pair as a bar from low to high with
    a tick at the point, against the 0.5 line of no difference; `rows` is [(point, low, high)]."""
    fig = Figure(figsize=(SIZE[0], 0.9 + 0.32 * len(pairs)), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(pairs), dtype=float)
    for i, (color, (point, low, high)) in enumerate(zip(_colors(len(pairs)), rows)):
        ax.barh(y[i], high - low, left=low, height=0.6, color=color, alpha=0.75)
        ax.vlines(point, y[i] - 0.3, y[i] + 0.3, color="k", linewidth=1.4)
    ax.axvline(0.5, color="0.3", linestyle="--", linewidth=0.9)
    ax.set_xlim(0, 1)
    ax.set_yticks(y, pairs)
    ax.invert_yaxis()
    ax.tick_params(labelsize=7)
    ax.grid(axis="x", alpha=0.3, linewidth=0.6)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("P(X > Y)", fontsize=8)
    return _png(fig, None, 1)


def method_intervals(title: str, labels: list[str], means, lows, highs, xlabel: str, points=None) -> bytes:
    """One row per method, top to bottom in the given order: the mean as a dot, its [low, high]
    interval as a bar, and `points` (one list per method, e.g. single seeds) as small dots; no line
    joins the methods, which are categories, not a series."""
    height = max(SIZE[1], 1.0 + 0.32 * len(labels))
    fig = Figure(figsize=(SIZE[0], height), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(alpha=0.3, linewidth=0.6, axis="x")
    ax.tick_params(labelsize=8)
    ax.set_title(title, fontsize=10)
    y = np.arange(len(labels), dtype=float)[::-1]
    mean = np.asarray(means, dtype=float)
    err = np.clip(np.vstack([mean - np.asarray(lows, dtype=float), np.asarray(highs, dtype=float) - mean]), 0, None)
    ax.errorbar(mean, y, xerr=err, linestyle="none", marker="o", markersize=5, capsize=3, linewidth=1.2, color="C0")
    for yi, values in zip(y, points or []):
        ax.plot(values, np.full(len(values), yi - 0.22), linestyle="none", marker=".", color="0.4", markersize=4)
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.set_xlabel(xlabel, fontsize=8)
    return _png(fig, ax, 1)
