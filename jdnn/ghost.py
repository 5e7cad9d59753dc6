"""Ghost clipping and DP-SGD: clipped per-example gradients without materializing them.

DP-SGD clips each example's gradient `g_i` to norm `C` before averaging. `vmap(grad)` builds
every `g_i` (B copies of the parameters); ghost clipping needs only their norms, which a dense
layer gives for free: its weight gradient for example i is `x_i^T delta_i`, where `x_i` is the
layer's input and `delta_i` the loss's gradient with respect to its output, so

    ||x_i^T delta_i||_F^2 = sum_pq (x_p . x_q)(delta_p . delta_q)   (positions p, q of example i)
                          = ||x_i||^2 ||delta_i||^2                  (one row per example)

A convolution is the same with `x_p` the input patch under output pixel p (unfolded by
`lax.conv_general_dilated_patches`); where the P^2 pairs would cost more than the weight
gradient itself (`P (in + out) > in * out`), that example's gradient is formed and its norm
taken instead, one layer at a time. Small parameter layers (BatchNorm, PRelu: a vector per
feature) get their per-example gradients the plain way, from the same `x` and `delta`.

One forward pass and one backward pass for the deltas give every norm, hence the clip factors
`c_i = min(1, C / ||g_i||)`. Example i reaches a layer only through row i of its output, so the
clipped mean gradient is each layer's own pullback of its deltas with row i scaled by `c_i / B`
(for a dense layer `x^T diag(c / B) delta`): the weight-gradient products of a plain backward
pass, without a second pass through the model. The deltas come from zero "probes" added to each
parameter layer's output (a twin of the model, see `jdnn.vectorize.rebuild`): the gradient with
respect to a probe is `delta`, and the twin records each layer's input in its new state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.extend.random import threefry_2x32

from jdnn.core import Layer, Spec
from jdnn.train.state import DROPOUT, NOISE, TrainState, step_key
from jdnn.train.step import Metric, masked_mean, resolve_metrics
from jdnn.vectorize import (EXAMPLES, Loss, Path, PerExampleAux, batch_norm_twin, check_batch,
                            check_batch_norm_rule, clip_and_aggregate, per_example_grads, rebuild,
                            subtree)

PROBE, INPUT, OUTPUT = "__probe__", "__input__", "__output__"
METHODS = ("ghost", "vmap")


class Tap(NamedTuple):
    """A parameter layer whose input and output-gradient the ghost pass records."""

    path: Path
    spec: Spec
    layer: Layer  # as the batched forward applies it (batch-norm twin included), untapped
    example_layer: Layer  # applied to one example at a time (under vmap) for small layers


def tapped(layer: Layer) -> Layer:
    """`layer` with a zero probe added to its output (if its state holds one) and its input and
    output recorded in its new state."""

    def apply(params, state, x, *, key=None, train=False):
        inner = {name: value for name, value in state.items() if name != PROBE}
        y, new_state = layer.apply(params, inner, x, key=key, train=train)
        if PROBE in state:
            y = y + state[PROBE]
        return y, {**new_state, INPUT: x, OUTPUT: y}

    return Layer(layer.init, apply, layer.spec)


def _with_entry(tree: dict, path: Path, name: str, value: Any) -> dict:
    if not path:
        return {**tree, name: value}
    return {**tree, path[0]: _with_entry(tree[path[0]], path[1:], name, value)}


def _with_subtree(tree: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    return {**tree, path[0]: _with_subtree(tree[path[0]], path[1:], value)}


def _strip(tree: Any) -> Any:
    """The layer state with the probes and recordings taken out again."""
    if not isinstance(tree, dict):
        return tree
    return {k: _strip(v) for k, v in tree.items() if k not in (PROBE, INPUT, OUTPUT)}


# ---------------------------------------------------------------------------------------------
# Per-example squared norms, one parameter layer at a time.


def outer_sq_norms(xs: jax.Array, deltas: jax.Array) -> jax.Array:
    """`(B,)` squared Frobenius norms of `xs[i]^T deltas[i]`, for `xs` `(B, P, K)` and
    `deltas` `(B, P, O)`, by whichever of the Gram form and the explicit product is cheaper."""
    positions, k, o = xs.shape[1], xs.shape[2], deltas.shape[2]
    if positions == 1:
        return jnp.sum(jnp.square(xs), (1, 2)) * jnp.sum(jnp.square(deltas), (1, 2))
    if positions * (k + o) <= k * o:
        x_gram = jnp.einsum("bpk,bqk->bpq", xs, xs)
        d_gram = jnp.einsum("bpo,bqo->bpq", deltas, deltas)
        return jnp.einsum("bpq,bpq->b", x_gram, d_gram)
    return jnp.sum(jnp.square(jnp.einsum("bpk,bpo->bko", xs, deltas)), (1, 2))


def _sq_norms(tap: Tap, params: Any, state: Any, x: jax.Array, delta: jax.Array,
              train: bool) -> jax.Array:
    batch = x.shape[0]
    if tap.spec.kind in ("Dense", "Conv2D"):
        if tap.spec.kind == "Conv2D":
            x = lax.conv_general_dilated_patches(
                x, tap.spec["kernel_size"], tap.spec["strides"], tap.spec["padding"],
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        xs = x.reshape(batch, -1, x.shape[-1])
        deltas = delta.reshape(batch, -1, delta.shape[-1])
        total = outer_sq_norms(xs, deltas)
        if "b" in params:
            total = total + jnp.sum(jnp.square(jnp.sum(deltas, 1)), 1)
        return total

    def example_grad(x_i, delta_i):
        _, pullback = jax.vjp(
            lambda p: tap.example_layer.apply(p, state, x_i[None], train=train)[0], params)
        return pullback(delta_i[None])[0]

    grads = jax.vmap(example_grad, axis_name=EXAMPLES)(x, delta)
    return sum(jnp.sum(jnp.square(g.reshape(batch, -1)), 1) for g in jax.tree.leaves(grads))


def _weighted_grad(tap: Tap, params: Any, state: Any, x: jax.Array, delta: jax.Array,
                   weights: jax.Array, train: bool) -> Any:
    """The gradient of `sum_i weights[i] * loss_i` with respect to one layer's params.

    Example i's loss reaches the layer only through row i of its output (the examples do not
    interact), so that gradient is the layer's own pullback at its recorded input `x` of the
    deltas scaled row by row: no second backward pass through the whole model.
    """
    rows = weights.reshape((-1,) + (1,) * (delta.ndim - 1)).astype(delta.dtype)
    _, pullback = jax.vjp(lambda p: tap.layer.apply(p, state, x, train=train)[0], params)
    return pullback(delta * rows)[0]


# ---------------------------------------------------------------------------------------------


def ghost_clipped_grad(model: Layer, loss: Loss, params: Any, state: Any, x: jax.Array,
                       y: jax.Array, *, l2_norm_clip: float, key: jax.Array | None = None,
                       train: bool = True, mask: jax.Array | None = None,
                       batch_norm: str | None = None, return_aux: bool = False) -> Any:
    """The mean of the per-example gradients, each clipped to norm `l2_norm_clip`, by ghost
    clipping: equal to `clip_and_aggregate(per_example_grads(...), l2_norm_clip)` at the cost
    of about one forward and one backward pass, without forming a per-example gradient.

    The model is evaluated as one batch, so dropout draws its masks from `key` as a training
    step does (not the per-example keys of `per_example_grads`). BatchNorm in training mode
    needs a rule, as in `per_example_grads`: `"batch_stats"` (this batch's statistics, held
    fixed) or `"running"`. Only models built from jdnn's own layers can be tapped.

    Args:
        model, loss, params, state, x, y, key, train, mask, batch_norm: as in
            `jdnn.per_example_grads`.
        l2_norm_clip: the largest L2 norm an example's gradient keeps, `> 0`.
        return_aux: also return a `PerExampleAux(loss, outputs, state)`.

    Returns:
        `(mean, norms)`: the mean clipped gradient (over the examples `mask` keeps) and `(B,)`
        the per-example gradient norms before clipping (0 where masked); with `return_aux`,
        `(mean, norms, aux)`.

    Raises:
        ValueError: as `per_example_grads`, and for a layer that is not one of jdnn's.

    Example:
        >>> grad, norms = jdnn.ghost_clipped_grad(model, jdnn.losses.softmax_cross_entropy,
        ...                                       params, state, x, y, l2_norm_clip=1.0, key=k)
    """
    batch = check_batch(x, y, mask)
    rule = check_batch_norm_rule(model.spec, train, batch_norm)
    taps = []

    def wrap(path, spec, layer):
        example_layer = layer
        if rule is not None and spec.kind == "BatchNorm":
            layer = batch_norm_twin(spec, rule)
            example_layer = batch_norm_twin(spec, rule, EXAMPLES)
        if not jax.tree.leaves(subtree(params, path)):
            return layer
        taps.append(Tap(path, spec, layer, example_layer))
        return tapped(layer)

    twin = rebuild(model.spec, wrap)

    def forward(p, probes):
        probed = state
        for path, probe in probes.items():
            probed = _with_entry(probed, path, PROBE, probe)
        outputs, new_state = twin.apply(p, probed, x, key=key, train=train)
        values = loss(outputs, y)
        if values.shape != (batch,):
            raise ValueError(f"the loss must return one value per example, shape ({batch},), "
                             f"got shape {tuple(values.shape)}")
        return values, (outputs, new_state)

    _, (_, recorded) = jax.eval_shape(forward, params, {})
    shapes = {tap.path: subtree(recorded, tap.path)[OUTPUT] for tap in taps}
    probes = {path: jnp.zeros(s.shape, s.dtype) for path, s in shapes.items()}
    losses, pullback, (outputs, new_state) = jax.vjp(lambda pr: forward(params, pr), probes,
                                                     has_aux=True)
    weights = jnp.ones_like(losses) if mask is None else mask.astype(losses.dtype)
    (deltas,) = pullback(weights)
    recorded = [(tap, subtree(params, tap.path), subtree(state, tap.path),
                 subtree(new_state, tap.path)[INPUT], deltas[tap.path]) for tap in taps]
    sq = sum(_sq_norms(tap, p, s, x_in, delta, train) for tap, p, s, x_in, delta in recorded)
    norms = jnp.sqrt(jnp.maximum(sq, 0.0)) if taps else jnp.zeros_like(losses)
    keep = weights > 0
    factors = jnp.where(keep, jnp.minimum(1.0, l2_norm_clip / jnp.where(norms > 0, norms, 1.0)),
                        0.0)
    scale = factors / jnp.maximum(jnp.sum(weights), 1.0)
    grads = params  # every leaf is some tap's: each is replaced by its clipped mean gradient
    for tap, p, s, x_in, delta in recorded:
        grads = _with_subtree(grads, tap.path,
                              _weighted_grad(tap, p, s, x_in, delta, scale, train))
    if not return_aux:
        return grads, norms
    return grads, norms, PerExampleAux(jnp.where(keep, losses, 0.0), outputs, _strip(new_state))


# ---------------------------------------------------------------------------------------------
# DP-SGD.


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


def dp_train_step_fn(model: Layer, loss: Loss, optimizer: optax.GradientTransformation, *,
                     l2_norm_clip: float, noise_multiplier: float, method: str = "ghost",
                     batch_norm: str | None = None,
                     metrics: Sequence[str | Metric] = ()) -> Callable:
    """The pure, uncompiled DP-SGD step that `make_dp_train_step` jits (same arguments)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not l2_norm_clip > 0 or not noise_multiplier >= 0:
        raise ValueError(f"need l2_norm_clip > 0 and noise_multiplier >= 0, got "
                         f"l2_norm_clip={l2_norm_clip!r}, noise_multiplier={noise_multiplier!r}")
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

    Example:
        >>> step = jdnn.make_dp_train_step(model, jdnn.losses.softmax_cross_entropy,
        ...                                optax.sgd(0.1), l2_norm_clip=1.0, noise_multiplier=1.1)
        >>> train_state, m = step(train_state, x, y)
    """
    step = dp_train_step_fn(model, loss, optimizer, l2_norm_clip=l2_norm_clip,
                            noise_multiplier=noise_multiplier, method=method,
                            batch_norm=batch_norm, metrics=metrics)
    return jax.jit(step, donate_argnums=0)
