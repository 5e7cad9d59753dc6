"""PNG plots of the results (matplotlib, Agg backend: no display needed). Small files: ~80 dpi."""

from __future__ import annotations

import pathlib

import numpy as np

DPI = 80
COLORS = {"jdnn_step": "#1f77b4", "jdnn_epoch": "#17becf", "raw_jax": "#2ca02c",
          "raw_jax_scan": "#98df8a", "numpy": "#7f7f7f", "nnx_jit": "#ff7f0e",
          "nnx_split": "#ffbb78", "linen": "#d62728", "equinox": "#9467bd", "torch": "#8c564b",
          "torch_1thread": "#c49c94", "reference": "#c7c7c7", "raw_jax_reduce_window": "#bcbd22",
          "raw_jax_lax_conv": "#dbdb8d",
          "equinox_donate": "#c5b0d5", "keras": "#e377c2", "torch_fused": "#a05d3b",
          "torch_fused_1thread": "#dbb8a6", "torch_compile": "#5c3317",
          "torch_compile_1thread": "#9c7a66"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def step_times(results: dict, path: pathlib.Path, title: str) -> pathlib.Path | None:
    """Grouped bars: ms per step of every side, one group per workload, log scale."""
    if not results:
        return None
    plt = _pyplot()
    names = list(results)
    sides = [s for s in COLORS if any(s in results[n]["sides"] for n in names)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names) + 2), 4.2))
    width = 0.8 / max(len(sides), 1)
    for k, side in enumerate(sides):
        xs, ys, lo, hi = [], [], [], []
        for i, name in enumerate(names):
            entry = results[name]["sides"].get(side)
            if entry:
                s = entry["seconds"]
                xs.append(i + (k - len(sides) / 2 + 0.5) * width)
                ys.append(s["median"] * 1e3)
                lo.append((s["median"] - s["q1"]) * 1e3)
                hi.append((s["q3"] - s["median"]) * 1e3)
        ax.bar(xs, ys, width, yerr=[lo, hi], label=side, color=COLORS[side], capsize=1.5)
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms per step (median, IQR)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def scaling(results: dict, path: pathlib.Path) -> pathlib.Path | None:
    """One log-log panel per sweep, a line per side, its fitted slope in the legend."""
    if not results:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8), squeeze=False)
    for ax, (sweep, series) in zip(axes[0], results.items()):
        for side, s in series.items():
            x, y = np.asarray(s["x"], float), np.asarray(s["seconds"]) * 1e3
            slope = s.get("slope")
            label = f"{side} (slope {slope:.2f})" if slope is not None else side
            ax.errorbar(x, y, yerr=[y - np.asarray(s["q1"]) * 1e3,
                                    np.asarray(s["q3"]) * 1e3 - y],
                        marker="o", ms=3, label=label, color=COLORS.get(side))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel({"batch": "batch size", "width": "hidden width (2 layers)",
                       "depth": "hidden layers of 512"}.get(sweep, sweep))
        ax.set_ylabel("ms per step")
        ax.set_title(f"step time vs {sweep}", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
