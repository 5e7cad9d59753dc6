"""Post-training int8 quantization whose inference really computes in int8.

    qmodel, qparams = quantize(model, params, state, calibration=None)
    y, state = qmodel.apply(qparams, state, x)          # int8 x int8 -> int32, then rescaled

Weights: each kernel is stored as int8 with one float32 scale per output channel, symmetric
(`w ~ scale_w * q`, zero point 0, `scale_w = max|w| / 127.5` over the channel: qwix's bound,
so that `round(w / scale_w)` fills every int8 bucket, clipped to [-128, 127]). Activations:
the input of each quantized layer is quantized too, so its products run as int8 x int8 with
int32 accumulation (`preferred_element_type=int32`) and are rescaled by `scale_x * scale_w`
afterwards:

- `calibration=None`: dynamic. Each example's input is scaled by its own `max|x| / 127.5`,
  computed at run time (TFLite's "dynamic range" mode, with the products in int8 too).
- `calibration=batches`: static. One scale per layer input, `max|x| / 127.5` over a few
  calibration batches of the float model, stored in the params (`scale_x`); inputs beyond the
  calibrated range saturate. No run-time reduction over the input.

Which layers: every kind that declares the `quantize` trait (Dense and Conv2D do; see
`jdnn.core.TRAITS["quantize"]`): it names its kernels with their output-channel axes and
gives its apply written against an `ops` namespace (`ops.dot_general`,
`ops.conv_general_dilated`, jax.lax's signatures). This module never asks for a kind by name;
a user's kind that declares the trait is quantized the same way. Other layers (activations,
pooling, norms) run in float32 as they are.

The params of a quantized layer: `w` int8 (the kernel's shape), `scale_w` float32
`(out_channels,)`, `b` float32 as it was, and with calibration `scale_x` float32 `()`. Plain
arrays under readable paths, so a checkpoint or a safetensors file holds them as they are.
`qmodel.spec` is the float model's: the same network, computed differently; `qmodel.init`
gives freshly drawn params quantized (and `scale_x = 1/127.5` placeholders when static).

Built on qwix (Google's JAX quantization library, the optional extra `jdnn[quant]`): its
`QArray`, `quantize` (per-channel absmax scales) and its `dot_general` / `conv_general_dilated`,
which multiply the int8 values with int32 accumulation and apply both scales to the result.
Written here, because qwix cannot do it for jdnn: qwix applies itself to a model by
intercepting Flax modules (`qwix.quantize_model`, `PtqProvider`) and calibrates static scales
into Flax variables; jdnn layers are pure functions, not modules. So the model transform (the
spec walk and the `quantize` trait), the calibration pass and the static activation
quantization (a `QArray` built from a stored scale) are jdnn's; the numerics are qwix's. qwix's
`dot_general` dequantizes first, in float, when one operand is a float array, so activations are
always quantized here. AQT (`aqtp`), evaluated too, is qwix's predecessor: its ops are
configured for quantized training and re-quantize both operands at every call (serving with
pre-quantized weights goes through its Flax wrappers), and its conv assumes Flax's layouts; it
adds nothing qwix lacks here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdnn.core import Array, Layer, Params, State, rebuild, trait, walk

# Symmetric int8: scales are max|v| / 127.5 (qwix's bound for int8), values clipped to [-128, 127].
INT8_BOUND = 127.5
INT8_MIN, INT8_MAX = -128, 127
# Scales below this are taken as 1 (an all-zero channel or input), as qwix does.
_TINY = float(np.sqrt(np.finfo(np.float32).tiny))


def _qwix():
    """The qwix module, or an ImportError saying how to install it."""
    try:
        import qwix
    except ImportError as error:
        raise ImportError("jdnn.compress.quantize computes with qwix, which is not installed: "
                          "pip install 'jdnn[quant]' (or pip install qwix)") from error
    return qwix


# ---------------------------------------------------------------------------------------------
# Kernels: int8 values and one scale per output channel, stored as plain arrays.


def _channel_axis(axis: int, ndim: int) -> int:
    return axis % ndim


@functools.partial(jax.jit, static_argnums=1)
def quantize_kernel(w: Array, axis: int = -1) -> tuple[Array, Array]:
    """`w` as int8 values and float32 scales per output channel (symmetric, absmax).

    Args:
        w: a float kernel, e.g. Dense's `(in, out)` or Conv2D's `(kh, kw, in, out)`.
        axis: its output-channel axis.

    Returns:
        `(q, scale)`: `q` int8 of `w`'s shape, `scale` float32 `(w.shape[axis],)`, with
        `w ~ q * scale` along `axis`.

    Examples:
        >>> q, scale = quantize_kernel(params["0_dense"]["w"])   # int8 (64, 256), (256,)
    """
    axis = _channel_axis(axis, w.ndim)
    qw = _qwix().quantize(jnp.asarray(w, jnp.float32), jnp.int8, channelwise_axes=(axis,))
    return qw.qvalue, qw.scale.reshape(-1)


def _kernel_qarray(qwix: Any, q: Array, scale: Array, axis: int) -> Any:
    """A qwix `QArray` from stored int8 values and per-channel scales."""
    shape = [1] * q.ndim
    shape[_channel_axis(axis, q.ndim)] = -1
    return qwix.QArray(q, scale.reshape(shape), None, jnp.int8)


# ---------------------------------------------------------------------------------------------
# Activations: quantized inside the products, per example at run time or with a stored scale.


class Int8Ops:
    """`dot_general` and `conv_general_dilated` with jax.lax's signatures, for a layer whose
    kernels are qwix `QArray`s: the float input is quantized to int8 (per example, or with the
    calibrated `x_scale`), and qwix multiplies int8 x int8 into int32 and rescales.

    Attributes:
        x_scale: the static input scale `()`, or None for dynamic per-example scales.
    """

    def __init__(self, qwix: Any, x_scale: Array | None):
        self.qwix, self.x_scale = qwix, x_scale

    def _input(self, x: Array, per_example_axes: list[int]) -> Any:
        if self.x_scale is None:
            return self.qwix.quantize(x, jnp.int8, channelwise_axes=per_example_axes)
        scale = jnp.reshape(self.x_scale, (1,) * x.ndim).astype(x.dtype)
        q = jnp.clip(jnp.round(x / scale), INT8_MIN, INT8_MAX).astype(jnp.int8)
        return self.qwix.QArray(q, scale, None, jnp.int8)

    def dot_general(self, lhs: Array, rhs: Any, dimension_numbers: Any, precision: Any = None,
                    preferred_element_type: Any = None) -> Array:
        """`lax.dot_general(lhs, rhs)` with `lhs` quantized (scales per row: every axis that is
        not contracted) and `rhs` a `QArray`."""
        del precision, preferred_element_type   # int8 products accumulate in int32
        contracted = dimension_numbers[0][0]
        rows = [a for a in range(lhs.ndim) if a not in contracted]
        return self.qwix.dot_general(self._input(lhs, rows), rhs, dimension_numbers)

    def conv_general_dilated(self, lhs: Array, rhs: Any, window_strides: Any, padding: Any,
                             *, dimension_numbers: Any, **kwargs: Any) -> Array:
        """`lax.conv_general_dilated(lhs, rhs)` with `lhs` quantized (a scale per example) and
        `rhs` a `QArray`."""
        numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        return self.qwix.conv_general_dilated(self._input(lhs, [numbers.lhs_spec[0]]), rhs,
                                              window_strides, padding,
                                              dimension_numbers=dimension_numbers, **kwargs)


# ---------------------------------------------------------------------------------------------
# Calibration: the largest |input| of each quantized layer over a few batches.


def _calibration_batches(calibration: Any) -> list[np.ndarray]:
    batches = [calibration] if hasattr(calibration, "ndim") else list(calibration)
    if not batches:
        raise ValueError("quantize: calibration is empty; pass a few input batches (arrays "
                         "(B, ...) the model takes), or None for dynamic activation scales")
    return [np.asarray(batch) for batch in batches]


def input_absmax(model: Layer, params: Params, state: State,
                 batches: Iterable[Array]) -> dict[str, float]:
    """`{path: max |input|}` of every layer declaring the `quantize` trait, over `batches`,
    from the float model in eval mode (one compiled forward pass per batch shape).

    Examples:
        >>> input_absmax(model, params, state, [x[:128], x[128:256]])   # {"0_dense": 1.0, ...}
    """
    def forward(params, state, x):
        found: dict[str, Array] = {}

        def record(path, spec, layer):
            if trait(spec, "quantize") is None:
                return layer

            def apply(p, s, x, **kwargs):
                found[path] = jnp.max(jnp.abs(x))
                return layer.apply(p, s, x, **kwargs)

            return Layer(layer.init, apply, layer.spec)

        rebuild(model.spec, record).apply(params, state, x)
        return found

    run = jax.jit(forward)
    absmax: dict[str, float] = {}
    for batch in batches:
        for path, value in jax.device_get(run(params, state, batch)).items():
            absmax[path] = max(absmax.get(path, 0.0), float(value))
    return absmax


# ---------------------------------------------------------------------------------------------
# The quantized model: the float model rebuilt from its spec, quantizable layers swapped.


def _quantized_params(params: Params, kernels: dict[str, int],
                      x_absmax: float | None) -> dict[str, Any]:
    out = dict(params)
    for name, axis in kernels.items():
        out[name], out[f"scale_{name}"] = quantize_kernel(params[name], axis)
    if x_absmax is not None:
        out["scale_x"] = jnp.asarray(max(x_absmax, _TINY * INT8_BOUND) / INT8_BOUND,
                                     jnp.float32)
    return out


def _int8_layer(layer: Layer, kernels: dict[str, int], apply_with: Any, static: bool) -> Layer:
    """`layer` computing in int8: params as `_quantized_params` lays them out."""
    added = {f"scale_{name}" for name in kernels} | {"scale_x"}

    def init(key, input_shape):
        shape, params, state = layer.init(key, input_shape)
        return shape, _quantized_params(params, kernels, 1.0 if static else None), state

    def apply(params, state, x, *, key=None, train=False):
        qwix = _qwix()
        inner = {k: v for k, v in params.items() if k not in added}
        for name, axis in kernels.items():
            inner[name] = _kernel_qarray(qwix, params[name], params[f"scale_{name}"], axis)
        ops = Int8Ops(qwix, params.get("scale_x"))
        return apply_with(ops)(inner, state, x, key=key, train=train)

    return Layer(init, apply, layer.spec)


def _subtree(tree: Any, path: str) -> Any:
    for name in path.split("/") if path else ():
        tree = tree[name]
    return tree


def _replaced(tree: Any, path: str, value: Any) -> Any:
    """`tree` (nested dicts) with the subtree at `path` replaced by `value`; a new dict."""
    if not path:
        return value
    head, _, rest = path.partition("/")
    return {**tree, head: _replaced(tree[head], rest, value)}


def quantize(model: Layer, params: Params, state: State, calibration: Any = None,
             ) -> tuple[Layer, Params]:
    """Post-training int8 quantization of `model`'s Dense/Conv2D layers (every kind declaring
    the `quantize` trait): int8 weights per output channel, int8 activations, int32 products.

    Args:
        model: the trained float model.
        params: its params, e.g. `train_state.params`.
        state: its state (batch-norm statistics), used by the calibration pass and passed to
            `qmodel.apply` as it is.
        calibration: None for dynamic activation scales (per example, at run time), or a few
            input batches (an array `(B, ...)` or a list of them) for static ones: each
            quantized layer's input range is measured on them with the float model.

    Returns:
        `(qmodel, qparams)`: a `Layer` with the model's spec whose quantized layers compute in
        int8, and its params (see the module docstring for their layout). Run it with
        `qmodel.apply(qparams, state, x)` or `jax.jit` of that.

    Raises:
        ImportError: if qwix is not installed (`pip install 'jdnn[quant]'`).
        TypeError: if `model` is not a jdnn `Layer`.
        ValueError: if no layer of the model declares the `quantize` trait, or `calibration`
            is empty.

    Examples:
        >>> qmodel, qparams = jdnn.compress.quantize(model, ts.params, ts.state,
        ...                                          calibration=[x_train[:256]])
        >>> logits, _ = jax.jit(qmodel.apply)(qparams, ts.state, x_test)
    """
    _qwix()
    if not isinstance(model, Layer):
        raise TypeError(f"quantize: model must be a jdnn Layer, got {type(model).__name__}")
    targets = {node.path: trait(node.spec, "quantize")(node.spec)[0]
               for node in walk(model.spec) if trait(node.spec, "quantize") is not None}
    if not targets:
        raise ValueError(f"quantize: no layer of {model.spec!r} declares the `quantize` trait "
                         f"(Dense and Conv2D do), so nothing would be quantized")
    absmax = None
    if calibration is not None:
        absmax = input_absmax(model, params, state, _calibration_batches(calibration))

    def wrap(path, spec, layer):
        found = trait(spec, "quantize")
        if found is None:
            return layer
        kernels, apply_with = found(spec)
        return _int8_layer(layer, kernels, apply_with, static=absmax is not None)

    qparams = params
    for path, kernels in targets.items():
        x_absmax = None if absmax is None else absmax[path]
        qparams = _replaced(qparams, path,
                            _quantized_params(_subtree(params, path), kernels, x_absmax))
    return rebuild(model.spec, wrap), qparams
