"""Conv1D: output lengths, equality with lax.conv_general_dilated and torch.nn.functional.conv1d,
padded batches (padding never changes a result), errors, jit and vmap."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jdnn
from jdnn.core import LayerError, output_shape, rebuild, trait
from jdnn.layers.conv1d import Conv1D
from jdnn.layers.pooling import GlobalAvgPool, MaxPool1D
from jdnn.padded import Padded

MODES = [(padding, s, d) for padding in ("SAME", "VALID", "CAUSAL") for s in (1, 2)
         for d in (1, 2)]


def _mode_id(mode):
    padding, s, d = mode
    return f"{padding}-s{s}-d{d}"


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _params(k, channels, features, seed=0):
    """Random params of the layout Conv1D's init builds, without running init (faster)."""
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(k, channels, features)) / np.sqrt(k * channels),
                             jnp.float32),
            "b": jnp.asarray(rng.normal(size=(features,)), jnp.float32)}


def _expected_length(steps, k, s, d, padding):
    span = (k - 1) * d + 1
    if padding == "VALID":
        return max((steps - span) // s + 1, 0)
    return math.ceil(steps / s)


def _lax_padding(k, d, padding):
    return [((k - 1) * d, 0)] if padding == "CAUSAL" else padding


@pytest.mark.parametrize("k, steps", [(2, 10), (3, 9)])
@pytest.mark.parametrize("mode", MODES, ids=_mode_id)
def test_output_length_and_values_equal_lax_conv(mode, k, steps):
    padding, s, d = mode
    layer = Conv1D(4, k, strides=s, padding=padding, dilation=d)
    x = jnp.asarray(_random((2, steps, 3)))
    out_shape, params, state = output_shape(layer, x.shape), _params(k, 3, 4), {}
    y, new_state = jax.jit(layer.apply)(params, state, x)
    assert out_shape == y.shape == (2, _expected_length(steps, k, s, d, padding), 4)
    assert new_state == {}
    expected = lax.conv_general_dilated(x, params["w"], (s,), _lax_padding(k, d, padding),
                                        rhs_dilation=(d,),
                                        dimension_numbers=("NWC", "WIO", "NWC")) + params["b"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def _torch_conv1d(torch, x, w, b, k, s, d, padding):
    """torch is NCW with an OIW kernel and pads symmetrically: pad by hand as jdnn does."""
    steps, span = x.shape[1], (k - 1) * d + 1
    if padding == "VALID":
        pads = (0, 0)
    elif padding == "CAUSAL":
        pads = (span - 1, 0)
    else:
        total = max((math.ceil(steps / s) - 1) * s + span - steps, 0)
        pads = (total // 2, total - total // 2)
    xt = torch.nn.functional.pad(torch.from_numpy(np.asarray(x)).permute(0, 2, 1), pads)
    wt = torch.from_numpy(np.array(w)).permute(2, 1, 0).contiguous()
    y = torch.nn.functional.conv1d(xt, wt, torch.from_numpy(np.array(b)), stride=s,
                                   dilation=d)
    return y.permute(0, 2, 1).numpy()


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("mode", MODES, ids=_mode_id)
def test_equals_torch_conv1d_with_copied_weights(mode, k, torch):
    padding, s, d = mode
    layer = Conv1D(5, k, strides=s, padding=padding, dilation=d)
    x = _random((3, 11, 4), seed=1)
    params, state = _params(k, 4, 5, seed=1), {}
    y, _ = jax.jit(layer.apply)(params, state, jnp.asarray(x))
    expected = _torch_conv1d(torch, x, params["w"], params["b"], k, s, d, padding)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_causal_output_sees_only_the_past(key):
    layer = Conv1D(2, 3, strides=2, padding="CAUSAL", dilation=2)
    x = _random((1, 12, 3))
    _, params, state = layer.init(key, x.shape)
    apply = jax.jit(layer.apply)
    y, _ = apply(params, state, jnp.asarray(x))
    for t in range(y.shape[1]):
        later = x.copy()
        later[:, t * 2 + 1:] = 100.0   # everything after step t * stride changes
        y_later, _ = apply(params, state, jnp.asarray(later))
        np.testing.assert_allclose(y_later[:, t], y[:, t], rtol=1e-6)
        if t + 1 < y.shape[1]:
            assert not np.allclose(y_later[:, t + 1:], y[:, t + 1:])


# --- padded batches ------------------------------------------------------------------------------


def _loss_at_real_steps(y, weights):
    """A loss that reads only the real output steps: sum of y * weights over them."""
    values, lengths = y.values, y.lengths
    real = jnp.arange(values.shape[1])[None, :, None] < lengths[:, None, None]
    return jnp.sum(jnp.where(real, values * weights[:, :values.shape[1]], 0.0))


@pytest.mark.parametrize("mode", [("SAME", 1, 1), ("SAME", 2, 1), ("SAME", 2, 2),
                                  ("VALID", 1, 2), ("VALID", 2, 1), ("CAUSAL", 1, 1),
                                  ("CAUSAL", 2, 2)], ids=_mode_id)
def test_padding_never_changes_a_result(mode, key):
    """Each example alone vs the padded batch: outputs at real steps, the new lengths, the
    parameter gradients (loss over real steps) and the input gradients are the same; the
    padding, NaN here, reaches nothing."""
    padding, s, d = mode
    steps, lengths = 9, np.array([9, 1, 0, 6])
    layer = Conv1D(3, 3, strides=s, padding=padding, dilation=d)
    x = _random((len(lengths), steps, 2), seed=2)
    x[np.arange(steps)[None, :] >= lengths[:, None]] = np.nan
    _, params, state = layer.init(key, x.shape)
    weights = jnp.asarray(_random((len(lengths), steps, 3), seed=3))

    def loss(p, xx, n):
        y, _ = layer.apply(p, state, Padded(xx, n))
        return _loss_at_real_steps(y, weights), y

    (value, y), (grads, dx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1),
                                                          has_aux=True))(params, x, lengths)
    assert isinstance(y, Padded) and np.isfinite(value)
    expected_lengths = [_expected_length(n, 3, s, d, padding) for n in lengths]
    np.testing.assert_array_equal(y.lengths, expected_lengths)
    @jax.jit
    @functools.partial(jax.value_and_grad, argnums=(0, 1), has_aux=True)
    def loss_alone(p, xx, w):
        y_alone, _ = layer.apply(p, state, xx)
        return jnp.sum(y_alone * w[:, :y_alone.shape[1]]), y_alone

    total = jax.tree.map(jnp.zeros_like, params)
    for b, n in enumerate(lengths):
        if expected_lengths[b] == 0:   # no real output (too short for one VALID window)
            continue
        (_, y_alone), (g, dx_alone) = loss_alone(params, x[b:b + 1, :n], weights[b:b + 1])
        assert y_alone.shape[1] == expected_lengths[b]
        np.testing.assert_allclose(y.values[b, :expected_lengths[b]], y_alone[0], rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(dx[b, :n], dx_alone[0], rtol=1e-5, atol=1e-5)
        total = jax.tree.map(jnp.add, total, g)
    np.testing.assert_array_equal(np.asarray(dx)[np.arange(steps)[None] >= lengths[:, None]], 0)
    for name in params:
        np.testing.assert_allclose(grads[name], total[name], rtol=1e-4, atol=1e-5)


def test_same_strided_padding_depends_on_each_length(key):
    """SAME with stride 2: 9 steps pad 1 on the left, 10 pad none, so a 9-step example inside
    a 10-step batch is placed one step later than the batch's own padding would put it."""
    layer = Conv1D(1, 3, strides=2, padding="SAME", use_bias=False)
    _, params, state = layer.init(key, (2, 10, 1))
    x = _random((2, 10, 1), seed=4)
    y, _ = layer.apply(params, state, Padded(jnp.asarray(x), jnp.array([10, 9])))
    alone, _ = layer.apply(params, state, jnp.asarray(x[1:, :9]))
    np.testing.assert_allclose(y.values[1], alone[0], rtol=1e-6)
    plain, _ = layer.apply(params, state, jnp.asarray(np.where(np.arange(10)[None, :, None] < 9,
                                                               x, 0.0)))
    assert not np.allclose(plain[1], alone[0])   # the batch's padding would shift it


# --- construction and input errors --------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(features=0, kernel_size=3), r"Conv1D: features must be a positive int, got 0"),
    (dict(features=4, kernel_size=0), r"Conv1D: kernel_size must be a positive int"),
    (dict(features=4, kernel_size=(3, 3)), r"kernel_size .* got \(3, 3\)"),
    (dict(features=4, kernel_size=3, strides=0), r"strides must be a positive int, got 0"),
    (dict(features=4, kernel_size=3, dilation=1.5), r"dilation must be a positive int, got 1.5"),
    (dict(features=4, kernel_size=3, padding="FULL"),
     r'padding must be "SAME" or "VALID" or "CAUSAL", got \'FULL\''),
    (dict(features=4, kernel_size=3, w_init="nope"), r"w_init must be an initializer"),
])
def test_bad_hyper_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Conv1D(**kwargs)


@pytest.mark.parametrize("shape, match", [
    ((4, 10), r"rank 3, got shape \(4, 10\) \(one feature per step: add a channel axis"),
    ((4, 8, 8, 3), r"rank 3, got shape \(4, 8, 8, 3\) \(images: use the 2-D layer\)"),
    ((4, 4, 3), r"sequences of 4 steps are shorter than one window \(5 steps\) with padding "
                r"'VALID'"),
])
def test_bad_input_shapes_are_refused_at_init_and_apply(shape, match, key):
    layer = Conv1D(2, 3, padding="VALID", dilation=2)
    with pytest.raises(LayerError, match=match):
        layer.init(key, shape)
    _, params, state = layer.init(key, (4, 10, 3))
    with pytest.raises(LayerError, match=match):
        layer.apply(params, state, jnp.zeros(shape))


def test_wrong_channel_count_at_apply(key):
    layer = Conv1D(2, 3)
    _, params, state = layer.init(key, (4, 10, 3))
    with pytest.raises(LayerError, match=r"last axis \(channels\) of size 3, got an input of "
                                         r"shape \(4, 10, 5\)"):
        layer.apply(params, state, jnp.zeros((4, 10, 5)))


def test_causal_and_same_accept_one_step(key):
    for padding in ("SAME", "CAUSAL"):
        layer = Conv1D(2, 5, padding=padding, dilation=3)
        out_shape, params, state = layer.init(key, (2, 1, 3))
        assert out_shape == layer.apply(params, state, jnp.ones((2, 1, 3)))[0].shape == (2, 1, 2)


# --- params, spec, traits -------------------------------------------------------------------------


def test_params_layout_and_default_init(key):
    layer = Conv1D(128, 3)
    _, params, _ = layer.init(key, (2, 10, 64))
    assert params["w"].shape == (3, 64, 128) and params["b"].shape == (128,)
    assert params["w"].dtype == jnp.float32
    np.testing.assert_array_equal(params["b"], 0.0)
    fan_in = 3 * 64   # LeCun normal over k * C
    assert abs(float(params["w"].std()) - np.sqrt(1 / fan_in)) < 0.03 * np.sqrt(1 / fan_in)
    _, no_bias, _ = Conv1D(4, 3, use_bias=False).init(key, (2, 10, 3))
    assert set(no_bias) == {"w"}


def test_spec_label_flops_and_rebuild(key):
    layer = Conv1D(8, 3, strides=2, padding="causal", dilation=2)
    spec = layer.spec
    assert spec["padding"] == "CAUSAL" and spec["kernel_size"] == 3 and spec["dilation"] == 2
    assert trait(spec, "label")(spec) == "Conv1D(8, k3, /2, d2, CAUSAL)"
    assert trait(Conv1D(8, 3).spec, "label")(Conv1D(8, 3).spec) == "Conv1D(8, k3)"
    assert trait(spec, "padded") is True and trait(spec, "family") == "conv"
    assert trait(spec, "flops")(spec, (1, 20, 4), (1, 10, 8)) == 2 * 3 * 4 * 8 * 10
    twin = rebuild(spec)
    x = jnp.asarray(_random((2, 20, 4)))
    _, params, state = layer.init(key, x.shape)
    np.testing.assert_array_equal(twin.apply(params, state, x)[0],
                                  layer.apply(params, state, x)[0])


def test_ghost_inputs_give_the_weight_gradient(key):
    layer = Conv1D(3, 3, strides=2, padding="SAME", dilation=2, use_bias=False)
    x = Padded(jnp.asarray(_random((2, 9, 2))), jnp.array([9, 5]))
    _, params, state = layer.init(key, x.shape)
    dy = jnp.asarray(_random((2, 5, 3), seed=5))
    _, pullback = jax.vjp(lambda p: layer.apply(p, state, x)[0].values, params)
    rows = trait(layer.spec, "ghost_inputs")(layer.spec, x)   # (B, T', k * C)
    assert rows.shape == (2, 5, 6)
    np.testing.assert_allclose(jnp.einsum("btk,btf->kf", rows, dy).reshape(3, 2, 3),
                               pullback(dy)[0]["w"], rtol=1e-5, atol=1e-6)


def test_ghost_clipping_equals_per_example_gradients_then_clipping(key):
    """Ghost clipping reads Conv1D's `ghost_inputs` for its per-example norms."""
    model = jdnn.serial(Conv1D(4, 3, strides=2, dilation=2), jdnn.Tanh(), Conv1D(3, 2),
                        GlobalAvgPool(), jdnn.Dense(3))
    x = jnp.asarray(_random((5, 13, 2), seed=8))
    y = jnp.array([0, 1, 2, 0, 1])
    _, params, state = model.init(key, x.shape)
    loss = jdnn.losses.softmax_cross_entropy

    @jax.jit
    def both():
        per_example = jdnn.per_example_grads(model, loss, params, state, x, y)
        naive = jdnn.clip_and_aggregate(per_example, 0.05)
        return naive, jdnn.ghost_clipped_grad(model, loss, params, state, x, y,
                                              l2_norm_clip=0.05)

    (naive, naive_norms), (ghost, ghost_norms) = both()
    np.testing.assert_allclose(ghost_norms, naive_norms, rtol=1e-4)
    assert np.all(np.asarray(naive_norms) > 0.05)   # every example clipped
    for a, b in zip(jax.tree.leaves(ghost), jax.tree.leaves(naive)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


# --- transformations ----------------------------------------------------------------------------


def test_jit_compiles_once_per_shape_padded_or_not(key):
    layer = Conv1D(4, 3, strides=2)
    _, params, state = layer.init(key, (3, 10, 2))
    traces = []

    @jax.jit
    def run(p, x):
        traces.append(1)
        return layer.apply(p, state, x)[0]

    x = jnp.asarray(_random((3, 10, 2)))
    run(params, x), run(params, x + 1.0)
    assert len(traces) == 1
    y1 = run(params, Padded(x, jnp.array([10, 3, 7])))
    y2 = run(params, Padded(x, jnp.array([1, 2, 4])))   # new lengths: no new trace
    assert len(traces) == 2
    np.testing.assert_array_equal(y1.lengths, [5, 2, 4])
    np.testing.assert_array_equal(y2.lengths, [1, 1, 2])


def test_vmap_over_members_and_over_a_leading_axis(key):
    layer = Conv1D(4, 3, padding="CAUSAL")
    x = jnp.asarray(_random((3, 8, 2)))
    members = jax.vmap(lambda k: layer.init(k, x.shape)[1])(jax.random.split(key, 2))
    ys = jax.vmap(lambda p: layer.apply(p, {}, x)[0])(members)
    for i in range(2):
        member = jax.tree.map(lambda a, i=i: a[i], members)
        np.testing.assert_allclose(ys[i], layer.apply(member, {}, x)[0], rtol=1e-6)
    _, params, _ = layer.init(key, x.shape)
    stacked = jnp.stack([x, 2 * x])
    ys = jax.vmap(lambda xx: layer.apply(params, {}, xx)[0])(stacked)
    np.testing.assert_allclose(ys[1], layer.apply(params, {}, 2 * x)[0], rtol=1e-6)


def test_a_sequence_classifier_on_padded_batches(key):
    model = jdnn.serial(Conv1D(8, 3, padding="CAUSAL"), jdnn.Relu(),
                        MaxPool1D(2), Conv1D(8, 3, strides=2), GlobalAvgPool(),
                        jdnn.Dense(2))
    x = _random((4, 12, 3))
    out_shape, params, state = model.init(key, x.shape)
    y, _ = jax.jit(model.apply)(params, state, Padded(jnp.asarray(x), jnp.array([12, 5, 1, 8])))
    assert out_shape == y.shape == (4, 2) and not isinstance(y, Padded)
    alone, _ = model.apply(params, state, jnp.asarray(x[1:2, :5]))
    np.testing.assert_allclose(y[1], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", [("SAME", 2, 2), ("VALID", 3, 1), ("CAUSAL", 1, 3),
                                  ("SAME", 1, 1)], ids=_mode_id)
def test_stated_gradients_equal_jax_autodiff_of_lax_conv_inside_a_scan(mode):
    """Conv1D's written-out gradients against jax's own of `lax.conv_general_dilated`, for
    a loss summed over a `lax.scan` (where layouts are the question), 11 steps: a VALID
    remainder is never read."""
    padding, s, d = mode
    layer = Conv1D(3, 3, strides=s, padding=padding, dilation=d)
    params, x = _params(3, 2, 3, seed=6), jnp.asarray(_random((4, 2, 11, 2), seed=7))

    def scanned(apply):
        def loss(p, xs):
            def body(total, xx):
                return total + jnp.sum(jnp.sin(apply(p, xx))), None
            return lax.scan(body, 0.0, xs)[0]
        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    def theirs(p, xx):
        return lax.conv_general_dilated(xx, p["w"], (s,), _lax_padding(3, d, padding),
                                        rhs_dilation=(d,),
                                        dimension_numbers=("NWC", "WIO", "NWC")) + p["b"]

    ours = scanned(lambda p, xx: layer.apply(p, {}, xx)[0])(params, x)
    expected = scanned(theirs)(params, x)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert np.any(np.asarray(ours[1]) != 0)
