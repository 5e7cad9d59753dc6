"""DP-SGD: each example's gradient clipped (ghost clipping, `jdnn.privacy.ghost`), averaged, and
Gaussian noise added, in one compiled training step (Abadi et al., 2016).

The noise is one `jax.random.normal` draw for the whole gradient (`gaussian_noise`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdnn.core import Layer
from jdnn.privacy.ghost import ghost_clipped_grad
from jdnn.train.state import DROPOUT, NOISE, TrainState, step_key
from jdnn.losses import Loss, masked_mean
from jdnn.metrics import Metric, resolve_metrics
from jdnn.train.step import check_step_arguments
from jdnn.privacy.per_example import clip_and_aggregate, per_example_grads

METHODS = ("ghost", "vmap")
NOISE_BLOCK = 16  # the draw's size is rounded up to a multiple of this (see gaussian_noise)


def gaussian_noise(key: jax.Array, tree: Any, std: jax.Array) -> Any:
    """`tree` plus independent `N(0, std^2)` noise on every entry, drawn from `key`.

    The noise is `jax.random.normal(key, (n,))` in the leaves' common dtype, `n` the entry
    count rounded up to a multiple of `NOISE_BLOCK`, cut into the leaves in `jax.tree` order.
    Two choices make it fast on XLA:CPU, where this draw is about 30% of a DP-SGD step of a
    784-512-512-10 MLP at batch 256 (`benchmarks/dp_noise.py`, interleaved medians):

    - it is drawn under `jax.threefry_partitionable(False)`, JAX's default before 0.5, which
      uses both 32-bit words of each Threefry-2x32 hash, where the partitionable form hashes
      once per word and XORs the hash's two words into one: half the hashing, and that DP-SGD
      step 0.80-0.84x as long as with the partitionable draw (no measurable difference on the
      64-128-10 digits MLP);
    - `n` is a multiple of 16: that form hashes the counters as two halves, and XLA:CPU does not
      vectorize a loop over an odd number of elements (an odd half made the step 1.5x slower).

    Neither changes what the noise is, so neither weakens the privacy guarantee: the bits are
    Threefry-2x32 (20 rounds) in counter mode, each counter pair hashed once and both output
    words used, as JAX made all its random numbers until 0.5 (the default changed so that
    draws shard across devices, not for their quality); the normals come from JAX's own
    transform. The DP-SGD step folds `key` from the run's key and the step only, never from the
    data, so no two steps share noise. Like every floating-point sampler (NumPy's, PyTorch's),
    this one is not hardened against attacks on the low-order bits of floating-point noise
    (Mironov, 2012).
    """
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves:
        return tree
    sizes = [leaf.size for leaf in leaves]
    size = -(-sum(sizes) // NOISE_BLOCK) * NOISE_BLOCK
    with jax.threefry_partitionable(False):
        noise = jax.random.normal(key, (size,), jnp.result_type(*leaves))
    starts = np.cumsum([0, *sizes[:-1]])
    return jax.tree.unflatten(treedef, [
        leaf + std * noise[start:start + leaf.size].reshape(leaf.shape).astype(leaf.dtype)
        for leaf, start in zip(leaves, starts)])


def _real(where: str, name: str, value: Any, low: float, strict: bool) -> float:
    """A finite real number above `low` (strictly or not) as a Python float; NumPy and 0-d
    JAX numbers accepted, bools and strings not."""
    number = isinstance(value, (int, float, np.integer, np.floating)) or (
        isinstance(value, jax.Array) and value.ndim == 0)
    if number and not isinstance(value, (bool, np.bool_)):
        value = float(value)
        if np.isfinite(value) and (value > low if strict else value >= low):
            return value
    raise ValueError(f"{where}: {name} must be a finite number {'>' if strict else '>='} {low:g},"
                     f" got {value!r}")


def _check_settings(where: str, loss: Any, optimizer: Any, metrics: Any, l2_norm_clip: Any,
                    noise_multiplier: Any, method: str) -> tuple[float, float]:
    check_step_arguments(where, loss=loss, optimizer=optimizer, metrics=metrics)
    if method not in METHODS:
        raise ValueError(f"{where}: method must be one of {METHODS}, got {method!r}")
    return (_real(where, "l2_norm_clip", l2_norm_clip, 0.0, strict=True),
            _real(where, "noise_multiplier", noise_multiplier, 0.0, strict=False))


def dp_train_step_fn(model: Layer, loss: Loss, optimizer: optax.GradientTransformation, *,
                     l2_norm_clip: float, noise_multiplier: float, method: str = "ghost",
                     batch_norm: str | None = None,
                     metrics: Sequence[str | Metric] = ()) -> Callable:
    """The pure, uncompiled DP-SGD step that `make_dp_train_step` jits (same arguments)."""
    l2_norm_clip, noise_multiplier = _check_settings(
        "dp_train_step_fn", loss, optimizer, metrics, l2_norm_clip, noise_multiplier, method)
    metric_fns = resolve_metrics(metrics, loss=loss)

    def step(train_state: TrainState, x, y, mask=None):
        noise_key = step_key(train_state, NOISE)
        common = dict(key=step_key(train_state, DROPOUT), train=True, mask=mask,
                      batch_norm=batch_norm)
        if method == "ghost":
            grads, norms, aux = ghost_clipped_grad(
                model, loss, train_state.params, train_state.state, x, y,
                l2_norm_clip=l2_norm_clip, return_aux=True, **common)
        else:
            per_example, aux = per_example_grads(model, loss, train_state.params,
                                                 train_state.state, x, y, return_aux=True,
                                                 **common)
            grads, norms = clip_and_aggregate(per_example, l2_norm_clip, mask=mask)
        count = x.shape[0] if mask is None else jnp.maximum(jnp.sum(mask), 1)
        if noise_multiplier > 0:  # a static float: no noise, no draw
            grads = gaussian_noise(noise_key, grads, noise_multiplier * l2_norm_clip / count)
        updates, opt_state = optimizer.update(grads, train_state.opt_state, train_state.params)
        params = optax.apply_updates(train_state.params, updates)
        report = {"loss": masked_mean(aux.loss, mask),
                  "clipped": masked_mean((norms > l2_norm_clip).astype(aux.loss.dtype), mask),
                  "grad_norm": masked_mean(norms, mask)}
        report.update({name: fn(aux.outputs, y, mask) for name, fn in metric_fns.items()})
        return TrainState(params, aux.state, opt_state, train_state.key,
                          train_state.step + 1), report

    return step


def make_dp_train_step(model: Layer, loss: Loss, optimizer: optax.GradientTransformation, *,
                       l2_norm_clip: float, noise_multiplier: float, method: str = "ghost",
                       batch_norm: str | None = None,
                       metrics: Sequence[str | Metric] = ()) -> Callable:
    """Builds a DP-SGD step `step(train_state, x, y, mask=None) -> (train_state, metrics)`.

    Each example's gradient is clipped to L2 norm `l2_norm_clip`, the clipped gradients are
    averaged over the `n` examples `mask` keeps, Gaussian noise of standard deviation
    `noise_multiplier * l2_norm_clip / n` is added to every entry (Abadi et al., 2016), and the
    result goes to `optimizer`. Dropout and noise keys are folded in from `train_state.key` and
    the step count (`jdnn.train.state.step_key`), so a run is reproducible from its key. One
    `jax.jit`; the incoming state is donated. (optax's `contrib.differentially_private_aggregate`
    does the same aggregation but needs every per-example gradient and keeps its own key in the
    optimizer state; the `"vmap"` method clips through the optax function it is built on.)

    The privacy accounting (epsilon for a number of steps and a sampling rate) is not done
    here; the noise is the Gaussian mechanism the accountants assume. Batch statistics leak
    across examples, so prefer models without BatchNorm or `batch_norm="running"`.

    Args:
        model: the network.
        loss: a per-example loss `loss(outputs, y) -> (B,)`.
        optimizer: any optax `GradientTransformation` (it sees the noisy mean gradient).
        l2_norm_clip: `C`, the largest L2 norm an example's gradient keeps, `> 0`.
        noise_multiplier: `sigma`, the noise's standard deviation relative to `C` (on the sum).
        method: `"ghost"` (`ghost_clipped_grad`: the clipping costs about a plain step; the
            noise draw adds its own cost, per parameter) or `"vmap"` (`per_example_grads` +
            `clip_and_aggregate`: any layer, per-example keys, 50-100x slower on large MLPs).
        batch_norm: the batch-norm rule for models with BatchNorm, as in `per_example_grads`.
        metrics: metrics on the training batch's outputs, as in `make_train_step`.

    Returns:
        The compiled step. Its metrics hold `"loss"` (the masked mean loss), `"clipped"` (the
        fraction of examples whose gradient was clipped), `"grad_norm"` (their mean norm
        before clipping) and each requested metric.

    Raises:
        ValueError: for a `method` not in `METHODS`, an `l2_norm_clip` that is not a finite
            number > 0, or a `noise_multiplier` that is not a finite number >= 0.
        TypeError: for a loss, optimizer or metric of the wrong kind (e.g. `optax.sgd`, not
            called).

    Examples:
        >>> step = jdnn.make_dp_train_step(model, jdnn.losses.softmax_cross_entropy,
        ...                                optax.sgd(0.1), l2_norm_clip=1.0, noise_multiplier=1.1)
        >>> train_state, m = step(train_state, x, y)
    """
    _check_settings("make_dp_train_step", loss, optimizer, metrics, l2_norm_clip,
                    noise_multiplier, method)
    step = dp_train_step_fn(model, loss, optimizer, l2_norm_clip=l2_norm_clip,
                            noise_multiplier=noise_multiplier, method=method,
                            batch_norm=batch_norm, metrics=metrics)
    return jax.jit(step, donate_argnums=0)
