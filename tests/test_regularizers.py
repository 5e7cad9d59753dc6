"""jdnn.regularizers: parameter paths, the default weights-only filter, regex and callable
filters, L1/L2 values and gradients, penalty(), and the proximal L1 optax transformation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdnn import regularizers
from jdnn.layers import BatchNorm, Conv2D, Dense, Flatten, PRelu, serial

W0 = np.array([[0.5, -0.002], [0.003, -2.0]], np.float32)
W3 = np.array([[1.0], [-3.0]], np.float32)


@pytest.fixture
def params():
    """Weights `w` small and large; everything else (b, scale, bias, alpha) big, so a filter
    that wrongly includes them changes every number in these tests."""
    return {
        "0_dense": {"w": jnp.asarray(W0), "b": jnp.array([10.0, -10.0])},
        "1_batchnorm": {"scale": jnp.full((2,), 20.0), "bias": jnp.full((2,), -30.0)},
        "2_prelu": {"alpha": jnp.full((2,), 40.0)},
        "3_dense": {"w": jnp.asarray(W3), "b": jnp.array([50.0])},
    }


# --- paths -------------------------------------------------------------------------------------


def test_leaf_paths_join_dict_keys_with_slashes(params):
    assert regularizers.leaf_paths(params) == [
        "0_dense/b", "0_dense/w", "1_batchnorm/bias", "1_batchnorm/scale", "2_prelu/alpha",
        "3_dense/b", "3_dense/w"]


def test_path_of_handles_sequences_and_bare_leaves():
    tree = {"blocks": [{"w": 1.0}, (2.0, 3.0)]}
    paths = [regularizers.path_of(k) for k, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert paths == ["blocks/0/w", "blocks/1/0", "blocks/1/1"]
    assert regularizers.leaf_paths(jnp.ones(3)) == [""]


def test_paths_of_a_real_model_put_kernels_under_w(key):
    model = serial(Conv2D(2, 3), Flatten(), Dense(4), BatchNorm(), PRelu(), Dense(1))
    params = jax.eval_shape(lambda key: model.init(key, (1, 4, 4, 1))[1], key)  # no compute
    weights = [p for p in regularizers.leaf_paths(params) if regularizers.is_weight(p)]
    assert weights == ["0_conv2d/w", "2_dense/w", "5_dense/w"]


@pytest.mark.parametrize("path, expected", [
    ("0_dense/w", True), ("w", True), ("1_serial/0_conv2d/w", True), ("0_dense/b", False),
    ("1_batchnorm/scale", False), ("1_batchnorm/bias", False), ("2_prelu/alpha", False),
    ("w/b", False), ("0_dense/w2", False), ("0_multiheadattention/w_o", True),
    ("0_lstm/w_x", True), ("0_embedding/table", False), ("0_lstm/b", False),
])
def test_is_weight_looks_at_the_last_component(path, expected):
    assert regularizers.is_weight(path) is expected


# --- l1 / l2 -----------------------------------------------------------------------------------


def test_default_filter_counts_weights_only(params):
    np.testing.assert_allclose(regularizers.l1(params), np.abs(W0).sum() + np.abs(W3).sum(),
                               rtol=1e-6)
    np.testing.assert_allclose(regularizers.l2(params), (W0**2).sum() + (W3**2).sum(),
                               rtol=1e-6)


def test_gradients_are_sign_and_twice_the_weight_and_zero_elsewhere(params):
    g1 = jax.grad(regularizers.l1)(params)
    g2 = jax.grad(regularizers.l2)(params)
    np.testing.assert_array_equal(g1["0_dense"]["w"], np.sign(W0))
    np.testing.assert_allclose(g2["3_dense"]["w"], 2 * W3)
    for grads in (g1, g2):
        for path in ("0_dense/b", "1_batchnorm/scale", "1_batchnorm/bias", "2_prelu/alpha"):
            outer, inner = path.split("/")
            np.testing.assert_array_equal(grads[outer][inner], 0.0)


def test_regex_filter_uses_re_search(params):
    np.testing.assert_allclose(regularizers.l1(params, where=r"^3_dense/"), 3.0 + 1.0 + 50.0)
    np.testing.assert_allclose(regularizers.l2(params, where="scale|alpha"),
                               2 * 20.0**2 + 2 * 40.0**2)


def test_callable_filter(params):
    out = regularizers.l1(params, where=lambda path: path.endswith("b"))
    np.testing.assert_allclose(out, 10.0 + 10.0 + 50.0)


def test_selecting_nothing_gives_zero_and_zero_gradients(params):
    for fn in (regularizers.l1, regularizers.l2):
        assert float(fn(params, where="no_such_layer")) == 0.0
        grads = jax.grad(lambda p, fn=fn: fn(p, where=lambda _: False))(params)
        chex.assert_trees_all_equal(grads, jax.tree.map(jnp.zeros_like, params))
    assert float(regularizers.l2({})) == 0.0


def test_l1_and_l2_under_jit_equal_eager(params):
    for fn in (regularizers.l1, regularizers.l2):
        np.testing.assert_allclose(jax.jit(fn)(params), fn(params), rtol=1e-6)


def test_bad_filters_are_rejected(params):
    with pytest.raises(ValueError, match=r"where='\(' is not a valid regular expression"):
        regularizers.l1(params, where="(")
    with pytest.raises(TypeError, match="where must be a callable path -> bool or a regex"):
        regularizers.l2(params, where=3)


# --- penalty -----------------------------------------------------------------------------------


def test_penalty_combines_both_strengths(params):
    reg = regularizers.penalty(l1=0.01, l2=0.5)
    expected = 0.01 * regularizers.l1(params) + 0.5 * regularizers.l2(params)
    np.testing.assert_allclose(reg(params), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(reg)(params), expected, rtol=1e-6)
    grad = jax.grad(reg)(params)["0_dense"]["w"]
    np.testing.assert_allclose(grad, 0.01 * np.sign(W0) + 0.5 * 2 * W0, rtol=1e-6)


def test_penalty_respects_where_and_defaults_to_zero(params):
    only_alpha = regularizers.penalty(l2=1.0, where="alpha")
    np.testing.assert_allclose(only_alpha(params), 2 * 40.0**2)
    assert float(regularizers.penalty()(params)) == 0.0


@pytest.mark.parametrize("strengths", [{"l1": -0.1}, {"l2": float("nan")}, {"l2": float("inf")},
                                       {"l1": True}, {"l2": "0.1"}, {"l1": None}])
def test_penalty_rejects_bad_strengths(strengths):
    name = next(iter(strengths))
    with pytest.raises(ValueError, match=f"penalty: {name} must be a finite float >= 0"):
        regularizers.penalty(**strengths)


def test_penalty_rejects_a_bad_regex_at_construction():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        regularizers.penalty(l2=0.1, where="[")


# --- l1_proximal -------------------------------------------------------------------------------


def soft_threshold(z, t):
    return np.sign(z) * np.maximum(np.abs(z) - t, 0.0)


def test_one_proximal_step_is_the_soft_threshold(params):
    strength, lr = 0.5, 0.1  # threshold 0.05
    tx = regularizers.l1_proximal(strength, lr)
    updates = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    new_updates, state = tx.update(updates, tx.init(params), params)
    for name, w in (("0_dense", W0), ("3_dense", W3)):
        expected = soft_threshold(w + 0.01, strength * lr) - w
        np.testing.assert_allclose(new_updates[name]["w"], expected, rtol=1e-5, atol=1e-7)
    # Unselected leaves pass the incoming update through, bit for bit.
    for outer, inner in (("0_dense", "b"), ("1_batchnorm", "scale"), ("1_batchnorm", "bias"),
                         ("2_prelu", "alpha"), ("3_dense", "b")):
        np.testing.assert_array_equal(new_updates[outer][inner], updates[outer][inner])
    assert int(state.count) == 1


def test_small_weights_land_on_exact_zeros(params):
    tx = regularizers.l1_proximal(0.5, 0.1)
    zeros = jax.tree.map(jnp.zeros_like, params)
    new_updates, _ = tx.update(zeros, tx.init(params), params)
    w = np.asarray(optax.apply_updates(params, new_updates)["0_dense"]["w"])
    assert w[0, 1] == 0.0 and w[1, 0] == 0.0  # exact zeros, not ~1e-9
    np.testing.assert_allclose([w[0, 0], w[1, 1]], [0.45, -1.95], rtol=1e-6)


def test_schedule_learning_rate_follows_the_step_count():
    def schedule(count):
        return 0.1 * (count + 1)  # 0.1, 0.2, 0.3, ...

    tx = regularizers.l1_proximal(1.0, schedule)
    params = {"w": jnp.array([1.0, -1.0])}
    state = tx.init(params)
    zeros = {"w": jnp.zeros(2)}
    for expected in ([0.9, -0.9], [0.7, -0.7], [0.4, -0.4]):
        updates, state = tx.update(zeros, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params["w"], expected, rtol=1e-6)
    assert int(state.count) == 3


def lasso_problem(irrelevant):
    """Least squares where only the first 2 of 6 features matter; the other 4 are random noise
    or all zero (then their gradient is exactly 0)."""
    x = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    if irrelevant == "zero":
        x[:, 2:] = 0.0
    y = x[:, 0] * 2.0 - x[:, 1] * 1.5 + 0.3
    params = {"0_dense": {"w": jnp.full((6,), 0.1), "b": jnp.zeros(())}}

    def loss(params):
        pred = x @ params["0_dense"]["w"] + params["0_dense"]["b"]
        return jnp.mean((pred - y) ** 2)

    return params, loss


def train(params, loss, opt, steps=300):
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(steps):
        params, opt_state = step(params, opt_state)
    return np.asarray(params["0_dense"]["w"]), float(params["0_dense"]["b"])


def test_chained_after_sgd_it_solves_the_lasso_with_exact_zeros():
    """Proximal gradient descent (ISTA): irrelevant noise features end at exactly 0."""
    lr, strength = 0.05, 0.1
    params, loss = lasso_problem("noise")
    w, b = train(params, loss, optax.chain(optax.sgd(lr), regularizers.l1_proximal(strength, lr)))
    assert np.all(w[2:] == 0.0), w
    assert 1.5 < w[0] < 2.0 and -1.5 < w[1] < -1.0, w  # relevant ones survive, shrunk
    assert abs(b - 0.3) < 0.05  # the bias is not shrunk to 0
    w_plain, _ = train(params, loss, optax.sgd(lr))
    assert np.all(w_plain[2:] != 0.0)  # without the prox step nothing is exactly zero


def test_chained_after_adam_it_zeroes_weights_without_gradient():
    lr, strength = 0.05, 0.1
    params, loss = lasso_problem("zero")
    w, b = train(params, loss, optax.chain(optax.adam(lr), regularizers.l1_proximal(strength, lr)))
    assert np.all(w[2:] == 0.0), w
    assert w[0] > 1.5 and w[1] < -1.0, w
    assert abs(b - 0.3) < 0.1


def test_l1_proximal_jit_equals_eager(params):
    tx = regularizers.l1_proximal(0.5, 0.1)
    updates = jax.tree.map(lambda p: jnp.full_like(p, -0.02), params)
    eager, _ = tx.update(updates, tx.init(params), params)
    jitted, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    chex.assert_trees_all_close(jitted, eager)


def test_l1_proximal_needs_params(params):
    tx = regularizers.l1_proximal(0.1, 0.1)
    with pytest.raises(ValueError, match="l1_proximal: update needs the current params"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize("args, name", [
    ((-1.0, 0.1), "strength"), ((float("nan"), 0.1), "strength"),
    ((0.1, float("inf")), "learning_rate"), ((0.1, -0.01), "learning_rate"),
])
def test_l1_proximal_rejects_bad_hyperparameters(args, name):
    with pytest.raises(ValueError, match=f"l1_proximal: {name} must be a finite float >= 0"):
        regularizers.l1_proximal(*args)
