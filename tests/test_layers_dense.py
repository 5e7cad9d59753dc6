"""Dense, and the initializer arguments shared by Dense and Conv2D."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdnn.layers import Conv2D, Dense


def test_dense_is_affine_on_the_last_axis(key):
    layer = Dense(3, b_init="ones")
    out_shape, params, state = layer.init(key, (2, 4, 5))  # any leading axes
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 5)), jnp.float32)
    y, new_state = layer.apply(params, state, x)
    assert out_shape == y.shape == (2, 4, 3) and new_state == {}
    np.testing.assert_allclose(y, np.asarray(x) @ params["w"] + params["b"], rtol=1e-5,
                               atol=1e-6)


def test_dense_default_init(key):
    _, params, _ = Dense(256).init(key, (1, 512))
    np.testing.assert_array_equal(params["b"], 0.0)
    assert params["w"].dtype == jnp.float32
    assert abs(float(params["w"].std()) - np.sqrt(1 / 512)) < 0.02 * np.sqrt(1 / 512)  # LeCun


def test_he_normal_has_its_own_distribution(key):
    _, he, _ = Dense(256, w_init="he_normal").init(key, (1, 512))
    _, lecun, _ = Dense(256).init(key, (1, 512))
    he_std = float(he["w"].std())
    assert abs(he_std - np.sqrt(2 / 512)) < 0.02 * np.sqrt(2 / 512)
    assert abs(float(he["w"].mean())) < 0.05 * he_std
    assert abs(he_std / float(lecun["w"].std()) - np.sqrt(2)) < 0.03
    assert Dense(256, w_init="he_normal").spec["w_init"] == "he_normal"
    # conv fan_in is kh * kw * in_channels
    _, conv, _ = Conv2D(128, 3, w_init="he_normal").init(key, (1, 4, 4, 64))
    assert abs(float(conv["w"].std()) - np.sqrt(2 / 576)) < 0.02 * np.sqrt(2 / 576)


def test_callable_initializer(key):
    def halves(key, shape, dtype=jnp.float32):
        del key
        return jnp.full(shape, 0.5, dtype)

    layer = Dense(3, w_init=halves, b_init=jax.nn.initializers.constant(-1.0))
    _, params, state = layer.init(key, (2, 4))
    np.testing.assert_array_equal(params["w"], np.full((4, 3), 0.5))
    np.testing.assert_array_equal(params["b"], [-1.0, -1.0, -1.0])
    y, _ = layer.apply(params, state, jnp.ones((2, 4)))
    np.testing.assert_array_equal(y, np.ones((2, 3)))  # 4 * 0.5 - 1
    assert "halves" in layer.spec["w_init"]
    hash(layer.spec)  # a callable is recorded by name, so the spec stays hashable


def test_b_init_ones(key):
    _, params, _ = Dense(3, b_init="ones").init(key, (2, 5))
    np.testing.assert_array_equal(params["b"], [1.0, 1.0, 1.0])
    _, params, _ = Conv2D(3, 3, b_init="ones").init(key, (1, 4, 4, 3))
    np.testing.assert_array_equal(params["b"], [1.0, 1.0, 1.0])


@pytest.mark.parametrize("layer, shape", [(Dense(3, use_bias=False), (2, 5)),
                                          (Conv2D(3, 3, use_bias=False), (1, 4, 4, 3))],
                         ids=["dense", "conv"])
def test_no_bias(layer, shape, key):
    _, params, state = layer.init(key, shape)
    assert set(params) == {"w"}
    assert layer.spec["use_bias"] is False
    y, _ = layer.apply(params, state, jnp.zeros(shape))
    np.testing.assert_array_equal(y, 0.0)  # nothing added


def test_dense_accepts_one_example_without_batch_axis(key):
    layer = Dense(3)
    _, params, state = layer.init(key, (1, 5))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5,)), jnp.float32)
    np.testing.assert_allclose(layer.apply(params, state, x)[0],
                               layer.apply(params, state, x[None])[0][0], rtol=1e-6)
