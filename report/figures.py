"""Figures of ``ner-report`` (matplotlib, Agg backend, PNG): :func:`make_figures` draws them all."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .analysis import BREAKDOWNS  # noqa: E402
from .errors import CLASS_LABELS, ERROR_CLASSES  # noqa: E402

if TYPE_CHECKING:
    from .runs import RunData

DPI = 110
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _grouped_bars(ax, groups: Sequence[str], series: dict[str, Sequence[float]], ylabel: str,
                  annotate: bool = False, fmt: str = "{:.1f}", ylim=None):
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    for k, (name, values) in enumerate(series.items()):
        pos = x - 0.4 + width * (k + 0.5)
        vals = [np.nan if v is None else v for v in values]
        bars = ax.bar(pos, vals, width, label=name, color=COLORS[k % len(COLORS)])
        if annotate:
            for b, v in zip(bars, vals):
                if not np.isnan(v):
                    ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()),
                                xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                                fontsize=7, rotation=90 if n > 2 else 0)
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _score_ylim() -> tuple[float, float]:
    """Percentages: bars start at zero (no exaggerated gaps), with room above for the value labels."""
    return 0, 109


def _figure_legend(fig, axes, n: int):
    """One legend for all panels, above them (never over the bars)."""
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(n, 4), fontsize=9, frameon=False,
                   bbox_to_anchor=(0.5, 1.0))


def per_type_figure(path: str, types: Sequence[str], per_model: dict[str, dict]) -> str:
    """Per-type precision, recall and F1 (percent), one bar per model."""
    fig, axes = plt.subplots(1, 3, figsize=(max(10, 1.3 * len(types) * 3 + 2), 3.8), sharey=True)
    ylim = _score_ylim()
    for ax, key, title in zip(axes, ("precision", "recall", "f1"), ("Precision", "Recall", "F1")):
        series = {m: [100 * per_model[m][t][key] if t in per_model[m] else None for t in types] for m in per_model}
        _grouped_bars(ax, types, series, "%" if key == "precision" else "", annotate=True, ylim=ylim)
        ax.set_title(title)
    fig.suptitle("Entity scores per type (seqeval default mode)", y=1.08)
    fig.tight_layout()
    _figure_legend(fig, axes, len(per_model))
    return _save(fig, path)


def learning_curves_figure(path: str, logs: dict[str, dict]) -> str:
    """Training loss and validation F1 against step and wall time; all models on each panel.

    ``logs[name] = {"step": [(step, elapsed_s, loss)], "eval": [(step, elapsed_s, f1)]}``.
    """
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    any_loss = any_eval = False
    longest = max([e for log in logs.values() for key in ("step", "eval") for _, e, _ in log.get(key, [])] + [0])
    unit, scale = (("seconds", 1.0) if longest < 120 else ("minutes", 60.0) if longest < 7200 else ("hours", 3600.0))
    for k, (name, log) in enumerate(logs.items()):
        color = COLORS[k % len(COLORS)]
        steps = log.get("step", [])
        if steps:
            any_loss = True
            s, t, loss = (np.array(v, dtype=float) for v in zip(*steps))
            smooth = _smooth(loss)
            for ax, xv in ((axes[0, 0], s), (axes[0, 1], t / scale)):
                if len(loss) > 20:
                    ax.plot(xv, loss, color=color, alpha=0.2, linewidth=0.8)
                ax.plot(xv, smooth, color=color, linewidth=1.6, label=name)
        evals = log.get("eval", [])
        if evals:
            any_eval = True
            s, t, f1 = (np.array(v, dtype=float) for v in zip(*evals))
            for ax, xv in ((axes[1, 0], s), (axes[1, 1], t / scale)):
                ax.plot(xv, 100 * f1, color=color, marker="o", markersize=3, linewidth=1.4, label=name)
    for ax in axes[0]:
        ax.set_ylabel("training loss")
        if any_loss and _positive(ax):
            ax.set_yscale("log")
    for ax in axes[1]:
        ax.set_ylabel("validation entity F1 (%)")
    for ax in axes[:, 0]:
        ax.set_xlabel("optimizer step")
    for ax in axes[:, 1]:
        ax.set_xlabel(f"training wall time ({unit})")
    for ax, has in ((axes[0, 0], any_loss), (axes[0, 1], any_loss), (axes[1, 0], any_eval), (axes[1, 1], any_eval)):
        ax.grid(alpha=0.3)
        if has:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no data in train_log.jsonl", ha="center", va="center", transform=ax.transAxes)
    axes[0, 0].set_title("Loss vs step (smoothed; raw faint)")
    axes[0, 1].set_title("Loss vs wall time")
    axes[1, 0].set_title("Validation F1 vs step")
    axes[1, 1].set_title("Validation F1 vs wall time")
    fig.tight_layout()
    return _save(fig, path)


def _positive(ax) -> bool:
    return all(np.nanmin(line.get_ydata()) > 0 for line in ax.get_lines()) if ax.get_lines() else False


def _smooth(values: np.ndarray) -> np.ndarray:
    """Exponential moving average with a window of about 2% of the points (bias-corrected)."""
    n = len(values)
    if n < 10:
        return values
    alpha = 1.0 / max(2.0, n / 50)
    out = np.empty(n)
    acc, norm = 0.0, 0.0
    for i, v in enumerate(values):
        acc = (1 - alpha) * acc + alpha * v
        norm = (1 - alpha) * norm + alpha
        out[i] = acc / norm
    return out


def error_classes_figure(path: str, counts: dict[str, dict]) -> str:
    """Error outcomes per class, one bar per model."""
    labels = [CLASS_LABELS[c].replace(" and ", " &\n") for c in ERROR_CLASSES]
    series = {m: [c["outcomes"][k] for k in ERROR_CLASSES] for m, c in counts.items()}
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(labels) * max(1, len(series)) / 1.5), 3.8))
    _grouped_bars(ax, labels, series, "entities", annotate=True, fmt="{:.0f}")
    top = max([v for vals in series.values() for v in vals] + [1])
    ax.set_ylim(0, top * 1.18)
    ax.legend(fontsize=8)
    ax.set_title("Entity errors by class")
    fig.tight_layout()
    return _save(fig, path)


def confusion_figure(path: str, confusions: dict[str, dict]) -> str:
    """Type confusion heat maps (rows gold, columns predicted), one panel per model."""
    n = len(confusions)
    first = next(iter(confusions.values()))
    size = 0.7 * len(first["cols"]) + 1.8
    fig, axes = plt.subplots(1, n, figsize=(size * n + 0.6, size * 0.9), squeeze=False)
    for ax, (name, conf) in zip(axes[0], confusions.items()):
        m = np.array(conf["matrix"], dtype=float)
        shown = np.log1p(m)
        ax.imshow(shown, cmap="Blues", aspect="auto")
        ax.set_xticks(range(len(conf["cols"])))
        ax.set_xticklabels(conf["cols"], rotation=30, ha="right")
        ax.set_yticks(range(len(conf["rows"])))
        ax.set_yticklabels(conf["rows"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(name)
        vmax = shown.max() if shown.size else 1
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if i == m.shape[0] - 1 and j == m.shape[1] - 1:
                    ax.text(j, i, "-", ha="center", va="center", color="grey", fontsize=8)
                    continue
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if vmax and shown[i, j] > 0.6 * vmax else "black")
        ax.axhline(m.shape[0] - 1.5, color="grey", linewidth=0.8)
        ax.axvline(m.shape[1] - 1.5, color="grey", linewidth=0.8)
    fig.suptitle("Entity type confusion (colour: log count)")
    fig.tight_layout()
    return _save(fig, path)


def breakdown_figure(path: str, panels: list[tuple[str, Sequence[str], dict[str, list], list[str]]]) -> str:
    """F1 per bucket; ``panels = [(title, bucket names, {model: [f1 or None]}, tick labels)]``."""
    n = len(panels)
    cols = 2 if n > 1 else 1
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.9 * rows), squeeze=False)
    for ax, (title, buckets, series, ticks) in zip(axes.flat, panels):
        pct = {m: [None if v is None else 100 * v for v in vals] for m, vals in series.items()}
        _grouped_bars(ax, ticks, pct, "entity F1 (%)", annotate=True, ylim=_score_ylim())
        ax.set_title(title)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _figure_legend(fig, list(axes.flat), len(panels[0][2]) if panels else 1)
    return _save(fig, path)


def make_figures(runs: list[RunData], an: dict, fig_dir: str) -> dict[str, str]:
    """Draw every figure of the report into ``fig_dir``; returns ``{figure key: PNG path}``."""
    os.makedirs(fig_dir, exist_ok=True)
    models = an["models"]
    names = [r.name for r in runs]
    figs = {}
    if an["types"]:
        figs["per_type"] = per_type_figure(os.path.join(fig_dir, "per_type.png"), an["types"],
                                           {n: models[n]["scores"]["per_type"] for n in names})
    figs["learning"] = learning_curves_figure(os.path.join(fig_dir, "learning_curves.png"),
                                              {r.name: r.train_log for r in runs})
    figs["errors"] = error_classes_figure(os.path.join(fig_dir, "error_classes.png"),
                                          {n: models[n]["errors"] for n in names})
    if an["types"]:
        figs["confusion"] = confusion_figure(os.path.join(fig_dir, "confusion.png"),
                                             {n: models[n]["confusion"] for n in names})
    panels = []
    for key, title in BREAKDOWNS:
        bds = [models[n]["breakdowns"].get(key) for n in names]
        if bds[0] is None:
            continue
        buckets = list(bds[0])
        ticks = [f"{b}\nn={bds[0][b]['num_gold']:,}" for b in buckets]
        series = {n: [bd[b]["f1"] if bd[b]["num_gold"] or bd[b]["num_pred"] else None for b in buckets]
                  for n, bd in zip(names, bds)}
        panels.append((title, buckets, series, ticks))
    figs["breakdowns"] = breakdown_figure(os.path.join(fig_dir, "breakdowns.png"), panels)
    return figs
