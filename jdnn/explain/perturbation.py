"""Perturbation attributions: occlusion (Zeiler & Fergus 2014), how much a class's score drops
when a window of the input is covered, averaged over the windows covering each entry. It asks
the model only for forward passes, so it also explains a model whose gradients mislead (flat,
saturated, discontinuous), at one forward pass per window position and example.

The covered copies of an example go through the model side by side, one per `jax.vmap` lane,
together with the example itself, so every score is computed alike; examples are explained in
lanes of their own (or `batch_size` at a time), as in `jdnn.explain.attributions`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdnn.core import Layer
from jdnn.explain.common import batch_size_of, class_score, each_example, prepare


def _sizes(name: str, value: Any, input_shape: tuple[int, ...], count: int) -> tuple[int, ...]:
    """A positive int (the same on `count` axes) or a tuple of positive ints, one per leading
    axis of `input_shape` it applies to, as a tuple."""
    sizes = (value,) * count if isinstance(value, (int, np.integer)) else value
    try:
        sizes = tuple(sizes)
    except TypeError:
        sizes = ()
    ok = (0 < len(sizes) <= len(input_shape)
          and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
                  for s in sizes))
    if not ok:
        raise ValueError(f"occlusion: {name} must be a positive int or a tuple of positive ints, "
                         f"one per leading axis of the input (at most {len(input_shape)} for "
                         f"inputs of shape {input_shape}), got {value!r}")
    return tuple(int(s) for s in sizes)


def windows(input_shape: tuple[int, ...], window: tuple[int, ...],
            stride: tuple[int, ...]) -> np.ndarray:
    """`(P, *input_shape)` bool masks, one per window position: `window` slides over the leading
    axes of `input_shape` by `stride` (a last position flush with the end is added where the
    stride skips it, so every entry is covered); trailing axes are covered whole."""
    starts = []
    for size, span, step in zip(input_shape, window, stride):
        axis_starts = list(range(0, size - span + 1, step))
        starts.append(axis_starts + ([size - span] if axis_starts[-1] != size - span else []))
    masks = []
    for corner in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(window)):
        mask = np.zeros(input_shape, bool)
        mask[tuple(slice(c, c + s) for c, s in zip(corner, window))] = True
        masks.append(mask)
    return np.stack(masks)


@functools.partial(jax.jit, static_argnames=("model", "output", "window", "stride",
                                             "batch_size"))
def _occlusion(params, state, x, target, fill, *, model, output, window, stride, batch_size):
    score = class_score(model, output)
    masks = windows(x.shape[1:], window, stride)
    covers = jnp.asarray(masks.sum(axis=0), x.dtype)
    masks = jnp.asarray(masks)

    def one(x_one, t):
        # x itself first, then each covered copy: one batch, so all are scored alike
        inputs = jnp.concatenate([x_one[None], jnp.where(masks, fill, x_one)])  # (1 + P, ...)
        scores = jax.vmap(score, in_axes=(None, None, 0, None))(params, state, inputs, t)
        drops = scores[0] - scores[1:]                                           # (P,)
        return jnp.tensordot(drops, masks.astype(x.dtype), axes=1) / covers

    return each_example(one, (x, target), batch_size)


def occlusion(model: Layer, params: Any, state: Any, x: Any, target: Any, *,
              window: Any = 2, stride: Any = 1, fill: float = 0.0,
              output: str = "raw", batch_size: int | None = None) -> jax.Array:
    """Occlusion (Zeiler & Fergus 2014): slide a window filled with `fill` over each input and
    record how much the target's score drops; each entry gets the mean drop over the windows
    that covered it. Needs no gradients, so it also explains a model that is flat or
    discontinuous where gradients mislead; costs one forward pass per window position.

    Args:
        model: a classifier, output `(B, classes)`.
        params: its parameters (`train_state.params`).
        state: its layer state (`train_state.state`; None for a model without state).
        x: inputs `(B, *input_shape)`.
        target: the class to explain: an int, or `(B,)` ints.
        window: the window's size over the input's leading axes: `(h, w)` for `(H, W, C)`
            images (all channels covered), `(k,)` for `(F,)` rows; an int is that size on every
            axis but the channels (default 2: 2x2 patches, or pairs of features).
        stride: the step between window positions, an int or one per window axis.
        fill: the value a covered entry takes (0: black, for images in [0, 1]).
        output: the score: `"raw"` (the logit; default), `"softmax"` or `"log_softmax"`.
        batch_size: examples explained at once, each costing one forward pass per window
            position (None: all).

    Returns:
        `(B, *input_shape)`: `score(x) - score(x covered)` averaged over the windows covering
        each entry; positive where covering hurts the target class.

    Raises:
        ValueError: for a window or stride that is not positive ints, one per leading input
            axis, or a window larger than the input; and as `saliency` raises.

    Examples:
        >>> occ = jdnn.explain.occlusion(model, ts.params, ts.state, x_test[:8], y_test[:8],
        ...                              window=(2, 2), stride=1)
    """
    entry = "occlusion"
    state, x, target = prepare(entry, model, params, state, x, target, output)
    input_shape = x.shape[1:]
    window = _sizes("window", window, input_shape, max(1, len(input_shape) - 1))
    stride = _sizes("stride", stride, input_shape, len(window))
    if len(stride) != len(window) or any(w > n for w, n in zip(window, input_shape)):
        raise ValueError(f"{entry}: window {window} with stride {stride} does not fit inputs of "
                         f"shape {input_shape}: give one stride per window axis and a window no "
                         f"larger than the input")
    return _occlusion(params, state, x, target, jnp.asarray(fill, x.dtype), model=model,
                      output=output, window=window, stride=stride,
                      batch_size=batch_size_of(entry, batch_size))
