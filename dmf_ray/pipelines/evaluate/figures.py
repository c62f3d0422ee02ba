"""The PNG figures of the report (Figures 2-5), from per-task results.

Object-oriented matplotlib (Figure + savefig): renders with Agg without touching pyplot's
global backend, so it is safe inside Ray workers and notebooks alike. A figure without data is
still written, saying so, so the set of files is always the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dmf_ray.pipelines.evaluate.protocol import FUSION
from dmf_ray.pipelines.evaluate.results import METRIC_LABELS, TaskResult, floats, mean_std


def _figure(n_panels: int, width: float = 4.5, height: float = 3.4):
    from matplotlib.figure import Figure

    ncols = max(1, min(3, n_panels))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120, format="png")


def _figure2(results: Sequence[TaskResult], path: Path) -> None:
    with_data = [r for r in results if r.robustness]
    fig, axes = _figure(max(1, len(with_data)), width=max(4.5, 0.9 * max((len(r.robustness) for r in with_data), default=1)))
    fig.suptitle("Figure 2: performance under modality removal (fusion vs concatenation)")
    if not with_data:
        _no_data(axes[0], "robustness")
    for ax, r in zip(axes, with_data):
        patterns = list(r.robustness)
        x = np.arange(len(patterns))
        for offset, method, color in ((-0.2, "fusion", "tab:blue"), (0.2, "concat", "tab:orange")):
            ms = [mean_std(r.robustness[p].get(method, [])) for p in patterns]
            ax.bar(x + offset, [m for m, _ in ms], 0.4, yerr=[s if math.isfinite(s) else 0 for _, s in ms],
                   label=method, color=color, capsize=2)
        full_concat = [row for row in r.rows if "+" in row]
        refs = [(FUSION, "tab:blue")] + ([(max(full_concat, key=lambda n: n.count("+")), "tab:orange")] if full_concat else [])
        for row, color in refs:
            if row in r.rows and math.isfinite(mean_std(r.rows[row])[0]):
                label = "fusion" if row == FUSION else "concat (all modalities)"
                ax.axhline(mean_std(r.rows[row])[0], color=color, ls="--", lw=1, label=f"{label}, nothing removed")
        ax.set_xticks(x, patterns, rotation=30, ha="right")
        ax.set_ylabel(METRIC_LABELS[r.metric])
        ax.set_title(r.task)
        finite = [v for p in patterns for vals in r.robustness[p].values() for v in floats(vals) if math.isfinite(v)]
        if finite and r.metric == "roc_auc":
            ax.set_ylim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.05))
    if with_data:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8)
    _save(fig, path)


def _bars_per_modality(results: Sequence[TaskResult], key: str, ylabel: str, path: Path, title: str) -> None:
    fig, axes = _figure(1, width=7.0, height=4.0)
    ax = axes[0]
    fig.suptitle(title)
    with_data = [r for r in results if getattr(r, key)]
    mods = list(dict.fromkeys(m for r in with_data for m in getattr(r, key)))
    if not mods:
        _no_data(ax, key.replace("_", " "))
        _save(fig, path)
        return
    x = np.arange(len(mods))
    width = 0.8 / len(with_data)
    for i, r in enumerate(with_data):
        values = [getattr(r, key).get(m, np.nan) for m in mods]
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=r.task)
    ax.set_xticks(x, mods)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    _save(fig, path)


def _figure4(results: Sequence[TaskResult], path: Path) -> None:
    with_data = [r for r in results if r.attention_vs_mask_rate]
    fig, axes = _figure(max(1, len(with_data)))
    fig.suptitle("Figure 4: attention weight per modality vs mask rate")
    if not with_data:
        _no_data(axes[0], "attention vs mask rate")
    for ax, r in zip(axes, with_data):
        rates = sorted(r.attention_vs_mask_rate, key=float)
        mods = list(dict.fromkeys(m for rate in rates for m in r.attention_vs_mask_rate[rate]))
        for m in mods:
            ax.plot([float(x) for x in rates], [r.attention_vs_mask_rate[x].get(m, np.nan) for x in rates],
                    marker="o", label=m)
        ax.set_xlabel("mask rate")
        ax.set_ylabel("mean attention weight")
        ax.set_title(r.task)
        ax.legend(fontsize=7)
    _save(fig, path)


def write_figures(results: Sequence[TaskResult], paths: Mapping[str, Path]) -> None:
    """Figures 2-5 as PNG files at ``paths["figure2"]`` .. ``paths["figure5"]``."""
    _figure2(results, paths["figure2"])
    _bars_per_modality(results, "reconstruction_cosine", "reconstruction cosine", paths["figure3"],
                       "Figure 3: reconstruction cosine per modality")
    _figure4(results, paths["figure4"])
    _bars_per_modality(results, "attention", "mean attention weight", paths["figure5"],
                       "Figure 5: mean attention per modality")
