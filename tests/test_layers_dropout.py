"""Dropout: `rate` is the fraction dropped, survivors scaled by 1/(1-rate), keys required."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdnn.core import LayerError
from jdnn.layers import Dropout

SHAPE = (200, 500)


def _x():
    return jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, SHAPE).astype(np.float32))


def _train(rate, x, key):
    layer = Dropout(rate)
    _, params, state = layer.init(key, x.shape)
    y, new_state = layer.apply(params, state, x, key=key, train=True)
    assert new_state == {}
    return np.asarray(y)


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.9])
def test_fraction_dropped_is_rate(rate, key):
    y = _train(rate, _x(), key)
    assert abs(np.mean(y == 0) - rate) < 0.01


@pytest.mark.parametrize("rate", [0.3, 0.5])
def test_kept_values_are_scaled_exactly(rate, key):
    x = _x()
    y = _train(rate, x, key)
    kept = y != 0
    # exact up to float32 rounding (XLA may multiply by the reciprocal instead of dividing)
    np.testing.assert_array_max_ulp(y[kept], (np.asarray(x) / np.float32(1.0 - rate))[kept], 1)
    # so the expected output equals the input
    assert abs(y.mean() / float(x.mean()) - 1.0) < 0.01


def test_masks_depend_on_the_key_only(key):
    x = _x()
    a, b = _train(0.5, x, jax.random.key(1)), _train(0.5, x, jax.random.key(2))
    assert np.mean((a == 0) != (b == 0)) > 0.4  # different keys: independent masks
    np.testing.assert_array_equal(_train(0.5, x, jax.random.key(1)), a)  # same key: same mask


def test_train_without_key_is_an_error(key):
    layer = Dropout(0.5)
    _, params, state = layer.init(key, (4, 3))
    with pytest.raises(LayerError, match=r"^Dropout layer at <root>: train=True needs a random "
                                         r"key: call apply\(\.\.\., key=key, train=True\), or "
                                         r"train=False for evaluation"):
        layer.apply(params, state, jnp.ones((4, 3)), train=True)
    with pytest.raises(ValueError, match="needs a random key"):
        layer.apply(params, state, jnp.ones((4, 3)), key=None, train=True)


def test_eval_is_the_identity(key):
    layer = Dropout(0.5)
    _, params, state = layer.init(key, SHAPE)
    x = _x()
    for k in (None, key):
        y, new_state = layer.apply(params, state, x, key=k)
        np.testing.assert_array_equal(y, x)
        assert new_state == {}


def test_rate_zero_is_the_identity_in_training(key):
    layer = Dropout(0.0)
    _, params, state = layer.init(key, SHAPE)
    x = _x()
    np.testing.assert_array_equal(layer.apply(params, state, x, key=key, train=True)[0], x)
    # nothing random happens, so no key is needed either
    np.testing.assert_array_equal(layer.apply(params, state, x, train=True)[0], x)


@pytest.mark.parametrize("rate", [1.5, 1.0, -0.1, float("nan"), True, None])
def test_rate_is_validated_at_construction(rate):
    with pytest.raises(ValueError, match=r"Dropout: rate must be a drop probability in \[0, 1\), "
                                         r"got"):
        Dropout(rate)


def test_spec_records_the_drop_rate():
    spec = Dropout(1 / 4).spec
    assert spec.kind == "Dropout" and spec["rate"] == 0.25 and isinstance(spec["rate"], float)
