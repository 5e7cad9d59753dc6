"""Convolution filters and feature maps as image grids.

Filters share one diverging color scale centred on 0 (blue negative, red positive), so their
strengths compare; filters over 3 input channels are shown as RGB images instead. Feature maps
(a layer's output for one image) share one sequential scale.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jdnn.core import Layer
from jdnn.viz.common import finish, new_figure, one_example
from jdnn.viz.trace import compiled_outputs, full_state


def _grid(count: int, tile: float, dpi: float, extra_width: float = 0.0):
    cols = min(count, max(1, math.ceil(math.sqrt(count * 1.5))))
    rows = math.ceil(count / cols)
    fig = new_figure(max(3.2, tile * cols + extra_width), tile * rows + 0.5, dpi)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes


def plot_filters(w: Any, *, path=None, max_tiles: int = 64, title: str | None = None,
                 dpi: float = 100) -> Figure:
    """Draws the kernels of a `Conv2D` layer, one tile per filter (and input channel).

    With 3 input channels each filter is one RGB tile (each rescaled to [0, 1]). Otherwise each
    filter gets one tile per input channel, as many channels as fit in `max_tiles`, all on one
    symmetric color scale `[-max|w|, max|w|]`.

    Args:
        w: the kernel `(kh, kw, in_channels, filters)` (HWIO, jdnn's layout), or the layer's
            params dict holding it under `"w"`.
        path: save the figure there (`.png`, `.svg`, `.pdf`).
        max_tiles: the most tiles drawn.
        title: the figure's title.
        dpi: the figure's resolution.

    Returns:
        The `Figure`; `fig.jdnn_data` holds `"tiles"` (the 2-D or RGB arrays drawn, in order),
        `"labels"` (`(filter, channel)` per tile; channel None for RGB) and `"vmax"`.

    Examples:
        >>> plot_filters(train_state.params["0_conv2d"]["w"], path="filters.png")
    """
    w = np.asarray(w["w"] if isinstance(w, dict) else w, dtype=np.float32)
    if w.ndim != 4:
        raise ValueError(f"plot_filters needs a Conv2D kernel of shape (kh, kw, in_channels, "
                         f"filters), got shape {w.shape}")
    cin, cout = w.shape[2:]
    vmax = float(np.max(np.abs(w))) or 1.0
    tiles, labels = [], []
    if cin == 3:
        for o in range(min(cout, max_tiles)):
            f = w[:, :, :, o]
            span = float(f.max() - f.min()) or 1.0
            tiles.append((f - f.min()) / span)
            labels.append((o, None))
    else:
        channels = max(1, min(cin, max_tiles // cout))
        for o in range(min(cout, max_tiles)):
            for i in range(channels):
                tiles.append(w[:, :, i, o])
                labels.append((o, i))
    fig, axes = _grid(len(tiles), 0.75, dpi, extra_width=0.8)
    image = None
    for ax, tile, (o, i) in zip(axes, tiles, labels):
        image = ax.imshow(tile, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(str(o) if i is None or cin == 1 else f"{o}:{i}", fontsize=6, pad=2)
    if cin != 3 and image is not None:
        fig.colorbar(image, ax=axes.tolist(), shrink=0.6, label="weight")
    shown = "RGB" if cin == 3 else f"filter:channel, {min(cin, max(1, max_tiles // cout))} of " \
                                   f"{cin} input channels"
    fig.suptitle(title or f"{cout} filters {w.shape[0]}x{w.shape[1]} ({shown})", fontsize=9)
    return finish(fig, path, tiles=tiles, labels=labels, vmax=vmax)


def _input_tile(image: np.ndarray) -> np.ndarray:
    """An image as something `imshow` draws: RGB rescaled to [0, 1], else one grey channel."""
    if image.ndim != 3:
        return image.reshape(1, -1)
    if image.shape[-1] == 3:
        return (image - image.min()) / (float(image.max() - image.min()) or 1.0)
    return image.mean(axis=-1)


def plot_feature_maps(model: Layer, params: Any, state: Any, x: Any, *, layer: str, path=None,
                      max_maps: int = 64, dpi: float = 100) -> Figure:
    """Draws the output of one layer for one image, one tile per channel, the input first.

    Args:
        model: a jdnn `Layer` taking NHWC images.
        params: its parameters; state: its state (None if none).
        x: one image `(H, W, C)` or a batch of one.
        layer: the layer's path, e.g. `"2_relu"` (see `jdnn.summary` or `layer_outputs`).
        path: save the figure there (`.png`, `.svg`, `.pdf`).
        max_maps: the most channels drawn.
        dpi: the figure's resolution.

    Returns:
        The `Figure`; `fig.jdnn_data` holds `"maps"`, the layer's output for the image
        (`(h, w, channels)`, or `(features,)` after a `Flatten`/`Dense`), and `"layer"`.

    Examples:
        >>> plot_feature_maps(model, params, state, x_test[0], layer="2_relu", path="maps.png")
    """
    batch = one_example(x)
    outputs = compiled_outputs(model)(params, full_state(model, state), batch)
    if layer not in outputs or not layer:
        raise KeyError(f"no layer {layer!r} in {model.spec.kind}; its layers are "
                       f"{[p for p in outputs if p]}")
    maps = np.asarray(outputs[layer])[0]
    if maps.ndim == 3:
        tiles = [maps[:, :, c] for c in range(min(maps.shape[-1], max_maps))]
    else:
        tiles = [maps.reshape(1, -1)]
    fig, axes = _grid(len(tiles) + 1, 0.9, dpi, extra_width=0.8)
    axes[0].imshow(_input_tile(batch[0]), cmap="gray", interpolation="nearest")
    axes[0].set_title("input", fontsize=6, pad=2)
    low, high = float(maps.min()), float(maps.max())
    shown = None
    for c, (ax, tile) in enumerate(zip(axes[1:], tiles)):
        shown = ax.imshow(tile, cmap="viridis", vmin=low, vmax=high if high > low else low + 1,
                          interpolation="nearest", aspect="auto" if tile.shape[0] == 1 else None)
        ax.set_title(str(c), fontsize=6, pad=2)
    if shown is not None:
        fig.colorbar(shown, ax=axes.tolist(), shrink=0.6, label="activation")
    fig.suptitle(f"{layer}: output {maps.shape}", fontsize=9)
    return finish(fig, path, maps=maps, layer=layer)
