"""MultiHeadAttention: self-attention over the time axis of a `(B, T, F)` batch.

For each head `n` (of `num_heads`, each `head_features = d` wide):

    Q_n = x W_q[:, n] + b_q[n],   K_n = x W_k[:, n] + b_k[n],   V_n = x W_v[:, n] + b_v[n]
    O_n = softmax(Q_n K_n^T / sqrt(d) + mask) V_n                   (T, d) per example
    y   = concat_n(O_n) W_o + b_o                                   (T, F_out)

The mask is -inf where a query may not look: at later steps (`causal=True`) and at the padded
steps of a `jdnn.Padded` batch. Steps mix here, so the kind declares `padded=True` (see
`jdnn.padded`): padded input steps are zeroed before anything reads them, no query attends to a
padded key, outputs at padded query steps are 0, and the result is `Padded(y, lengths)`.

Why not `jax.nn.dot_product_attention`: in jax 0.10 its XLA path computes the softmax in
float32 whatever the input dtype (so a float64 gradient check could not reach 1e-10), and masks
with a finite `-0.7 * max` instead of -inf; measured forward+backward on this CPU (B=64, T=128,
F=128, 4 heads of 32, jitted) it was no faster than the einsum formulation below, within the
noise of the machine. The einsums are also what the NumPy twin writes out, line for line.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jdnn.core import (Layer, LayerError, Spec, check_features, check_hparam, check_input_shape,
                       make_spec, positive_int, register_layer)
from jdnn.layers import initializers
from jdnn.padded import Padded, sequence_mask, unpad

KIND = "MultiHeadAttention"


def _flops(spec: Spec, input_shape, output_shape) -> int:
    """Per example: the three input projections, the scores `Q K^T`, the weighted values `P V`
    and the output projection, 2 FLOPs per multiply-add; softmax and masking not counted."""
    steps, features = input_shape[1], input_shape[-1]
    inner = spec["num_heads"] * spec["head_features"]
    return (2 * steps * features * 3 * inner + 2 * steps * steps * inner
            + 2 * steps * steps * inner + 2 * steps * inner * output_shape[-1])


def _label(spec: Spec) -> str:
    causal = ", causal" if spec["causal"] else ""
    return f"{KIND}({spec['num_heads']}x{spec['head_features']}{causal})"


def _check_sequences(x, where: str) -> None:
    if x.ndim != 3:
        hint = "; a single sequence needs a batch axis: x[None]" if x.ndim == 2 else ""
        raise LayerError(KIND, f"expected {where} of rank 3, (batch, time, features), got shape "
                               f"{tuple(x.shape)}{hint}")


@register_layer(family="attention", flops=_flops, label=_label, padded=True)
def MultiHeadAttention(num_heads: int, head_features: int, *, causal: bool = False,
                       output_features: int | None = None, use_bias: bool = True,
                       w_init: str | initializers.Initializer = "lecun_normal",
                       b_init: str | initializers.Initializer = "zeros") -> Layer:
    """Multi-head self-attention on `(batch, time, features)` sequences.

    Every step's query is compared with every step's key (only earlier or equal steps with
    `causal=True`), the scores scaled by `1 / sqrt(head_features)` and normalized by a softmax
    over the keys; each head returns the weighted mean of the values, the heads are
    concatenated and projected to `output_features`. Like `torch.nn.MultiheadAttention` and
    `flax.linen.MultiHeadDotProductAttention` applied to `(x, x, x)`.

    With a `jdnn.Padded(values, lengths)` input, padded steps are never attended to, outputs
    at padded steps are 0, and the output is `Padded(y, lengths)`; an example of length 0 gives
    zeros (no NaN, finite gradients).

    Params (the heads on their own axis, flax's layout, so `w_q[:, n]` is head `n`):
    `w_q`, `w_k`, `w_v` of shape `(F, num_heads, head_features)`; `w_o` of shape
    `(num_heads * head_features, F_out)`, the concatenated heads' projection (head `n` owns rows
    `n * head_features` to `(n + 1) * head_features`); with `use_bias`, `b_q`, `b_k`, `b_v` of
    shape `(num_heads, head_features)` and `b_o` of shape `(F_out,)`. Each projection is
    initialized as one `(fan_in, fan_out)` matrix (`(F, num_heads * head_features)` for the
    inputs), so `w_init`'s fan-in is `F`, as for a `Dense`. `b_k` is kept for parity with
    PyTorch and flax, though its gradient is 0: it shifts each row of scores by a constant,
    which the softmax ignores.

    Args:
        num_heads: the number of heads, a positive int.
        head_features: the width `d` of each head's queries, keys and values, a positive int.
        causal: whether step `t` attends only to steps `<= t` (a decoder, a language model).
        output_features: `F_out`, the output width; None for the input's `F`.
        use_bias: whether the four projections add biases.
        w_init: a `jax.nn.initializers` name or initializer for the four weights.
        b_init: a `jax.nn.initializers` name or initializer for the four biases.

    Returns:
        A `Layer` mapping `(B, T, F)` (or a `Padded` of it) to `(B, T, F_out)` (a `Padded` with
        the same lengths).

    Examples:
        >>> layer = jdnn.MultiHeadAttention(4, 32, causal=True)
        >>> out_shape, params, state = layer.init(jax.random.key(0), (8, 50, 128))  # (8, 50, 128)
        >>> y, _ = layer.apply(params, state, jdnn.Padded(x, lengths))               # Padded
    """
    num_heads = positive_int(KIND, "num_heads", num_heads)
    head_features = positive_int(KIND, "head_features", head_features)
    check_hparam(KIND, "causal", causal, isinstance(causal, bool), "True or False")
    if output_features is not None:
        output_features = positive_int(KIND, "output_features", output_features)
    w_fn, w_name = initializers.resolve(KIND, "w_init", w_init)
    b_fn, b_name = initializers.resolve(KIND, "b_init", b_init)
    inner = num_heads * head_features
    scale = 1.0 / math.sqrt(head_features)
    spec = make_spec(KIND, num_heads=num_heads, head_features=head_features, causal=causal,
                     output_features=output_features, use_bias=bool(use_bias), w_init=w_name,
                     b_init=b_name)

    def init(key, input_shape):
        shape = check_input_shape(KIND, input_shape)
        if len(shape) != 3:
            raise LayerError(KIND, f"expected an input_shape of rank 3, (batch, time, features), "
                                   f"got {shape}")
        features = shape[-1]
        out_features = output_features or features
        keys = jax.random.split(key, 8)
        params = {f"w_{name}": w_fn(k, (features, inner)).reshape(features, num_heads,
                                                                   head_features)
                  for name, k in zip("qkv", keys[:3])}
        params["w_o"] = w_fn(keys[3], (inner, out_features))
        if use_bias:
            for name, k in zip("qkv", keys[4:7]):
                params[f"b_{name}"] = b_fn(k, (inner,)).reshape(num_heads, head_features)
            params["b_o"] = b_fn(keys[7], (out_features,))
        return (*shape[:2], out_features), params, {}

    def project(params, x, name):
        y = jnp.einsum("btf,fnh->btnh", x, params[f"w_{name}"])
        return y + params[f"b_{name}"] if use_bias else y

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        values, lengths = unpad(x)
        _check_sequences(values, "an input")
        check_features(KIND, values, params["w_q"].shape[0])
        steps = values.shape[1]
        # allowed[b, t, s]: may query t look at key s
        allowed = jnp.ones((1, steps, steps), bool)
        if causal:
            allowed = allowed & jnp.tril(jnp.ones((steps, steps), bool))
        if lengths is not None:
            real = sequence_mask(lengths, steps)                     # (B, T)
            values = jnp.where(real[..., None], values, 0)           # padding never read
            allowed = allowed & real[:, None, :]
        q, k, v = (project(params, values, name) for name in "qkv")  # (B, T, N, d)
        scores = jnp.einsum("btnh,bsnh->bnts", q, k) * scale
        allowed = allowed[:, None]                                   # (B or 1, 1, T, T)
        scores = jnp.where(allowed, scores, -jnp.inf)
        # softmax over the keys; a row with no allowed key (a length-0 example) gives zeros
        top = jnp.max(scores, axis=-1, keepdims=True, initial=-jnp.inf)
        top = lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0))
        weights = jnp.where(allowed, jnp.exp(scores - top), 0)
        total = jnp.sum(weights, axis=-1, keepdims=True)
        probs = weights / jnp.where(total > 0, total, 1)
        heads = jnp.einsum("bnts,bsnh->btnh", probs, v)
        y = heads.reshape(*heads.shape[:2], inner) @ params["w_o"]
        if use_bias:
            y = y + params["b_o"]
        if lengths is None:
            return y, state
        return Padded(jnp.where(real[..., None], y, 0), lengths), state

    return Layer(init, apply, spec)
