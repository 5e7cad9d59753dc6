"""Magnitude pruning: zero the smallest weights, once or gradually while training.

    prune(params, sparsity)                       -> (pruned params, masks)     one shot
    gradual(optimizer, target_sparsity, ...)      -> an optax GradientTransformation
    sparsity(params)                              -> {path: fraction of zeros}

A mask is a tree of the params' structure holding a bool array per leaf: True where the entry
is kept. Leaves the filter `where` leaves out (biases, norm scales, embeddings; by default every
leaf that is not a kernel, `jdnn.regularizers.is_weight`) get an all-True mask, so masks and
params always zip together (`jax.tree.map(jnp.where, masks, params, 0)`).

Which entries go: the `k = round(sparsity * n)` of smallest magnitude, exactly `k` of them (ties
broken by position), counted per leaf (`scope="layer"`, the default, as Zhu & Gupta do: every
layer ends at the same sparsity) or over all selected leaves together (`scope="global"`: layers
whose weights are small lose more; it can empty a layer).

Gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune") raises the sparsity along
`s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (t_1 - t_0))^3` and re-draws the masks every
`frequency` steps from `t_0` to `t_1`, from the magnitudes the weights have then. It is an
optax transformation around any optimizer, so `jdnn.fit(..., optimizer=gradual(...))` prunes with
nothing new in `fit`. Its `update(grads, state, params)` lets the inner optimizer propose
updates `u`, then emits `u` where the mask keeps an entry and `-params` where it does not:
`optax.apply_updates` then lands pruned entries on exactly 0 (`p + (-p) == 0` in floating point)
and they stay there. Masks only grow sparser: an entry pruned once is never revived, because it
is 0 when the next masks are drawn and zeros go first. Zeros already in the params when the
optimizer is initialized (a one-shot `prune` before fine-tuning) are kept as pruned.

No pruning library is used: optax has none (its `polynomial_schedule` gives the schedule), and
jaxpruner, which has one, is not on the package index this project installs from.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import tree_util

from jdnn.core import Array, Params, path_of
from jdnn.regularizers import Where, _selector, is_weight

SCOPES = ("layer", "global")


def _check_sparsity(owner: str, name: str, value: Any) -> float:
    """A sparsity is a float in `[0, 1)`: 1 would remove every weight."""
    try:
        number = float(value)
        ok = not isinstance(value, (bool, str)) and 0.0 <= number < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{owner}: {name} must be a fraction in [0, 1) (0.8 prunes 80% of the "
                         f"weights), got {value!r}")
    return number


def _check_scope(owner: str, scope: Any) -> str:
    if scope not in SCOPES:
        raise ValueError(f"{owner}: scope must be 'layer' (each selected leaf pruned to the "
                         f"sparsity) or 'global' (the smallest over all of them), got {scope!r}")
    return scope


def _selected_paths(owner: str, params: Params, where: Where) -> list[str]:
    select = _selector(where)
    paths = [path_of(k) for k, _ in tree_util.tree_flatten_with_path(params)[0]]
    chosen = [p for p in paths if select(p)]
    if not chosen:
        raise ValueError(f"{owner}: where={where!r} selects no parameter, so nothing would be "
                         f"pruned; the parameter paths are {paths}")
    return chosen


# ---------------------------------------------------------------------------------------------
# Masks from magnitudes: the k smallest entries pruned, exactly k.


def _keep_largest(magnitudes: Array, fraction: Array | float) -> Array:
    """A bool mask of `magnitudes`' shape that drops its `round(fraction * n)` smallest entries
    (ties: the earlier position goes first). `fraction` may be traced."""
    flat = magnitudes.reshape(-1)
    pruned = jnp.round(fraction * flat.size).astype(jnp.int32)
    rank = jnp.argsort(jnp.argsort(flat, stable=True), stable=True)   # 0 = smallest
    return (rank >= pruned).reshape(magnitudes.shape)


def magnitude_masks(params: Params, fraction: Array | float, *, where: Where = is_weight,
                    scope: str = "layer") -> Params:
    """Masks that prune the `fraction` of smallest-magnitude entries of the selected leaves.

    Args:
        params: a params tree.
        fraction: the sparsity in `[0, 1)` (may be traced, e.g. a schedule's value).
        where: which leaves are pruned (a callable `path -> bool` or a regex string); the
            default, `is_weight`, takes the kernels (`w`, `w_*`).
        scope: `"layer"` (per leaf) or `"global"` (over all selected leaves together).

    Returns:
        A tree of `params`' structure with a bool array per leaf (True: kept); unselected
        leaves all True.

    Examples:
        >>> masks = magnitude_masks(params, 0.5)   # masks["0_dense"]["w"].mean() == 0.5
    """
    select = _selector(where)
    leaves, treedef = tree_util.tree_flatten_with_path(params)
    chosen = [i for i, (k, _) in enumerate(leaves) if select(path_of(k))]
    masks = [jnp.ones(jnp.shape(leaf), bool) for _, leaf in leaves]
    if scope == "layer":
        for i in chosen:
            masks[i] = _keep_largest(jnp.abs(leaves[i][1]), fraction)
    elif chosen:
        flat = jnp.concatenate([jnp.abs(leaves[i][1]).reshape(-1) for i in chosen])
        kept = _keep_largest(flat, fraction)
        offsets = np.cumsum([0] + [math.prod(jnp.shape(leaves[i][1])) for i in chosen])
        for i, start, stop in zip(chosen, offsets[:-1], offsets[1:]):
            masks[i] = kept[start:stop].reshape(jnp.shape(leaves[i][1]))
    return tree_util.tree_unflatten(treedef, masks)


def apply_masks(params: Params, masks: Params) -> Params:
    """`params` with every entry its mask drops set to exactly 0."""
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def prune(params: Params, sparsity: float, *, where: Where = is_weight,
          scope: str = "layer") -> tuple[Params, Params]:
    """One-shot magnitude pruning: the `sparsity` fraction of smallest weights set to 0.

    Args:
        params: a params tree, e.g. `train_state.params`.
        sparsity: the fraction of each selected leaf (`scope="layer"`) or of all selected
            entries together (`scope="global"`) to zero, in `[0, 1)`.
        where: which leaves are pruned: a callable `path -> bool` or a regex string matched
            with `re.search` (e.g. `r"^0_conv2d/w$"`); the default, `is_weight`, takes the
            kernels and leaves biases, norm parameters and embeddings alone.
        scope: `"layer"` or `"global"` (see the module docstring).

    Returns:
        `(pruned, masks)`: the params with the pruned entries exactly 0, and the masks (bool,
        True where kept, the params' structure), e.g. for `gradual` or to count.

    Raises:
        ValueError: for a sparsity outside `[0, 1)`, an unknown scope, or a `where` that
            selects no leaf (the message lists the paths).

    Examples:
        >>> pruned, masks = jdnn.compress.prune(train_state.params, 0.8)
        >>> jdnn.compress.sparsity(pruned)["0_dense/w"]   # 0.8
    """
    fraction = _check_sparsity("prune", "sparsity", sparsity)
    scope = _check_scope("prune", scope)
    _selected_paths("prune", params, where)
    masks = magnitude_masks(params, fraction, where=where, scope=scope)
    return apply_masks(params, masks), masks


def sparsity(params: Params, *, where: Where = is_weight) -> dict[str, float]:
    """The fraction of exact zeros in each selected leaf, by path (host floats).

    Examples:
        >>> jdnn.compress.sparsity(pruned)   # {"0_dense/w": 0.8, "2_dense/w": 0.8}
    """
    select = _selector(where)
    leaves = tree_util.tree_flatten_with_path(params)[0]
    return {path_of(k): float(np.mean(np.asarray(leaf) == 0)) for k, leaf in leaves
            if select(path_of(k)) and np.size(leaf)}


# ---------------------------------------------------------------------------------------------
# Gradual pruning as an optax transformation.


def polynomial_sparsity(target_sparsity: float, begin_step: int, end_step: int, *,
                        initial_sparsity: float = 0.0, frequency: int = 100,
                        power: float = 3.0) -> optax.Schedule:
    """Zhu & Gupta's schedule: the sparsity at step `t`, held between mask updates.

    `s_t = s_f + (s_i - s_f) (1 - (t' - t_0) / (t_1 - t_0))^power` with `t'` the last update
    step at or before `t` (`t_0`, `t_0 + frequency`, ..., and `t_1` itself); `s_i` before `t_0`
    and `s_f` from `t_1` on. Built on `optax.polynomial_schedule`.

    Args:
        target_sparsity: `s_f`, in `[0, 1)`.
        begin_step: `t_0`, the first step that prunes (an int >= 0).
        end_step: `t_1`, the step that reaches `s_f` (an int > `begin_step`).
        initial_sparsity: `s_i`, in `[0, s_f]`.
        frequency: steps between mask updates (Zhu & Gupta's `Δt`), an int >= 1.
        power: the exponent (3 in the paper).

    Returns:
        An optax schedule `step -> sparsity`.

    Examples:
        >>> schedule = polynomial_sparsity(0.9, 0, 1000, frequency=100)
        >>> schedule(0), schedule(1000)   # 0.0, 0.9
    """
    owner = "polynomial_sparsity"
    final = _check_sparsity(owner, "target_sparsity", target_sparsity)
    initial = _check_sparsity(owner, "initial_sparsity", initial_sparsity)
    if initial > final:
        raise ValueError(f"{owner}: initial_sparsity (={initial}) must not exceed "
                         f"target_sparsity (={final}): masks only grow sparser")
    for name, value, low in (("begin_step", begin_step, 0), ("frequency", frequency, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{owner}: {name} must be an int >= {low}, got {value!r}")
    if not isinstance(end_step, (int, np.integer)) or end_step <= begin_step:
        raise ValueError(f"{owner}: end_step must be an int > begin_step (={begin_step}), got "
                         f"{end_step!r}; pruning needs at least one step to ramp over")
    span = int(end_step) - int(begin_step)
    ramp = optax.polynomial_schedule(initial, final, power, transition_steps=span)

    def schedule(step):
        since = jnp.clip(step - begin_step, 0, span)
        held = jnp.where(since >= span, span, since - since % frequency)
        return ramp(held)

    return schedule


def is_update_step(step: Array, begin_step: int, end_step: int, frequency: int) -> Array:
    """Whether the masks are re-drawn at `step`: `t_0, t_0 + frequency, ...` up to `t_1`, and
    `t_1` itself."""
    inside = (step >= begin_step) & (step <= end_step)
    return inside & (((step - begin_step) % frequency == 0) | (step == end_step))


class GradualPruningState(NamedTuple):
    """The inner optimizer's state, the current masks and the step count."""

    inner: optax.OptState
    masks: Params
    count: Array  # shape (), int32


def gradual(optimizer: optax.GradientTransformation, target_sparsity: float, *,
            begin_step: int = 0, end_step: int, frequency: int = 100,
            initial_sparsity: float = 0.0, power: float = 3.0, where: Where = is_weight,
            scope: str = "layer") -> optax.GradientTransformation:
    """`optimizer` with gradual magnitude pruning (Zhu & Gupta 2017) that keeps its masks applied.

    Every `frequency` steps from `begin_step` to `end_step` the masks are re-drawn at the
    sparsity `polynomial_sparsity` gives, from the magnitudes the params would have after the
    step; on every step the emitted updates drive masked entries to exactly 0 (see the module
    docstring). Use it wherever an optax optimizer goes: `jdnn.fit(..., optimizer=gradual(...))`.

    Args:
        optimizer: the optax optimizer to wrap, e.g. `optax.adam(1e-3)`.
        target_sparsity: the final sparsity, in `[0, 1)`.
        begin_step: the first step that prunes.
        end_step: the step that reaches `target_sparsity`; masks stay fixed after it.
        frequency: steps between mask updates.
        initial_sparsity: the sparsity at `begin_step`.
        power: the schedule's exponent (3 in the paper).
        where: which leaves are pruned (as in `prune`); default: the kernels.
        scope: `"layer"` or `"global"`.

    Returns:
        An `optax.GradientTransformation` whose `update` needs `params`; its state is a
        `GradualPruningState` (the masks in `state.masks`).

    Raises:
        ValueError: at construction for bad schedule arguments, a bad scope or regex; in
            `init`, if `where` selects no leaf; in `update`, if `params` is None.

    Examples:
        >>> steps = epochs * steps_per_epoch
        >>> tx = jdnn.compress.gradual(optax.adam(1e-3), 0.8, end_step=steps // 2, frequency=50)
        >>> train_state, history = jdnn.fit(model, (x, y), loss=loss, optimizer=tx, ...)
    """
    schedule = polynomial_sparsity(target_sparsity, begin_step, end_step, frequency=frequency,
                                   initial_sparsity=initial_sparsity, power=power)
    scope = _check_scope("gradual", scope)
    select = _selector(where)

    def init(params: optax.Params) -> GradualPruningState:
        _selected_paths("gradual", params, where)
        masks = tree_util.tree_map_with_path(
            lambda k, p: (p != 0) if select(path_of(k)) else jnp.ones(jnp.shape(p), bool), params)
        return GradualPruningState(optimizer.init(params), masks, jnp.zeros([], jnp.int32))

    def update(updates: optax.Updates, state: GradualPruningState,
               params: optax.Params | None = None) -> tuple[optax.Updates, GradualPruningState]:
        if params is None:
            raise ValueError("gradual: update needs the current params to keep pruned weights "
                             "at zero: call optimizer.update(grads, opt_state, params)")
        updates, inner = optimizer.update(updates, state.inner, params)
        proposed = optax.apply_updates(params, updates)

        def redraw(masks):
            # pruned entries stay pruned: their magnitude counts as 0, and zeros go first
            return magnitude_masks(apply_masks(proposed, masks), schedule(state.count),
                                   where=where, scope=scope)

        masks = jax.lax.cond(is_update_step(state.count, begin_step, end_step, frequency),
                             redraw, lambda m: m, state.masks)
        updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype),
                               updates, params, masks)
        return updates, GradualPruningState(inner, masks, optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)
