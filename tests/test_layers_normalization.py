"""BatchNorm: batch statistics in training, running statistics in evaluation; LayerNorm: each
position over its own features, the same in both."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jdnn
from jdnn.core import LayerError, rebuild, trait
from jdnn.layers import BatchNorm, Dense, serial
from jdnn.layers.normalization import LayerNorm

EPS = 1e-5


def _data(shape=(64, 4), seed=0):
    rng = np.random.default_rng(seed)
    offsets, scales = np.array([3.0, -2.0, 0.0, 10.0]), np.array([1.0, 5.0, 0.5, 2.0])
    return (rng.normal(size=shape) * scales + offsets).astype(np.float32)


def test_train_mode_normalizes_each_feature(key):
    layer = BatchNorm()
    _, params, state = layer.init(key, (64, 4))
    y, _ = layer.apply(params, state, jnp.asarray(_data()), train=True)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=0), 1.0, rtol=1e-3)


def test_train_mode_normalizes_images_per_channel(key):
    layer = BatchNorm()
    _, params, state = layer.init(key, (4, 3, 3, 4))
    x = _data((4, 3, 3, 4))
    y, new_state = layer.apply(params, state, jnp.asarray(x), train=True)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)
    np.testing.assert_allclose(new_state["mean"], 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-5)


def test_running_statistics_update_exactly(key):
    layer = BatchNorm(momentum=0.8)
    _, params, _ = layer.init(key, (64, 4))
    state = {"mean": jnp.array([1.0, -1.0, 0.5, 2.0]), "var": jnp.array([2.0, 0.5, 1.0, 3.0])}
    x = _data()
    _, new_state = layer.apply(params, state, jnp.asarray(x), train=True)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(new_state["mean"],
                               0.8 * np.asarray(state["mean"]) + 0.2 * x64.mean(axis=0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_state["var"],  # the biased batch variance
                               0.8 * np.asarray(state["var"]) + 0.2 * x64.var(axis=0),
                               rtol=1e-5, atol=1e-6)


def test_running_statistics_converge_to_the_data(key):
    layer = BatchNorm(momentum=0.5)
    _, params, state = layer.init(key, (64, 4))
    x = _data()
    for _ in range(30):
        _, state = layer.apply(params, state, jnp.asarray(x), train=True)
    np.testing.assert_allclose(state["mean"], x.mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state["var"], x.var(axis=0), rtol=1e-4)


def test_eval_mode_uses_running_statistics():
    layer = BatchNorm(eps=EPS)
    params = {"scale": jnp.array([1.0, 2.0, 0.5, -1.0]), "bias": jnp.array([0.0, 1.0, -1.0, 3.0])}
    state = {"mean": jnp.array([3.0, -2.0, 0.0, 10.0]), "var": jnp.array([1.0, 25.0, 0.25, 4.0])}
    x = _data((5, 4))
    y, new_state = layer.apply(params, state, jnp.asarray(x))
    p, s = jax.tree.map(np.asarray, (params, state))
    expected = (x - s["mean"]) / np.sqrt(s["var"] + EPS) * p["scale"] + p["bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert new_state is state or jax.tree.all(jax.tree.map(jnp.array_equal, new_state, state))


def test_batch_of_one_in_eval_mode(key):
    layer = BatchNorm()
    _, params, state = layer.init(key, (8, 4))
    x = _data((8, 4))
    for _ in range(5):
        _, state = layer.apply(params, state, jnp.asarray(x), train=True)
    batch, _ = layer.apply(params, state, jnp.asarray(x))
    one, _ = layer.apply(params, state, jnp.asarray(x[:1]))
    assert np.all(np.abs(np.asarray(one)) > 1e-3)
    np.testing.assert_allclose(one[0], batch[0], rtol=1e-6)


def test_train_mode_gradients_flow_through_batch_statistics(key):
    layer = BatchNorm()
    _, params, state = layer.init(key, (16, 4))
    x = jnp.asarray(_data((16, 4)))
    # each feature of y sums to zero over the batch whatever x is, so d(sum y)/dx = 0; a layer
    # that treated the batch mean as a constant would give 1/std per entry instead
    grad = jax.grad(lambda x: layer.apply(params, state, x, train=True)[0].sum())(x)
    np.testing.assert_allclose(grad, 0.0, atol=1e-5)
    with jax.enable_x64(True):
        _, params, state = layer.init(key, (16, 4))
        params = {"scale": params["scale"] * 1.5, "bias": params["bias"] + 0.5}
        x64 = jnp.asarray(_data((16, 4)), jnp.float64)

        def f(x, params):
            return layer.apply(params, state, x, train=True)[0]

        check_grads(jax.jit(f), (x64, params), order=1, modes=("rev",))


def test_momentum_zero_keeps_only_the_last_batch(key):
    layer = BatchNorm(momentum=0.0)
    _, params, state = layer.init(key, (64, 4))
    x = _data()
    _, new_state = layer.apply(params, state, jnp.asarray(x), train=True)
    np.testing.assert_allclose(new_state["mean"], x.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_spec():
    spec = BatchNorm(momentum=0.99, eps=1e-3).spec
    assert (spec.kind, spec["momentum"], spec["eps"]) == ("BatchNorm", 0.99, 1e-3)


# --- one value per feature in training: refused, never all zeros ------------------------------

ONE_VALUE = r"holds 1 value per feature: every output would be the bias.*batch of at least 2.*" \
            r"train=False"


@pytest.mark.parametrize("shape", [(1, 4), (1, 1, 1, 4), (4,)])
def test_training_on_one_value_per_feature_is_refused(key, shape):
    layer = BatchNorm()
    _, params, state = layer.init(key, (8, 4))
    pattern = rf"^BatchNorm layer at <root>: .*input of shape {re.escape(str(shape))} {ONE_VALUE}"
    with pytest.raises(LayerError, match=pattern):
        layer.apply(params, state, jnp.ones(shape), train=True)
    with pytest.raises(LayerError, match=ONE_VALUE):  # at trace time, under jit too
        jax.jit(lambda x: layer.apply(params, state, x, train=True))(jnp.ones(shape))
    y, _ = layer.apply(params, state, jnp.ones(shape), train=False)  # evaluation is fine
    assert y.shape == shape


def test_one_image_of_many_pixels_still_trains(key):
    layer = BatchNorm()
    _, params, state = layer.init(key, (1, 3, 3, 4))
    y, _ = layer.apply(params, state, jnp.asarray(_data((1, 3, 3, 4))), train=True)
    np.testing.assert_allclose(np.asarray(y).mean(axis=(0, 1, 2)), 0.0, atol=1e-5)


def test_the_error_names_the_layer_path(key):
    model = serial(Dense(4), BatchNorm())
    _, params, state = model.init(key, (2, 3))
    with pytest.raises(LayerError, match=rf"^BatchNorm layer at 1_batchnorm: .*{ONE_VALUE}"):
        model.apply(params, state, jnp.ones((1, 3)), train=True)


def test_fit_with_batch_size_one_refuses_batch_norm():
    model = serial(Dense(4), BatchNorm(), jdnn.Relu(), Dense(2))
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    y = np.arange(6) % 2
    with pytest.raises(LayerError, match=rf"BatchNorm layer at 1_batchnorm: .*{ONE_VALUE}"):
        jdnn.fit(model, (x, y), loss=jdnn.losses.softmax_cross_entropy,
                 optimizer=optax.sgd(0.1), epochs=1, batch_size=1, key=jax.random.key(0),
                 progress=False)


# --- LayerNorm ---------------------------------------------------------------------------------


def _ln_data(shape=(3, 4, 6), seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape) * rng.uniform(0.5, 5.0, size=shape[-1]) + 3.0


def test_layer_norm_normalizes_each_position_over_its_features(key):
    layer = LayerNorm()
    out_shape, params, state = layer.init(key, (3, 4, 6))
    assert out_shape == (3, 4, 6) and state == {}
    np.testing.assert_array_equal(params["scale"], np.ones(6))
    np.testing.assert_array_equal(params["bias"], np.zeros(6))
    x = jnp.asarray(_ln_data(), jnp.float32)
    y, new_state = layer.apply(params, state, x, train=True)
    assert new_state == {}
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=-1), 1.0, rtol=1e-3)
    evaluated, _ = layer.apply(params, state, x, train=False)
    np.testing.assert_array_equal(y, evaluated)   # no batch statistics: the same in both modes
    alone, _ = layer.apply(params, state, x[:1, :1], train=True)   # one position is enough
    np.testing.assert_allclose(alone[0, 0], y[0, 0], rtol=1e-6)


# torch has no "bias without scale" (its bias needs elementwise_affine=True)
@pytest.mark.parametrize("use_scale, use_bias", [(True, True), (True, False), (False, False)])
def test_layer_norm_equals_torch_with_copied_weights(use_scale, use_bias, torch):
    rng = np.random.default_rng(1)
    x, dy = _ln_data(seed=1), rng.normal(size=(3, 4, 6))
    scale, bias = 1.0 + 0.3 * rng.normal(size=6), rng.normal(size=6)
    with jax.enable_x64(True):
        layer = LayerNorm(1e-3, use_scale=use_scale, use_bias=use_bias)
        _, params, state = layer.init(jax.random.key(0), x.shape)
        params = {k: jnp.asarray({"scale": scale, "bias": bias}[k]) for k in params}
        y, vjp = jax.vjp(lambda p, xx: layer.apply(p, state, xx)[0], params, jnp.asarray(x))
        dparams, dx = vjp(jnp.asarray(dy))
        assert y.dtype == jnp.float64

    torch_layer = torch.nn.LayerNorm(6, eps=1e-3, elementwise_affine=use_scale, bias=use_bias,
                                     dtype=torch.float64)
    with torch.no_grad():
        if use_scale:
            torch_layer.weight.copy_(torch.from_numpy(scale))
        if use_bias:
            torch_layer.bias.copy_(torch.from_numpy(bias))
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = torch_layer(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert set(dparams) == {k for k, on in (("scale", use_scale), ("bias", use_bias)) if on}
    if use_scale:
        np.testing.assert_allclose(dparams["scale"], torch_layer.weight.grad.numpy(), rtol=1e-10)
    if use_bias:
        np.testing.assert_allclose(dparams["bias"], torch_layer.bias.grad.numpy(), rtol=1e-10)


def test_layer_norm_equals_flax(key):
    import flax.linen as nn

    rng = np.random.default_rng(2)
    x = jnp.asarray(_ln_data(seed=2), jnp.float32)
    params = {"scale": jnp.asarray(1.0 + 0.3 * rng.normal(size=6), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=6), jnp.float32)}
    y, _ = LayerNorm().apply(params, {}, x)
    flax_y = nn.LayerNorm(epsilon=1e-5).apply({"params": params}, x)
    np.testing.assert_allclose(y, flax_y, rtol=1e-5, atol=1e-5)


def test_layer_norm_jit_vmap_and_any_rank(key):
    layer = LayerNorm()
    _, params, state = layer.init(key, (5, 6))
    x = jnp.asarray(_ln_data((5, 6)), jnp.float32)
    y, _ = layer.apply(params, state, x)
    np.testing.assert_allclose(jax.jit(layer.apply)(params, state, x)[0], y, rtol=1e-6)
    mapped = jax.vmap(lambda xi: layer.apply(params, state, xi[None])[0][0])(x)
    np.testing.assert_allclose(mapped, y, rtol=1e-6)
    images = jnp.asarray(_ln_data((2, 3, 3, 6)), jnp.float32)   # NHWC: each pixel's channels
    out, _ = layer.apply(params, state, images)
    np.testing.assert_allclose(out[1, 2, 0], layer.apply(params, state, images[1, 2, :1])[0][0],
                               rtol=1e-6)


def test_layer_norm_params_follow_the_flags(key):
    assert set(LayerNorm(use_bias=False).init(key, (2, 4))[1]) == {"scale"}
    assert set(LayerNorm(use_scale=False).init(key, (2, 4))[1]) == {"bias"}
    _, params, state = LayerNorm(use_scale=False, use_bias=False).init(key, (2, 4))
    assert params == {}
    y, _ = LayerNorm(use_scale=False, use_bias=False).apply(params, state,
                                                            jnp.array([[1.0, 2.0, 3.0, 4.0]]))
    np.testing.assert_allclose(y[0], (np.arange(4) - 1.5) / np.sqrt(1.25 + 1e-5), rtol=1e-6)


@pytest.mark.parametrize("eps", [0, -1e-3, "1e-5", True])
def test_layer_norm_bad_eps(eps):
    with pytest.raises(ValueError, match=re.escape(f"LayerNorm: eps must be a float > 0, got "
                                                   f"{eps!r}")):
        LayerNorm(eps)


def test_layer_norm_input_errors(key):
    with pytest.raises(LayerError, match=r"LayerNorm layer at <root>: normalizes over the last "
                                         r"axis \(the features\), but input_shape \(8, 1\) has 1 "
                                         r"there"):
        LayerNorm().init(key, (8, 1))
    _, params, state = LayerNorm().init(key, (2, 4))
    with pytest.raises(LayerError, match=r"expected input with last axis \(features\) of size 4, "
                                         r"got an input of shape \(2, 5\)"):
        LayerNorm().apply(params, state, jnp.ones((2, 5)))


def test_layer_norm_spec_and_flops():
    spec = LayerNorm().spec
    assert repr(spec) == "LayerNorm(eps=1e-05, use_scale=True, use_bias=True)"
    assert trait(spec, "family") == "norm" and not trait(spec, "padded", False)
    assert trait(spec, "flops")(spec, (8, 20, 64), (8, 20, 64)) == 7 * 20 * 64
    bare = LayerNorm(use_scale=False, use_bias=False).spec
    assert trait(bare, "flops")(bare, (8, 64), (8, 64)) == 5 * 64
    assert rebuild(spec).spec == spec
