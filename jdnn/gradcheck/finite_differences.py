"""The finite-difference oracle: central differences of jdnn's own objective in float64, on a
sample of coordinates per parameter, skipping coordinates where the objective has a kink within
the step (a ReLU unit at 0, a max-pool tie): there the left and right slopes disagree. It needs
no twin, so it works for any model and any per-example loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jdnn.core import path_of
from jdnn.gradcheck.arguments import _cast

FD_STEP = 1e-5  # central-difference step, relative to max(1, |p|), in float64
KINK = 1e-2  # left and right slopes differing by more than this fraction mark a kink


def _finite_differences(objective, params, state, x, y, grads, samples, seed):
    """Central differences in float64 at `samples` random coordinates per leaf, skipping kinks."""
    p64 = _cast(params, jnp.float64)
    s64, x64 = _cast(state, jnp.float64), _cast(x, jnp.float64)
    y64 = _cast(y, jnp.float64) if jnp.issubdtype(y.dtype, jnp.floating) else y
    f = jax.jit(lambda p: objective(p, s64, x64, y64)[0])
    f0 = float(f(p64))
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(p64)
    results, kinks = {}, 0
    for i, (keypath, leaf) in enumerate(leaves):
        flat = np.asarray(leaf).ravel()
        order = rng.permutation(flat.size)
        points = []
        for j in order:
            if len(points) == samples:
                break
            h = FD_STEP * max(1.0, abs(float(flat[j])))
            values = []
            for sign in (1.0, -1.0):
                bumped = [lf for _, lf in leaves]
                bumped[i] = leaf.reshape(-1).at[j].add(sign * h).reshape(leaf.shape)
                values.append(float(f(jax.tree_util.tree_unflatten(treedef, bumped))))
            right, left = (values[0] - f0) / h, (f0 - values[1]) / h
            if abs(right - left) > KINK * max(abs(right), abs(left), 1e-8):
                kinks += 1
                continue
            points.append((np.unravel_index(j, leaf.shape), (values[0] - values[1]) / (2 * h)))
        results[path_of(keypath)] = points
    return results, kinks, f0
