"""serial and residual: shape threading, readable child keys, key splitting, error paths."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdnn.core import LayerError
from jdnn.layers import (
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    Relu,
    Tanh,
    residual,
    serial,
)

# --- serial ----------------------------------------------------------------------------------


def test_serial_threads_shapes_through_init(key):
    model = serial(Conv2D(3, 3), Relu(), MaxPool2D(2), Flatten(), Dense(3))
    out_shape, params, _ = model.init(key, (2, 6, 6, 3))  # no layer was told its input size
    assert out_shape == (2, 3)
    assert params["0_conv2d"]["w"].shape == (3, 3, 3, 3)
    assert params["4_dense"]["w"].shape == (3 * 3 * 3, 3)


def test_serial_applies_children_in_order(key):
    model = serial(Dense(3), Tanh(), Dense(3))
    _, params, state = model.init(key, (3, 5))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 5)), jnp.float32)
    y, _ = model.apply(params, state, x)
    h = jnp.tanh(x @ params["0_dense"]["w"] + params["0_dense"]["b"])
    np.testing.assert_allclose(y, h @ params["2_dense"]["w"] + params["2_dense"]["b"], rtol=1e-6)


def test_serial_children_get_different_keys_at_init(key):
    _, params, _ = serial(Dense(3), Dense(3)).init(key, (1, 3))
    assert not np.allclose(params["0_dense"]["w"], params["1_dense"]["w"])


def test_serial_splits_keys_per_child(key):
    model = serial(Dropout(0.5), Dropout(0.5))
    x = jnp.ones((100, 100))
    _, params, state = model.init(key, x.shape)
    y, _ = model.apply(params, state, x, key=key, train=True)
    # independent masks keep 1/4 of the entries (each scaled by 4); one shared mask would keep 1/2
    assert abs(float(jnp.mean(y == 0)) - 0.75) < 0.02
    np.testing.assert_array_equal(np.unique(y), [0.0, 4.0])
    y2, _ = model.apply(params, state, x, key=jax.random.key(1), train=True)
    assert not np.array_equal(y, y2)


def test_serial_passes_train_and_threads_state(key):
    model = serial(Dense(3), BatchNorm(), Dropout(0.5))
    _, params, state = model.init(key, (8, 5))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 5)), jnp.float32)
    y, new_state = model.apply(params, state, x, key=key, train=True)
    assert set(new_state) == {"0_dense", "1_batchnorm", "2_dropout"}
    assert not np.allclose(new_state["1_batchnorm"]["mean"], state["1_batchnorm"]["mean"])
    assert jnp.mean(y == 0) > 0.2  # dropout was on
    y, eval_state = model.apply(params, new_state, x)
    chex.assert_trees_all_equal(eval_state, new_state)  # eval: running statistics kept
    assert jnp.all(y != 0)  # and no dropout
    with pytest.raises(LayerError, match=r"^Dropout layer at 2_dropout: train=True needs"):
        model.apply(params, state, x, train=True)


def test_nested_serial(key):
    model = serial(Dense(5), serial(Dense(3), Relu()))
    out_shape, params, state = model.init(key, (2, 5))
    assert out_shape == (2, 3)
    assert params["1_serial"]["0_dense"]["w"].shape == (5, 3)
    assert model.spec.children[1] == serial(Dense(3), Relu()).spec


# --- residual --------------------------------------------------------------------------------


def test_residual_adds_the_input(key):
    inner = serial(Dense(5), Tanh(), Dense(5))
    block = residual(inner)
    out_shape, params, state = block.init(key, (3, 5))
    assert out_shape == (3, 5) and set(params) == {"0_serial"} and set(state) == {"0_serial"}
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 5)), jnp.float32)
    y, _ = block.apply(params, state, x)
    inner_y, _ = inner.apply(params["0_serial"], state["0_serial"], x)
    np.testing.assert_allclose(y, x + inner_y, rtol=1e-6)


def test_residual_passes_key_train_and_state(key):
    block = residual(serial(BatchNorm(), Dropout(0.5)))
    _, params, state = block.init(key, (8, 4))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 4)), jnp.float32)
    y, new_state = block.apply(params, state, x, key=key, train=True)
    assert set(new_state["0_serial"]) == {"0_batchnorm", "1_dropout"}
    assert not np.allclose(new_state["0_serial"]["0_batchnorm"]["mean"], 0.0)
    assert np.any(np.asarray(y) == np.asarray(x))  # where dropout zeroed the branch, y = x
    with pytest.raises(LayerError, match=r"^Dropout layer at 0_serial/1_dropout: train=True"):
        block.apply(params, state, x, train=True)


def test_residual_rejects_a_shape_changing_inner_layer(key):
    with pytest.raises(LayerError, match=r"^residual layer at <root>: the inner layer maps "
                                         r"\(2, 5\) to \(2, 3\), but y = x \+ layer\(x\) needs "
                                         r"the shape kept"):
        residual(Dense(3)).init(key, (2, 5))
    model = serial(Dense(5), residual(serial(Dense(3), Relu())))
    with pytest.raises(LayerError, match=r"^residual layer at 1_residual: the inner layer maps "
                                         r"\(2, 5\) to \(2, 3\)"):
        model.init(key, (2, 5))
    with pytest.raises(LayerError, match=r"^Conv2D layer at 0_residual/0_conv2d: expected an "
                                         r"NHWC input_shape"):
        serial(residual(Conv2D(5, 3))).init(key, (2, 5))


def test_residual_rejects_a_shape_change_at_apply(key):
    block = residual(Dense(5))
    _, params, state = block.init(key, (2, 5))
    params = {"0_dense": Dense(3).init(key, (2, 5))[1]}  # params of a shape-changing layer
    with pytest.raises(LayerError, match=r"^residual layer at <root>: the inner layer maps "
                                         r"\(2, 5\) to \(2, 3\)"):
        block.apply(params, state, jnp.ones((2, 5)))
