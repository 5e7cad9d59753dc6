"""Conv2D: a 2-D convolution over NHWC images (cross-correlation, as every DNN library does)."""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
from jax import lax

from jdnn.core import (Layer, check_images, check_input_shape, make_spec, padding_mode,
                       positive_int, positive_ints, register_layer, spatial_output_shape)
from jdnn.layers import initializers

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


# Two formulations of the convolution and its two gradients, chosen per platform when a program
# is lowered (`lax.platform_dependent`), so a model runs unchanged everywhere:
#
# - On CPU, im2col + GEMM, as a hand-written NumPy backprop does it: the patches under each
#   output pixel as one `(B, H', W', kh*kw*C)` array, the forward pass and the weight gradient as
#   one matrix product each, the input gradient as a product scattered back by `col2im`. XLA:CPU's
#   own convolutions ran this workload's gradients several times slower (MNIST CNN, batch 64,
#   conv 32->64: weight gradient ~21 ms as a convolution, ~4.5 ms as a GEMM; a whole scanned
#   step ~36 ms against ~21 ms; jaxlib 0.10.2, 2 cores). The patches cost kh*kw times the
#   input's memory while the step runs.
# - Elsewhere (GPU, TPU), the convolutions themselves, each stated in XLA's canonical NHWC/HWIO
#   layout: jax's own transpose rules emit the gradients in other layouts, which XLA
#   canonicalizes when a step is compiled on its own but not always inside a `lax.scan` body.
#
# `tests/test_conv_gradients.py` checks both against jax's gradients of `lax.conv_general_dilated`,
# inside a scan too. Reverse mode only: no `jax.jvp` through Conv2D.
def _output_size(size: int, k: int, s: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - k) // s + 1


def im2col(x: jax.Array, kernel: tuple[int, int], strides: tuple[int, int],
           pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """The input patch under each output pixel, `(B, H', W', kh * kw * C)`, ordered like an HWIO
    kernel reshaped to `(kh * kw * C, features)` (tap by tap, channels fastest)."""
    (kh, kw), (sh, sw) = kernel, strides
    oh, ow = (_output_size(n, k, s, p) for n, k, s, p in zip(x.shape[1:3], kernel, strides, pads))
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    return jnp.concatenate([xp[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]
                            for i in range(kh) for j in range(kw)], axis=-1)


def col2im(cols: jax.Array, x_shape: tuple[int, ...], kernel: tuple[int, int],
           strides: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """The adjoint of `im2col`: each tap's slice of `cols` `(B, H', W', kh * kw * C)` added back
    where it was read from, giving `x_shape` `(B, H, W, C)`. Each tap is placed by one `lax.pad`
    (its offset, and `stride - 1` zeros between pixels) and the taps summed, which XLA fuses into
    one pass."""
    (kh, kw), c = kernel, x_shape[-1]
    (height, width), ((top, bottom), (left, right)) = x_shape[1:3], pads
    oh, ow = cols.shape[1:3]
    zero = jnp.zeros((), cols.dtype)
    total = None
    for n in range(kh * kw):
        i, j = divmod(n, kw)
        rows = (i, height + top + bottom - i - (oh - 1) * strides[0] - 1, strides[0] - 1)
        columns = (j, width + left + right - j - (ow - 1) * strides[1] - 1, strides[1] - 1)
        tap = lax.pad(cols[..., n * c:(n + 1) * c], zero, ((0, 0, 0), rows, columns, (0, 0, 0)))
        total = tap if total is None else total + tap
    return total[:, top:top + height, left:left + width, :]


def _gemm_forward(x, w, strides, pads):
    """Forward pass as im2col + one GEMM: `(B, H', W', K) @ (K, O)`."""
    return im2col(x, w.shape[:2], strides, pads) @ w.reshape(-1, w.shape[-1])


def _gemm_backward(x, w, dy, strides, pads):
    """dL/dw = patches^T dy, one GEMM (stated as `(dy^T patches)^T`, which XLA:CPU ran faster
    than contracting both operands' first axis); dL/dx = col2im(dy w^T)."""
    features = w.shape[-1]
    cols = im2col(x, w.shape[:2], strides, pads)   # recomputed; XLA merges it with the forward's
    dy2 = dy.reshape(-1, features)
    dw = (dy2.T @ cols.reshape(-1, cols.shape[-1])).T.reshape(w.shape)
    dx = col2im(dy @ w.reshape(-1, features).T, x.shape, w.shape[:2], strides, pads)
    return dx, dw


def _conv_forward(x, w, strides, pads):
    """Forward pass as XLA's convolution."""
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DIMENSIONS)


def _conv_backward(x, w, dy, strides, pads):
    """dL/dx: dy (dilated by the strides) correlated with the flipped kernel, in/out swapped;
    dL/dw[i, j, c, o] = sum over b, h, w of x_pad[b, h*s + i, w*s + j, c] * dy[b, h, w, o]: a
    correlation of x (channels as batch) with dy (batch as channels) dilated by the strides."""
    kh, kw = w.shape[:2]
    flipped = jnp.transpose(jnp.flip(w, (0, 1)), (0, 1, 3, 2))
    dx_pads = tuple((k - 1 - low, size + low - 1 - (out - 1) * s)
                    for k, (low, _), size, out, s in zip((kh, kw), pads, x.shape[1:3],
                                                         dy.shape[1:3], strides))
    dx = lax.conv_general_dilated(dy, flipped, (1, 1), dx_pads, lhs_dilation=strides,
                                  dimension_numbers=_DIMENSIONS)
    dw = lax.conv_general_dilated(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)),
                                  (1, 1), pads, rhs_dilation=strides,
                                  dimension_numbers=_DIMENSIONS)
    return dx, jnp.transpose(dw, (1, 2, 0, 3))[:kh, :kw]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int],
           pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Cross-correlation of NHWC `x` with HWIO `w`; `pads` are ((top, bottom), (left, right))."""
    return lax.platform_dependent(x, w, cpu=functools.partial(_gemm_forward, strides=strides,
                                                              pads=pads),
                                  default=functools.partial(_conv_forward, strides=strides,
                                                            pads=pads))


def _conv2d_forward(x, w, strides, pads):
    return conv2d(x, w, strides, pads), (x, w)


def _conv2d_backward(strides, pads, residuals, dy):
    x, w = residuals
    return lax.platform_dependent(x, w, dy, cpu=functools.partial(_gemm_backward,
                                                                  strides=strides, pads=pads),
                                  default=functools.partial(_conv_backward, strides=strides,
                                                            pads=pads))


conv2d.defvjp(_conv2d_forward, _conv2d_backward)


def _warn_if_channels_first(shape: tuple[int, ...], kernel: tuple[int, int]) -> None:
    """Warns once when an NHWC `shape` looks like NCHW data: a height of at most 4 (the usual
    1, 3 or 4 channels), a width and a channel count of at least 8 (an image's height and
    width), and a kernel taller than one row (a `(1, k)` kernel is a deliberate 1-D
    convolution over a height-1 input). NCHW data would otherwise train on images 1 to 4 pixels
    high, silently."""
    height, width, channels = shape[1:]
    if height <= 4 and width >= 8 and channels >= 8 and kernel[0] > 1:
        warnings.warn(f"Conv2D: images of shape (height, width, channels) = "
                      f"{(height, width, channels)} look channels-first (NCHW): jdnn images "
                      f"are NHWC, so this convolves {height}-pixel-high images with "
                      f"{channels} channels. If the data are (N, C, H, W), transpose them with "
                      f"x.transpose(0, 2, 3, 1), giving (N, {width}, {channels}, {height})",
                      UserWarning, stacklevel=2)


def _flops(spec, input_shape, output_shape) -> int:
    kh, kw = spec["kernel_size"]
    return 2 * kh * kw * input_shape[-1] * math.prod(output_shape[1:])


def _patches(spec, x: jax.Array) -> jax.Array:
    """The input patch under each output pixel: `(B, H', W', kh * kw * C)`."""
    return lax.conv_general_dilated_patches(x, spec["kernel_size"], spec["strides"],
                                            spec["padding"], dimension_numbers=_DIMENSIONS)


def _label(spec) -> str:
    """E.g. `Conv2D(32, 3x3)`, `Conv2D(64, 3x3, /2, VALID)`."""
    kh, kw = spec["kernel_size"]
    parts = [str(spec["features"]), f"{kh}x{kw}"]
    if spec["strides"] != (1, 1):
        parts.append(f"/{spec['strides'][0]}" if len(set(spec["strides"])) == 1
                     else f"/{spec['strides']}")
    if spec["padding"] != "SAME":
        parts.append(spec["padding"])
    return f"Conv2D({', '.join(parts)})"




def _quantizable(spec):
    """The `quantize` trait: the HWIO kernel `w` (output features on its last axis), and
    Conv2D's apply with the convolution computed by `ops.conv_general_dilated`."""
    def apply_with(ops):
        def apply(params, state, x, *, key=None, train=False):
            del key, train
            check_images("Conv2D", x, params["w"].shape[2])
            y = ops.conv_general_dilated(x, params["w"], spec["strides"], spec["padding"],
                                         dimension_numbers=_DIMENSIONS)
            return (y + params["b"] if spec["use_bias"] else y), state

        return apply

    return {"w": -1}, apply_with


@register_layer(family="conv", flops=_flops, ghost_inputs=_patches, label=_label,
                quantize=_quantizable)
def Conv2D(features: int, kernel_size: int | tuple[int, int], strides: int | tuple[int, int] = 1,
           padding: str = "SAME", *, use_bias: bool = True,
           w_init: str | initializers.Initializer = "lecun_normal",
           b_init: str | initializers.Initializer = "zeros") -> Layer:
    """A 2-D convolution on NHWC images.

    Params: `w` of shape `(kh, kw, in_channels, features)` (HWIO) and, with `use_bias`, `b` of
    shape `(features,)`. With `padding="SAME"` the output is `ceil(H / stride)` high, with
    `"VALID"` it is `(H - kh) // stride + 1` (likewise for the width); SAME pads like
    TensorFlow (the extra row/column, if any, at the bottom/right). Differentiable in reverse
    mode to any order (`jax.grad`, `jax.vjp`, per-example gradients); its gradients are written
    out for speed inside compiled loops, so forward mode (`jax.jvp`, `jax.jacfwd`) is not
    available through it.

    Images are NHWC. An input that looks channels-first, `(N, H, W, C)` with `H <= 4` while
    `W >= 8` and `C >= 8` (e.g. MNIST as `(N, 1, 28, 28)`), and a kernel more than one row high,
    makes `init` warn once (a `UserWarning`) with the transpose that fixes it.

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

    Examples:
        >>> conv = jdnn.Conv2D(32, (3, 3), padding="SAME")
        >>> out_shape, params, _ = conv.init(jax.random.key(0), (64, 28, 28, 1))  # (64, 28, 28, 32)
    """
    features = positive_int("Conv2D", "features", features)
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
        _warn_if_channels_first(shape, kernel)
        w_key, b_key = jax.random.split(key)
        params = {"w": w_fn(w_key, (*kernel, shape[-1], features))}
        if use_bias:
            params["b"] = b_fn(b_key, (features,))
        return out_shape, params, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        check_images("Conv2D", x, params["w"].shape[2])
        pads = tuple(lax.padtype_to_pads(x.shape[1:3], kernel, stride, pad))
        y = conv2d(x, params["w"], stride, tuple(tuple(p) for p in pads))
        return (y + params["b"] if use_bias else y), state

    return Layer(init, apply, spec)
