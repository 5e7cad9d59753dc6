"""Gradient flow: per-layer gradient norms and activation statistics over training.

`GradientFlow` is a `fit` callback. On a fixed batch it measures, before training and after
every `every` epochs, in training mode (batch statistics, dropout with a fixed key):

- `grad_norms`: for each layer with parameters, the L2 norm of the gradient of the data loss
  (the per-example `loss`, averaged; no penalty) with respect to all that layer's parameters;
- `dead_relu`: for each `Relu` layer, the fraction of its units (features, or positions x
  channels) that are <= 0 for every example of the batch: units that pass no gradient;
- `saturated`: for each `Sigmoid` layer, the fraction of its outputs below 0.05 or above 0.95,
  and for each `Tanh` layer, of its outputs with `|y| > 0.95`: where their slope is nearly 0.

Vanishing gradients show as norms falling by orders of magnitude from the output layer back
to the input layer; `plot_gradient_flow` draws them on a log scale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from jdnn.core import Layer, trait, walk
from jdnn.core import path_of
from jdnn.train.callbacks import Callback, Run
from jdnn.viz.common import finish, new_figure
from jdnn.viz.trace import full_state, layer_outputs



def layer_grad_norms(grads: Any) -> dict[str, jax.Array]:
    """`{layer path: L2 norm of all its gradient leaves}`, e.g. `{"0_dense": ...}`, in tree
    order; a model that is a single layer reports under `""`."""
    squares: dict[str, jax.Array] = {}
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
        layer = path_of(keypath).rpartition("/")[0]
        squares[layer] = squares.get(layer, 0.0) + jnp.sum(jnp.square(leaf))
    return {layer: jnp.sqrt(total) for layer, total in squares.items()}


def activation_stats(model: Layer, outputs: Mapping[str, jax.Array]
                     ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """`(dead_relu, saturated)` fractions per activation layer from `layer_outputs`, for the
    kinds that declare `activation_stats` (ReLU: dead units; sigmoid, tanh: saturation)."""
    found: dict[str, dict[str, jax.Array]] = {"dead_relu": {}, "saturated": {}}
    for node in walk(model.spec):
        stats = trait(node.spec, "activation_stats")
        if stats is not None and node.path in outputs:
            for name, value in stats(outputs[node.path]).items():
                found[name][node.path] = value
    return found["dead_relu"], found["saturated"]


def make_probe(model: Layer, loss: Callable, key: jax.Array | None = None) -> Callable:
    """The jitted measurement `probe(params, state, x, y) -> dict of arrays` the callback runs."""
    key = jax.random.key(0) if key is None else key

    def objective(params, state, x, y):
        outputs = layer_outputs(model, params, state, x, key=key, train=True)
        return jnp.mean(loss(outputs[""], y)), outputs

    def probe(params, state, x, y):
        grads, outputs = jax.grad(objective, has_aux=True)(params, state, x, y)
        dead, saturated = activation_stats(model, outputs)
        return {"loss": jnp.mean(loss(outputs[""], y)), "grad_norms": layer_grad_norms(grads),
                "dead_relu": dead, "saturated": saturated}

    return jax.jit(probe)


def _host(values: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """The probe's arrays as floats, each per-layer dict in data-flow order (jax sorts dict
    keys, which would put `10_dense` before `2_dense`)."""
    rank = {path: i for i, path in enumerate(order)}
    out: dict[str, Any] = {}
    for field, value in values.items():
        if isinstance(value, Mapping):
            out[field] = {k: float(value[k]) for k in sorted(value, key=lambda k: rank.get(k, -1))}
        else:
            out[field] = float(value)
    return out


class GradientFlow(Callback):
    """Records per-layer gradient norms and activation statistics during `fit`.

    Attributes:
        records: one dict per measurement: `{"epoch", "loss", "grad_norms": {path: norm},
            "dead_relu": {path: fraction}, "saturated": {path: fraction}}`; epoch 0 (or the
            epoch a resumed run starts from) is measured before the first step.

    Args:
        x: a fixed batch of inputs to measure on, `(B, ...)`.
        y: its targets.
        loss: the per-example loss, e.g. `jdnn.losses.softmax_cross_entropy`.
        every: measure after every `every`-th epoch.
        key: the dropout key of the measuring pass (default `jax.random.key(0)`).

    Examples:
        >>> flow = GradientFlow(x[:256], y[:256], jdnn.losses.softmax_cross_entropy)
        >>> jdnn.fit(model, (x, y), ..., callbacks=[flow])
        >>> plot_gradient_flow(flow, path="gradient_flow.png")
    """

    def __init__(self, x: Any, y: Any, loss: Callable, *, every: int = 1,
                 key: jax.Array | None = None):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"GradientFlow: every must be an int >= 1, got {every!r}")
        self.x, self.y, self.loss, self.every, self.key = (jnp.asarray(x), jnp.asarray(y), loss,
                                                           every, key)
        self.records: list[dict[str, Any]] = []
        self._probe: tuple[Layer, Callable] | None = None

    def measure(self, model: Layer, params: Any, state: Any, epoch: int = 0) -> dict[str, Any]:
        """Measures `params` now, appends the record to `records` and returns it."""
        if self._probe is None or self._probe[0] is not model:
            self._probe = (model, make_probe(model, self.loss, self.key))
        values = _host(self._probe[1](params, full_state(model, state), self.x, self.y),
                       [node.path for node in walk(model.spec)])
        record = {"epoch": int(epoch), **values}
        self.records.append(record)
        return record

    def on_train_begin(self, run: Run) -> None:
        self.measure(run.model, run.train_state.params, run.train_state.state, run.epoch)

    def on_epoch_end(self, run: Run) -> None:
        if run.epoch % self.every == 0:
            self.measure(run.model, run.train_state.params, run.train_state.state, run.epoch)


def _layers(records: Sequence[Mapping], field: str) -> list[str]:
    seen: list[str] = []
    for record in records:
        seen += [path for path in record[field] if path not in seen]
    return seen


def _as_runs(source: Any) -> dict[str, list[dict]]:
    if isinstance(source, GradientFlow):
        return {"": source.records}
    if isinstance(source, Mapping):
        return {name: _as_runs(value)[""] for name, value in source.items()}
    return {"": list(source)}


def plot_gradient_flow(source: GradientFlow | Sequence[Mapping] | Mapping[str, Any], *,
                       path=None, weights_only: bool = True, dpi: float = 100) -> Figure:
    """Plots gradient flow: norms per layer over training, norms across depth, activation stats.

    One row of three panels per run: (1) each layer's gradient norm over the epochs (log scale,
    input layers dark, output layers light); (2) the gradient norm of each layer from input to
    output, at the first and the last measurement (log scale): a slope toward the input is a
    vanishing gradient; (3) the fraction of dead ReLU units and saturated sigmoid/tanh units
    per layer over the epochs. Rows share their y-axes, so runs compare directly.

    Args:
        source: a `GradientFlow`, its `records`, or `{name: GradientFlow or records}` to compare
            runs (e.g. a sigmoid net and a ReLU net), one row each.
        path: save the figure there (`.png`, `.svg`, `.pdf`).
        dpi: the figure's resolution.

    Returns:
        The `Figure`; `fig.jdnn_data["runs"]` holds the records drawn, by run name.

    Examples:
        >>> plot_gradient_flow({"sigmoid": flow_a, "relu + batch norm": flow_b}, path="flow.png")
    """
    runs = _as_runs(source)
    if not runs or any(not records for records in runs.values()):
        raise ValueError("plot_gradient_flow: no records (was the GradientFlow passed to fit?)")
    fig = new_figure(13.0, 3.3 * len(runs), dpi)
    axes = fig.subplots(len(runs), 3, squeeze=False)
    for row, (name, records) in zip(axes, runs.items()):
        _plot_run(row, name, records, weights_only)
    for column in range(2):
        low = min(ax.get_ylim()[0] for ax in axes[:, column])
        high = max(ax.get_ylim()[1] for ax in axes[:, column])
        for ax in axes[:, column]:
            ax.set_ylim(low, high)
    return finish(fig, path, runs=runs)


def _plot_run(row, name: str, records: list[dict], weights_only: bool) -> None:
    over_time, across_depth, stats = row
    epochs = [r["epoch"] for r in records]
    layers = _layers(records, "grad_norms")
    weighted = [p for p in layers if p.rpartition("/")[2].endswith(("_dense", "_conv2d"))]
    if weights_only and weighted:
        layers = weighted
    cmap = colormaps["viridis"]
    for i, layer in enumerate(layers):
        color = cmap(i / max(len(layers) - 1, 1) * 0.9)
        over_time.plot(epochs, [r["grad_norms"].get(layer, np.nan) for r in records],
                       color=color, label=layer or "model")
    over_time.set_yscale("log")
    over_time.set_xlabel("epoch")
    over_time.set_ylabel("gradient norm")
    over_time.set_title(f"{name + ': ' if name else ''}gradient norm per layer", fontsize=10)
    over_time.legend(fontsize=6, ncol=2)

    positions = np.arange(len(layers))
    for record, style in ((records[0], "o-"), (records[-1], "s--")):
        norms = [record["grad_norms"].get(layer, np.nan) for layer in layers]
        across_depth.plot(positions, norms, style, label=f"epoch {record['epoch']}")
    across_depth.set_yscale("log")
    across_depth.set_xticks(positions, [layer or "model" for layer in layers], fontsize=6,
                            rotation=45, ha="right")
    across_depth.set_xlabel("layer (input -> output)")
    across_depth.set_title("gradient norm across depth", fontsize=10)
    across_depth.legend(fontsize=7)

    plotted = False
    for field, style, what in (("dead_relu", "-", "dead"), ("saturated", "--", "saturated")):
        paths = _layers(records, field)
        for i, layer in enumerate(paths):
            color = cmap(i / max(len(paths) - 1, 1) * 0.9)
            stats.plot(epochs, [r[field].get(layer, np.nan) for r in records], style,
                       color=color, label=f"{layer} {what}")
            plotted = True
    if not plotted:
        stats.text(0.5, 0.5, "no ReLU, sigmoid or tanh layers", ha="center", va="center",
                   transform=stats.transAxes)
    else:
        stats.legend(fontsize=6, ncol=2)
    stats.set_ylim(-0.02, 1.02)
    stats.set_xlabel("epoch")
    stats.set_title("dead ReLU (solid) / saturated units (dashed)", fontsize=10)
