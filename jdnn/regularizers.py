"""Weight penalties: L1 and L2 as terms added to the loss, and L1 as a proximal optax step.

Which parameters a penalty touches is chosen by path. A leaf's path is its dict keys joined
with `/`, e.g. `"0_dense/w"` or `"1_batchnorm/scale"`. The default filter, `is_weight`, picks
the leaves named `w` (Dense and Conv2D kernels) and skips biases (`b`), batch-norm `scale` and
`bias`, and PRelu `alpha`, as is usual. Any filter can be a callable `path -> bool` or a regex
string matched with `re.search` against the path.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import tree_util

from jdnn.core import Array, Params, is_under, path_of  # path_of, is_under: their old home

Where = Callable[[str], bool] | str
"""Which leaves a penalty or a freeze touches: a callable `path -> bool`, or a regex string
matched with `re.search` against each leaf's path (e.g. `"0_dense/w"`)."""


def leaf_paths(params: Params) -> list[str]:
    """The paths of every leaf of `params`, in `jax.tree_util` order.

    Examples:
        >>> jdnn.regularizers.leaf_paths({"0_dense": {"w": w, "b": b}})  # ["0_dense/b", ...]
    """
    return [path_of(keypath) for keypath, _ in tree_util.tree_flatten_with_path(params)[0]]


def is_weight(path: str) -> bool:
    """The default filter: True for kernels, the leaves named `w` or `w_...` (`"0_dense/w"`,
    an attention layer's `w_q`, a recurrent layer's `w_x` and `w_h`); not biases, scales or
    embedding tables."""
    name = path.rsplit("/", 1)[-1]
    return name == "w" or name.startswith("w_")


def _selector(where: Where) -> Callable[[str], bool]:
    """`where` as a predicate on paths; a string is compiled as a regex for `re.search`."""
    if isinstance(where, str):
        try:
            pattern = re.compile(where)
        except re.error as error:
            raise ValueError(f"where={where!r} is not a valid regular expression: "
                             f"{error}") from None
        return lambda path: pattern.search(path) is not None
    if callable(where):
        return where
    raise TypeError(f"where must be a callable path -> bool or a regex string, got {where!r}")


def _selected(params: Params, where: Where) -> list[Array]:
    select = _selector(where)
    leaves = tree_util.tree_flatten_with_path(params)[0]
    return [leaf for keypath, leaf in leaves if select(path_of(keypath))]


def _total(terms: list[Array]) -> Array:
    return sum(terms[1:], terms[0]) if terms else jnp.zeros(())


def _sum_over(params: Params, where: Where, fn: Callable[[Array], Array]) -> Array:
    """`sum(fn(leaf))` over every entry of every selected leaf."""
    return _total([jnp.sum(fn(leaf)) for leaf in _selected(params, where)])


def _abs(w: Array) -> Array:
    """|w| written as w * sign(w), so that its gradient is sign(w), 0 at w = 0 (the subgradient
    that leaves a zero weight at zero), where jax.grad(jnp.abs) would give 1 at 0."""
    return w * jnp.sign(w)


def l1(params: Params, *, where: Where = is_weight) -> Array:
    """The L1 norm of the selected leaves: `sum(|w|)` over every entry. Its gradient is `sign(w)`.

    Args:
        params: a params tree, e.g. from `model.init`.
        where: which leaves count: a callable `path -> bool` or a regex string (`re.search`).
            The default, `is_weight`, takes the `w` leaves only.

    Returns:
        A scalar; `0.0` when `where` selects nothing.

    Examples:
        >>> loss = data_loss + 1e-4 * jdnn.regularizers.l1(params)
    """
    return _sum_over(params, where, _abs)


def l2(params: Params, *, where: Where = is_weight) -> Array:
    """The squared L2 norm of the selected leaves: `sum(w ** 2)`, with no 1/2, so its gradient
    is `2 w`.

    Args:
        params: a params tree, e.g. from `model.init`.
        where: which leaves count: a callable `path -> bool` or a regex string (`re.search`).
            The default, `is_weight`, takes the `w` leaves only.

    Returns:
        A scalar; `0.0` when `where` selects nothing.

    Examples:
        >>> loss = data_loss + 1e-4 * jdnn.regularizers.l2(params, where=r"dense/w$")
    """
    return _sum_over(params, where, jnp.square)


def _check_strength(owner: str, name: str, value: Any) -> Any:
    """A concrete strength must be a finite float `>= 0`; a traced one (under vmap) is trusted."""
    if isinstance(value, jax.core.Tracer):
        return value
    try:
        number = float(value)
        ok = not isinstance(value, (bool, str, bytes)) and math.isfinite(number) and number >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{owner}: {name} must be a finite float >= 0, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Penalty:
    """The loss term `params -> l1 * sum(|w|) + l2 * sum(w ** 2)` over the leaves `where` selects.

    Built by `penalty`. A callable whose fields say what it computes, so `jdnn.check_gradients`
    can build its NumPy twin.
    """

    l1: Any = 0.0
    l2: Any = 0.0
    where: Where = is_weight

    def __call__(self, params: Params) -> Array:
        select = _selector(self.where)
        terms = []
        if isinstance(self.l1, jax.Array) or self.l1 != 0:
            terms.append(self.l1 * _sum_over(params, select, _abs))
        if isinstance(self.l2, jax.Array) or self.l2 != 0:
            terms.append(self.l2 * _sum_over(params, select, jnp.square))
        return _total(terms)


def penalty(*, l1: float = 0.0, l2: float = 0.0, where: Where = is_weight) -> Penalty:
    """A loss term `params -> l1 * sum(|w|) + l2 * sum(w ** 2)` over the selected leaves.

    Args:
        l1: the L1 strength, a finite float `>= 0`.
        l2: the L2 strength, a finite float `>= 0` (no 1/2: the gradient is `2 * l2 * w`).
        where: which leaves count (see `l1`); the default takes the `w` leaves only.

    Returns:
        A `Penalty`: call it on a params tree for a scalar; ready for `make_train_step(...,
        penalty=...)`.

    Raises:
        ValueError: if a strength is negative or not finite, or `where` is a bad regex.

    Examples:
        >>> reg = jdnn.regularizers.penalty(l2=1e-4)  # reg(params) is a scalar
    """
    _selector(where)  # a bad regex or filter fails here, not at the first step
    return Penalty(_check_strength("penalty", "l1", l1), _check_strength("penalty", "l2", l2),
                   where)


# ---------------------------------------------------------------------------------------------
# L1 as a proximal step. A subgradient step on |w| makes weights oscillate around zero and never
# reach it; the proximal step (soft thresholding) lands on exact zeros.


class L1ProximalState(NamedTuple):
    """The step count, for a scheduled learning rate (like `optax.ScaleByScheduleState`)."""

    count: Array  # shape (), int32


def l1_proximal(strength: float, learning_rate: float | optax.Schedule, *,
                where: Where = is_weight) -> optax.GradientTransformation:
    """L1 regularization as a proximal (soft-threshold) step, to chain after an optimizer.

    For incoming updates `u` and params `p`, a selected leaf moves to
    `p' = sign(p + u) * max(|p + u| - t, 0)` with threshold `t = strength * learning_rate`,
    and the transformation returns `p' - p`; other leaves pass `u` through. Entries whose
    `|p + u|` is below `t` become exactly zero. With SGD this is proximal gradient descent on
    `loss + strength * sum(|w|)`; with adaptive optimizers (Adam) it is the usual heuristic.

    Args:
        strength: the L1 strength, a finite float `>= 0`.
        learning_rate: the optimizer's learning rate, a float or an optax schedule (a function
            of the step count, evaluated at the same count as the optimizer's).
        where: which leaves are thresholded (see `l1`); the default takes the `w` leaves only.

    Returns:
        An `optax.GradientTransformation` whose `update` needs `params`.

    Raises:
        ValueError: at construction, for a bad strength, learning rate or regex; in `update`, if
            `params` is None.

    Examples:
        >>> opt = optax.chain(optax.sgd(lr), jdnn.regularizers.l1_proximal(1e-3, lr))
    """
    _check_strength("l1_proximal", "strength", strength)
    if not callable(learning_rate):
        _check_strength("l1_proximal", "learning_rate", learning_rate)
    select = _selector(where)

    def init(params: optax.Params) -> L1ProximalState:
        del params
        return L1ProximalState(count=jnp.zeros([], jnp.int32))

    def update(updates: optax.Updates, state: L1ProximalState,
               params: optax.Params | None = None) -> tuple[optax.Updates, L1ProximalState]:
        if params is None:
            raise ValueError("l1_proximal: update needs the current params: call "
                             "optimizer.update(grads, opt_state, params)")
        rate = learning_rate(state.count) if callable(learning_rate) else learning_rate
        threshold = strength * rate

        def step(keypath, u, p):
            if not select(path_of(keypath)):
                return u
            moved = p + u
            shrunk = jnp.sign(moved) * jnp.maximum(jnp.abs(moved) - threshold, 0)
            return (shrunk - p).astype(u.dtype)

        new_updates = tree_util.tree_map_with_path(step, updates, params)
        return new_updates, L1ProximalState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------------
# Freezing: parameters under given paths receive no update (transfer learning).


def freeze(optimizer: optax.GradientTransformation, params: Params,
           paths: Sequence[str]) -> optax.GradientTransformation:
    """`optimizer` for every parameter except those under `paths`, which are never updated.

    Built on `optax.multi_transform`: frozen leaves get `optax.set_to_zero()` and carry no
    optimizer state. Pair with `make_train_step(..., frozen_state=paths)` (or `fit`'s) to also
    keep their batch-norm statistics fixed.

    Args:
        optimizer: the optimizer for the trainable parameters.
        params: the parameter tree (its paths decide what is frozen).
        paths: path prefixes to freeze, e.g. `["0_conv2d", "1_batchnorm"]`.

    Returns:
        An optax `GradientTransformation`.

    Raises:
        ValueError: if a prefix matches no parameter (a typo would otherwise freeze nothing).

    Examples:
        >>> tx = jdnn.freeze(optax.adam(1e-3), params, ["0_conv2d", "1_batchnorm"])
    """
    prefixes = [paths] if isinstance(paths, str) else list(paths)
    all_paths = leaf_paths(params)
    for prefix in prefixes:
        if not any(is_under(path, [prefix]) for path in all_paths):
            raise ValueError(f"freeze: no parameter lies under {prefix!r}; the parameter paths "
                             f"are {all_paths}")
    labels = tree_util.tree_map_with_path(
        lambda keypath, _: "frozen" if is_under(path_of(keypath), prefixes) else "trained", params)
    return optax.multi_transform({"trained": optimizer, "frozen": optax.set_to_zero()}, labels)
