"""The arguments of `check_gradients`, checked before anything runs (each bad one a clear error
that names it), and put in the form both sides take: the oracles and tolerances (`ORACLES`,
`TOLERANCES`), the batch, and trees cast to the checked dtype or to float64 NumPy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdnn.core import Layer, path_of
from jdnn.data.validate import check_data
from jdnn.padded import Padded, unpad

ORACLES = ("reference", "finite_differences")
# Tolerances per dtype: jax vs reference, jax vs finite differences, forward outputs.
TOLERANCES = {
    "float64": {"reference": 1e-10, "finite_differences": 1e-6, "forward": 1e-10},
    "float32": {"reference": 2e-3, "finite_differences": 2e-3, "forward": 1e-3},
}


def _check_oracles(oracles: Any, finite_differences: bool) -> tuple[str, ...]:
    names = (oracles,) if isinstance(oracles, str) else tuple(oracles)
    unknown = [name for name in names if name not in ORACLES]
    if unknown or not names:
        raise ValueError(f"check_gradients: oracles must be a non-empty selection of {ORACLES}, "
                         f"got {oracles!r}")
    if not finite_differences:
        names = tuple(name for name in names if name != "finite_differences")
        if not names:
            raise ValueError("check_gradients: finite_differences=False leaves no oracle; use "
                             "oracles=('reference',)")
    return tuple(name for name in ORACLES if name in names)


def _tolerances(dtype: str, overrides: Mapping[str, float] | None) -> dict[str, float]:
    """The dtype's `TOLERANCES`, with `overrides` (finite and > 0, known names) in place."""
    tol = dict(TOLERANCES[dtype])
    if overrides is None:
        return tol
    if not isinstance(overrides, Mapping):
        raise TypeError(f"check_gradients: tolerances must be a dict such as "
                        f"{{'finite_differences': 1e-5}}, got {type(overrides).__name__}")
    unknown = sorted(set(overrides) - set(tol), key=str)
    if unknown:
        raise ValueError(f"check_gradients: unknown tolerance name(s) {unknown}; the names are "
                         f"{sorted(tol)}")
    for name, value in overrides.items():
        ok = (isinstance(value, (int, float, np.integer, np.floating))
              and not isinstance(value, (bool, np.bool_)) and np.isfinite(value) and value > 0)
        if not ok:
            raise ValueError(f"check_gradients: tolerances[{name!r}] must be a finite number "
                             f"> 0, got {value!r}")
        tol[name] = float(value)
    return tol


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"check_gradients: {name} must be True or False, got {value!r}")
    return bool(value)


def _check_batch(model: Layer, loss: Callable, x: np.ndarray, y: np.ndarray, mask: Any,
                 params: Any, state: Any) -> Any:
    """Raises a clear error for inputs that would make a report fail (or pass) for a reason
    other than the gradient: no examples, labels the loss cannot take (`check_data`'s checks,
    as `jdnn.fit` runs them), a mask of the wrong shape or that keeps nothing, non-finite
    numbers. Returns the mask as a NumPy array (or None)."""
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"check_gradients: x and y must have the same number of examples on "
                         f"the batch axis, got x of shape {x.shape} and y of shape {y.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"check_gradients: x and y have no examples (shapes {x.shape} and "
                         f"{y.shape}); give a batch of at least one")
    check_data(x, y, model=model, loss=loss, name="check_gradients")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (x.shape[0],):
            raise ValueError(f"check_gradients: mask must have shape ({x.shape[0]},), one "
                             f"entry per example, got shape {mask.shape}")
        if not mask.any():
            raise ValueError("check_gradients: mask keeps no example, so the objective and "
                             "every gradient are 0 and nothing would be checked; keep at least "
                             "one")
    for name, tree in (("params", params), ("state", state)):
        for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if not jnp.issubdtype(getattr(leaf, "dtype", np.float64), jnp.floating):
                continue
            bad = int(np.sum(~np.isfinite(np.asarray(leaf))))
            if bad:
                raise ValueError(f"check_gradients: {name} at {path_of(keypath)} holds {bad} "
                                 f"non-finite value(s) (NaN or inf); the comparison would fail "
                                 f"for them, not for a wrong gradient")
    return mask


def _cast(tree: Any, dtype: Any) -> Any:
    """Floating leaves cast to `dtype`; integer leaves (labels) kept."""
    def cast(a):
        a = jnp.asarray(a)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(cast, tree)


def _host_input(x: Any) -> Any:
    """The input batch as NumPy: an array, or a `Padded` of NumPy values and lengths."""
    values, lengths = unpad(x)
    return np.asarray(values) if lengths is None else Padded(np.asarray(values),
                                                             np.asarray(lengths))


def _numpy64(tree: Any) -> Any:
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)
