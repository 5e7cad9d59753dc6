"""Conv2D: a 2-D convolution over NHWC images (cross-correlation, as every DNN library does)."""

from __future__ import annotations

import jax
from jax import lax

from jdnn.core import (
    Layer,
    check_hparam,
    check_images,
    check_input_shape,
    make_spec,
    padding_mode,
    positive_ints,
    spatial_output_shape,
)
from jdnn.layers import initializers

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def Conv2D(features: int, kernel_size: int | tuple[int, int], strides: int | tuple[int, int] = 1,
           padding: str = "SAME", *, use_bias: bool = True,
           w_init: str | initializers.Initializer = "lecun_normal",
           b_init: str | initializers.Initializer = "zeros") -> Layer:
    """A 2-D convolution on NHWC images.

    Params: `w` of shape `(kh, kw, in_channels, features)` (HWIO) and, with `use_bias`, `b` of
    shape `(features,)`. With `padding="SAME"` the output is `ceil(H / stride)` high, with
    `"VALID"` it is `(H - kh) // stride + 1` (likewise for the width); SAME pads like
    TensorFlow (the extra row/column, if any, at the bottom/right).

    Args:
        features: output channels, a positive int.
        kernel_size: `(kh, kw)` or one int for both.
        strides: `(sh, sw)` or one int for both.
        padding: `"SAME"` or `"VALID"`.
        use_bias: whether to add `b`.
        w_init: a `jax.nn.initializers` name or initializer for `w` (default LeCun normal).
        b_init: a `jax.nn.initializers` name or initializer for `b`.

    Returns:
        A `Layer` mapping `(N, H, W, C)` to `(N, H', W', features)`.

    Example:
        >>> conv = jdnn.Conv2D(32, (3, 3), padding="SAME")
        >>> out_shape, params, _ = conv.init(jax.random.key(0), (64, 28, 28, 1))  # (64, 28, 28, 32)
    """
    ok = isinstance(features, int) and not isinstance(features, bool) and features >= 1
    check_hparam("Conv2D", "features", features, ok, "a positive int")
    kernel = positive_ints("Conv2D", "kernel_size", kernel_size, 2)
    stride = positive_ints("Conv2D", "strides", strides, 2)
    pad = padding_mode("Conv2D", padding)
    w_fn, w_name = initializers.resolve("Conv2D", "w_init", w_init)
    b_fn, b_name = initializers.resolve("Conv2D", "b_init", b_init)
    spec = make_spec("Conv2D", features=features, kernel_size=kernel, strides=stride, padding=pad,
                     use_bias=bool(use_bias), w_init=w_name, b_init=b_name)

    def init(key, input_shape):
        shape = check_input_shape("Conv2D", input_shape)
        out_shape = spatial_output_shape("Conv2D", shape, kernel, stride, pad, features)
        w_key, b_key = jax.random.split(key)
        params = {"w": w_fn(w_key, (*kernel, shape[-1], features))}
        if use_bias:
            params["b"] = b_fn(b_key, (features,))
        return out_shape, params, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        check_images("Conv2D", x, params["w"].shape[2])
        y = lax.conv_general_dilated(x, params["w"], stride, pad, dimension_numbers=_DIMENSIONS)
        return (y + params["b"] if use_bias else y), state

    return Layer(init, apply, spec)
