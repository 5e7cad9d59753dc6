"""DP-SGD: each example's gradient clipped (ghost clipping, `jdnn.privacy.ghost`), averaged, and
Gaussian noise added, in one compiled training step (Abadi et al., 2016).

The noise draw is written for speed on a CPU: Threefry-2x32 with both 32-bit output words used
(`jax.random.normal` hashes once per word and throws half away), JAX's own bits-to-normal
transform, and a draw padded to a multiple of `NOISE_BLOCK` entries (XLA:CPU does not vectorize
loops over an odd element count: an odd-sized draw ran ~10x slower).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.extend.random import threefry_2x32

from jdnn.core import Layer
from jdnn.privacy.ghost import ghost_clipped_grad
from jdnn.train.state import DROPOUT, NOISE, TrainState, step_key
from jdnn.train.step import Metric, check_step_arguments, masked_mean, resolve_metrics
from jdnn.privacy.per_example import Loss, clip_and_aggregate, per_example_grads

METHODS = ("ghost", "vmap")
NOISE_BLOCK = 16  # the draw is padded to a multiple of this many entries (see gaussian_noise)


def _uniform_from_words(words: jax.Array, dtype: Any) -> jax.Array:
    """Floats uniform in `[-1 + ulp, 1)` from uniform `uint32` words, as `jax.random.uniform`
    makes them: the top mantissa bits under exponent 0, minus one, scaled. 64-bit floats take
    two words an entry (the first half of `words` gives the high bits), the others one."""
    finfo = jnp.finfo(dtype)
    bits, mantissa = finfo.bits, finfo.nmant
    uint = jnp.dtype(f"uint{bits}")
    if bits == 64:
        high, low = jnp.split(words, 2)
        words = (high.astype(uint) << np.uint64(32)) | low.astype(uint)
    else:
        words = (words >> np.uint32(32 - bits)).astype(uint)
    one = np.array(1.0, dtype).view(uint)
    floats = lax.bitcast_convert_type((words >> uint.type(bits - mantissa)) | one, dtype) - 1.0
    low_end = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype))
    width = (np.array(1.0, dtype) - low_end).astype(dtype)  # rounded in `dtype`, as JAX does
    return jnp.maximum(low_end, floats * width + low_end)


def standard_normal(key: jax.Array, size: int, dtype: Any = jnp.float32) -> jax.Array:
    """`(size,)` independent `N(0, 1)` draws from `key`, a faster `jax.random.normal`.

    The bits are Threefry-2x32 hashes (JAX's default generator) of the counters `0, 1, ...`
    under a key pair drawn from `key`, both 32-bit words of every hash used, as
    `jax.extend.random.threefry_2x32` lays them out. `jax.random.normal` (partitionable
    Threefry, JAX's default) hashes once per word and XORs the hash's two words together: twice
    the hashing. The words become normals by `jax.random.normal`'s own transform,
    `sqrt(2) * erfinv(u)` for `u` uniform in `(-1, 1)` (every mantissa bit random). The draw is
    padded to a multiple of `NOISE_BLOCK` entries: XLA's CPU loops over an odd number of
    elements are not vectorized, and `jax.random.normal` of an odd size ran 10x slower.

    Raises:
        ValueError: for a draw of `2**32` words or more (the counters are 32-bit).
    """
    words_per_entry = 2 if jnp.finfo(dtype).bits == 64 else 1
    padded = -(-size // NOISE_BLOCK) * NOISE_BLOCK
    if padded * words_per_entry >= 2**32:
        raise ValueError(f"cannot draw {size} normals of dtype {jnp.dtype(dtype).name} from one "
                         f"key: the counters are 32-bit, at most 2**32 - 1 words")
    pair = jax.random.bits(key, (2,), jnp.uint32)
    words = threefry_2x32(pair, lax.iota(jnp.uint32, padded * words_per_entry))
    normals = np.array(np.sqrt(2.0), dtype) * lax.erf_inv(_uniform_from_words(words, dtype))
    return normals[:size]


def gaussian_noise(key: jax.Array, tree: Any, std: jax.Array) -> Any:
    """`tree` plus independent `N(0, std^2)` noise on every entry, drawn from `key`.

    One draw (`standard_normal`, in the leaves' common dtype) for the whole tree, cut into
    leaves: it compiles in half the time of a draw per leaf. On CPU the draw of the
    784-512-512-10 MLP's 670k parameters costs about half a plain training step at batch 128 (it
    grows with the parameter count, not the batch).
    """
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves:
        return tree
    sizes = [leaf.size for leaf in leaves]
    noise = standard_normal(key, sum(sizes), jnp.result_type(*leaves))
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
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
    metric_fns = resolve_metrics(metrics)

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

    Example:
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
