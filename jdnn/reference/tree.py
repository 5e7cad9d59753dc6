"""Nested dicts of NumPy arrays, the reference's pytrees: map, flatten, and name their leaves.

A tree is a dict whose values are trees or leaves (arrays); anything that is not a dict is a
leaf. Keys are visited in sorted order, the order `jax.tree_util` uses for dicts, so leaves and
paths line up one to one with the JAX side. A leaf's path is its keys joined with `/`, e.g.
`"0_dense/w"`. Empty dicts (layers without parameters) are kept as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Tree = Any  # a dict of trees, or a leaf


def tree_map_with_path(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
    """Applies `fn(path, leaf, *other_leaves)` leaf by leaf to trees of the same structure.

    Args:
        fn: a function of a path and as many leaves as there are trees.
        tree: the tree whose structure the result takes.
        *rest: more trees with exactly the same keys at every level.

    Returns:
        A new tree of `fn`'s results, shaped like `tree`.

    Raises:
        ValueError: if the trees' keys differ somewhere; the message names the path.

    Examples:
        >>> tree_map_with_path(lambda path, w: w if path.endswith("w") else 0 * w, params)
    """
    return _walk(fn, (tree, *rest), "")


def _walk(fn: Callable[..., Any], trees: tuple[Tree, ...], path: str) -> Tree:
    first, where = trees[0], path or "the root"
    if not isinstance(first, dict):
        if any(isinstance(other, dict) for other in trees[1:]):
            raise ValueError(f"tree_map: at {where} the first tree has a leaf but another has "
                             f"a dict")
        return fn(path, *trees)
    for other in trees[1:]:
        if not isinstance(other, dict) or set(other) != set(first):
            found = sorted(other) if isinstance(other, dict) else f"a leaf {type(other).__name__}"
            raise ValueError(f"tree_map: the trees differ at {where}: keys {sorted(first)} vs "
                             f"{found}")
    return {key: _walk(fn, tuple(t[key] for t in trees), _join(path, key))
            for key in sorted(first)}


def tree_map(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
    """Applies `fn(leaf, *other_leaves)` leaf by leaf to trees of the same structure.

    Args:
        fn: a function of as many leaves as there are trees.
        tree: the tree whose structure the result takes.
        *rest: more trees with exactly the same keys at every level.

    Returns:
        A new tree of `fn`'s results, shaped like `tree`.

    Raises:
        ValueError: if the trees' keys differ somewhere; the message names the path.

    Examples:
        >>> tree_map(lambda p, g: p - 0.1 * g, params, grads)
    """
    return _walk(lambda path, *leaves: fn(*leaves), (tree, *rest), "")


def tree_paths(tree: Tree) -> list[tuple[str, Any]]:
    """Every leaf with its path, depth first in sorted key order: `[("0_dense/b", b), ...]`.

    A bare leaf (not a dict) has the path `""`.

    Examples:
        >>> [path for path, _ in tree_paths({"0_dense": {"w": w, "b": b}})]  # ["0_dense/b", ...]
    """
    pairs: list[tuple[str, Any]] = []
    tree_map_with_path(lambda path, leaf: pairs.append((path, leaf)), tree)
    return pairs


def tree_leaves(tree: Tree) -> list[Any]:
    """The leaves of `tree` in the order of `tree_paths` (and of `jax.tree_util.tree_leaves`)."""
    return [leaf for _, leaf in tree_paths(tree)]


def _join(path: str, key: Any) -> str:
    return f"{path}/{key}" if path else str(key)
