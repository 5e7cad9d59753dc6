"""Activation layers against their formulas; PRelu's learned slope."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdnn.layers import Elu, Gelu, LeakyRelu, PRelu, Relu, Sigmoid, Softmax, Tanh

X = np.linspace(-3.0, 3.0, 24, dtype=np.float32).reshape(4, 6)
_erf = np.vectorize(math.erf)


@pytest.mark.parametrize("make, formula", [
    (Relu, lambda x: np.maximum(x, 0.0)),
    (Sigmoid, lambda x: 1.0 / (1.0 + np.exp(-x))),
    (Tanh, np.tanh),
    (lambda: LeakyRelu(0.2), lambda x: np.where(x >= 0, x, 0.2 * x)),
    (LeakyRelu, lambda x: np.where(x >= 0, x, 0.01 * x)),
    (lambda: Elu(0.7), lambda x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1.0))),
    (lambda: Gelu(approximate=False), lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))),
    (lambda: Gelu(approximate=True),
     lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))),
    (Softmax, lambda x: np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)),
], ids=["relu", "sigmoid", "tanh", "leakyrelu", "leakyrelu_default", "elu", "gelu_erf",
        "gelu_tanh", "softmax"])
def test_activation_matches_formula(make, formula, key):
    layer = make()
    out_shape, params, state = layer.init(key, X.shape)
    y, new_state = layer.apply(params, state, jnp.asarray(X))
    assert out_shape == X.shape and params == {} and new_state == {}
    np.testing.assert_allclose(y, formula(X.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_gelu_variants_differ_and_are_recorded(key):
    exact, approx = Gelu(approximate=False), Gelu(approximate=True)
    assert exact.spec["approximate"] is False and approx.spec["approximate"] is True
    assert Gelu().spec == approx.spec  # the tanh approximation is the default
    x = jnp.asarray(X)
    assert not np.allclose(exact.apply({}, {}, x)[0], approx.apply({}, {}, x)[0], rtol=0,
                           atol=1e-5)


def test_softmax_is_over_the_last_axis_and_stable(key):
    x = jnp.array([[1000.0, 1000.0, -1000.0], [0.0, 1.0, 2.0]])
    y, _ = Softmax().apply({}, {}, x)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(y[0], [0.5, 0.5, 0.0], atol=1e-6)


# --- PRelu -----------------------------------------------------------------------------------


def test_prelu_slope_is_per_feature(key):
    layer = PRelu(alpha_init=0.25)
    _, params, state = layer.init(key, (2, 3))
    np.testing.assert_array_equal(params["alpha"], [0.25, 0.25, 0.25])
    params = {"alpha": jnp.array([0.1, 0.5, 2.0])}
    y, _ = layer.apply(params, state, jnp.array([[-1.0, -2.0, -3.0], [1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(y, [[-0.1, -1.0, -6.0], [1.0, 2.0, 3.0]])


def test_prelu_slope_gets_a_gradient(key):
    layer = PRelu()
    _, params, state = layer.init(key, X.shape)
    grad = jax.grad(lambda p: layer.apply(p, state, jnp.asarray(X))[0].sum())(params)["alpha"]
    # d(sum y)/d(alpha_j) = the sum of the negative inputs of feature j
    np.testing.assert_allclose(grad, np.where(X < 0, X, 0.0).sum(axis=0), rtol=1e-6)
    assert np.all(grad < 0)
    positive = jnp.abs(jnp.asarray(X)) + 0.1
    grad = jax.grad(lambda p: layer.apply(p, state, positive)[0].sum())(params)["alpha"]
    np.testing.assert_array_equal(grad, 0.0)  # no negative inputs, nothing to learn


def test_prelu_learns_the_slope_by_gradient_descent(key):
    layer = PRelu(alpha_init=0.25)
    _, params, state = layer.init(key, (32, 2))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(32, 2)), jnp.float32)
    target = jnp.where(x >= 0, x, 0.1 * x)

    def loss(alpha):
        return jnp.mean((layer.apply({"alpha": alpha}, state, x)[0] - target) ** 2)

    step = jax.jit(lambda alpha: alpha - 0.5 * jax.grad(loss)(alpha))
    alphas = [params["alpha"]]
    for _ in range(40):
        alphas.append(step(alphas[-1]))
    alphas = np.asarray(alphas)
    assert np.all(np.diff(alphas, axis=0) <= 0)  # decreasing from 0.25 ...
    assert np.all(alphas > 0.1 - 1e-6)  # ... toward 0.1, without overshooting
    np.testing.assert_allclose(alphas[-1], 0.1, atol=0.01)
