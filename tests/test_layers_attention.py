"""MultiHeadAttention: shapes, errors, masks, padding, jit and vmap, and equality with PyTorch's
and flax's multi-head attention given the same weights (float64)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
from jdnn.core import LayerError, rebuild, trait
from jdnn.layers import Dense, serial
from jdnn.layers.attention import MultiHeadAttention
from jdnn.padded import Padded

B, T, F = 3, 5, 8
LENGTHS = np.array([5, 2, 3])


def _x(shape=(B, T, F), seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def _random_params(params, seed=1):
    """The layer's params with every entry random (the default biases are 0)."""
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(np.asarray(v) + 0.3 * rng.normal(size=v.shape), v.dtype)
            for k, v in params.items()}


def test_shapes_and_parameter_layout(key):
    layer = MultiHeadAttention(4, 3, output_features=6)
    out_shape, params, state = layer.init(key, (B, T, F))
    assert out_shape == (B, T, 6) and state == {}
    assert {k: v.shape for k, v in params.items()} == {
        "w_q": (F, 4, 3), "w_k": (F, 4, 3), "w_v": (F, 4, 3), "w_o": (12, 6),
        "b_q": (4, 3), "b_k": (4, 3), "b_v": (4, 3), "b_o": (6,)}
    np.testing.assert_array_equal(params["b_q"], 0.0)
    y, new_state = layer.apply(params, state, jnp.asarray(_x(), jnp.float32))
    assert y.shape == (B, T, 6) and y.dtype == jnp.float32 and new_state == {}
    assert jdnn.core.output_shape(MultiHeadAttention(2, 4), (7, 11, F)) == (7, 11, F)


def test_no_bias_and_initializer_fan_in(key):
    _, params, _ = MultiHeadAttention(4, 64, use_bias=False).init(key, (1, 2, 512))
    assert set(params) == {"w_q", "w_k", "w_v", "w_o"}
    # each input projection is initialized as one (F, heads * d) matrix: LeCun's 1/fan_in = 1/F
    assert abs(float(params["w_q"].std()) - np.sqrt(1 / 512)) < 0.03 * np.sqrt(1 / 512)
    assert abs(float(params["w_o"].std()) - np.sqrt(1 / 256)) < 0.03 * np.sqrt(1 / 256)
    y, _ = MultiHeadAttention(4, 64, use_bias=False).apply(params, {}, jnp.zeros((1, 2, 512)))
    np.testing.assert_array_equal(y, 0.0)  # nothing added


def test_spec_label_family_and_flops():
    layer = MultiHeadAttention(4, 32, causal=True)
    assert trait(layer.spec, "label")(layer.spec) == "MultiHeadAttention(4x32, causal)"
    assert trait(layer.spec, "label")(MultiHeadAttention(2, 8).spec) == "MultiHeadAttention(2x8)"
    assert trait(layer.spec, "family") == "attention" and trait(layer.spec, "padded") is True
    steps, features, out, inner = 128, 100, 60, 4 * 32
    expected = (2 * steps * features * 3 * inner + 2 * steps * steps * inner
                + 2 * steps * steps * inner + 2 * steps * inner * out)
    assert trait(layer.spec, "flops")(layer.spec, (9, steps, features), (9, steps, out)) \
        == expected
    assert layer.spec["causal"] is True and layer.spec["output_features"] is None
    assert jdnn.MultiHeadAttention is jdnn.layers.MultiHeadAttention is MultiHeadAttention


def test_rebuild_from_the_spec(key):
    layer = MultiHeadAttention(2, 3, causal=True, output_features=4)
    _, params, state = layer.init(key, (B, T, F))
    twin = rebuild(layer.spec)
    x = jnp.asarray(_x(), jnp.float32)
    np.testing.assert_array_equal(twin.apply(params, state, x)[0], layer.apply(params, state, x)[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"num_heads": 0, "head_features": 4}, r"num_heads must be a positive int, got 0"),
    ({"num_heads": 2, "head_features": 2.5}, r"head_features must be a positive int, got 2.5"),
    ({"num_heads": 2, "head_features": 4, "causal": "yes"}, r"causal must be True or False"),
    ({"num_heads": 2, "head_features": 4, "output_features": 0}, r"output_features must be"),
    ({"num_heads": 2, "head_features": 4, "w_init": "nope"}, r"w_init must be an initializer"),
])
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(**kwargs)


def test_wrong_rank_and_feature_mismatch(key):
    layer = MultiHeadAttention(2, 4)
    with pytest.raises(LayerError, match=r"MultiHeadAttention.*rank 3, \(batch, time, "
                                         r"features\), got \(5, 8\)"):
        layer.init(key, (5, F))
    _, params, state = layer.init(key, (B, T, F))
    with pytest.raises(LayerError, match=r"rank 3.*got shape \(5, 8\); a single sequence needs "
                                         r"a batch axis: x\[None\]"):
        layer.apply(params, state, jnp.ones((T, F)))
    with pytest.raises(LayerError, match=r"last axis \(features\) of size 8, got an input of "
                                         r"shape \(3, 5, 6\)"):
        layer.apply(params, state, jnp.ones((B, T, 6)))
    with pytest.raises(LayerError, match=r"rank 3"):
        layer.apply(params, state, Padded(jnp.ones((B, T, 2, F)), jnp.asarray(LENGTHS)))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_causal_steps_see_only_the_past(causal, key):
    layer = MultiHeadAttention(2, 4, causal=causal)
    _, params, state = layer.init(key, (B, T, F))
    x = _x()
    later = x.copy()
    later[:, 3:] += 5.0  # change steps 3 and 4 only
    y, _ = layer.apply(params, state, jnp.asarray(x))
    y_later, _ = layer.apply(params, state, jnp.asarray(later))
    same = np.allclose(y[:, :3], y_later[:, :3], rtol=1e-6, atol=1e-6)
    assert same == causal
    assert not np.allclose(y[:, 3:], y_later[:, 3:])
    # the first step of a causal layer sees only itself: softmax of one score is 1
    if causal:
        v = x[:, 0] @ np.asarray(params["w_v"]).reshape(F, -1)
        np.testing.assert_allclose(y[:, 0], v @ params["w_o"], rtol=1e-5, atol=1e-5)


def _torch_mha(torch, params, heads, d, causal):
    """torch.nn.MultiheadAttention holding jdnn's weights: its in_proj_weight is (3E, E),
    the rows of q, k, v stacked, each E = heads * d rows split into heads head-major."""
    features = params["w_q"].shape[0]
    mha = torch.nn.MultiheadAttention(heads * d, heads, batch_first=True, dtype=torch.float64)
    flat = {k: np.asarray(params[k]).reshape(features, heads * d) for k in ("w_q", "w_k", "w_v")}
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.from_numpy(np.concatenate(
            [flat["w_q"].T, flat["w_k"].T, flat["w_v"].T])))
        mha.in_proj_bias.copy_(torch.from_numpy(np.concatenate(
            [np.asarray(params[k]).ravel() for k in ("b_q", "b_k", "b_v")])))
        mha.out_proj.weight.copy_(torch.from_numpy(np.array(params["w_o"]).T))
        mha.out_proj.bias.copy_(torch.from_numpy(np.array(params["b_o"])))
    return mha.eval()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("padded", [False, True], ids=["plain", "padded"])
def test_equals_torch_multihead_attention(causal, padded, torch):
    heads, d = 2, 4  # torch needs F = heads * d
    x = _x((B, T, heads * d))
    with jax.enable_x64(True):
        layer = MultiHeadAttention(heads, d, causal=causal)
        _, params, state = layer.init(jax.random.key(0), x.shape)
        params = _random_params(params)
        x_in = Padded(jnp.asarray(x), jnp.asarray(LENGTHS)) if padded else jnp.asarray(x)
        y, _ = layer.apply(params, state, x_in)
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1) if causal else None
    key_padding = torch.from_numpy(~(np.arange(T)[None] < LENGTHS[:, None])) if padded else None
    with torch.no_grad():
        expected, _ = _torch_mha(torch, params, heads, d, causal)(
            *(torch.from_numpy(x),) * 3, attn_mask=mask, key_padding_mask=key_padding,
            need_weights=False)
    expected = expected.numpy()
    if padded:  # torch keeps outputs at padded steps; jdnn sets them to 0
        assert isinstance(y, Padded)
        real = np.arange(T)[None] < LENGTHS[:, None]
        np.testing.assert_array_equal(np.asarray(y.values)[~real], 0.0)
        np.testing.assert_allclose(np.asarray(y.values)[real], expected[real], rtol=1e-12,
                                   atol=1e-12)
    else:
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_equals_flax_multihead_dot_product_attention(causal):
    heads, d, out = 2, 3, 5
    x = _x()
    real = np.arange(T)[None] < LENGTHS[:, None]
    with jax.enable_x64(True):
        layer = MultiHeadAttention(heads, d, causal=causal, output_features=out)
        _, params, state = layer.init(jax.random.key(0), x.shape)
        params = _random_params(params)
        y, _ = layer.apply(params, state, Padded(jnp.asarray(x), jnp.asarray(LENGTHS)))
        module = nn.MultiHeadDotProductAttention(num_heads=heads, qkv_features=heads * d,
                                                 out_features=out, deterministic=True)
        flax_params = {name: {"kernel": params[f"w_{name[0]}"], "bias": params[f"b_{name[0]}"]}
                       for name in ("query", "key", "value")}
        flax_params["out"] = {"kernel": params["w_o"].reshape(heads, d, out),
                              "bias": params["b_o"]}
        mask = nn.make_attention_mask(jnp.asarray(real), jnp.asarray(real))
        if causal:
            mask = nn.combine_masks(mask, nn.make_causal_mask(jnp.ones((B, T))))
        expected = module.apply({"params": flax_params}, jnp.asarray(x), mask=mask)
    np.testing.assert_allclose(np.asarray(y.values)[real], np.asarray(expected)[real],
                               rtol=1e-12, atol=1e-12)


def _alone_and_batched(layer, params, state, x, lengths, g):
    """Outputs and parameter gradients of `sum(g * y)` over real steps: the padded batch, and
    each example run alone on its real steps."""
    def loss(p, inputs, weights):
        y, _ = layer.apply(p, state, inputs)
        values = y.values if isinstance(y, Padded) else y
        return jnp.sum(values * weights), values

    grad = jax.jit(jax.grad(loss, has_aux=True))
    batched_grads, batched_y = grad(params, Padded(jnp.asarray(x), jnp.asarray(lengths)),
                                    jnp.asarray(g))
    alone = [grad(params, jnp.asarray(x[b:b + 1, :n]), jnp.asarray(g[b:b + 1, :n]))
             for b, n in enumerate(lengths)]
    return (batched_y, batched_grads), alone


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_padding_never_changes_a_result(causal):
    x = _x()
    real = np.arange(T)[None] < LENGTHS[:, None]
    x[~real] = np.nan  # whatever the padding holds never reaches a result
    g = np.random.default_rng(3).normal(size=(B, T, 4)) * real[..., None]  # reads real steps
    with jax.enable_x64(True):
        layer = MultiHeadAttention(2, 3, causal=causal, output_features=4)
        _, params, state = layer.init(jax.random.key(0), x.shape)
        params = _random_params(params)
        (y, grads), alone = _alone_and_batched(layer, params, state, x, LENGTHS, g)
    y = np.asarray(y)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[~real], 0.0)
    for b, ((_, y_alone), n) in enumerate(zip(alone, LENGTHS)):
        np.testing.assert_allclose(y[b, :n], np.asarray(y_alone)[0], rtol=1e-12, atol=1e-12)
    for name in params:
        summed = sum(np.asarray(grads_alone[name]) for grads_alone, _ in alone)
        scale = max(np.abs(summed).max(), 1e-3 * max(np.abs(np.asarray(v)).max()
                                                     for v in grads.values()))
        np.testing.assert_allclose(np.asarray(grads[name]), summed, rtol=0,
                                   atol=1e-11 * scale, err_msg=name)


def test_an_empty_example_gives_zeros_and_finite_gradients(key):
    layer = MultiHeadAttention(2, 3, causal=True)
    _, params, state = layer.init(key, (2, 4, F))
    params = _random_params(params)
    x = jnp.asarray(_x((2, 4, F)), jnp.float32)
    lengths = jnp.array([3, 0])

    def loss(p, values):
        y, _ = layer.apply(p, state, Padded(values, lengths))
        return jnp.sum(jnp.sin(y.values)), y.values  # reads every step, padding included

    (value, y), (dparams, dx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        params, x)
    assert np.isfinite(float(value))
    np.testing.assert_array_equal(y[1], 0.0)
    np.testing.assert_array_equal(y[0, 3], 0.0)
    for name, leaf in {**dparams, "x": dx}.items():
        assert np.isfinite(np.asarray(leaf)).all(), name
    np.testing.assert_array_equal(dx[1], 0.0)
    # the empty example adds nothing: the gradients are those of the first example alone
    alone = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(layer.apply(p, state, x[:1, :3])[0]))))(
        params)
    for name in params:
        np.testing.assert_allclose(dparams[name], alone[name], rtol=1e-5, atol=1e-6)


def test_inside_serial_the_lengths_survive(key):
    model = serial(Dense(F), MultiHeadAttention(2, 4, causal=True), Dense(2))
    _, params, state = model.init(key, (B, T, 3))
    x = Padded(jnp.asarray(_x((B, T, 3)), jnp.float32), jnp.asarray(LENGTHS))
    y, _ = model.apply(params, state, x)
    assert isinstance(y, Padded) and y.values.shape == (B, T, 2)
    np.testing.assert_array_equal(y.lengths, LENGTHS)


def test_jit_compiles_once_and_matches_eager(key):
    layer = MultiHeadAttention(2, 4, causal=True)
    _, params, state = layer.init(key, (B, T, F))
    traces = []

    @jax.jit
    def run(p, x):
        traces.append(1)
        return layer.apply(p, state, x)[0]

    x = Padded(jnp.asarray(_x(), jnp.float32), jnp.asarray(LENGTHS))
    y = run(params, x)
    y_again = run(params, Padded(x.values + 1.0, jnp.asarray([1, 5, 4])))
    assert len(traces) == 1 and not np.allclose(y.values, y_again.values)
    np.testing.assert_allclose(y.values, layer.apply(params, state, x)[0].values, rtol=1e-5,
                               atol=1e-6)


def test_vmap_over_batches_and_over_params(key):
    layer = MultiHeadAttention(2, 4)
    _, params, state = layer.init(key, (B, T, F))
    xs = jnp.asarray(_x((2, B, T, F)), jnp.float32)
    lengths = jnp.asarray([LENGTHS, [1, 4, 5]])
    ys = jax.vmap(lambda x, n: layer.apply(params, state, Padded(x, n))[0].values)(xs, lengths)
    for i in range(2):
        expected = layer.apply(params, state, Padded(xs[i], lengths[i]))[0].values
        np.testing.assert_allclose(ys[i], expected, rtol=1e-5, atol=1e-6)
    # an ensemble of two layers on one batch
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, _random_params(params))
    ys = jax.vmap(lambda p: layer.apply(p, state, xs[0])[0])(stacked)
    np.testing.assert_allclose(ys[1], layer.apply(_random_params(params), state, xs[0])[0],
                               rtol=1e-5, atol=1e-5)
