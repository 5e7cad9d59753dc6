"""Conv1D: a 1-D convolution over sequences `(B, T, C)`, and the time-axis geometry (padding,
output lengths, padded batches) that the 1-D pools in `jdnn.layers.pooling` share with it.

Every windowed layer on a time axis reads its input through one picture: the sequence padded
to `N` steps, `xp`, and `T'` windows, window `t` taking the steps `t * s + i * d` of `xp` for
the taps `i < k` (stride `s`, dilation `d`; a window spans `(k - 1) * d + 1` steps):

    padding  left pad of a length-L sequence            T' for a length-L sequence
    VALID    0                                          (L - span) // s + 1   (at least 0)
    SAME     total // 2 (TensorFlow's: extra at end)    ceil(L / s)
    CAUSAL   span - 1 (all of it: t sees steps <= t*s)  ceil(L / s)

with `total = max((ceil(L / s) - 1) * s + span - L, 0)`. A padded batch (`jdnn.Padded`) is
read as if each example were alone: its steps past its length are padding (zeros for a
convolution), and with SAME and a stride above 1 the left pad depends on the length (9 steps
pad 1 where 10 pad 0 for k=3, s=2), so each example is placed at its own offset in `xp`.
Padding therefore never changes a real output, and each example's new length is its own `T'`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jdnn.core import (Layer, LayerError, check_features, check_hparam, check_input_shape,
                       make_spec, positive_int, positive_ints, register_layer)
from jdnn.layers import initializers
from jdnn.padded import Padded, sequence_mask, unpad

PADDINGS = ("SAME", "VALID", "CAUSAL")

# ---------------------------------------------------------------------------------------------
# The time-axis geometry, on Python ints (shapes) or integer arrays (a padded batch's lengths).


def window_span(kernel_size: int, dilation: int = 1) -> int:
    """How many consecutive steps one window covers: `(kernel_size - 1) * dilation + 1`.

    Examples:
        >>> window_span(3, dilation=2)   # 5
    """
    return (kernel_size - 1) * dilation + 1


def output_length(length, span: int, stride: int, padding: str):
    """`T'` for a sequence of `length` steps (an int, or an int array of lengths), see the
    module docstring; never below 0.

    Examples:
        >>> output_length(jnp.array([10, 9, 2]), 3, 2, "VALID")   # [4, 4, 0]
    """
    if padding == "VALID":
        out = (length - span) // stride + 1
        return max(out, 0) if isinstance(length, int) else jnp.maximum(out, 0)
    return (length + stride - 1) // stride


def left_pad(length: int, span: int, stride: int, padding: str) -> int:
    """The zeros (or `-inf`s) before the first step of a sequence of `length` steps.

    Examples:
        >>> left_pad(9, 3, 2, "SAME"), left_pad(10, 3, 2, "SAME")   # (1, 0)
    """
    if padding == "VALID":
        return 0
    if padding == "CAUSAL":
        return span - 1
    total = max((output_length(length, span, stride, padding) - 1) * stride + span - length, 0)
    return total // 2


def check_sequences(kind: str, shape: tuple[int, ...], span: int, padding: str) -> None:
    """Checks `shape` is `(B, T, C)` with enough steps for one VALID window.

    Raises:
        LayerError: naming `kind`, the shape received and the fix.

    Examples:
        >>> check_sequences("MaxPool1D", (8, 2, 4), 3, "VALID")   # LayerError: 2 steps < 3
    """
    if len(shape) != 3:
        hint = (" (one feature per step: add a channel axis, x[..., None])" if len(shape) == 2
                else " (images: use the 2-D layer)" if len(shape) == 4 else "")
        raise LayerError(kind, f"expected sequences (batch, time, channels) of rank 3, got shape "
                               f"{tuple(shape)}{hint}")
    if padding == "VALID" and shape[1] < span:
        raise LayerError(kind, f"sequences of {shape[1]} steps are shorter than one window "
                               f"({span} steps) with padding 'VALID'; use padding='SAME' or "
                               f"'CAUSAL', a smaller window or dilation, or longer sequences")


def _shifted(x: jax.Array, low: int, n: int, fill: float) -> jax.Array:
    """`x` `(B, T, C)` moved `low` steps right inside `n` steps filled with `fill`."""
    right = max(n - low - x.shape[1], 0)
    return jnp.pad(x, ((0, 0), (low, right), (0, 0)), constant_values=fill)[:, :n]


def windows_input(x: jax.Array, lengths: jax.Array | None, span: int, stride: int,
                  padding: str, fill: float = 0.0) -> jax.Array:
    """`xp` `(B, N, C)`, the padded input the windows read (`N = (T' - 1) * stride + span`):
    each example placed at its own left pad, its padded steps and the padding set to `fill`.

    Args:
        x: `(B, T, C)`.
        lengths: `(B,)` ints, or None (every example is `T` long).
        span, stride, padding: the windows' (see `window_span`).
        fill: what padding reads as: 0 for a convolution or a sum, `-inf` for a maximum.

    Returns:
        `xp`; `T'` windows of `span` steps fit it, `stride` apart, with no further padding.

    Examples:
        >>> windows_input(jnp.ones((2, 5, 3)), None, 3, 1, "CAUSAL").shape   # (2, 7, 3)
    """
    steps = x.shape[1]
    n = max((output_length(steps, span, stride, padding) - 1) * stride + span, 0)
    if lengths is None:
        return _shifted(x, left_pad(steps, span, stride, padding), n, fill)
    x = jnp.where(sequence_mask(lengths, steps)[..., None], x, jnp.asarray(fill, x.dtype))
    # The left pads the lengths 0..T can have (one, unless SAME with a stride above 1); each
    # example takes the copy shifted by its own: a select among a few static pads, no gather.
    table = [left_pad(length, span, stride, padding) for length in range(steps + 1)]
    lows = jnp.asarray(table)[jnp.clip(lengths, 0, steps)]
    xp = None
    for low in sorted(set(table)):
        shifted = _shifted(x, low, n, fill)
        xp = shifted if xp is None else jnp.where((lows == low)[:, None, None], shifted, xp)
    return xp


def im2col(xp: jax.Array, kernel_size: int, stride: int, dilation: int) -> jax.Array:
    """The window under each output step, `(B, T', kernel_size * C)`: `kernel_size` strided
    slices of `xp` `(B, N, C)` side by side, tap by tap with channels fastest, like a WIO
    kernel reshaped to `(kernel_size * C, F)`."""
    out = (xp.shape[1] - window_span(kernel_size, dilation)) // stride + 1
    return jnp.concatenate([xp[:, i * dilation:i * dilation + (out - 1) * stride + 1:stride]
                            for i in range(kernel_size)], axis=-1)


# ---------------------------------------------------------------------------------------------
# The convolution: XLA's, with its two gradients stated explicitly (as `conv.py` states Conv2D's
# on accelerators: jax's own transpose rules emit them in layouts XLA does not always
# canonicalize inside a `lax.scan` body). Unlike Conv2D's, XLA:CPU's 1-D convolutions beat
# im2col + one GEMM in plain jnp: forward + backward, jitted, B=64, T=100, C=64, F=64, k=3,
# SAME, best of interleaved rounds on a loaded 2-core machine, jaxlib 0.10.2: 4.8-10.1 ms as
# convolutions against 7.9-11.8 ms as im2col + GEMM in each of three runs. `im2col` stays for
# `ghost_inputs` (ghost clipping's per-example norms).

_DIMENSIONS = ("NWC", "WIO", "NWC")


def _pads(steps: int, span: int, stride: int, padding: str) -> tuple[int, int]:
    """`(low, high)` padding of a `steps`-long time axis: `T'` windows, no more."""
    low = left_pad(steps, span, stride, padding)
    needed = (output_length(steps, span, stride, padding) - 1) * stride + span
    return low, max(needed - low - steps, 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv1d(x: jax.Array, w: jax.Array, stride: int, dilation: int,
           pads: tuple[int, int]) -> jax.Array:
    """Cross-correlation of NWC `x` `(B, T, C)` with WIO `w` `(k, C, F)`: `(B, T', F)`."""
    return lax.conv_general_dilated(x, w, (stride,), (pads,), rhs_dilation=(dilation,),
                                    dimension_numbers=_DIMENSIONS)


def _conv1d_forward(x, w, stride, dilation, pads):
    return conv1d(x, w, stride, dilation, pads), (x, w)


def _conv1d_backward(stride, dilation, pads, residuals, dy):
    """y[t] = sum_i xp[t*s + i*d] @ w[i], with xp = x padded by `pads = (low, high)`. So

    dL/dx[j] = sum_i dy_s[j + low - i*d] @ w[i]^T, dy_s = dy with s - 1 zeros between steps:
        a correlation of dy_s with the flipped kernel (in/out swapped, taps d apart), padded
        by span - 1 - low before and T + low - 1 - (T' - 1)*s after, so it has T steps;
    dL/dw[i, c, f] = sum_{b, t} xp[b, t*s + i*d, c] dy[b, t, f]:
        a correlation of x (channels as the batch) with dy (the batch as channels) as a
        kernel whose taps are s apart, its windows d apart; the first k are the taps."""
    x, w = residuals
    k, steps, out = w.shape[0], x.shape[1], dy.shape[1]
    low, _ = pads
    span = (k - 1) * dilation + 1
    flipped = jnp.transpose(jnp.flip(w, 0), (0, 2, 1))
    dx_pads = (span - 1 - low, steps + low - 1 - (out - 1) * stride)
    dx = lax.conv_general_dilated(dy, flipped, (1,), (dx_pads,), lhs_dilation=(stride,),
                                  rhs_dilation=(dilation,), dimension_numbers=_DIMENSIONS)
    dw = lax.conv_general_dilated(jnp.transpose(x, (2, 1, 0)), jnp.transpose(dy, (1, 0, 2)),
                                  (dilation,), (pads,), rhs_dilation=(stride,),
                                  dimension_numbers=_DIMENSIONS)
    return dx, jnp.transpose(dw, (1, 0, 2))[:k]


conv1d.defvjp(_conv1d_forward, _conv1d_backward)


# ---------------------------------------------------------------------------------------------
# The layer.


def _spec_geometry(spec) -> tuple[int, int, int, str]:
    return spec["kernel_size"], spec["strides"], spec["dilation"], spec["padding"]


def _patches(spec, x) -> jax.Array:
    """`ghost_inputs`: the window under each output step, `(B, T', k * C)`; the weight gradient
    is `patches^T dy`."""
    k, s, d, padding = _spec_geometry(spec)
    values, lengths = unpad(x)
    return im2col(windows_input(values, lengths, window_span(k, d), s, padding), k, s, d)


def _flops(spec, input_shape, output_shape) -> int:
    return 2 * spec["kernel_size"] * input_shape[-1] * math.prod(output_shape[1:])


def _label(spec) -> str:
    """E.g. `Conv1D(64, k3)`, `Conv1D(64, k3, /2, d2, CAUSAL)`."""
    k, s, d, padding = _spec_geometry(spec)
    parts = [str(spec["features"]), f"k{k}"]
    parts += [f"/{s}"] if s != 1 else []
    parts += [f"d{d}"] if d != 1 else []
    parts += [padding] if padding != "SAME" else []
    return f"Conv1D({', '.join(parts)})"


def _padding_name(kind: str, padding: str, allowed: tuple[str, ...]) -> str:
    """Validates a padding name (any case); returns it upper-cased."""
    ok = isinstance(padding, str) and padding.upper() in allowed
    check_hparam(kind, "padding", padding, ok, " or ".join(f'"{p}"' for p in allowed))
    return padding.upper()


@register_layer(family="conv", flops=_flops, ghost_inputs=_patches, label=_label, padded=True)
def Conv1D(features: int, kernel_size: int, strides: int = 1, padding: str = "SAME",
           dilation: int = 1, *, use_bias: bool = True,
           w_init: str | initializers.Initializer = "lecun_normal",
           b_init: str | initializers.Initializer = "zeros") -> Layer:
    """A 1-D convolution over sequences `(B, T, C)` (a cross-correlation, as in every DNN
    library), for text, audio and time series.

    Params: `w` of shape `(kernel_size, C, features)` (WIO) and, with `use_bias`, `b` of shape
    `(features,)`. Output step `t` is `b + sum_i xp[t * strides + i * dilation] @ w[i]`, `xp`
    the padded input: `"SAME"` gives `ceil(T / strides)` steps (padded like TensorFlow, the
    extra step at the end), `"VALID"` gives `(T - (kernel_size - 1) * dilation - 1) //
    strides + 1`, `"CAUSAL"` gives `ceil(T / strides)` with all the padding on the left, so
    output `t` sees only inputs at steps `<= t * strides` (WaveNet-style with `dilation`).

    A `jdnn.Padded` input is convolved as if each example were alone (its padded steps read as
    zeros) and comes back as `Padded(y, new_lengths)`, each length mapped by the same formula.
    Differentiable in reverse mode to any order (`jax.grad`, `jax.vjp`, per-example
    gradients); its gradients are written out, so forward mode (`jax.jvp`) is not available.

    Args:
        features: output channels `F`, a positive int.
        kernel_size: taps `k`, a positive int.
        strides: step between windows, a positive int.
        padding: `"SAME"`, `"VALID"` or `"CAUSAL"`.
        dilation: step between taps, a positive int.
        use_bias: whether to add `b`.
        w_init: a `jax.nn.initializers` name or initializer for `w` (fan-in `k * C`).
        b_init: a `jax.nn.initializers` name or initializer for `b`.

    Returns:
        A `Layer` mapping `(B, T, C)` to `(B, T', F)` (a `Padded` to a `Padded`).

    Examples:
        >>> conv = jdnn.Conv1D(64, 3, padding="CAUSAL", dilation=2)
        >>> out_shape, params, _ = conv.init(jax.random.key(0), (32, 100, 16))  # (32, 100, 64)
    """
    features = positive_int("Conv1D", "features", features)
    (k,) = positive_ints("Conv1D", "kernel_size", kernel_size, 1)
    stride = positive_int("Conv1D", "strides", strides)
    dilation = positive_int("Conv1D", "dilation", dilation)
    pad = _padding_name("Conv1D", padding, PADDINGS)
    w_fn, w_name = initializers.resolve("Conv1D", "w_init", w_init)
    b_fn, b_name = initializers.resolve("Conv1D", "b_init", b_init)
    span = window_span(k, dilation)
    spec = make_spec("Conv1D", features=features, kernel_size=k, strides=stride, padding=pad,
                     dilation=dilation, use_bias=bool(use_bias), w_init=w_name, b_init=b_name)

    def init(key, input_shape):
        shape = check_input_shape("Conv1D", input_shape)
        check_sequences("Conv1D", shape, span, pad)
        w_key, b_key = jax.random.split(key)
        params = {"w": w_fn(w_key, (k, shape[-1], features))}
        if use_bias:
            params["b"] = b_fn(b_key, (features,))
        return (shape[0], output_length(shape[1], span, stride, pad), features), params, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        values, lengths = unpad(x)
        check_sequences("Conv1D", values.shape, span, pad)
        check_features("Conv1D", values, params["w"].shape[1], "channels")
        if lengths is None:
            y = conv1d(values, params["w"], stride, dilation,
                       _pads(values.shape[1], span, stride, pad))
        else:   # each example placed at its own offset, its padded steps zeroed
            xp = windows_input(values, lengths, span, stride, pad)
            y = conv1d(xp, params["w"], stride, dilation, (0, 0))
        if use_bias:
            y = y + params["b"]
        if lengths is None:
            return y, state
        return Padded(y, output_length(lengths, span, stride, pad)), state

    return Layer(init, apply, spec)
