"""Decision boundaries of a classifier on 2-D inputs (XOR, moons, spirals): the predicted class
over a grid as filled regions, the data on top.

The predicted class is the argmax of the outputs for `C > 1` outputs; for one output it is
`output > threshold`, where the threshold is 0.5 if the model ends with `Sigmoid` (it outputs
probabilities) and 0 otherwise (it outputs logits, as jdnn's losses want).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from jdnn.core import Layer, output_layer, trait
from jdnn.viz.common import finish, new_figure
from jdnn.viz.trace import compiled_apply, full_state

CHUNK = 65536


class Grid(NamedTuple):
    """The model's predictions on a regular grid covering the data.

    Attributes:
        xx, yy: `(R, R)` coordinates (`np.meshgrid` of the two input features).
        outputs: `(R * R, C)` model outputs at the points `(xx.ravel(), yy.ravel())`.
        classes: `(R, R)` int predicted class at each grid point.
        threshold: the threshold used for a single output (None for argmax).
    """

    xx: np.ndarray
    yy: np.ndarray
    outputs: np.ndarray
    classes: np.ndarray
    threshold: float | None


def default_threshold(model: Layer) -> float:
    """0.5 for a model whose output layer outputs probabilities (`Sigmoid`), else 0.0
    (logits)."""
    return 0.5 if trait(output_layer(model.spec), "outputs_probabilities", False) else 0.0


def predicted_class(outputs: Any, threshold: float = 0.0) -> np.ndarray:
    """The class of each row of `outputs`: argmax for `(N, C>1)`, else `output > threshold`."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        return np.argmax(outputs, axis=1)
    return (outputs.reshape(len(outputs)) > threshold).astype(np.int64)


def _labels(y: Any) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return np.argmax(y, axis=1)
    return np.rint(y.reshape(len(y))).astype(np.int64)


def decision_grid(model: Layer, params: Any, state: Any, x: Any, *, resolution: int = 200,
                  margin: float = 0.25, threshold: float | None = None) -> Grid:
    """Evaluates `model` (inference mode) on a `resolution` x `resolution` grid around `x`.

    Args:
        model: a classifier on 2 features.
        params: its parameters; state: its state (None if none).
        x: the data `(N, 2)`; the grid spans their range plus `margin` of it on each side.
        resolution: grid points per axis.
        margin: the padding around the data, as a fraction of its range (at least 0.1).
        threshold: for one output, the decision threshold (default: `default_threshold`).

    Returns:
        A `Grid`.

    Examples:
        >>> grid = decision_grid(model, params, None, x, resolution=50)
        >>> grid.classes.shape   # (50, 50)
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"decision boundaries need 2-D inputs of shape (N, 2), got {x.shape}")
    low, high = x.min(axis=0), x.max(axis=0)
    pad = np.maximum((high - low) * margin, 0.1)
    axes = [np.linspace(lo - p, hi + p, resolution) for lo, hi, p in zip(low, high, pad)]
    xx, yy = np.meshgrid(*axes)
    points = np.column_stack([xx.ravel(), yy.ravel()]).astype(x.dtype)
    state, apply = full_state(model, state), compiled_apply(model)
    chunks = [np.asarray(apply(params, state, jnp.asarray(points[i:i + CHUNK])))
              for i in range(0, len(points), CHUNK)]
    outputs = np.concatenate(chunks).reshape(len(points), -1)
    single = outputs.shape[1] == 1
    if threshold is None and single:
        threshold = default_threshold(model)
    classes = predicted_class(outputs, threshold or 0.0).reshape(xx.shape)
    return Grid(xx, yy, outputs, classes, threshold if single else None)


def plot_decision_boundary(model: Layer, params: Any, state: Any, x: Any, y: Any, *, path=None,
                           resolution: int = 200, threshold: float | None = None, ax=None,
                           title: str | None = None, dpi: float = 100) -> Figure:
    """Draws the predicted class over the plane as filled regions, with the data points.

    Args:
        model: a classifier on 2 features (logits, or probabilities after a `Sigmoid`).
        params: its parameters; state: its state (None if none).
        x: points `(N, 2)`; y: their labels, class indices `(N,)` (XOR's float 0/1 work too)
            or one-hot `(N, C)`.
        path: save the figure there (`.png`, `.svg`, `.pdf`).
        resolution: grid points per axis.
        threshold: for one output, the decision threshold (default: `default_threshold`).
        ax: draw into these axes instead of a new figure.
        title: the axes' title (default: the accuracy on the points shown).
        dpi: the figure's resolution.

    Returns:
        The `Figure`; `fig.jdnn_data` holds the `Grid` fields (`xx`, `yy`, `outputs`,
        `classes`, `threshold`) and the points' `predicted` classes.

    Examples:
        >>> (x, y), _ = jdnn.data.moons(400)
        >>> plot_decision_boundary(model, params, state, x, y, path="moons.png")
    """
    grid = decision_grid(model, params, state, x, resolution=resolution, threshold=threshold)
    labels = _labels(y)
    n_classes = max(grid.outputs.shape[1], 2, int(labels.max()) + 1)
    colors = [colormaps["tab10"](i % 10) for i in range(n_classes)]
    cmap = ListedColormap(colors)
    levels = np.arange(n_classes + 1) - 0.5
    spans = grid.xx[0, -1] - grid.xx[0, 0], grid.yy[-1, 0] - grid.yy[0, 0]
    fig = ax.figure if ax is not None else new_figure(
        5.0, float(np.clip(4.2 * spans[1] / spans[0], 2.4, 6.0)) + 0.7, dpi)
    ax = ax if ax is not None else fig.add_subplot()
    ax.contourf(grid.xx, grid.yy, grid.classes, levels=levels, cmap=cmap, alpha=0.35)
    ax.contour(grid.xx, grid.yy, grid.classes, levels=levels[1:-1], colors="black",
               linewidths=0.8)
    x = np.asarray(x)
    ax.scatter(x[:, 0], x[:, 1], c=labels, cmap=cmap, vmin=-0.5, vmax=n_classes - 0.5,
               edgecolors="black", linewidths=0.6, s=80 if len(x) <= 20 else 18, zorder=3)
    outputs = np.asarray(compiled_apply(model)(params, full_state(model, state),
                                               jnp.asarray(x))).reshape(len(x), -1)
    predicted = predicted_class(outputs, grid.threshold or 0.0)
    accuracy = float(np.mean(predicted == labels))
    ax.set_title(title if title is not None else
                 f"decision regions: accuracy {accuracy:.1%} on {len(x)} points", fontsize=9)
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.set_aspect("equal", adjustable="box")
    return finish(fig, path, **grid._asdict(), predicted=predicted, accuracy=accuracy)
