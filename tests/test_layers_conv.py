"""Conv2D, MaxPool2D and AvgPool2D against naive NumPy loops on small inputs.

The references pad like TensorFlow's SAME, written out independently: the total padding along an
axis is `max((out - 1) * stride + window - size, 0)`, the smaller half before, the rest after.
"""

import math
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdnn.layers import AvgPool2D, Conv2D, MaxPool2D


def _pads(size, window, stride, padding):
    if padding == "VALID":
        return (size - window) // stride + 1, 0
    out = math.ceil(size / stride)
    return out, max((out - 1) * stride + window - size, 0) // 2


def _windows(x, window, stride, padding):
    """Yields (i, j, patch, real) over output positions of an NHWC `x`; `real` masks padding."""
    _, h, w, _ = x.shape
    out_h, top = _pads(h, window[0], stride[0], padding)
    out_w, left = _pads(w, window[1], stride[1], padding)
    for i in range(out_h):
        for j in range(out_w):
            patch = np.zeros((x.shape[0], *window, x.shape[3]))
            real = np.zeros(window, bool)
            for di in range(window[0]):
                for dj in range(window[1]):
                    r, c = i * stride[0] - top + di, j * stride[1] - left + dj
                    if 0 <= r < h and 0 <= c < w:
                        patch[:, di, dj] = x[:, r, c]
                        real[di, dj] = True
            yield i, j, patch, real, (out_h, out_w)


def naive_conv(x, w, b, stride, padding):
    out = None
    for i, j, patch, _, (out_h, out_w) in _windows(x, w.shape[:2], stride, padding):
        if out is None:
            out = np.zeros((x.shape[0], out_h, out_w, w.shape[3]))
        out[:, i, j] = np.einsum("nhwc,hwcf->nf", patch, w) + b
    return out


def naive_pool(x, window, stride, padding, kind):
    out = None
    for i, j, patch, real, (out_h, out_w) in _windows(x, window, stride, padding):
        if out is None:
            out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
        values = patch[:, real]  # (N, real inputs, C): padded positions left out
        out[:, i, j] = values.max(axis=1) if kind == "max" else values.mean(axis=1)
    return out


@pytest.mark.parametrize("kernel, strides, padding, size", [
    ((3, 3), (1, 1), "SAME", (5, 5)),
    ((3, 3), (2, 2), "SAME", (5, 5)),
    ((3, 3), (2, 2), "SAME", (6, 6)),  # even size, stride 2: the extra pad row goes below
    ((2, 2), (1, 1), "SAME", (5, 5)),  # even kernel: the single pad row/column goes after
    ((3, 2), (2, 1), "SAME", (5, 6)),
    ((3, 3), (1, 1), "VALID", (5, 5)),
    ((3, 3), (2, 2), "VALID", (5, 6)),
    ((2, 3), (1, 2), "VALID", (5, 6)),
])
def test_conv2d_matches_naive_loops(kernel, strides, padding, size, key):
    layer = Conv2D(3, kernel, strides, padding, w_init="zeros")
    out_shape, params, state = layer.init(key, (2, *size, 2))
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=params["w"].shape), rng.normal(size=params["b"].shape)
    x = rng.normal(size=(2, *size, 2)).astype(np.float32)
    y, _ = layer.apply({"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)},
                       state, jnp.asarray(x))
    expected = naive_conv(x, w, b, strides, padding)
    assert y.shape == expected.shape == out_shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_conv2d_same_pads_bottom_right_by_hand(key):
    # a 2x2 kernel of ones sums each window; SAME pads one zero row/column after the input
    layer = Conv2D(1, 2, padding="SAME", w_init="ones", use_bias=False)
    _, params, state = layer.init(key, (1, 3, 3, 1))
    x = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)  # [[1 2 3] [4 5 6] [7 8 9]]
    y, _ = layer.apply(params, state, x)
    np.testing.assert_array_equal(y[0, :, :, 0], [[12, 16, 9], [24, 28, 15], [15, 17, 9]])


def test_conv2d_is_cross_correlation_with_bias(key):
    layer = Conv2D(1, (1, 2), padding="VALID", w_init="zeros", b_init="ones")
    _, params, state = layer.init(key, (1, 1, 3, 1))
    params = {**params, "w": jnp.array([1.0, 10.0]).reshape(1, 2, 1, 1)}
    y, _ = layer.apply(params, state, jnp.array([1.0, 2.0, 3.0]).reshape(1, 1, 3, 1))
    np.testing.assert_array_equal(y.ravel(), [1 + 20 + 1, 2 + 30 + 1])  # not flipped


def test_conv2d_matches_jax_scipy_correlate(key):
    layer = Conv2D(1, (3, 2), padding="VALID", use_bias=False, w_init="zeros")
    _, params, state = layer.init(key, (1, 5, 6, 1))
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=params["w"].shape), jnp.float32)}
    x = jnp.asarray(rng.normal(size=(1, 5, 6, 1)), jnp.float32)
    y, _ = layer.apply(params, state, x)
    expected = jax.scipy.signal.correlate(x[0, :, :, 0], params["w"][:, :, 0, 0], mode="valid")
    np.testing.assert_allclose(y[0, :, :, 0], expected, rtol=1e-5, atol=1e-5)


POOLS = pytest.mark.parametrize("window, strides, padding, size", [
    ((2, 2), None, "VALID", (5, 6)),
    ((3, 3), (2, 2), "VALID", (5, 6)),
    ((3, 2), (2, 1), "VALID", (5, 6)),
    ((2, 2), (1, 1), "SAME", (5, 5)),
    ((3, 3), (2, 2), "SAME", (5, 6)),
    ((2, 3), (1, 2), "SAME", (5, 6)),
    ((3, 3), (1, 1), "SAME", (4, 4)),  # windows at the border hold 4 or 6 real inputs of 9
])


@POOLS
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_matches_naive_loops(kind, window, strides, padding, size, key):
    make = MaxPool2D if kind == "max" else AvgPool2D
    layer = make(window, strides, padding)
    out_shape, params, state = layer.init(key, (2, *size, 3))
    # all-negative inputs: a zero-padded max would wrongly win at the border
    x = -np.random.default_rng(0).uniform(0.5, 2.0, size=(2, *size, 3)).astype(np.float32)
    y, _ = layer.apply(params, state, jnp.asarray(x))
    expected = naive_pool(x, window, window if strides is None else strides, padding, kind)
    assert params == {} and y.shape == expected.shape == out_shape
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_avgpool_same_divides_by_real_inputs_by_hand(key):
    layer = AvgPool2D(2, strides=1, padding="SAME")
    _, params, state = layer.init(key, (1, 2, 2, 1))
    y, _ = layer.apply(params, state, jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1))
    # windows reach past the bottom/right edge; their means are over the inputs that exist
    np.testing.assert_allclose(y[0, :, :, 0], [[2.5, 3.0], [3.5, 4.0]])


def test_maxpool_same_padding_never_wins_by_hand(key):
    layer = MaxPool2D(2, strides=1, padding="SAME")
    _, params, state = layer.init(key, (1, 2, 2, 1))
    y, _ = layer.apply(params, state, -jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1))
    np.testing.assert_array_equal(y[0, :, :, 0], [[-1.0, -2.0], [-3.0, -4.0]])


def test_pooling_default_strides_are_the_window(key):
    layer = MaxPool2D((2, 3))
    assert layer.spec["strides"] == (2, 3) and layer.spec["padding"] == "VALID"
    assert layer.init(key, (1, 4, 9, 2))[0] == (1, 2, 3, 2)


def test_pooling_acts_per_channel(key):
    layer = MaxPool2D(2)
    _, params, state = layer.init(key, (1, 2, 2, 2))
    x = jnp.stack([jnp.array([[1.0, 5.0], [2.0, 3.0]]), jnp.array([[9.0, 0.0], [1.0, 2.0]])], -1)
    y, _ = layer.apply(params, state, x[None])
    np.testing.assert_array_equal(y.ravel(), [5.0, 9.0])


# --- channels-first data: one clear warning ---------------------------------------------------

def _abstract_init(layer, shape):
    """`init` under `eval_shape`: the warning comes from tracing; nothing is compiled."""
    return jax.eval_shape(lambda k: layer.init(k, shape), jax.random.key(0))


NCHW = r"look channels-first \(NCHW\).*x\.transpose\(0, 2, 3, 1\)"


@pytest.mark.parametrize("shape, fixed", [
    ((64, 1, 28, 28), (64, 28, 28, 1)),  # MNIST
    ((8, 3, 32, 32), (8, 32, 32, 3)),  # CIFAR
    ((2, 4, 16, 24), (2, 16, 24, 4)),  # RGBA, not square
])
def test_channels_first_input_warns_with_the_fix(shape, fixed):
    h, w, c = shape[1:]
    pattern = (rf"Conv2D: images of shape \(height, width, channels\) = "
               rf"{re.escape(str((h, w, c)))} {NCHW}, giving {re.escape(str(('N', *fixed[1:])))}"
               .replace("'", ""))
    with pytest.warns(UserWarning, match=pattern):
        _abstract_init(Conv2D(4, 3), shape)


@pytest.mark.parametrize("shape, kernel", [
    ((64, 28, 28, 1), 3),  # NHWC MNIST
    ((8, 32, 32, 3), 3),
    ((8, 4, 4, 64), 3),  # a small, deep feature map
    ((8, 5, 16, 16), 3),  # taller than 4 rows
    ((8, 2, 16, 4), 3),  # few channels
    ((8, 1, 100, 32), (1, 5)),  # a deliberate 1-D convolution over a height-1 input
])
def test_channels_last_and_one_dimensional_inputs_do_not_warn(shape, kernel):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _abstract_init(Conv2D(4, kernel), shape)


def test_the_warning_is_shown_once_whatever_the_batch_size():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # the filter Python applies to UserWarning
        for batch in (1, 32, 1):
            _abstract_init(Conv2D(4, 3), (batch, 1, 28, 28))
    assert len([w for w in caught if "channels-first" in str(w.message)]) == 1
