"""The network diagram: every neuron of a small dense net, colored by its activation, with the
weights as edges; a block diagram of layers, shapes and parameter counts for anything larger.

A "small dense net" is a `serial` of `Dense` layers, each followed by any elementwise
activations (and dropout, the identity at inference), with at most `max_units` inputs and units
per layer: the 2-3-2-1 XOR net of the tutorials is the model case. A column is drawn per
`Dense` layer, and its nodes show the layer's output after the activations that follow it, i.e.
what the next layer receives; the last column is the model's output (logits, if the model ends
on a `Dense`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.collections import LineCollection, PatchCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch

from jdnn.core import Layer, child_name, output_layer, trait, walk
from jdnn.summarize import summary
from jdnn.viz.common import (FAMILY_COLORS, NEGATIVE, POSITIVE, family, finish, mappable,
                             new_figure, one_example)
from jdnn.viz.trace import compiled_outputs, full_state

FOLLOWERS = ("activation", "dropout")  # the families drawn as part of the dense column before
CMAP = "viridis"


def dense_columns(model: Layer, params: Any, max_units: int = 16
                  ) -> list[tuple[str, str, str]] | None:
    """The columns of the neuron diagram, or None if `model` is not a small dense net.

    Returns:
        One `(dense_path, last_path, label)` per `Dense` layer: the layer, the path whose output
        its nodes show (the last activation after it), and a label like `"Dense(3)\\nSigmoid"`.
    """
    spec = model.spec
    if output_layer(spec) is spec or not spec.children or family(spec.children[0]) != "dense":
        return None  # not a chain of layers starting with a dense one
    columns: list[list[str]] = []
    for i, child in enumerate(spec.children):
        name = child_name(i, child)
        if family(child) == "dense":
            units = np.shape(params[name]["w"])[1]
            if units > max_units:
                return None
            columns.append([name, name, describe(child)])
        elif family(child) in FOLLOWERS:
            columns[-1][1] = name
            if family(child) == "activation":
                columns[-1][2] += f"\n{child.kind}"
        else:
            return None
    first = np.shape(params[columns[0][0]]["w"])[0]
    return None if first > max_units else [tuple(column) for column in columns]


def node_activations(model: Layer, params: Any, state: Any, x: Any) -> list[np.ndarray]:
    """The values the neuron diagram colors its nodes by, one array per column.

    Computed by replaying the model layer by layer in inference mode (`train=False`), so the
    last column equals `model.apply(params, state, x[None])[0][0]`.

    Args:
        model: a small dense net (see the module docstring).
        params: its parameters; state: its state (None if it has none).
        x: ONE example, `(features,)` (or a batch of one).

    Returns:
        `[x, column 1, ..., output]`: 1-D arrays, the input first.

    Examples:
        >>> acts = node_activations(model, params, {}, np.array([1.0, 0.0]))  # XOR: 2, 3, 2, 1
    """
    columns = dense_columns(model, params, max_units=np.iinfo(np.int32).max)
    if columns is None:
        raise ValueError(f"node_activations needs a serial of Dense layers and elementwise "
                         f"activations, got {model.spec}")
    batch = one_example(x)
    outputs = compiled_outputs(model)(params, full_state(model, state), batch)
    return [batch[0], *(np.asarray(outputs[last])[0] for _, last, _ in columns)]


DX, RADIUS, LABEL_ROOM = 1.6, 0.32, 1.1  # column spacing, node radius, room for labels (rows)


def _node_positions(sizes: list[int]) -> list[np.ndarray]:
    return [np.column_stack([np.full(n, DX * c), (n - 1) / 2 - np.arange(n)])
            for c, n in enumerate(sizes)]


def _extent(sizes: list[int]) -> tuple[float, float]:
    """Width and height of the neuron diagram in data units (one unit = one node row)."""
    return DX * (len(sizes) - 1) + 1.2, max(sizes) + LABEL_ROOM


def _draw_neurons(ax, columns, params, values, value_range, colorbar) -> dict[str, Any]:
    weights = [np.asarray(params[dense]["w"]) for dense, _, _ in columns]
    sizes = [weights[0].shape[0], *(w.shape[1] for w in weights)]
    positions = _node_positions(sizes)
    scale = max(float(np.max(np.abs(w))) for w in weights) or 1.0
    segments, colors, widths = [], [], []
    for c, w in enumerate(weights):
        for i, j in np.ndindex(w.shape):
            segments.append([positions[c][i], positions[c + 1][j]])
            strength = abs(w[i, j]) / scale
            rgb = POSITIVE if w[i, j] >= 0 else NEGATIVE
            colors.append((*_rgb(rgb), 0.2 + 0.8 * strength))
            widths.append(0.3 + 4.0 * strength)
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=widths, zorder=1))

    # The default scale spans the input and hidden values (and [0, 1]); outputs, often logits
    # far outside it, saturate the colormap rather than wash out the hidden layers' contrast.
    inner = None if values is None else np.concatenate([np.ravel(v) for v in values[:-1]])
    if value_range is None:
        value_range = (0.0, 1.0) if inner is None else (min(0.0, float(inner.min())),
                                                         max(1.0, float(inner.max())))
    norm, cmap = Normalize(*value_range), colormaps[CMAP]
    width, height = _extent(sizes)
    box = ax.get_position()
    fig_w, fig_h = ax.figure.get_size_inches()
    unit = min(box.width * fig_w / width, box.height * fig_h / height)  # inches per row
    fontsize = float(np.clip(unit * 72 * 2 * RADIUS / 2.8, 3.5, 8.0))
    node_colors = []
    for c, xy in enumerate(positions):
        face = (np.ones((len(xy), 4)) if values is None
                else cmap(norm(np.asarray(values[c], float))))
        node_colors.append(face)
        circles = PatchCollection([Circle(p, RADIUS) for p in xy], facecolors=face,
                                  edgecolors="black", linewidths=1.0, zorder=2)
        ax.add_collection(circles)
        if values is not None:
            for (px, py), value, rgba in zip(xy, values[c], face):
                light = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] > 0.55
                ax.text(px, py, f"{value:.2f}", ha="center", va="center", fontsize=fontsize,
                        color="black" if light else "white", zorder=3)
    labels = ["input", *(label for _, _, label in columns)]
    labels[-1] = labels[-1].replace("Dense", "output\nDense", 1)
    top = (max(sizes) - 1) / 2 + 0.5
    for c, label in enumerate(labels):
        ax.text(DX * c, -top + 0.05, label, ha="center", va="top", fontsize=min(8.0, fontsize + 1))
    ax.text(-0.55, top - height + 0.05, "edges: blue w > 0, red w < 0, width ~ |w|",
            fontsize=min(7.0, fontsize), color="#555555", va="bottom")
    ax.set_xlim(-0.6, width - 0.6)
    ax.set_ylim(top - height, top)
    ax.set_aspect("equal")
    ax.axis("off")
    if colorbar and values is not None:
        every = np.concatenate([np.ravel(v) for v in values])
        extend = {(False, False): "neither", (True, False): "min", (False, True): "max",
                  (True, True): "both"}[(bool(every.min() < value_range[0]),
                                         bool(every.max() > value_range[1]))]
        bar = ax.figure.colorbar(mappable(norm, cmap), ax=ax, shrink=0.7, pad=0.02,
                                 extend=extend)
        bar.set_label("activation")
    return {"mode": "neurons", "activations": values, "node_colors": node_colors,
            "value_range": value_range, "weights": weights, "cmap": CMAP}


def _rgb(color: str) -> tuple[float, float, float]:
    return tuple(int(color[i:i + 2], 16) / 255 for i in (1, 3, 5))


def describe(spec) -> str:
    """A short label of a layer, e.g. `Dense(10)`, `Conv2D(32, 3x3, /2, VALID)`, `Dropout(0.25)`
    (`Dropout(0.25, in state)` for a rate held in the state: 0.25 is its initial value): its
    kind's `label` trait, or the kind."""
    label = trait(spec, "label")
    return spec.kind if label is None else label(spec)


def _draw_blocks(ax, table) -> dict[str, Any]:
    specs = {node.path: node.spec for node in walk(table.spec)}
    rows = [("input", None, table.input_shape, None, 0), *(
        (row.name, specs.get(row.path, table.spec), row.output_shape, row.params, row.depth)
        for row in table.rows)]
    height = len(rows)
    ax.plot([0.5, 0.5], [0.0, -height + 1.0], color="#555555", lw=1.2, zorder=0)
    for i, (name, spec, shape, count, depth) in enumerate(rows):
        color = "#ffffff" if spec is None else FAMILY_COLORS[family(spec)]
        kind = "" if spec is None else describe(spec)
        x0 = 0.05 + 0.06 * depth
        box = FancyBboxPatch((x0, -i - 0.38), 0.9 - 0.06 * depth, 0.76,
                             boxstyle="round,pad=0,rounding_size=0.12", facecolor=color,
                             edgecolor="#333333", zorder=1)
        ax.add_patch(box)
        shape_text = "?" if shape is None else "x".join(str(d) for d in shape[1:])
        left = f"{name}  {kind}" if kind else "input"
        ax.text(x0 + 0.02, -i, left, va="center", ha="left", fontsize=8, family="monospace",
                zorder=2)
        right = shape_text if count is None else f"{shape_text}   {count:,} params"
        ax.text(0.93, -i, right, va="center", ha="right", fontsize=8, family="monospace",
                zorder=2)
    ax.set_xlim(0, 1)
    ax.set_ylim(-height + 0.4, 0.6)
    ax.axis("off")
    flops = "?" if table.flops is None else f"{table.flops:,}"
    ax.set_title(f"{table.params:,} parameters, {table.state:,} state, {flops} FLOPs/example",
                 fontsize=9)
    return {"mode": "blocks", "summary": table.to_dict()}


def draw_network(model: Layer, params: Any = None, state: Any = None, x: Any = None, *,
                 input_shape: tuple[int, ...] | None = None, path=None, ax=None,
                 max_units: int = 16, value_range: tuple[float, float] | None = None,
                 colorbar: bool = True, dpi: float = 100) -> Figure:
    """Draws `model`: its neurons if it is a small dense net, else a block diagram of layers.

    Neurons: each node is colored by its activation for the example `x` (white if no `x`) and
    labeled with the value; each edge's color is the sign of its weight (blue positive, red
    negative) and its width and opacity grow with `|w|`. Blocks: one box per layer (combinators'
    children indented) with its output shape and parameter count, from `jdnn.summary`.

    Args:
        model: a jdnn `Layer`.
        params: its parameters (needed for the neuron diagram).
        state: its state (None if it has none).
        x: one example `(features,)` whose activations color the nodes (optional).
        input_shape: for the block diagram when no `x` is given, batch axis first.
        path: save the figure there (`.png`, `.svg`, `.pdf`).
        ax: draw into these axes instead of a new figure.
        max_units: the largest layer drawn neuron by neuron.
        value_range: `(low, high)` of the node colormap (default: the input and hidden
            values', covering [0, 1]; outputs outside it saturate).
        colorbar: add a colorbar for the node values.
        dpi: the figure's resolution.

    Returns:
        The `Figure`; `fig.jdnn_data` holds what it shows: `"activations"` (one array per
        column, as `node_activations` returns), `"node_colors"` (RGBA per node),
        `"value_range"`, `"weights"`, or, for a block diagram, `"summary"`.

    Examples:
        >>> fig = draw_network(model, params, {}, np.array([1.0, 0.0]), path="xor.png")
    """
    columns = None if params is None else dense_columns(model, params, max_units)
    if columns is not None:
        sizes = [np.shape(params[columns[0][0]]["w"])[0],
                 *(np.shape(params[d]["w"])[1] for d, _, _ in columns)]
        width, height = _extent(sizes)
        unit = min(1.0, 6.5 / height, 8.0 / width)
        fig = ax.figure if ax is not None else new_figure(
            unit * width + (1.3 if colorbar and x is not None else 0.3), unit * height + 0.5,
            dpi)
        ax = ax if ax is not None else fig.add_subplot()
        values = None if x is None else node_activations(model, params, state, x)
        data = _draw_neurons(ax, columns, params, values, value_range, colorbar)
        if values is not None:
            shown = ", ".join(f"{v:.3g}" for v in values[0])
            ax.set_title(f"input ({shown}) -> output "
                         f"{', '.join(f'{v:.3g}' for v in values[-1])}", fontsize=9)
        return finish(fig, path, **data)
    if x is not None:
        input_shape = one_example(x).shape
    if input_shape is None:
        raise ValueError(f"draw_network: a block diagram of {model.spec.kind} needs the input's "
                         f"shape: pass x (one example) or input_shape, e.g. (1, 28, 28, 1)")
    table = summary(model, input_shape)
    fig = ax.figure if ax is not None else new_figure(7.0, 0.38 * len(table.rows) + 1.0, dpi)
    ax = ax if ax is not None else fig.add_subplot()
    return finish(fig, path, **_draw_blocks(ax, table))
