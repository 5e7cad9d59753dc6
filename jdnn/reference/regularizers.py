"""L1 and L2 weight penalties by hand: the NumPy twins of `jdnn.regularizers`.

Params are nested dicts of arrays; a leaf's path is its keys joined with `/` (`"0_dense/w"`).
A penalty touches only the leaves its filter `where` selects: a callable `path -> bool` or a
regex string matched with `re.search`. The default, `is_weight`, selects the leaves named `w`
(Dense and Conv2D kernels) and skips biases `b`, batch-norm `scale`/`bias` and PRelu `alpha`.

Each penalty is a sum over the selected entries, and its gradient is a tree shaped like the
params with zeros on the leaves that were not selected:

    l1(params) = sum |w|     d/dw = sign(w)    (sign(0) = 0, the subgradient at the kink)
    l2(params) = sum w^2     d/dw = 2 w        (no 1/2)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

from .tree import Tree, tree_map_with_path, tree_paths

Where = Callable[[str], bool] | str


def leaf_paths(params: Tree) -> list[str]:
    """The path of every leaf, in the order of `jax.tree_util` (sorted keys, depth first).

    Examples:
        >>> leaf_paths({"0_dense": {"w": w, "b": b}})  # ["0_dense/b", "0_dense/w"]
    """
    return [path for path, _ in tree_paths(params)]


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


def _penalty(params: Tree, where: Where, term: Callable[[np.ndarray], np.ndarray]) -> np.floating:
    """`sum(term(leaf))` over every entry of every selected leaf, a NumPy scalar of the params'
    float type (float64 for no params); 0 if no leaf is selected."""
    select = _selector(where)
    leaves = [(path, np.asarray(leaf)) for path, leaf in tree_paths(params)]
    total = np.zeros((), np.result_type(*(leaf for _, leaf in leaves)) if leaves else np.float64)
    for path, leaf in leaves:
        if select(path):
            total = total + np.sum(term(leaf))
    return total[()]


def _gradient(params: Tree, where: Where, grad: Callable[[np.ndarray], np.ndarray]) -> Tree:
    """`grad(leaf)` on the selected leaves, zeros of the same shape and dtype elsewhere."""
    select = _selector(where)

    def leaf_grad(path: str, leaf) -> np.ndarray:
        leaf = np.asarray(leaf)
        return grad(leaf) if select(path) else np.zeros_like(leaf)

    return tree_map_with_path(leaf_grad, params)


# --- L1 --------------------------------------------------------------------------------------


def l1(params: Tree, *, where: Where = is_weight) -> np.floating:
    """The L1 norm of the selected leaves: `sum |w|` over all their entries.

    Args:
        params: nested dicts of arrays.
        where: a callable `path -> bool` or a regex string; by default the `w` leaves.

    Returns:
        A NumPy scalar of the params' float type (a `float` subclass for float64); `0.0` when
        nothing is selected.

    Raises:
        ValueError: if `where` is an invalid regex. TypeError: if it is neither kind.

    Examples:
        >>> l1({"0_dense": {"w": np.array([1.0, -2.0]), "b": np.array([5.0])}})  # 3.0
    """
    return _penalty(params, where, np.abs)


def l1_grad(params: Tree, *, where: Where = is_weight) -> Tree:
    """`d l1 / d params`: `sign(w)` on the selected leaves (`sign(0) = 0`), zeros elsewhere.

    Examples:
        >>> l1_grad({"0_dense": {"w": np.array([1.0, -2.0, 0.0])}})  # w: [1., -1., 0.]
    """
    return _gradient(params, where, np.sign)


# --- L2 --------------------------------------------------------------------------------------


def l2(params: Tree, *, where: Where = is_weight) -> np.floating:
    """The squared L2 norm of the selected leaves: `sum w^2` (no 1/2), see `l1` for arguments.

    Examples:
        >>> l2({"0_dense": {"w": np.array([1.0, -2.0])}})  # 5.0
    """
    return _penalty(params, where, np.square)


def l2_grad(params: Tree, *, where: Where = is_weight) -> Tree:
    """`d l2 / d params`: `2 w` on the selected leaves, zeros elsewhere.

    Examples:
        >>> l2_grad({"0_dense": {"w": np.array([1.0, -2.0])}})  # w: [2., -4.]
    """
    return _gradient(params, where, lambda w: 2.0 * w)


# --- the proximal L1 step --------------------------------------------------------------------


def soft_threshold(params: Tree, threshold: float, *, where: Where = is_weight) -> Tree:
    """The proximal step of `threshold * l1`: shrink each selected entry toward 0 by `threshold`.

    Formula:   `p' = sign(p) * max(|p| - t, 0)` on the selected leaves; others are unchanged.
               `p'` minimizes `(1/2) |p' - p|^2 + t |p'|_1`, so entries with `|p| <= t` land on
               exactly 0. After a gradient step with learning rate `lr`, `t = lr * strength`
               gives proximal gradient descent on `loss + strength * l1`.

    Args:
        params: nested dicts of arrays.
        threshold: `t`, a finite float `>= 0`.
        where: which leaves are thresholded (see `l1`); by default the `w` leaves.

    Returns:
        A new tree shaped like `params` (unselected leaves are passed through as they are).

    Raises:
        ValueError: if `threshold` is negative or not finite, or `where` is an invalid regex.

    Examples:
        >>> soft_threshold({"0_dense": {"w": np.array([0.5, -2.0])}}, 1.0)  # w: [0., -1.]
    """
    if isinstance(threshold, bool) or not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"soft_threshold: threshold must be a finite float >= 0, got "
                         f"{threshold!r}")
    threshold = float(threshold)  # a Python float keeps each leaf's dtype
    select = _selector(where)

    def shrink(path: str, p):
        if not select(path):
            return p
        p = np.asarray(p)
        return (np.sign(p) * np.maximum(np.abs(p) - threshold, 0)).astype(p.dtype)

    return tree_map_with_path(shrink, params)
