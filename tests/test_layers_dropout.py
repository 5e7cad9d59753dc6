"""Dropout: `rate` is the fraction dropped, survivors scaled by 1/(1-rate), keys required; with
`rate_in_state=True` the rate is a state leaf, and the layer otherwise the same."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdnn.core import LayerError, MissingKeyError
from jdnn.layers import Dense, Dropout, serial

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


def test_a_missing_key_is_a_missing_key_error_with_the_path(key):
    model = serial(Dense(3), Dropout(0.5))
    _, params, state = model.init(key, (4, 2))
    with pytest.raises(MissingKeyError, match=r"^Dropout layer at 1_dropout: train=True needs a "
                                              r"random key") as caught:
        model.apply(params, state, jnp.ones((4, 2)), train=True)
    assert caught.value.path == ("1_dropout",) and caught.value.entry is None


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


# --- the rate held in the state (rate_in_state=True) -----------------------------------------


def _tunable(rate, shape=SHAPE):
    layer = Dropout(rate, rate_in_state=True)
    _, params, state = layer.init(jax.random.key(0), shape)
    return layer, params, state


def test_rate_in_state_is_a_state_leaf_of_the_default_float_dtype():
    layer, params, state = _tunable(0.3)
    assert params == {} and set(state) == {"rate"}
    assert state["rate"].shape == () and state["rate"].dtype == jnp.float32
    assert float(state["rate"]) == pytest.approx(0.3)
    with jax.enable_x64(True):
        assert _tunable(0.3)[2]["rate"].dtype == jnp.float64


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "x64"])
@pytest.mark.parametrize("rate", [0.1, 0.25, 0.3, 0.5, 0.8])
def test_rate_in_state_equals_dropout_with_the_same_key(rate, x64):
    """The same masks as `Dropout(r)` for the rate `r` the state holds (`rate` rounded to the
    state's dtype), so the same outputs and input gradients: equal up to one float32 ulp, as
    XLA may divide by a constant by multiplying by its reciprocal."""
    with jax.enable_x64(x64):
        x, key = _x(), jax.random.key(7)
        cotangent = jnp.asarray(np.random.default_rng(1).normal(size=SHAPE), x.dtype)
        layer, params, state = _tunable(rate)
        fixed = Dropout(float(state["rate"]))

        def outputs_and_grad(apply, state):
            y, vjp = jax.vjp(lambda xx: apply(params, state, xx, key=key, train=True)[0], x)
            return y, vjp(cotangent)[0]

        y, dx = outputs_and_grad(layer.apply, state)
        y_fixed, dx_fixed = outputs_and_grad(fixed.apply, {})
    assert y.dtype == dx.dtype == x.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(y) == 0, np.asarray(y_fixed) == 0)
    np.testing.assert_array_max_ulp(y, y_fixed, 1)
    np.testing.assert_array_equal(np.asarray(dx) == 0, np.asarray(dx_fixed) == 0)
    np.testing.assert_array_max_ulp(dx, dx_fixed, 1)
    assert abs(np.mean(np.asarray(y) == 0) - rate) < 0.01


def test_rate_changed_after_init_is_honored_and_compiles_once(key):
    layer, params, state = _tunable(0.5)
    x = _x()
    traces = []

    @jax.jit
    def apply(state, x, key):
        traces.append(1)
        return layer.apply(params, state, x, key=key, train=True)[0]

    # rate 0: the identity in training, although nothing short-circuits a traced rate
    np.testing.assert_array_equal(apply({"rate": jnp.float32(0.0)}, x, key), x)
    for rate in (0.1, 0.8):
        y = np.asarray(apply({"rate": jnp.float32(rate)}, x, key))
        assert abs(np.mean(y == 0) - rate) < 0.01
        same = Dropout(float(np.float32(rate)))  # the rate the state holds
        y_fixed = np.asarray(same.apply({}, {}, x, key=key, train=True)[0])
        np.testing.assert_array_equal(y == 0, y_fixed == 0)
        np.testing.assert_array_max_ulp(y, y_fixed, 1)
    assert len(traces) == 1  # the rate is data: one compilation serves every rate


def test_rate_in_state_members_of_a_vmap_each_use_their_own_rate(key):
    layer, params, _ = _tunable(0.0)
    x = _x()
    rates = jnp.asarray([0.0, 0.2, 0.6])
    ys = jax.vmap(lambda r: layer.apply(params, {"rate": r}, x, key=key, train=True)[0])(rates)
    for y, rate in zip(np.asarray(ys), [0.0, 0.2, 0.6]):
        assert abs(np.mean(y == 0) - rate) < 0.01


def test_rate_in_state_eval_is_the_identity_and_keeps_the_state(key):
    layer, params, state = _tunable(0.5)
    x = _x()
    for k in (None, key):
        y, new_state = layer.apply(params, state, x, key=k)
        np.testing.assert_array_equal(y, x)
        assert new_state is state
    _, new_state = layer.apply(params, state, x, key=key, train=True)
    assert new_state is state


def test_rate_in_state_errors_name_the_layer(key):
    layer, params, state = _tunable(0.0, (4, 3))
    with pytest.raises(LayerError, match=r"^Dropout layer at <root>: train=True needs a random "
                                         r"key"):
        layer.apply(params, state, jnp.ones((4, 3)), train=True)  # even at rate 0
    with pytest.raises(LayerError, match=r"^Dropout layer at <root>: rate_in_state=True reads the "
                                         r"rate from state\['rate'\], but the state has the keys "
                                         r"\[\]; pass the state that init returned"):
        layer.apply(params, {}, jnp.ones((4, 3)), key=key, train=True)
    model = serial(Dense(3), Dropout(0.5, rate_in_state=True))
    _, params, _ = model.init(key, (4, 3))
    with pytest.raises(LayerError, match=r"^Dropout layer at 1_dropout: rate_in_state=True"):
        model.apply(params, {"0_dense": {}, "1_dropout": {}}, jnp.ones((4, 3)))


@pytest.mark.parametrize("rate", [1.0, -0.1, None])
def test_rate_in_state_validates_the_initial_rate(rate):
    with pytest.raises(ValueError, match=r"Dropout: rate must be a drop probability in \[0, 1\)"):
        Dropout(rate, rate_in_state=True)


@pytest.mark.parametrize("flag", [1, "yes", None])
def test_rate_in_state_must_be_a_bool(flag):
    with pytest.raises(ValueError, match=r"Dropout: rate_in_state must be True or False, got"):
        Dropout(0.5, rate_in_state=flag)


def test_spec_records_rate_in_state_only_when_set_and_round_trips_json():
    assert repr(Dropout(0.5).spec) == "Dropout(rate=0.5)"
    assert Dropout(0.5, rate_in_state=False).spec == Dropout(0.5).spec
    spec = Dropout(0.3, rate_in_state=True).spec
    assert repr(spec) == "Dropout(rate=0.3, rate_in_state=True)"
    assert spec["rate_in_state"] is True and spec != Dropout(0.3).spec
    data = json.loads(json.dumps(serial(Dense(2), Dropout(0.3, rate_in_state=True)).spec.to_dict()))
    assert data["children"][1] == {"kind": "Dropout", "children": [],
                                   "hparams": {"rate": 0.3, "rate_in_state": True}}
    # the constructor rebuilds the same layer from the recorded hyper-parameters
    assert Dropout(**data["children"][1]["hparams"]).spec == spec
