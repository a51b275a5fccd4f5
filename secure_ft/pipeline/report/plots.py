"""Report charts: matplotlib figures rendered to PNG and returned as ``data:`` URIs.

Embedding the images keeps the HTML report a single self-contained file that opens offline
and can be archived as is. Every function returns None when it has nothing to draw.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

_PASS, _FAIL, _NEUTRAL, _LIGHT = "#1b7f3b", "#b3261e", "#2f5d8a", "#9db7d3"


def _data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def epsilon_curve(history: list[list[float]] | None, max_epsilon: float | None = None) -> str | None:
    """ε spent over optimizer steps, with the policy's limit as a dashed line."""
    points = [(p[0], p[1]) for p in history or [] if len(p) >= 2 and _finite(p[0]) and _finite(p[1])]
    if not points:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 3.2))
    steps, epsilons = zip(*points)
    axes.plot(steps, epsilons, marker="o" if len(points) < 30 else None, color=_NEUTRAL, label="ε spent")
    if _finite(max_epsilon):
        axes.axhline(max_epsilon, color=_FAIL, linestyle="--", label=f"policy limit ε ≤ {max_epsilon:g}")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("ε")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return _data_uri(figure)


def training_curves(epochs: list[dict[str, Any]] | None) -> str | None:
    """Validation accuracy and macro-F1 per epoch (left axis), training loss (right axis)."""
    rows = [row for row in epochs or [] if isinstance(row, dict) and _finite(row.get("epoch"))]
    if not rows:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 3.2))
    x = [row["epoch"] for row in rows]
    for key, label, color in (("val_accuracy", "validation accuracy", _NEUTRAL), ("val_macro_f1", "validation macro-F1", _PASS)):
        values = [row.get(key) for row in rows]
        if all(_finite(v) for v in values):
            axes.plot(x, values, marker="o", color=color, label=label)
    axes.set_xlabel("epoch")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    losses = [row.get("train_loss") for row in rows]
    if all(_finite(v) for v in losses):
        loss_axes = axes.twinx()
        loss_axes.plot(x, losses, marker="s", linestyle=":", color="#555555", label="training loss")
        loss_axes.set_ylabel("loss")
        loss_axes.legend(loc="upper right")
    axes.legend(loc="lower left")
    return _data_uri(figure)


def group_bars(title: str, groups: list[tuple[str, float, float | None, float | None]],
               reference: float | None = None, reference_label: str = "overall") -> str | None:
    """One bar per group with its confidence interval; `reference` as a dashed line."""
    bars = [(name, value, low, high) for name, value, low, high in groups if _finite(value)]
    if not bars:
        return None
    height = max(2.4, 0.32 * len(bars) + 1.2)
    figure, axes = plt.subplots(figsize=(6.4, height))
    names = [name for name, *_ in bars][::-1]
    values = [value for _, value, *_ in bars][::-1]
    errors = [[max(0.0, v - lo) if _finite(lo) else 0.0 for (_, v, lo, _) in bars][::-1],
              [max(0.0, hi - v) if _finite(hi) else 0.0 for (_, v, _, hi) in bars][::-1]]
    axes.barh(names, values, xerr=errors, color=_LIGHT, edgecolor=_NEUTRAL, capsize=3)
    if _finite(reference):
        axes.axvline(reference, color=_NEUTRAL, linestyle="--", label=reference_label)
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 if len(bars) > 3 else -0.25), frameon=False)
    axes.set_xlim(0, 1)
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    return _data_uri(figure)


def permutation_histogram(title: str, histogram: dict[str, list[float]] | None, observed: float | None,
                          limit: float | None) -> str | None:
    """A permutation test's null distribution, with the observed value and the policy limit marked."""
    edges, counts = (histogram or {}).get("edges") or [], (histogram or {}).get("counts") or []
    if len(edges) != len(counts) + 1 or not counts:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 2.8))
    widths = [high - low for low, high in zip(edges[:-1], edges[1:])]
    axes.bar(edges[:-1], counts, width=widths, align="edge", color=_LIGHT, edgecolor=_NEUTRAL,
             label="shuffled group labels")
    if _finite(observed):
        axes.axvline(observed, color=_NEUTRAL, linewidth=2, label=f"observed {observed:.3g}")
    if _finite(limit):
        axes.axvline(limit, color=_FAIL, linestyle="--", label=f"policy limit {limit:g}")
    axes.set_ylabel("shuffles")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper right", fontsize=8, frameon=False)
    axes.grid(axis="y", alpha=0.3)
    return _data_uri(figure)


def robustness_bars(recipes: list[tuple[str, float | None, float | None, float | None]]) -> str | None:
    """Per recipe: clean accuracy next to accuracy under attack (and the policy minimum)."""
    rows = [row for row in recipes if _finite(row[1]) or _finite(row[2])]
    if not rows:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 3.2))
    positions = range(len(rows))
    width = 0.38
    clean = [row[1] if _finite(row[1]) else 0.0 for row in rows]
    attacked = [row[2] if _finite(row[2]) else 0.0 for row in rows]
    axes.bar([p - width / 2 for p in positions], clean, width, color=_LIGHT, edgecolor=_NEUTRAL, label="clean accuracy")
    axes.bar([p + width / 2 for p in positions], attacked, width, color=_NEUTRAL, label="accuracy under attack")
    labelled = False
    for position, row in zip(positions, rows):
        if _finite(row[3]):
            axes.hlines(row[3], position - 0.45, position + 0.45, colors=_FAIL, linestyles="--",
                        label=None if labelled else "policy minimum under attack")
            labelled = True
    axes.set_xticks(list(positions), [row[0] for row in rows])
    axes.set_ylim(0, 1)
    axes.set_ylabel("accuracy")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="upper right", fontsize=8)
    return _data_uri(figure)


def roc_curves(curves: dict[str, tuple[list[float], list[float], float | None]]) -> str | None:
    """Membership-inference ROC curves (one per attack) against the chance diagonal."""
    drawable = {}
    for name, (fpr, tpr, auc) in curves.items():
        points = [(f, t) for f, t in zip(fpr or [], tpr or []) if _finite(f) and _finite(t)]
        if len(points) >= 2:
            drawable[name] = (points, auc)
    if not drawable:
        return None
    figure, axes = plt.subplots(figsize=(4.8, 4.2))
    colors = (_FAIL, _NEUTRAL, _PASS, "#8a5a00")
    for index, (name, (points, auc)) in enumerate(drawable.items()):
        xs, ys = zip(*points)
        label = name + (f" (AUC {auc:.3f})" if _finite(auc) else "")
        axes.plot(xs, ys, color=colors[index % len(colors)], label=label)
    axes.plot([0, 1], [0, 1], color="#888888", linestyle="--", label="chance")
    axes.set_xlabel("false positive rate (non-members flagged)")
    axes.set_ylabel("true positive rate (members found)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    return _data_uri(figure)
