"""Training curves from a `History`: one panel per quantity (loss, accuracy, ...), training and
validation together, the best epoch and an early stop marked, and the learning rate if recorded.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from jdnn.train.history import History
from jdnn.viz.common import finish, new_figure

NOT_PLOTTED = ("epoch", "seconds", "lr")
TRAIN, VALIDATION, BEST, STOP = "#4c72b0", "#dd8452", "#2ca02c", "#d62728"


def _records(history: History | Mapping | Sequence) -> tuple[list[dict], str | None]:
    if isinstance(history, History):
        return history.records, history.stop_reason
    if isinstance(history, Mapping):
        return list(history["records"]), history.get("stop_reason")
    return list(history), None


def quantities(records: Sequence[Mapping[str, float]]) -> list[str]:
    """The quantities to plot, in record order, validation folded into its training twin:
    e.g. `["loss", "accuracy"]` for records holding `loss, accuracy, val_loss, val_accuracy`."""
    names: list[str] = []
    for record in records:
        for key in record:
            base = key[4:] if key.startswith("val_") else key
            if base not in NOT_PLOTTED and base not in names:
                names.append(base)
    return names


def best_epoch(records: Sequence[Mapping[str, float]], monitor: str | None = None
               ) -> tuple[int, str, float] | None:
    """The best epoch: `(epoch, monitor, value)`, or None if nothing finite was recorded.

    Args:
        records: the history's records.
        monitor: the quantity; by default `val_loss`, else `val_accuracy`, else `loss`.
            Accuracies are maximized, everything else minimized.
    """
    present = {key for record in records for key in record}
    if monitor is None:
        monitor = next((m for m in ("val_loss", "val_accuracy", "loss") if m in present), None)
    candidates = [r for r in records if monitor in r and math.isfinite(r[monitor])]
    if not candidates:
        return None
    pick = max if "acc" in monitor else min
    best = pick(candidates, key=lambda r: r[monitor])
    return int(best["epoch"]), monitor, float(best[monitor])


def _series(records, key):
    points = [(r["epoch"], r[key]) for r in records if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def _log_scale_if_wide(ax, values: Sequence[float]) -> None:
    """A log y-axis where the finite values are all positive and span more than 30x."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 30:
        ax.set_yscale("log")


def plot_history(history: History | Mapping | Sequence, *, path=None,
                 monitor: str | None = None, dpi: float = 100) -> Figure:
    """Plots a training run: loss and each metric, train vs validation, one panel each.

    The best epoch (see `best_epoch`) is a green dashed line in every panel with a dot on the
    monitored curve; an early stop (the history's `stop_reason`) is a red dotted line at the
    last epoch with the reason as the figure's caption; a recorded learning rate (`"lr"`, as
    `ReduceLROnPlateau` writes) gets its own panel on a log scale.

    Args:
        history: a `History`, its `to_dict()`, or a list of epoch records.
        path: save the figure there (`.png`, `.svg`, `.pdf`).
        monitor: the quantity that decides the best epoch (default: see `best_epoch`).
        dpi: the figure's resolution.

    Returns:
        The `Figure`; `fig.jdnn_data` holds `"series"` (`{key: (epochs, values)}`),
        `"best"` (`(epoch, monitor, value)` or None), `"stop_epoch"` and `"stop_reason"`.

    Examples:
        >>> train_state, history = jdnn.fit(...)
        >>> plot_history(history, path="runs/mlp/curves.png")
    """
    records, stop_reason = _records(history)
    if not records:
        raise ValueError("plot_history: the history has no records (no epoch has run)")
    names = quantities(records)
    has_lr = any("lr" in r for r in records)
    panels = len(names) + has_lr
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig = new_figure(4.0 * cols, 3.0 * rows + (0.4 if stop_reason else 0.0), dpi)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for extra in axes[panels:]:
        extra.set_visible(False)
    best = best_epoch(records, monitor)
    stop_epoch = int(records[-1]["epoch"]) if stop_reason else None
    series: dict[str, Any] = {}

    for ax, name in zip(axes, names):
        for key, color, label in ((name, TRAIN, "train"), (f"val_{name}", VALIDATION,
                                                           "validation")):
            epochs, values = _series(records, key)
            if not epochs:
                continue
            series[key] = (epochs, values)
            ax.plot(epochs, values, color=color, label=label, marker="." if len(epochs) < 30
                    else None)
        _log_scale_if_wide(ax, [v for key in (name, f"val_{name}") if key in series
                                for v in series[key][1]])
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)

    if has_lr:
        ax = axes[len(names)]
        series["lr"] = _series(records, "lr")
        ax.plot(*series["lr"], color="#8172b2", drawstyle="steps-pre")
        ax.set_yscale("log")
        ax.set_title("learning rate")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)

    for i, ax in enumerate(axes[:panels]):  # the first panel's legend explains the lines
        if best is not None:
            ax.axvline(best[0], color=BEST, ls="--", lw=1,
                       label=None if i else f"best epoch {best[0]} ({best[1]} {best[2]:.4g})")
        if stop_epoch is not None:
            ax.axvline(stop_epoch, color=STOP, ls=":", lw=1.5,
                       label=None if i else f"stopped after epoch {stop_epoch}")
    if best is not None:
        name = best[1][4:] if best[1].startswith("val_") else best[1]
        if name in names:
            axes[names.index(name)].plot([best[0]], [best[2]], "o", color=BEST, zorder=3)
    for ax in axes[:panels]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if stop_reason:
        fig.suptitle("\n".join(textwrap.wrap(stop_reason, 110)), fontsize=8, color=STOP)
    return finish(fig, path, series=series, best=best, stop_epoch=stop_epoch,
                  stop_reason=stop_reason)


def plot_histories(histories: Mapping[str, History | Mapping | Sequence],
                   quantities: Sequence[str] = ("loss", "val_accuracy"), *,
                   title: str | None = None, path=None, dpi: float = 100) -> Figure:
    """Several runs on the same axes: one panel per quantity, one line per run.

    Where `plot_history` draws one run in detail, this compares runs (activations,
    optimizers, learning rates) epoch by epoch. A loss panel whose values span more than 30x
    gets a log scale.

    Args:
        histories: run name -> its `History` (or `to_dict()`, or list of epoch records).
        quantities: the recorded quantities to draw, e.g. `("loss", "val_accuracy")`.
        title: the figure's title.
        path: save the figure there (`.png`, `.svg`, `.pdf`).
        dpi: the figure's resolution.

    Returns:
        The `Figure`; `fig.jdnn_data["series"]` maps each quantity to
        `{run: (epochs, values)}`.

    Raises:
        ValueError: for no histories, no quantities, a run with no records, or a quantity no
            run recorded (naming the quantities the runs have).

    Examples:
        >>> plot_histories({"sgd": h_sgd, "adam": h_adam}, ("loss", "val_accuracy"),
        ...                path="optimizers.png")
    """
    if not histories or not quantities:
        raise ValueError("plot_histories: give at least one run ({name: history}) and one "
                         "quantity, e.g. ('loss', 'val_accuracy')")
    runs = {}
    for name, history in histories.items():
        runs[name] = _records(history)[0]
        if not runs[name]:
            raise ValueError(f"plot_histories: run {name!r} has no records (no epoch has run)")
    present = {key for records in runs.values() for record in records for key in record}
    missing = [q for q in quantities if q not in present]
    if missing:
        raise ValueError(f"plot_histories: no run recorded {missing}; the runs record "
                         f"{sorted(present - {'epoch', 'seconds'})}")
    fig = new_figure(4.5 * len(quantities), 3.4, dpi)
    series: dict[str, dict[str, Any]] = {}
    for ax, quantity in zip(fig.subplots(1, len(quantities), squeeze=False)[0], quantities):
        series[quantity] = {}
        for name, records in runs.items():
            epochs, values = _series(records, quantity)
            if epochs:
                series[quantity][name] = (epochs, values)
                ax.plot(epochs, values, label=name, marker="." if len(epochs) < 30 else None)
        _log_scale_if_wide(ax, [v for _, values in series[quantity].values() for v in values])
        ax.set_title(quantity)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return finish(fig, path, series=series)
