"""MaxPool2D's fast path (non-overlapping windows: a reshape and a max with a hand-stated
derivative) against `lax.reduce_window` and its autodiff, ties included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jdnn


def _reduce_window_pool(x, window, strides, padding):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), padding)


CASES = [((2, 6, 6, 3), (2, 2), "VALID"), ((2, 7, 5, 3), (2, 2), "VALID"),    # remainder cut
         ((1, 9, 9, 2), (3, 3), "VALID"), ((2, 6, 4, 2), (3, 2), "SAME"),     # SAME, exact tiles
         ((2, 5, 5, 2), (2, 2), "SAME")]                                      # SAME, padded


@pytest.mark.parametrize("shape, window, padding", CASES)
def test_values_gradients_and_tangents_equal_reduce_window_with_ties(shape, window, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 3, size=shape), jnp.float32)   # small integers: many ties
    pool = jdnn.MaxPool2D(window, padding=padding)

    def ours(x):
        return pool.apply({}, {}, x)[0]

    def theirs(x):
        return _reduce_window_pool(x, window, window, padding)

    y, pullback = jax.vjp(ours, x)
    y_ref, pullback_ref = jax.vjp(theirs, x)
    np.testing.assert_array_equal(y, y_ref)
    cotangent = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    # each window's gradient goes to its first maximum, as reduce_window's does
    np.testing.assert_array_equal(pullback(cotangent)[0], pullback_ref(cotangent)[0])
    tangent = jnp.asarray(rng.normal(size=shape), jnp.float32)
    np.testing.assert_array_equal(jax.jvp(ours, (x,), (tangent,))[1],
                                  jax.jvp(theirs, (x,), (tangent,))[1])


def _compiled_gradient(pool, x):
    grad = jax.jit(jax.grad(lambda x: jnp.sum(pool.apply({}, {}, x)[0] ** 2)))
    return grad.lower(x).compile().as_text()


def test_non_overlapping_windows_compile_without_reduce_window_or_scatter():
    x = jnp.ones((2, 8, 8, 3))
    fast = _compiled_gradient(jdnn.MaxPool2D(2), x)
    assert "reduce-window(" not in fast and "scatter(" not in fast
    general = _compiled_gradient(jdnn.MaxPool2D(3, strides=2), x)   # overlapping windows
    assert "reduce-window(" in general and "scatter(" in general
