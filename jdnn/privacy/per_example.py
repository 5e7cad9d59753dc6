"""Per-example gradients: the gradient of each example's own loss, with a leading batch axis.

    grads = jdnn.per_example_grads(model, loss, params, state, x, y, key=key)  # leaves (B, ...)
    clipped, norms = jdnn.clip_and_aggregate(grads, l2_norm_clip=1.0)

Each example runs as a batch of one (`x[i][None]`) under `jax.vmap(jax.grad(...))`, with its own
dropout key. Batch norm in training mode couples the examples of a batch, so a per-example
gradient needs a rule; `per_example_grads` offers two and refuses to guess (see its docstring).
The rules are implemented by rebuilding the model from its spec (`jdnn.core.rebuild`) with
each coupling layer swapped for its kind's `per_example_twin`, the same mechanism
`jdnn.privacy.ghost` uses to tap each layer's input and output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdnn.core import Layer, Spec, entry_point, rebuild, trait, walk
from jdnn.data.validate import check_labels
from jdnn.losses import Loss, per_example_values

Path = tuple[str, ...]
EXAMPLES = "examples"  # the vmap axis name batch-norm statistics are averaged over
BATCH_NORM_RULES = ("batch_stats", "running")


class PerExampleAux(NamedTuple):
    """What `per_example_grads(..., return_aux=True)` returns beside the gradients.

    Attributes:
        loss: `(B,)` each example's loss (0 where `mask` is False).
        outputs: `(B, ...)` each example's model output.
        state: the new layer state, once for the batch (see `per_example_grads`).
    """

    loss: jax.Array
    outputs: jax.Array
    state: Any


# ---------------------------------------------------------------------------------------------
# Models rebuilt from their spec (`jdnn.core.rebuild`) with single layers swapped for twins.


def leaf_wrapper(wrap: Callable[[Path, Spec, Layer], Layer]) -> Callable[[str, Spec, Layer],
                                                                        Layer]:
    """A `rebuild` wrapper that hands only leaf layers to `wrap(path, spec, layer)`, with the
    path as a tuple of keys (`("1_serial", "0_dense")`); combinators are kept as rebuilt."""
    def on_node(path: str, spec: Spec, layer: Layer) -> Layer:
        if spec.children:
            return layer
        return wrap(tuple(path.split("/")) if path else (), spec, layer)

    return on_node


def twin_for(spec: Spec, layer: Layer, rule: str | None, axis_name: str | None) -> Layer:
    """`layer`, or its kind's `per_example_twin` under `rule` (BatchNorm's statistics held
    fixed, see `jdnn.layers.normalization.per_example_twin`)."""
    make_twin = trait(spec, "per_example_twin")
    return layer if rule is None or make_twin is None else make_twin(spec, rule, axis_name)


def subtree(tree: Any, path: Path) -> Any:
    """The entry of a nested dict at `path`, e.g. `params["1_serial"]["0_dense"]`."""
    for name in path:
        tree = tree[name]
    return tree


def has_batch_norm(spec: Spec) -> bool:
    """Whether a layer that couples the examples of a batch (BatchNorm in training mode: its
    kind declares a `per_example_twin`) appears anywhere in the model `spec` describes."""
    return any(trait(node.spec, "per_example_twin") is not None for node in walk(spec))


def check_batch_norm_rule(spec: Spec, train: bool, batch_norm: str | None) -> str | None:
    """The batch-norm rule to apply (`None`: none needed), or a `ValueError` saying why not."""
    if batch_norm is not None and batch_norm not in BATCH_NORM_RULES:
        raise ValueError(f"batch_norm must be None or one of {BATCH_NORM_RULES}, got "
                         f"{batch_norm!r}")
    if not train:
        if batch_norm == "batch_stats":
            raise ValueError("batch_norm='batch_stats' needs train=True: with train=False batch "
                             "norm already uses the running statistics")
        return None
    if not has_batch_norm(spec):
        return None
    if batch_norm is None:
        raise ValueError("per-example gradients are ill-defined for BatchNorm in training mode "
                         "(each example's output depends on the whole batch); choose a rule: "
                         "batch_norm='batch_stats' (normalize with the batch's statistics, held "
                         "fixed) or batch_norm='running' (normalize with the running "
                         "statistics), or pass train=False")
    return batch_norm


# ---------------------------------------------------------------------------------------------
# Per-example gradients by vmap(grad).


def check_batch(entry: str, model: Layer, loss: Loss, x: jax.Array, y: jax.Array,
                mask: jax.Array | None) -> int:
    """The batch size, after checking `x`, `y` and `mask` agree on it and, when `y` is concrete
    (not traced under `jit`), that its labels suit `loss` and the model's outputs
    (`jdnn.data.check_labels`). `entry` (the function the user called) starts every message."""
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{entry}: x and y need the same leading batch axis, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if mask is not None and tuple(mask.shape) != (x.shape[0],):
        raise ValueError(f"{entry}: mask must have shape ({x.shape[0]},), one entry per "
                         f"example, got shape {tuple(mask.shape)}")
    if not isinstance(y, jax.core.Tracer):  # traced labels: the losses' NaN rule guards
        check_labels(y, loss=loss, model=model, x_shape=tuple(x.shape), name=entry)
    return x.shape[0]


def per_example_grads(model: Layer, loss: Loss, params: Any, state: Any, x: jax.Array,
                      y: jax.Array, *, key: jax.Array | None = None, train: bool = True,
                      mask: jax.Array | None = None, batch_norm: str | None = None,
                      return_aux: bool = False) -> Any:
    """The gradient of each example's loss with respect to the params, stacked on a batch axis.

    Example `i`'s gradient is `grad(loss(model(x[i][None]), y[i][None])[0])`: its own loss,
    not divided by the batch size. It is computed by `jax.vmap(jax.grad(...))`, each example a
    batch of one, so every layer (Flatten, Conv2D) sees the rank it expects.

    Dropout: example `i` runs with key `jax.random.split(key, B)[i]`, so its dropout masks are
    those a batch of one draws from that key: they differ from the rows of the masks a batched
    forward draws from `key` (both are valid dropout; the gradients are for these masks).

    Batch norm (`train=True` only; with `train=False` it uses the running statistics and is
    per-example already). Each example's output depends on the whole batch through the batch
    statistics, so its own gradient is not defined until a rule says what is held fixed:
      - `batch_norm=None` (default): a model with BatchNorm raises `ValueError`; never a silent
        answer (under a plain vmap each example would be normalized by its own statistics).
      - `"batch_stats"`: normalize with the statistics of the whole batch (every row, `mask`
        ignored, as BatchNorm does in `make_train_step`) as the per-example forward computes
        them, treated as constants: no gradient flows through them. The running statistics are
        updated from them once. The per-example gradients then do not sum to the batched
        gradient, which also flows through the statistics.
      - `"running"`: normalize with the running statistics (as in evaluation) while dropout
        stays on; the state is returned unchanged. The natural choice for DP-SGD, where batch
        statistics would mix the examples a privacy guarantee keeps apart.

    Args:
        model: the network.
        loss: a per-example loss `loss(outputs, y) -> (B,)`, e.g. `jdnn.losses.mse`.
        params: the model's parameters.
        state: the model's layer state.
        x: `(B, ...)` inputs; y: `(B, ...)` targets.
        key: the dropout key (needed with `train=True` if the model has Dropout).
        train: training mode (dropout, batch statistics) or evaluation mode.
        mask: optional `(B,)` bool; the gradients and losses of masked-out examples are zero.
        batch_norm: the batch-norm rule, `None`, `"batch_stats"` or `"running"` (see above).
        return_aux: also return a `PerExampleAux(loss, outputs, state)`.

    Returns:
        The gradients, the params' tree with a leading `(B,)` axis on every leaf; with
        `return_aux`, `(grads, aux)`.

    Labels: when `y` is concrete (not traced under `jit`) and `loss` is one of jdnn's
    cross-entropies, the labels are checked as `jdnn.data.check_data` checks them (an index
    outside the model's classes is an error naming `per_example_grads`); under `jit` such a
    label gives that example a NaN loss and a zero gradient.

    Raises:
        ValueError: for BatchNorm in training mode without a rule, an unknown rule, mismatched
            batch axes, concrete labels that do not suit the loss and model, or a loss that does
            not return one value per example.
        jdnn.core.MissingKeyError: (a `LayerError`) for Dropout with `train=True` and no
            `key`, naming `per_example_grads`.

    Examples:
        >>> grads = jdnn.per_example_grads(model, jdnn.losses.softmax_cross_entropy, params,
        ...                                state, x, y, key=jax.random.key(1))
        >>> grads["0_dense"]["w"].shape                       # (B, in_features, features)
    """
    batch = check_batch("per_example_grads", model, loss, x, y, mask)
    rule = check_batch_norm_rule(model.spec, train, batch_norm)
    if rule is not None:
        model = rebuild(model.spec, leaf_wrapper(
            lambda path, spec, layer: twin_for(spec, layer, rule, EXAMPLES)))

    def example_loss(p, x_i, y_i, key_i):
        outputs, new_state = model.apply(p, state, x_i[None], key=key_i, train=train)
        value = per_example_values(loss, outputs, y_i[None])
        return value[0], (value[0], outputs[0], new_state)

    keys = None if key is None else jax.random.split(key, batch)
    with entry_point("per_example_grads"):
        grads, (losses, outputs, new_state) = jax.vmap(
            jax.grad(example_loss, has_aux=True), in_axes=(None, 0, 0, 0), axis_name=EXAMPLES)(
            params, x, y, keys)
    if mask is not None:
        def keep(g):
            return jnp.where(mask.reshape((batch,) + (1,) * (g.ndim - 1)), g, 0)

        grads, losses = jax.tree.map(keep, grads), keep(losses)
    if not return_aux:
        return grads
    return grads, PerExampleAux(losses, outputs, jax.tree.map(lambda s: s[0], new_state))


# ---------------------------------------------------------------------------------------------
# Clipping.


def clip_and_aggregate(per_example: Any, l2_norm_clip: float, *,
                       mask: jax.Array | None = None) -> tuple[Any, jax.Array]:
    """Clips each example's gradient to global L2 norm `l2_norm_clip` and averages them.

    Example `i`'s gradient `g_i` (its slice of every leaf) is scaled by
    `min(1, l2_norm_clip / ||g_i||)`, the clipping of DP-SGD (Abadi et al., 2016), through
    `optax.transforms.per_example_global_norm_clip`; the mean is over the examples where
    `mask` is set.

    Args:
        per_example: a gradient tree with a leading `(B,)` axis on every leaf, as
            `per_example_grads` returns.
        l2_norm_clip: the largest L2 norm an example's gradient keeps, `> 0`.
        mask: optional `(B,)` bool; masked-out examples count neither in the sum nor the mean.

    Returns:
        `(mean, norms)`: the mean clipped gradient (the params' tree) and `(B,)` the norms of the
        per-example gradients before clipping (0 for masked-out examples).

    Examples:
        >>> grad, norms = jdnn.clip_and_aggregate(per_example, 1.0)
    """
    leaves, treedef = jax.tree.flatten(per_example)
    batch = leaves[0].shape[0]
    if mask is not None:
        leaves = [jnp.where(mask.reshape((batch,) + (1,) * (g.ndim - 1)), g, 0) for g in leaves]
    norms = jax.vmap(optax.tree.norm)(leaves)
    total, _ = optax.transforms.per_example_global_norm_clip(leaves, l2_norm_clip)
    count = batch if mask is None else jnp.maximum(jnp.sum(mask), 1)
    return jax.tree.unflatten(treedef, [g / count for g in total]), norms
