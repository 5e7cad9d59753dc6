"""Attributions as heatmaps over their images, and maximized inputs as a grid of images.

Attributions are signed: red where an entry raised the target's score, blue where it lowered
it, on a symmetric scale `[-max|a|, max|a|]` per tile (methods and examples differ in scale by
orders of magnitude; each tile shows where, not how much). Channels are summed. The image shows
through in grey underneath, so a heatmap reads against the strokes it sits on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jdnn.viz.common import finish, new_figure


def _as_images(name: str, a: Any, image_shape: tuple[int, int] | None) -> np.ndarray:
    """A batch of inputs as `(B, H, W, C)`: images as they are; rows `(B, F)` reshaped to
    `image_shape` (`(H, W)`), or drawn as one strip `(1, F)` without one."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 4:
        return a
    if a.ndim == 3:  # (B, H, W): one channel
        return a[..., None]
    if a.ndim == 2:
        if image_shape is None:
            return a[:, None, :, None]
        if int(np.prod(image_shape)) != a.shape[1]:
            raise ValueError(f"{name} has {a.shape[1]} features per example, which do not fill "
                             f"image_shape={tuple(image_shape)}; pass image_shape=(H, W) with "
                             f"H * W = {a.shape[1]}")
        return a.reshape(len(a), *image_shape, 1)
    raise ValueError(f"{name} must be a batch of images (B, H, W, C), (B, H, W), or of rows "
                     f"(B, F); got shape {a.shape}")


def _grey(image: np.ndarray) -> np.ndarray:
    """An `(H, W, C)` image as something `imshow` draws: RGB rescaled to [0, 1], else the
    channels' mean."""
    if image.shape[-1] == 3:
        return (image - image.min()) / (float(image.max() - image.min()) or 1.0)
    return image.mean(axis=-1)


def plot_attributions(x: Any, attributions: Any, *, labels: Sequence[Any] | None = None,
                      image_shape: tuple[int, int] | None = None, overlay: bool = True,
                      max_examples: int = 8, path=None, title: str | None = None,
                      dpi: float = 100) -> Figure:
    """Draws inputs and their attributions: one row per example, the input first, then one
    heatmap per method.

    Args:
        x: the inputs `(B, H, W, C)` (or `(B, F)` rows with `image_shape`).
        attributions: one method's attributions, shaped like `x`, or `{method name: array}`
            for several side by side (e.g. from `jdnn.explain.saliency`,
            `integrated_gradients`, `smoothgrad`, `occlusion`).
        labels: a caption per example on its input tile (its class, say).
        image_shape: `(H, W)` to reshape rows `(B, F)` into images; without it rows are
            drawn as strips.
        overlay: draw the input in grey under each heatmap.
        max_examples: the most rows drawn (the first examples).
        path: save the figure there (`.png`, `.svg`, `.pdf`).
        title: the figure's title.
        dpi: the figure's resolution.

    Returns:
        The `Figure`; `fig.jdnn_data` holds `"images"` (`(rows, H, W, C)`), `"maps"`
        (`{method: (rows, H, W)}`, the channel sums drawn) and `"vmax"` (`{method: (rows,)}`,
        each tile's color limit).

    Raises:
        ValueError: for attributions whose shape differs from `x`'s, or shapes that are not
            batches of images or rows.

    Examples:
        >>> attr = jdnn.explain.integrated_gradients(model, ts.params, ts.state, x, y)
        >>> plot_attributions(x, {"integrated gradients": attr}, labels=y, path="ig.png")
    """
    methods = dict(attributions) if isinstance(attributions, Mapping) else {
        "attribution": attributions}
    if not methods:
        raise ValueError("plot_attributions: attributions is an empty dict; pass an array, or "
                         "{method name: array}")
    shapes = {name: np.shape(a) for name, a in methods.items()}
    if any(shape != np.shape(x) for shape in shapes.values()):
        raise ValueError(f"plot_attributions: each attribution must have the shape of x "
                         f"{np.shape(x)}; got {shapes}")
    rows = min(len(np.asarray(x)), max_examples)
    images = _as_images("x", x, image_shape)[:rows]
    maps = {name: _as_images(name, a, image_shape)[:rows].sum(axis=-1)
            for name, a in methods.items()}
    vmax = {name: np.maximum(np.abs(m).reshape(rows, -1).max(axis=1), 1e-12)
            for name, m in maps.items()}

    cols = 1 + len(maps)
    fig = new_figure(1.1 * cols + 0.9, 1.1 * rows + 0.5, dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    heat = None
    for r in range(rows):
        grey = _grey(images[r])
        axes[r, 0].imshow(grey, cmap=None if grey.ndim == 3 else "gray",
                          interpolation="nearest", aspect="auto" if grey.shape[0] == 1 else None)
        if labels is not None:
            axes[r, 0].set_title(str(labels[r]), fontsize=7, pad=2)
        for c, (name, m) in enumerate(maps.items(), start=1):
            if overlay:
                axes[r, c].imshow(grey, cmap=None if grey.ndim == 3 else "gray",
                                  interpolation="nearest", alpha=0.5,
                                  aspect="auto" if grey.shape[0] == 1 else None)
            heat = axes[r, c].imshow(m[r], cmap="RdBu_r", vmin=-vmax[name][r],
                                     vmax=vmax[name][r], interpolation="nearest",
                                     alpha=0.75 if overlay else 1.0,
                                     aspect="auto" if m.shape[1] == 1 else None)
            if r == 0:
                axes[r, c].set_title(name, fontsize=7, pad=2)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(heat, ax=axes[:, 1:].ravel().tolist(), shrink=0.6, ticks=[],
                 label="lowers  <  score  >  raises")
    fig.suptitle(title or "attributions (red: raises the score, blue: lowers it)", fontsize=9)
    return finish(fig, path, images=images, maps=maps, vmax=vmax)


def plot_maximized_inputs(images: Any, *, titles: Sequence[Any] | None = None,
                          image_shape: tuple[int, int] | None = None, path=None,
                          title: str | None = None, dpi: float = 100) -> Figure:
    """Draws inputs that maximize classes or units (`jdnn.explain.activation_maximization`),
    one tile each, in a grid; each tile on its own grey scale (RGB images rescaled to [0, 1]).

    Args:
        images: `(T, H, W, C)` images (or `(T, F)` rows with `image_shape`).
        titles: a caption per tile; default its index (the class or unit, for `range(T)`).
        image_shape: `(H, W)` to reshape rows `(T, F)` into images.
        path: save the figure there (`.png`, `.svg`, `.pdf`).
        title: the figure's title.
        dpi: the figure's resolution.

    Returns:
        The `Figure`; `fig.jdnn_data` holds `"tiles"`, the `(H, W)` (or RGB) arrays drawn.

    Raises:
        ValueError: for `images` that are not a batch of images or rows, or titles of the
            wrong length.

    Examples:
        >>> best = jdnn.explain.activation_maximization(model, ts.params, ts.state, range(10),
        ...                                             shape=(8, 8, 1), key=0)
        >>> plot_maximized_inputs(best, path="classes.png")
    """
    tiles = [_grey(image) for image in _as_images("images", images, image_shape)]
    titles = list(range(len(tiles))) if titles is None else list(titles)
    if len(titles) != len(tiles):
        raise ValueError(f"plot_maximized_inputs: {len(titles)} titles for {len(tiles)} images; "
                         f"give one title per image")
    cols = min(len(tiles), 10)
    rows = -(-len(tiles) // cols)
    fig = new_figure(max(3.2, 0.9 * cols), 0.9 * rows + 0.5, dpi)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(tiles):]:
        ax.set_visible(False)
    for ax, tile, caption in zip(axes, tiles, titles):
        ax.imshow(tile, cmap=None if tile.ndim == 3 else "gray", interpolation="nearest",
                  aspect="auto" if tile.shape[0] == 1 else None)
        ax.set_title(str(caption), fontsize=7, pad=2)
    fig.suptitle(title or "inputs that most excite each unit", fontsize=9)
    return finish(fig, path, tiles=tiles)
