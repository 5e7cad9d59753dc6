"""Ghost clipping: clipped per-example gradients without materializing them.

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
parameter layer's output (a twin of the model, see `jdnn.core.rebuild`): the gradient with
respect to a probe is `delta`, and the twin records each layer's input in its new state.
The DP-SGD step built on it is `jdnn.privacy.dp`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jdnn.core import Layer, Spec, entry_point, rebuild, trait
from jdnn.losses import per_example_values
from jdnn.privacy.per_example import (EXAMPLES, Loss, Path, PerExampleAux, check_batch,
                                      check_batch_norm_rule, leaf_wrapper, subtree, twin_for)

PROBE, INPUT, OUTPUT = "__probe__", "__input__", "__output__"


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


def _with_subtree(tree: Any, path: Path, value: Any) -> Any:
    """`tree` with the subtree at `path` (dict keys) replaced by `value`; the last key may be
    new."""
    if not path:
        return value
    return {**tree, path[0]: _with_subtree(tree.get(path[0]), path[1:], value)}


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
    rows = trait(tap.spec, "ghost_inputs")
    if rows is not None:  # an affine layer: weight gradient = rows^T delta (Dense, Conv2D)
        x = rows(tap.spec, x)
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

    `model`, `loss`, `params`, `state`, `x`, `y`, `key`, `train`, `mask` and `batch_norm` are
    as in `jdnn.per_example_grads`.

    Args:
        l2_norm_clip: the largest L2 norm an example's gradient keeps, `> 0`.
        return_aux: also return a `PerExampleAux(loss, outputs, state)`.

    Returns:
        `(mean, norms)`: the mean clipped gradient (over the examples `mask` keeps) and `(B,)`
        the per-example gradient norms before clipping (0 where masked); with `return_aux`,
        `(mean, norms, aux)`.

    Raises:
        ValueError: as `per_example_grads` (concrete labels included), and for a layer that is
            not one of jdnn's.
        jdnn.core.MissingKeyError: for Dropout with `train=True` and no `key`, naming
            `ghost_clipped_grad`.

    Examples:
        >>> grad, norms = jdnn.ghost_clipped_grad(model, jdnn.losses.softmax_cross_entropy,
        ...                                       params, state, x, y, l2_norm_clip=1.0, key=k)
    """
    check_batch("ghost_clipped_grad", model, loss, x, y, mask)
    rule = check_batch_norm_rule(model.spec, train, batch_norm)
    taps = []

    def wrap(path, spec, layer):
        layer, example_layer = twin_for(spec, layer, rule, None), twin_for(spec, layer, rule,
                                                                         EXAMPLES)
        if not jax.tree.leaves(subtree(params, path)):
            return layer
        taps.append(Tap(path, spec, layer, example_layer))
        return tapped(layer)

    twin = rebuild(model.spec, leaf_wrapper(wrap))

    def forward(p, probes):
        probed = state
        for path, probe in probes.items():
            probed = _with_subtree(probed, (*path, PROBE), probe)
        outputs, new_state = twin.apply(p, probed, x, key=key, train=train)
        values = per_example_values(loss, outputs, y)
        return values, (outputs, new_state)

    with entry_point("ghost_clipped_grad"):
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
