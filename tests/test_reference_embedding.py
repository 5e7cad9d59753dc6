"""The NumPy twins of the token-model layers (Embedding, PositionalEmbedding, LayerNorm) against
jdnn's JAX layers: forward equal to `apply`, backward equal to `jax.vjp` in float64 at 1e-10,
float32 kept float32, and `check_gradients` on a whole token model, padded or not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
from jdnn.layers.combinators import serial
from jdnn.layers.dense import Dense
from jdnn.layers.embedding import Embedding, PositionalEmbedding
from jdnn.layers.embedding import sinusoidal_table as jax_side_table
from jdnn.layers.normalization import LayerNorm
from jdnn.padded import Padded
from jdnn.reference.layers import embedding, normalization
from jdnn.reference.padded import Padded as RefPadded

TOL = 1e-10


def assert_close(actual, expected, what, tol=TOL):
    """Same shape and a normwise relative error `max|a - e| / max|e|` of at most `tol`."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    err = float(np.max(np.abs(actual - expected), initial=0.0)) / scale
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def jax_forward_and_vjp(layer, params, x, dy, wrt_x=True):
    """`apply`'s output and its vjp (params, and x unless `wrt_x` is False), in float64, as
    one compiled program (faster than running each primitive eagerly)."""
    with jax.enable_x64(True):
        @jax.jit
        def run(p, xx, cotangent):
            if not wrt_x:   # integer ids: differentiate the params only
                y, vjp = jax.vjp(lambda q: layer.apply(q, {}, xx)[0], p)
                return y, vjp(cotangent)[0], None
            y, vjp = jax.vjp(lambda q, xv: layer.apply(q, {}, xv)[0], p, xx)
            return y, *vjp(cotangent)

        y, dparams, dx = run(jax.tree.map(jnp.asarray, params), jnp.asarray(x), jnp.asarray(dy))
        assert y.dtype == jnp.float64
        return y, dparams, dx


# --- Embedding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 5), (7,), (2, 3, 2)], ids=["BT", "B", "BTU"])
def test_lookup_twin_matches_jax(shape):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, size=shape)   # a vocabulary of 6: ids repeat, some never occur
    ids.flat[0] = ids.flat[-1]
    table = rng.normal(size=(6, 4))
    dy = rng.normal(size=(*shape, 4))
    y_jax, dparams_jax, _ = jax_forward_and_vjp(Embedding(6, 4), {"table": table}, ids, dy,
                                                wrt_x=False)
    y, cache = embedding.lookup.forward({"table": table}, ids)
    assert_close(y, y_jax, "y", 0.0)
    dx, dparams = embedding.lookup.backward({"table": table}, cache, dy)
    assert set(dparams) == {"table"}
    assert_close(dparams["table"], dparams_jax["table"], "dtable")
    assert dx.shape == ids.shape and dx.dtype == np.float64 and not dx.any()


def test_lookup_backward_accumulates_repeated_ids():
    table = np.zeros((3, 2))
    _, cache = embedding.lookup.forward({"table": table}, np.array([[2, 0, 2, 2]]))
    dy = np.array([[[1.0, 10.0], [2.0, 20.0], [4.0, 40.0], [8.0, 80.0]]])
    _, dparams = embedding.lookup.backward({"table": table}, cache, dy)
    np.testing.assert_array_equal(dparams["table"], [[2.0, 20.0], [0.0, 0.0], [13.0, 130.0]])


def test_lookup_takes_whole_float_ids_and_refuses_others():
    table = np.arange(8.0).reshape(4, 2)
    y, cache = embedding.lookup.forward({"table": table}, np.array([[3.0, 0.0]]))
    np.testing.assert_array_equal(y, [[[6.0, 7.0], [0.0, 1.0]]])
    assert cache.dtype.kind == "i"
    with pytest.raises(ValueError, match="ids must be whole numbers"):
        embedding.lookup.forward({"table": table}, np.array([[0.5]]))
    with pytest.raises(ValueError, match=r"id 4 at position \(0, 1\) is outside the vocabulary "
                                         r"\[0, 4\)"):
        embedding.lookup.forward({"table": table}, np.array([[1, 4]]))
    with pytest.raises(ValueError, match=r"id -1 at position \(0, 0\)"):
        embedding.lookup.forward({"table": table}, np.array([[-1, 0]]))


# --- PositionalEmbedding -----------------------------------------------------------------------


@pytest.mark.parametrize("encoding, features", [("learned", 4), ("sinusoidal", 6),
                                                ("sinusoidal", 5)])
def test_positional_twin_matches_jax(encoding, features):
    rng = np.random.default_rng(1)
    x, dy = rng.normal(size=(3, 5, features)), rng.normal(size=(3, 5, features))
    layer = PositionalEmbedding(7, encoding)
    params = {"table": rng.normal(size=(7, features))} if encoding == "learned" else {}
    y_jax, dparams_jax, dx_jax = jax_forward_and_vjp(layer, params, x, dy)
    y, cache = embedding.positional.forward(params, x, max_length=7, encoding=encoding)
    assert_close(y, y_jax, "y")
    dx, dparams = embedding.positional.backward(params, cache, dy)
    assert_close(dx, dx_jax, "dx")
    assert dparams.keys() == params.keys()
    for k in params:
        assert_close(dparams[k], dparams_jax[k], f"d{k}")
    if encoding == "learned":   # rows past T were not used
        np.testing.assert_array_equal(dparams["table"][5:], 0.0)


def test_the_twin_writes_the_sinusoidal_table_again():
    assert_close(embedding.sinusoidal_table(40, 7, np.float64), jax_side_table(40, 7), "table",
                 1e-14)


def test_positional_twin_refuses_long_sequences():
    with pytest.raises(ValueError, match="6 time steps but max_length is 4"):
        embedding.positional.forward({}, np.zeros((1, 6, 2)), max_length=4,
                                     encoding="sinusoidal")


# --- LayerNorm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("use_scale, use_bias, shape", [
    (True, True, (4, 6)), (True, True, (2, 3, 5)), (True, False, (4, 6)), (False, True, (4, 6)),
    (False, False, (2, 3, 5))])
def test_layer_norm_twin_matches_jax(use_scale, use_bias, shape):
    rng = np.random.default_rng(2)
    x = rng.normal(size=shape) * rng.uniform(0.5, 4.0, size=shape[-1]) + 2.0
    dy = rng.normal(size=shape)
    params = {}
    if use_scale:
        params["scale"] = 1.0 + 0.3 * rng.normal(size=shape[-1])
    if use_bias:
        params["bias"] = rng.normal(size=shape[-1])
    layer = LayerNorm(1e-3, use_scale=use_scale, use_bias=use_bias)
    y_jax, dparams_jax, dx_jax = jax_forward_and_vjp(layer, params, x, dy)
    y, cache = normalization.layer_norm.forward(params, x, eps=1e-3)
    assert_close(y, y_jax, "y", 1e-12)
    dx, dparams = normalization.layer_norm.backward(params, cache, dy)
    assert_close(dx, dx_jax, "dx")
    assert dparams.keys() == params.keys()
    for k in params:
        assert_close(dparams[k], dparams_jax[k], f"d{k}")


# --- dtypes ------------------------------------------------------------------------------------


def test_float32_twins_stay_float32():
    rng = np.random.default_rng(3)
    f32 = np.float32
    table = rng.normal(size=(5, 3)).astype(f32)
    y, cache = embedding.lookup.forward({"table": table}, rng.integers(0, 5, size=(2, 4)))
    dx, dparams = embedding.lookup.backward({"table": table}, cache, y)
    assert y.dtype == dx.dtype == dparams["table"].dtype == f32

    x = rng.normal(size=(2, 4, 3)).astype(f32)
    for encoding, params in (("learned", {"table": table}), ("sinusoidal", {})):
        y, cache = embedding.positional.forward(params, x, max_length=5, encoding=encoding)
        dx, dparams = embedding.positional.backward(params, cache, y)
        assert y.dtype == dx.dtype == f32
        assert all(v.dtype == f32 for v in dparams.values())

    params = {"scale": np.ones(3, f32), "bias": np.zeros(3, f32)}
    y, cache = normalization.layer_norm.forward(params, x, eps=1e-5)
    dx, dparams = normalization.layer_norm.backward(params, cache, y)
    assert y.dtype == dx.dtype == dparams["scale"].dtype == dparams["bias"].dtype == f32
    assert all(np.asarray(c).dtype == f32 for c in cache)


# --- whole token models ------------------------------------------------------------------------

LENGTHS = np.array([5, 2, 0, 3])


def _token_model(encoding="learned"):
    return serial(Embedding(7, 6), PositionalEmbedding(8, encoding), LayerNorm(), Dense(3))


def _token_batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 7, size=(4, 5)), rng.integers(0, 3, size=(4, 5))


def test_the_reference_network_keeps_the_lengths():
    model = _token_model()
    ids, _ = _token_batch()
    _, params, state = model.init(jax.random.key(0), ids.shape)
    net = jdnn.reference.build(model.spec)
    params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    y, _, _ = net.forward(params64, {k: {} for k in params}, RefPadded(ids, LENGTHS))
    assert isinstance(y, RefPadded) and y.values.shape == (4, 5, 3)
    np.testing.assert_array_equal(y.lengths, LENGTHS)
    with jax.enable_x64(True):
        y_jax, _ = jax.jit(model.apply)(jax.tree.map(jnp.asarray, params64), state,
                                        Padded(jnp.asarray(ids), jnp.asarray(LENGTHS)))
    assert_close(y.values, y_jax.values, "y", 1e-12)


@pytest.mark.parametrize("padded", [False, True], ids=["plain", "padded"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_check_gradients_on_a_token_model(train, padded):
    model = _token_model("learned" if train else "sinusoidal")
    ids, labels = _token_batch()
    _, params, state = model.init(jax.random.key(0), ids.shape)
    if padded:   # per-step class labels, scored at real steps only
        x, y, loss = Padded(ids, LENGTHS), labels, jdnn.losses.softmax_cross_entropy
    else:        # integer ids, per-step regression targets
        x, y = ids, np.random.default_rng(1).normal(size=(4, 5, 3))
        loss = jdnn.losses.mse
    report = jdnn.check_gradients(model, params, state, x, y, loss, train=train)
    assert report.ok, report
    assert report.oracles == ("reference", "finite_differences")
    assert report.forward_error <= 1e-10
    assert {p.path for p in report.params} >= {"0_embedding/table", "2_layernorm/scale"}
