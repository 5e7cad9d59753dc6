"""Gradient attributions: how much each input entry (pixel, feature) contributed to one
class's score, read off the gradient of that score.

    saliency               the gradient of the score with respect to the input
    integrated_gradients   (x - baseline) times the gradient averaged along the straight path
                           from the baseline to x (Sundararajan et al. 2017); the attributions
                           add up to score(x) - score(baseline), the completeness axiom
    smoothgrad             the gradient averaged over noisy copies of x (Smilkov et al. 2017)

(`occlusion`, which needs no gradient, is in `jdnn.explain.occlusion`.) Each takes
`(model, params, state, x, target)` with `x` a batch `(B, *input_shape)` and `target` a class
(an int) or one per example (`(B,)` ints), and returns `(B, *input_shape)` attributions. The
score is the target's logit unless `output=` says otherwise, in inference mode (see
`jdnn.explain.common`). Every method is one compiled program, built once per model, options and
input shape: each example is explained in its own lane (`jax.vmap`, or `lax.map` over groups
of `batch_size`), and the inputs a method evaluates per example (path points, noisy copies) go
through the model side by side under an inner `jax.vmap`, one input per lane, so no input
sees another.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdnn.checks import whole_number
from jdnn.core import Layer
from jdnn.explain.common import batch_size_of, class_score, each_example, prepare
from jdnn.train.state import as_key


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
        TypeError: for a `TrainState` passed as params, a target that is not ints, or an `x`
            that is not floats.
        ValueError: for a target outside the model's classes or of the wrong length, an `x`
            without a batch axis, or a model whose output is not `(B, classes)`; a
            `jdnn.LayerError` names the layer an `x` of the wrong shape does not fit.

    Examples:
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

    Examples:
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
                                              batch_size=batch_size_of(entry, batch_size))
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

    Examples:
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
                       batch_size=batch_size_of(entry, batch_size))
