"""MaxPool2D's fast path (non-overlapping windows: a reshape and a max with a hand-stated
derivative) against `lax.reduce_window` and its autodiff, ties included; the 1-D pools against
the 2-D ones and torch, on padded batches too; the global pools."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jdnn
from jdnn.core import LayerError, output_shape, trait
from jdnn.layers.pooling import AvgPool1D, GlobalAvgPool, GlobalMaxPool, MaxPool1D
from jdnn.padded import Padded


def _reduce_window_pool(x, window, strides, padding):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), padding)


CASES = [((2, 6, 6, 3), (2, 2), "VALID"), ((2, 7, 5, 3), (2, 2), "VALID"),    # remainder cut
         ((1, 9, 9, 2), (3, 3), "VALID"), ((2, 6, 4, 2), (3, 2), "SAME"),     # SAME, exact tiles
         ((2, 5, 5, 2), (2, 2), "SAME")]                                      # SAME, padded


@pytest.mark.parametrize("shape, window, padding", CASES)
def test_values_gradients_and_tangents_equal_reduce_window_with_ties(shape, window, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 3, size=shape), jnp.float32)   # small integers: many ties
    pool = jdnn.MaxPool2D(window, padding=padding)

    def ours(x):
        return pool.apply({}, {}, x)[0]

    def theirs(x):
        return _reduce_window_pool(x, window, window, padding)

    y, pullback = jax.vjp(ours, x)
    y_ref, pullback_ref = jax.vjp(theirs, x)
    np.testing.assert_array_equal(y, y_ref)
    cotangent = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    # each window's gradient goes to its first maximum, as reduce_window's does
    np.testing.assert_array_equal(pullback(cotangent)[0], pullback_ref(cotangent)[0])
    tangent = jnp.asarray(rng.normal(size=shape), jnp.float32)
    np.testing.assert_array_equal(jax.jvp(ours, (x,), (tangent,))[1],
                                  jax.jvp(theirs, (x,), (tangent,))[1])


def _compiled_gradient(pool, x):
    grad = jax.jit(jax.grad(lambda x: jnp.sum(pool.apply({}, {}, x)[0] ** 2)))
    return grad.lower(x).compile().as_text()


def test_non_overlapping_windows_compile_without_reduce_window_or_scatter():
    x = jnp.ones((2, 8, 8, 3))
    fast = _compiled_gradient(jdnn.MaxPool2D(2), x)
    assert "reduce-window(" not in fast and "scatter(" not in fast
    general = _compiled_gradient(jdnn.MaxPool2D(3, strides=2), x)   # overlapping windows
    assert "reduce-window(" in general and "scatter(" in general


# --- MaxPool1D and AvgPool1D ---------------------------------------------------------------------

POOLS_1D = [(MaxPool1D, jdnn.MaxPool2D), (AvgPool1D, jdnn.AvgPool2D)]
GEOMETRIES = [(2, None, "VALID"), (3, None, "VALID"), (3, 2, "VALID"), (2, 1, "VALID"),
              (3, 2, "SAME"), (2, None, "SAME"), (3, 1, "SAME"), (1, 2, "SAME")]


def _geometry_id(geometry):
    window, strides, padding = geometry
    return f"w{window}-s{strides}-{padding}"


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
@pytest.mark.parametrize("pools", POOLS_1D, ids=["max", "avg"])
def test_1d_pools_are_the_2d_pools_on_a_unit_width(pools, geometry):
    """Values, shapes and gradients (ties included: small integers) of the 2-D pool with a
    `(window, 1)` window on `(B, T, 1, C)`."""
    make_1d, make_2d = pools
    window, strides, padding = geometry
    pool = make_1d(window, strides, padding)
    wide = make_2d((window, 1), None if strides is None else (strides, 1), padding)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 3, size=(2, 9, 3)), jnp.float32)

    @jax.jit
    def both(x, dy):
        y, pullback = jax.vjp(lambda v: pool.apply({}, {}, v)[0], x)
        y_2d, pullback_2d = jax.vjp(lambda v: wide.apply({}, {}, v[:, :, None])[0][:, :, 0], x)
        return y, y_2d, pullback(dy)[0], pullback_2d(dy)[0]

    out_shape = output_shape(pool, x.shape)
    dy = jnp.asarray(np.random.default_rng(1).normal(size=out_shape), jnp.float32)
    y, y_2d, dx, dx_2d = both(x, dy)
    assert y.shape == out_shape
    np.testing.assert_array_equal(y, y_2d)
    np.testing.assert_array_equal(dx, dx_2d)


@pytest.mark.parametrize("window, strides", [(2, None), (3, 2), (3, 1)])
def test_1d_pools_equal_torch_with_valid_padding(window, strides, torch):
    x = np.random.default_rng(2).normal(size=(3, 10, 4)).astype(np.float32)

    xt = torch.from_numpy(x).permute(0, 2, 1)   # torch is NCW
    for make, torch_pool in ((MaxPool1D, torch.nn.functional.max_pool1d),
                             (AvgPool1D, torch.nn.functional.avg_pool1d)):
        y, _ = make(window, strides).apply({}, {}, jnp.asarray(x))
        expected = torch_pool(xt, window, strides or window).permute(0, 2, 1).numpy()
        np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_same_padding_never_wins_a_max_nor_counts_in_a_mean():
    x = -np.arange(1.0, 6.0)[None, :, None]   # all negative: a zero pad would win a max
    y_max, _ = MaxPool1D(2, padding="SAME").apply({}, {}, jnp.asarray(x))
    y_avg, _ = AvgPool1D(2, padding="SAME").apply({}, {}, jnp.asarray(x))
    np.testing.assert_array_equal(y_max[0, :, 0], [-1, -3, -5])   # last window: step 5 alone
    np.testing.assert_array_equal(y_avg[0, :, 0], [-1.5, -3.5, -5])


def _pool_loss(pool, weights):
    def loss(x, lengths):
        y, _ = pool.apply({}, {}, Padded(x, lengths))
        real = jnp.arange(y.values.shape[1])[None, :, None] < y.lengths[:, None, None]
        return jnp.sum(jnp.where(real, y.values * weights[:, :y.values.shape[1]], 0.0)), y

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def _alone(pool, x, weights):
    """One example, unpadded: the pool's output and the gradient of sum(y * weights)."""
    def loss(v):
        y, _ = pool.apply({}, {}, v)
        return jnp.sum(y * weights), y

    (_, y), dx = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(x))
    return y, dx


@pytest.mark.parametrize("geometry", [(3, 2, "SAME"), (2, None, "SAME"), (3, 1, "SAME"),
                                      (3, 2, "VALID"), (2, None, "VALID")], ids=_geometry_id)
@pytest.mark.parametrize("make", [MaxPool1D, AvgPool1D], ids=["max", "avg"])
def test_1d_pools_padding_never_changes_a_result(make, geometry):
    """Each example alone vs the padded batch (NaN in its padding, all-negative values so a
    zero would win a max): the same outputs at real steps and input gradients; outputs past
    each new length are 0."""
    window, strides, padding = geometry
    pool = make(window, strides, padding)
    steps, lengths = 9, np.array([9, 6, 1, 0])
    x = -np.abs(np.random.default_rng(3).normal(size=(len(lengths), steps, 2))) - 0.1
    x = x.astype(np.float32)
    x[np.arange(steps)[None, :] >= lengths[:, None]] = np.nan
    weights = jnp.asarray(np.random.default_rng(4).normal(size=(len(lengths), steps, 2)),
                          jnp.float32)
    (_, y), dx = _pool_loss(pool, weights)(jnp.asarray(x), jnp.asarray(lengths))
    stride = strides or window
    new_lengths = [-(-n // stride) if padding == "SAME" else max((n - window) // stride + 1, 0)
                   for n in lengths]
    np.testing.assert_array_equal(y.lengths, new_lengths)
    assert np.all(np.isfinite(y.values)) and np.all(np.isfinite(dx))
    for b, (n, m) in enumerate(zip(lengths, new_lengths)):
        np.testing.assert_array_equal(y.values[b, m:], 0.0)
        np.testing.assert_array_equal(dx[b, n:], 0.0)
        if m == 0:
            continue
        y_alone, dx_alone = _alone(pool, x[b:b + 1, :n], weights[b:b + 1, :m])
        np.testing.assert_allclose(y.values[b, :m], y_alone[0], rtol=1e-6)
        np.testing.assert_allclose(dx[b, :n], dx_alone[0], rtol=1e-6)


def test_1d_max_ties_send_the_gradient_to_the_first_maximum():
    """All-equal windows of 3, stride 1: each window's gradient goes to its first step, so the
    window starts (0..3; 0..2 in a 5-step example) get 1 each."""
    pool = MaxPool1D(3, strides=1)
    x = jnp.ones((2, 6, 1))
    dx = jax.grad(lambda v: jnp.sum(pool.apply({}, {}, v)[0]))(x)
    np.testing.assert_array_equal(dx[:, :, 0], [[1, 1, 1, 1, 0, 0]] * 2)
    dx = jax.grad(lambda v: jnp.sum(pool.apply({}, {}, Padded(v, jnp.array([6, 5])))[0].values))(x)
    np.testing.assert_array_equal(dx[:, :, 0], [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])


@pytest.mark.parametrize("make, kwargs, match", [
    (MaxPool1D, dict(window=0), r"MaxPool1D: window must be a positive int"),
    (AvgPool1D, dict(window=2, strides=0), r"AvgPool1D: strides must be a positive int, got 0"),
    (MaxPool1D, dict(window=2, padding="CAUSAL"),
     r'MaxPool1D: padding must be "SAME" or "VALID", got \'CAUSAL\''),
])
def test_1d_pools_refuse_bad_hyper_parameters(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


@pytest.mark.parametrize("shape, match", [
    ((4, 10), r"rank 3, got shape \(4, 10\) \(one feature per step"),
    ((4, 8, 8, 3), r"\(images: use the 2-D layer\)"),
    ((4, 2, 3), r"sequences of 2 steps are shorter than one window \(3 steps\)"),
])
@pytest.mark.parametrize("make", [MaxPool1D, AvgPool1D])
def test_1d_pools_refuse_bad_inputs(make, shape, match, key):
    pool = make(3)
    with pytest.raises(LayerError, match=match):
        pool.init(key, shape)
    with pytest.raises(LayerError, match=match):
        pool.apply({}, {}, jnp.zeros(shape))


def test_1d_pool_spec_label_and_flops():
    pool = AvgPool1D(3, strides=1, padding="same")
    assert pool.spec["padding"] == "SAME" and pool.spec["strides"] == 1
    assert trait(pool.spec, "label")(pool.spec) == "AvgPool1D(3, /1, SAME)"
    assert trait(MaxPool1D(2).spec, "label")(MaxPool1D(2).spec) == "MaxPool1D(2)"
    assert MaxPool1D(2).spec["strides"] == 2 and trait(pool.spec, "padded") is True
    assert trait(pool.spec, "flops")(pool.spec, (1, 10, 4), (1, 10, 4)) == 3 * 10 * 4


# --- GlobalAvgPool and GlobalMaxPool -----------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 7, 4), (2, 5, 6, 3)], ids=["sequences", "images"])
def test_global_pools_reduce_every_axis_but_batch_and_channels(shape, key):
    x = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    axes = tuple(range(1, len(shape) - 1))
    for make, expected in ((GlobalAvgPool, x.mean(axis=axes)), (GlobalMaxPool, x.max(axis=axes))):
        layer = make()
        out_shape, params, state = layer.init(key, shape)
        y, _ = jax.jit(layer.apply)(params, state, jnp.asarray(x))
        assert out_shape == y.shape == (shape[0], shape[-1]) and params == {}
        np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_global_pools_on_padded_batches_read_real_steps_only():
    lengths = np.array([5, 2, 0, 1])
    x = np.random.default_rng(6).normal(size=(4, 5, 2, 3)).astype(np.float32)
    real = np.arange(5)[None, :] < lengths[:, None]
    x[~real] = np.nan   # the padding reaches nothing, its gradient neither
    for make in (GlobalAvgPool, GlobalMaxPool):
        layer = make()

        def total(v, layer=layer):
            y, _ = layer.apply({}, {}, Padded(v, jnp.asarray(lengths)))
            return jnp.sum(y), y

        (_, y), dx = jax.jit(jax.value_and_grad(total, has_aux=True))(jnp.asarray(x))
        assert not isinstance(y, Padded) and y.shape == (4, 3)
        np.testing.assert_array_equal(y[2], 0.0)            # length 0: 0, not NaN or -inf
        np.testing.assert_array_equal(dx[~real], 0.0)
        for b in (0, 1, 3):
            alone, _ = layer.apply({}, {}, jnp.asarray(x[b:b + 1, :lengths[b]]))
            np.testing.assert_allclose(y[b], alone[0], rtol=1e-6)


def test_global_max_ties_send_the_gradient_to_the_first_maximum():
    x = jnp.asarray([[[1.0, 2.0], [3.0, 2.0], [3.0, 0.0]]])   # ties at steps 1, 2 and 0, 1
    dx = jax.grad(lambda v: jnp.sum(GlobalMaxPool().apply({}, {}, v)[0]))(x)
    np.testing.assert_array_equal(dx[0], [[0, 1], [1, 0], [0, 0]])
    dx = jax.grad(lambda v: jnp.sum(GlobalMaxPool().apply(
        {}, {}, Padded(v, jnp.array([2])))[0]))(x)
    np.testing.assert_array_equal(dx[0], [[0, 1], [1, 0], [0, 0]])


@pytest.mark.parametrize("make", [GlobalAvgPool, GlobalMaxPool])
def test_global_pools_refuse_features_without_an_axis_to_pool(make, key):
    with pytest.raises(LayerError, match=r"at least one axis to pool .* got shape \(4, 8\)"):
        make().init(key, (4, 8))
    with pytest.raises(LayerError, match=r"features \(B, C\) have nothing to pool"):
        make().apply({}, {}, jnp.zeros((4, 8)))
    spec = make().spec
    assert trait(spec, "flops")(spec, (1, 7, 7, 32), (1, 32)) == 7 * 7 * 32
    assert trait(spec, "padded") is True and trait(spec, "family") == "pool"
