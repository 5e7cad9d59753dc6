"""The NumPy twin of MultiHeadAttention against jax.vjp of the JAX layer (float64, 1e-10), its
conventions (dtype, masks, length-0 examples), and check_gradients on models holding it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
from jdnn import reference
from jdnn.layers import Dense, Flatten, serial
from jdnn.layers.attention import MultiHeadAttention
from jdnn.padded import Padded
from jdnn.reference.layers import attention
from jdnn.reference.padded import Padded as RefPadded

B, T, F = 4, 5, 6
LENGTHS = np.array([5, 2, 0, 3])
TOL = 1e-10


def _setup(layer, seed=0):
    """float64 params (every entry random, biases too) and inputs as NumPy arrays."""
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        _, params, _ = layer.init(jax.random.key(seed), (B, T, F))
    params = {k: np.asarray(v) + 0.3 * rng.normal(size=v.shape) for k, v in params.items()}
    return params, rng.normal(size=(B, T, F)), rng


def _jax_vjp(layer, params, x, lengths, dy):
    """y, dparams and dx of the JAX layer for the cotangent `dy` of its output values."""
    with jax.enable_x64(True):
        def f(p, values):
            y, _ = layer.apply(p, {}, values if lengths is None
                               else Padded(values, jnp.asarray(lengths)))
            return y.values if isinstance(y, Padded) else y

        y, vjp = jax.vjp(f, {k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(x))
        dparams, dx = vjp(jnp.asarray(dy))
    return np.asarray(y), {k: np.asarray(v) for k, v in dparams.items()}, np.asarray(dx)


def _rel(actual, expected, scale=None):
    scale = np.abs(expected).max() if scale is None else scale
    return float(np.abs(actual - expected).max() / max(scale, 1e-300))


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("padded", [False, True], ids=["plain", "padded"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_twin_matches_jax_vjp(causal, padded, use_bias):
    layer = MultiHeadAttention(3, 2, causal=causal, output_features=4, use_bias=use_bias)
    params, x, rng = _setup(layer)
    lengths = LENGTHS if padded else None
    dy = rng.normal(size=(B, T, 4))
    y_jax, dparams_jax, dx_jax = _jax_vjp(layer, params, x, lengths, dy)

    y, cache = attention.forward(params, x, causal=layer.spec["causal"], lengths=lengths)
    assert isinstance(y, RefPadded) == padded
    if padded:
        np.testing.assert_array_equal(y.lengths, LENGTHS)
        y = y.values
    assert _rel(y, y_jax) <= TOL
    dx, dparams = attention.backward(params, cache, dy)
    assert dx.shape == x.shape and _rel(dx, dx_jax) <= TOL
    assert list(dparams) == list(params)
    largest = max(np.abs(v).max() for v in dparams_jax.values())
    for name in params:
        assert dparams[name].shape == params[name].shape, name
        if name == "b_k":  # exactly 0 in exact arithmetic (see the next test): rounding only
            assert _rel(dparams[name], dparams_jax[name], largest) <= TOL
        else:
            assert _rel(dparams[name], dparams_jax[name]) <= TOL, name


def test_the_key_bias_gets_no_gradient():
    """Adding b_k to every key adds q_t . b_k to every score of row t: the softmax does not see
    a constant shift of a row, so dL/db_k = 0 (both sides show rounding, ~1e-16 of the rest)."""
    layer = MultiHeadAttention(2, 3, causal=True)
    params, x, rng = _setup(layer, seed=1)
    _, cache = attention.forward(params, x, causal=True, lengths=LENGTHS)
    _, dparams = attention.backward(params, cache, rng.normal(size=(B, T, F)))
    assert np.abs(dparams["b_k"]).max() <= 1e-13 * np.abs(dparams["b_q"]).max()


def test_padding_and_empty_examples_in_the_twin():
    layer = MultiHeadAttention(2, 3)
    params, x, rng = _setup(layer, seed=2)
    real = np.arange(T)[None] < LENGTHS[:, None]
    dirty = x.copy()
    dirty[~real] = np.nan  # padding never reaches a result, even NaN
    with np.errstate(all="raise"):  # no 0 / 0, no inf - inf, no invalid exp
        y, cache = attention.forward(params, dirty, causal=False, lengths=LENGTHS)
        dx, dparams = attention.backward(params, cache, rng.normal(size=(B, T, F)))
    np.testing.assert_array_equal(y.values[~real], 0.0)
    np.testing.assert_array_equal(y.values[2], 0.0)  # the length-0 example
    np.testing.assert_array_equal(dx[~real], 0.0)
    assert np.isfinite(y.values).all() and all(np.isfinite(v).all() for v in dparams.values())
    clean, _ = attention.forward(params, x, causal=False, lengths=LENGTHS)
    np.testing.assert_array_equal(clean.values, y.values)
    # each example alone on its real steps gives the same outputs
    for b, n in enumerate(LENGTHS):
        alone, _ = attention.forward(params, x[b:b + 1, :n], causal=False)
        np.testing.assert_allclose(y.values[b, :n], alone[0], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_twin_computes_in_float32(causal):
    layer = MultiHeadAttention(2, 3, causal=causal)
    params, x, rng = _setup(layer, seed=3)
    params = {k: v.astype(np.float32) for k, v in params.items()}
    y, cache = attention.forward(params, x.astype(np.float32), causal=causal, lengths=LENGTHS)
    dx, dparams = attention.backward(params, cache, rng.normal(size=(B, T, F)).astype(np.float32))
    floats = [y.values, dx, *dparams.values(), *(c for c in cache if isinstance(c, np.ndarray)
                                                 and c.dtype.kind == "f")]
    assert {a.dtype for a in floats} == {np.dtype(np.float32)}


def test_the_reference_network_keeps_the_lengths():
    model = serial(Dense(F), MultiHeadAttention(2, 3, causal=True), Dense(2))
    with jax.enable_x64(True):
        _, params, state = model.init(jax.random.key(0), (B, T, 3))
        x = np.random.default_rng(4).normal(size=(B, T, 3))
        y_jax, _ = model.apply(params, state, Padded(jnp.asarray(x), jnp.asarray(LENGTHS)))
    net = reference.build(model.spec)
    y, _, _ = net.forward(jax.tree.map(np.asarray, params), state, RefPadded(x, LENGTHS))
    assert isinstance(y, RefPadded)
    np.testing.assert_array_equal(y.lengths, LENGTHS)
    np.testing.assert_allclose(y.values, np.asarray(y_jax.values), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("padded", [False, True], ids=["plain", "padded"])
def test_check_gradients(train, padded):
    """jax.grad vs the twins vs finite differences, through a model: per-step outputs with
    (B, T, ...) targets when padded (only real steps count), a flattened head otherwise."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(B, T, 3))
    if padded:
        model = serial(Dense(F), MultiHeadAttention(2, 3, causal=True), Dense(2))
        x, y = Padded(x, LENGTHS), rng.normal(size=(B, T, 2))
    else:
        model = serial(Dense(F), MultiHeadAttention(2, 3), Flatten(), Dense(2))
        y = rng.normal(size=(B, 2))
    _, params, state = model.init(jax.random.key(1), (B, T, 3))
    params = jax.tree.map(lambda a: a + 0.3 * rng.normal(size=a.shape), params)
    report = jdnn.check_gradients(model, params, state, x, y, jdnn.losses.mse, train=train,
                                  samples=3)
    assert report.ok, str(report)
    assert "reference" in str(report) and "1_multiheadattention/w_q" in str(report)
