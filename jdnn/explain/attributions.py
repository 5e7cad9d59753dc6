"""Attributions: how much each input entry (pixel, feature) contributed to one class's score.

    saliency               the gradient of the score with respect to the input
    integrated_gradients   (x - baseline) times the gradient averaged along the straight path
                           from the baseline to x (Sundararajan et al. 2017); the attributions
                           add up to score(x) - score(baseline), the completeness axiom
    smoothgrad             the gradient averaged over noisy copies of x (Smilkov et al. 2017)
    occlusion              how much the score drops when a window of the input is covered,
                           averaged over the windows covering each entry (Zeiler & Fergus 2014)

Each takes `(model, params, state, x, target)` with `x` a batch `(B, *input_shape)` and
`target` a class (an int) or one per example (`(B,)` ints), and returns `(B, *input_shape)`
attributions. The score is the target's logit unless `output=` says otherwise, in inference
mode (see `jdnn.explain.common`). Every method is one compiled program, built once per model,
options and input shape: each example is explained by its own `jax.vmap` lane, so no example
sees another, and the model's own batch axis carries the many inputs a method evaluates per
example (path points, noisy copies, occluded copies).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax import lax

from jdnn.checks import whole_number
from jdnn.core import Layer
from jdnn.explain.common import class_score, prepare
from jdnn.train.state import as_key

def each_example(one, args: tuple, batch_size: int | None):
    """`one(*example_args)` over the examples: all side by side under `jax.vmap`, or
    `batch_size` at a time (`lax.map`), which bounds the memory of the many model evaluations
    each example costs."""
    if batch_size is None:
        return jax.vmap(one)(*args)
    return lax.map(lambda example: one(*example), args, batch_size=batch_size)


def _batch_size(entry: str, batch_size: Any) -> int | None:
    return None if batch_size is None else whole_number(entry, "batch_size", batch_size, 1)


# ---------------------------------------------------------------------------------------------
# Saliency: one gradient per example.


@functools.partial(jax.jit, static_argnames=("model", "output"))
def _saliency(params, state, x, target, *, model, output):
    grad = jax.grad(class_score(model, output), argnums=2)
    return jax.vmap(grad, in_axes=(None, None, 0, 0))(params, state, x, target)


def saliency(model: Layer, params: Any, state: Any, x: Any, target: Any, *,
             output: str = "raw") -> jax.Array:
    """The gradient of the target's score with respect to each input (Simonyan et al. 2014).

    Signed, as computed; take `jnp.abs` (or the max over channels) for the classic saliency
    map. Cheap (one backward pass), but noisy and blind to saturated inputs: see
    `integrated_gradients` and `smoothgrad`.

    Args:
        model: a classifier, output `(B, classes)`.
        params: its parameters (`train_state.params`).
        state: its layer state (`train_state.state`; None for a model without state).
        x: inputs `(B, *input_shape)`, e.g. `(B, 8, 8, 1)` images or `(B, 64)` rows.
        target: the class to explain: an int, or `(B,)` ints, one per example.
        output: the score: `"raw"` (the model's output, the logit; default), `"softmax"`
            (the probability) or `"log_softmax"`.

    Returns:
        `(B, *input_shape)`: d score(x)[target] / dx, per example.

    Raises:
        TypeError: for a `TrainState` passed as params, or a target that is not ints.
        ValueError: for a target outside the model's classes or of the wrong length, an `x`
            without a batch axis, or a model whose output is not `(B, classes)`; a
            `jdnn.LayerError` names the layer an `x` of the wrong shape does not fit.

    Example:
        >>> grads = jdnn.explain.saliency(model, ts.params, ts.state, x_test[:8], y_test[:8])
    """
    state, x, target = prepare("saliency", model, params, state, x, target, output)
    return _saliency(params, state, x, target, model=model, output=output)


# ---------------------------------------------------------------------------------------------
# Integrated gradients: the gradient averaged along the path from a baseline, by quadrature.

METHODS = ("gausslegendre", "riemann_middle", "riemann_trapezoid")


def path_points(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Where on the path `baseline + alpha * (x - baseline)` the gradient is taken, `alpha` in
    `[0, 1]`, and the quadrature weight of each point (they sum to 1)."""
    if method == "gausslegendre":  # exact for polynomials of degree < 2 * steps (Captum's default)
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    if method == "riemann_middle":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1 / steps)
    weights = np.ones(steps)
    weights[[0, -1]] = 0.5
    return np.linspace(0, 1, steps), weights / (steps - 1)


@functools.partial(jax.jit, static_argnames=("model", "output", "steps", "method",
                                             "batch_size"))
def _integrated_gradients(params, state, x, target, baseline, *, model, output, steps, method,
                          batch_size):
    score = class_score(model, output)
    grad = jax.grad(score, argnums=2)
    alphas, weights = path_points(steps, method)

    def one(x_one, base, t):
        alpha = jnp.asarray(alphas, x.dtype).reshape(-1, *[1] * x_one.ndim)
        points = base + alpha * (x_one - base)                      # (steps, *input_shape)
        grads = jax.vmap(grad, in_axes=(None, None, 0, None))(params, state, points, t)
        mean_grad = jnp.tensordot(jnp.asarray(weights, x.dtype), grads, axes=1)
        gap = score(params, state, x_one, t) - score(params, state, base, t)
        return (x_one - base) * mean_grad, gap

    return each_example(one, (x, baseline, target), batch_size)


def _baseline(baseline: Any, x: jax.Array) -> jax.Array:
    if baseline is None:
        return jnp.zeros_like(x)
    baseline = jnp.asarray(baseline, x.dtype)
    if baseline.shape not in ((), x.shape[1:], x.shape):
        raise ValueError(f"integrated_gradients: baseline must be a number, one input of shape "
                         f"{x.shape[1:]}, or one per example {x.shape}; got shape "
                         f"{baseline.shape}")
    return jnp.broadcast_to(baseline, x.shape)


def integrated_gradients(model: Layer, params: Any, state: Any, x: Any, target: Any, *,
                         baseline: Any = None, steps: int = 50, method: str = "gausslegendre",
                         output: str = "raw", return_delta: bool = False,
                         batch_size: int | None = None) -> Any:
    """Integrated gradients (Sundararajan et al. 2017): `(x - baseline)` times the gradient of
    the target's score averaged along the straight path from `baseline` to `x`.

    Completeness: the attributions of an example add up to `score(x) - score(baseline)`, up to
    the quadrature's error; `return_delta=True` also returns that error per example, to choose
    `steps` (more steps for a sharper model; a ReLU network's kinks need more than a smooth
    one's). The baseline should mean "no information": black images (zeros, the default) for
    pixel data, the training mean for tabular features.

    Args:
        model: a classifier, output `(B, classes)`.
        params: its parameters (`train_state.params`).
        state: its layer state (`train_state.state`; None for a model without state).
        x: inputs `(B, *input_shape)`.
        target: the class to explain: an int, or `(B,)` ints.
        baseline: the path's start: None (zeros), a number, one input `input_shape`, or one
            per example `(B, *input_shape)`.
        steps: gradient evaluations along the path, per example.
        method: the quadrature: `"gausslegendre"` (default, as Captum; the most accurate per
            step), `"riemann_middle"` or `"riemann_trapezoid"` (needs `steps >= 2`).
        output: the score: `"raw"` (the logit; default), `"softmax"` or `"log_softmax"`.
        return_delta: also return the completeness error per example.
        batch_size: examples explained at once, each costing `steps` gradients (None: all).

    Returns:
        Attributions `(B, *input_shape)`; with `return_delta`, `(attributions, delta)` where
        `delta` `(B,)` is `attributions.sum() - (score(x) - score(baseline))` per example.

    Raises:
        ValueError: for `steps` below 1 (2 for the trapezoid), an unknown `method`, or a
            baseline of the wrong shape; and as `saliency` raises.

    Example:
        >>> attr, delta = jdnn.explain.integrated_gradients(
        ...     model, ts.params, ts.state, x_test[:8], y_test[:8], steps=64, return_delta=True)
    """
    entry = "integrated_gradients"
    if method not in METHODS:
        raise ValueError(f"{entry}: method must be one of {METHODS}, got {method!r}")
    steps = whole_number(entry, "steps", steps, minimum=2 if method == "riemann_trapezoid" else 1)
    state, x, target = prepare(entry, model, params, state, x, target, output)
    attributions, gap = _integrated_gradients(params, state, x, target, _baseline(baseline, x),
                                              model=model, output=output, steps=steps,
                                              method=method,
                                              batch_size=_batch_size(entry, batch_size))
    if not return_delta:
        return attributions
    return attributions, attributions.reshape(len(x), -1).sum(axis=1) - gap


# ---------------------------------------------------------------------------------------------
# SmoothGrad: the gradient averaged over noisy copies of the input.


@functools.partial(jax.jit, static_argnames=("model", "output", "samples", "batch_size"))
def _smoothgrad(params, state, x, target, key, noise, *, model, output, samples, batch_size):
    grad = jax.grad(class_score(model, output), argnums=2)
    spread = (x.max(axis=tuple(range(1, x.ndim))) - x.min(axis=tuple(range(1, x.ndim))))
    sigma = (noise * spread).reshape(-1, 1, *[1] * (x.ndim - 1))
    draws = (x.shape[0], samples, *x.shape[1:])  # drawn flat: XLA compiles that much faster
    noisy = x[:, None] + sigma * jax.random.normal(key, (math.prod(draws),), x.dtype).reshape(
        draws)

    def one(copies, t):
        return jax.vmap(grad, in_axes=(None, None, 0, None))(params, state, copies, t).mean(0)

    return each_example(one, (noisy, target), batch_size)


def smoothgrad(model: Layer, params: Any, state: Any, x: Any, target: Any, *, key: Any,
               samples: int = 50, noise: float = 0.15, output: str = "raw",
               batch_size: int | None = None) -> jax.Array:
    """SmoothGrad (Smilkov et al. 2017): the saliency averaged over `samples` copies of each
    input with Gaussian noise added, which washes out the gradient's pixel-level noise.

    The noise's standard deviation is `noise` times the example's range (`x.max() - x.min()`
    over the example), the paper's "noise level"; 0.1 to 0.2 works best there. With
    `noise=0` the result is `saliency`'s.

    Args:
        model: a classifier, output `(B, classes)`.
        params: its parameters (`train_state.params`).
        state: its layer state (`train_state.state`; None for a model without state).
        x: inputs `(B, *input_shape)`.
        target: the class to explain: an int, or `(B,)` ints.
        key: the random key (or an int seed) the noise is drawn with; required, so a result
            can always be reproduced.
        samples: noisy copies per example.
        noise: the noise level, a float >= 0 (a fraction of each example's range).
        output: the score: `"raw"` (the logit; default), `"softmax"` or `"log_softmax"`.
        batch_size: examples explained at once, each costing `samples` gradients (None: all).

    Returns:
        `(B, *input_shape)`: the mean gradient over the noisy copies, per example.

    Raises:
        ValueError: for `samples` below 1 or a negative `noise`; and as `saliency` raises.

    Example:
        >>> smooth = jdnn.explain.smoothgrad(model, ts.params, ts.state, x_test[:8],
        ...                                  y_test[:8], key=jax.random.key(0), noise=0.15)
    """
    entry = "smoothgrad"
    samples = whole_number(entry, "samples", samples, minimum=1)
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.number)) or noise < 0:
        raise ValueError(f"{entry}: noise must be a float >= 0 (a fraction of each example's "
                         f"range, e.g. 0.15), got {noise!r}")
    key = as_key(entry, key)
    state, x, target = prepare(entry, model, params, state, x, target, output)
    return _smoothgrad(params, state, x, target, key, jnp.asarray(noise, x.dtype), model=model,
                       output=output, samples=samples,
                       batch_size=_batch_size(entry, batch_size))


# ---------------------------------------------------------------------------------------------
# Occlusion: the score's drop when a window of the input is covered.


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

    Example:
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
                      batch_size=_batch_size(entry, batch_size))
