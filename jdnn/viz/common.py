"""What every picture shares: a pyplot-free `Figure`, saving by extension, colors by kind.

jdnn draws on `matplotlib.figure.Figure` objects directly, never through `pyplot`, so nothing
depends on (or changes) the active backend, no global figure registry fills up, and drawing
works on headless machines. PNG and SVG (and PDF) are written with matplotlib's own canvases.
"""

from __future__ import annotations

import pathlib

import numpy as np
from matplotlib.figure import Figure

from jdnn.core import Spec, trait

FORMATS = (".png", ".svg", ".pdf")

# One color per layer family, shared by the block diagram and the gradient-flow plots.
FAMILY_COLORS = {
    "dense": "#4c72b0", "conv": "#55a868", "pool": "#8172b2", "norm": "#ccb974",
    "activation": "#dd8452", "reshape": "#937860", "dropout": "#8c8c8c", "combinator": "#e5e5e5",
    "embedding": "#da8bc3", "recurrent": "#64b5cd", "attention": "#b47cc7", "other": "#c44e52",
}
POSITIVE, NEGATIVE = "#2166ac", "#b2182b"


def family(spec: Spec) -> str:
    """The family a layer's kind declared (`"dense"`, `"conv"`, `"pool"`, `"norm"`, ...; see
    `jdnn.core.TRAITS`), or `"other"` for a kind that declared none."""
    name = trait(spec, "family", "other")
    return name if name in FAMILY_COLORS else "other"


def new_figure(width: float, height: float, dpi: float = 100) -> Figure:
    """A figure of `width` x `height` inches with the constrained layout."""
    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def finish(fig: Figure, path=None, **data) -> Figure:
    """Attaches the numbers behind the picture as `fig.jdnn_data` and saves it if asked.

    Args:
        fig: the figure.
        path: None, or a file whose extension (`.png`, `.svg`, `.pdf`) picks the format; its
            folder is created.
        **data: the arrays and values the picture shows, for tests and for reuse.

    Returns:
        `fig`.
    """
    fig.jdnn_data = data
    if path is not None:
        save(fig, path)
    return fig


def save(fig: Figure, path) -> pathlib.Path:
    """Writes `fig` to `path` (PNG, SVG or PDF, by extension); returns the path."""
    path = pathlib.Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"cannot save a figure as {path.name!r}: the extension picks the format, "
                         f"one of {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi)
    return path


def mappable(norm, cmap: str):
    """A `ScalarMappable` for a colorbar of values drawn with `cmap` under `norm`."""
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=cmap)


def one_example(x, name: str = "x") -> np.ndarray:
    """`x` as a batch of one: `(F,)` or `(1, F)` -> `(1, F)`; `(H, W, C)` -> `(1, H, W, C)`."""
    x = np.asarray(x)
    if x.ndim in (1, 3):
        return x[None]
    if x.ndim in (2, 4) and x.shape[0] == 1:
        return x
    raise ValueError(f"{name} must be ONE example, of shape (features,) or (height, width, "
                     f"channels), or a batch of one; got shape {x.shape}")
