"""Recurrent layers on `(B, T, F)` sequences: `SimpleRNN`, `GRU`, `LSTM`, and `bidirectional`.

Each runs one cell over time. With `G` gates of `H` units each (SimpleRNN 1, GRU 3, LSTM 4):

    xp_t = x_t @ w_x + b_x                   (G*H,)  the input's share
    carry_t = cell(xp_t, carry_{t-1})        carry = (h,) for SimpleRNN and GRU, (h, c) for LSTM
    y_t = h_t

How it runs. One `lax.scan` over time-major steps; each step computes its input's share
`x_t @ w_x + b_x` and the recurrent product `h @ w_h`, one product each over all gates, and
splits the gates after. Hoisting the input products of all steps out of the loop as one
`(T*B, F) @ (F, G*H)` product (as cuDNN does) was slower on XLA:CPU: a GRU training step (B=64,
T=100, F=H=128, float32, 2 cores, interleaved medians of 25) took 0.68x the hoisted form's time
this way, an LSTM's 0.85x; the hoisted `(T, B, G*H)` projection (10 MB) does not stay in cache.
The gate order and bias placement are PyTorch's (also cuDNN's), so
`torch.nn.RNN`/`GRU`/`LSTM` weights copy in by transposing (each constructor says how).

Variable lengths (`jdnn.padded`). Given a `Padded(values, lengths)`, the recurrence stops at each
example's length: at a step `t >= lengths[b]` the carry is kept and the output is 0. With
`reverse=True` the scan runs from the last step to the first, so the padded steps come first and
leave the initial state alone: each example starts at its last *real* step, as PyTorch's packed
sequences and Keras do, and `y_t` stays at position `t`. The last state (`return_sequences=False`)
is the carry after the scan: the state at the last real step (at the first one, reversed), or
the initial state for an example of length 0.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jdnn.core import (Layer, LayerError, Spec, check_features, check_hparam, check_input_shape,
                       make_spec, positive_int, rebuild, register_layer)
from jdnn.layers.combinators import MERGES, branches
from jdnn.padded import repad, unpad

# `lax.scan`'s unroll. On a GRU training step (B=64, T=100, F=H=128, float32; XLA:CPU, jaxlib
# 0.10.2, 2 cores; median of 30) unroll 1 and 2 ran alike (80 ms), 4 and 8 slower (83, 90 ms)
# and compiled 2x and 4x longer; so 1.
UNROLL = 1

INITIAL_STATES = ("zeros", "learned")
ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}

# Per unit and step, the elementwise work besides the matrix products (an add, a multiply or a
# nonlinearity counts 1): SimpleRNN 2 adds and the activation (3); GRU r and z 3 adds and a
# sigmoid each (8), n 2 bias adds, the product with r, an add and a tanh (5), h' = n + z * (h - n)
# (3); LSTM 2 adds and a nonlinearity per gate (12), c' = f * c + i * g (3), h' = o * tanh(c') (2).
_ELEMENTWISE = {"SimpleRNN": 3, "GRU": 16, "LSTM": 17}
_GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}


def _flops(spec: Spec, input_shape, output_shape) -> int:
    """Per example: `T * (2 * (F + H) * G * H + elementwise * H)` (both products, every step)."""
    del output_shape
    steps, features, hidden = input_shape[1], input_shape[-1], spec["features"]
    gates = _GATES[spec.kind]
    return steps * (2 * (features + hidden) * gates * hidden + _ELEMENTWISE[spec.kind] * hidden)


def _label(spec: Spec) -> str:
    """E.g. `GRU(128)`, `LSTM(64, reverse)`, `SimpleRNN(32, relu)`."""
    parts = [str(spec["features"])]
    if spec.get("activation", "tanh") != "tanh":
        parts.append(spec["activation"])
    if spec["reverse"]:
        parts.append("reverse")
    return f"{spec.kind}({', '.join(parts)})"


# ---------------------------------------------------------------------------------------------
# The cells. `cell(params, xp, carry) -> new carry` is one step: `xp = x_t @ w_x + b_x` `(B, G*H)`
# is the step's input share (the layer computes it), the cell adds the recurrent product
# `h @ w_h` `(B, G*H)` and splits the gates after. Two products per step, each over all gates:
# with the products inside the scan, this ran a GRU training step in 0.80x and an LSTM's in 0.88x
# the time of one product per gate (B=64, T=100, F=H=128, float32, XLA:CPU, 2 cores, medians of
# 25 interleaved rounds); Flax's and Equinox's cells compute the same way. Measured with
# the benchmarks' `--only sequences` section and variants of this loop timed side by side.


def _gates(a: jax.Array, gates: int) -> tuple[jax.Array, ...]:
    """The last axis of `a` `(..., G*H)` as one `(..., H)` block per gate."""
    return tuple(jnp.split(a, gates, axis=-1))


def _simple_cell(activation: str):
    act = ACTIVATIONS[activation]

    def cell(params, xp, carry):
        (h,) = carry
        return (act(xp + h @ params["w_h"]),)

    return cell


def _gru_cell(params, xp, carry):
    """`b_h` stays with the recurrent product: `b_hn` sits inside `r * (h W_hn + b_hn)`."""
    (h,) = carry
    x_r, x_z, x_n = _gates(xp, 3)
    h_r, h_z, h_n = _gates(h @ params["w_h"] + params["b_h"], 3)
    r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    return (n + z * (h - n),)                                # = (1 - z) * n + z * h


def _lstm_cell(params, xp, carry):
    h, c = carry
    i, f, g, o = _gates(xp + h @ params["w_h"], 4)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def _scan(cell, params, project, xs, carry, lengths, reverse: bool, keep_outputs: bool):
    """Runs `cell` over time-major `xs` `(T, B, F)`, `project(x_t)` giving each step's input
    share `(B, G*H)`; returns `(last carry, ys (T, B, H))` (`ys` None unless `keep_outputs`).
    With `lengths`, steps past an example's length keep its carry and output 0."""
    if lengths is None:
        def step(carry, x):
            new = cell(params, project(x), carry)
            return new, (new[0] if keep_outputs else None)

        return lax.scan(step, carry, xs, reverse=reverse, unroll=UNROLL)

    real = (jnp.arange(xs.shape[0])[:, None] < lengths[None, :])[..., None]   # (T, B, 1)

    def masked_step(carry, inputs):
        x, m = inputs
        new = cell(params, project(x), carry)
        kept = tuple(jnp.where(m, n, old) for n, old in zip(new, carry))
        return kept, (jnp.where(m, new[0], 0) if keep_outputs else None)

    return lax.scan(masked_step, carry, (xs, real), reverse=reverse, unroll=UNROLL)


# ---------------------------------------------------------------------------------------------
# One layer builder for the three kinds; each constructor gives its cell and parameters.


def _check_options(kind: str, return_sequences, reverse, initial_state) -> None:
    check_hparam(kind, "return_sequences", return_sequences, isinstance(return_sequences, bool),
                 "True (outputs at every step, (B, T, H)) or False (the last state, (B, H))")
    check_hparam(kind, "reverse", reverse, isinstance(reverse, bool), "a bool")
    check_hparam(kind, "initial_state", initial_state, initial_state in INITIAL_STATES,
                 f"one of {INITIAL_STATES}")


def _orthogonal_blocks(key, hidden: int, gates: int) -> jax.Array:
    """`w_h` `(H, G*H)`: an orthogonal `(H, H)` block per gate, so no gate's recurrence grows
    or shrinks the state at the start of training (Saxe et al. 2014)."""
    blocks = [jax.nn.initializers.orthogonal()(k, (hidden, hidden))
              for k in jax.random.split(key, gates)]
    return jnp.concatenate(blocks, axis=1)


def _recurrent(kind: str, spec: Spec, cell, input_bias: str, biases: dict,
               states: tuple[str, ...]) -> Layer:
    """A layer running `cell` over time (see the cells); `input_bias` names the bias added to
    the input's share; `biases` maps each bias name to its initial value as a function of `H`;
    `states` names the carry's parts (`("h",)` or `("h", "c")`)."""
    hidden, gates = spec["features"], _GATES[kind]
    reverse, return_sequences = spec["reverse"], spec["return_sequences"]
    learned = spec["initial_state"] == "learned"

    def init(key, input_shape):
        shape = check_input_shape(kind, input_shape)
        if len(shape) != 3:
            raise LayerError(kind, f"expected an input_shape (batch, time, features) of rank 3, "
                                   f"got {shape}; a batch of vectors needs a time axis, e.g. "
                                   f"(batch, 1, features)")
        x_key, h_key = jax.random.split(key)
        params = {"w_x": jax.nn.initializers.lecun_normal()(x_key, (shape[-1], gates * hidden)),
                  "w_h": _orthogonal_blocks(h_key, hidden, gates)}
        params.update({name: make(hidden) for name, make in biases.items()})
        if learned:
            params.update({f"{name}0": jnp.zeros((hidden,)) for name in states})
        out_shape = (shape[0], shape[1], hidden) if return_sequences else (shape[0], hidden)
        return out_shape, params, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        values, lengths = unpad(x)
        if values.ndim != 3:
            hint = "; a single sequence needs a batch axis: x[None]" if values.ndim == 2 else ""
            raise LayerError(kind, f"expected sequences (batch, time, features) of rank 3, got "
                                   f"an input of shape {tuple(values.shape)}{hint}")
        check_features(kind, values, params["w_x"].shape[0])
        batch = values.shape[0]
        if lengths is not None and tuple(lengths.shape) != (batch,):
            raise LayerError(kind, f"a padded batch of {batch} sequences needs lengths of shape "
                                   f"({batch},), got {tuple(lengths.shape)}")
        w_x, b_x = params["w_x"], params[input_bias]

        def project(x):   # one step's input share, (B, G*H)
            return x @ w_x + b_x

        size = params["w_h"].shape[0]
        dtype = jnp.result_type(values, w_x)
        carry = tuple(jnp.broadcast_to(params[f"{name}0"], (batch, size)) if learned
                      else jnp.zeros((batch, size), dtype) for name in states)
        carry, ys = _scan(cell, params, project, jnp.swapaxes(values, 0, 1), carry, lengths,
                          reverse, return_sequences)
        if not return_sequences:
            return carry[0], state
        return repad(jnp.swapaxes(ys, 0, 1), lengths), state

    return Layer(init, apply, spec)


def _spec(kind: str, features, return_sequences, reverse, initial_state, **more) -> Spec:
    features = positive_int(kind, "features", features)
    _check_options(kind, return_sequences, reverse, initial_state)
    return make_spec(kind, features=features, return_sequences=return_sequences,
                     reverse=reverse, initial_state=initial_state, **more)


_TRAITS = dict(family="recurrent", flops=_flops, label=_label, padded=True)


@register_layer(**_TRAITS)
def SimpleRNN(features: int, *, return_sequences: bool = True, reverse: bool = False,
              initial_state: str = "zeros", activation: str = "tanh") -> Layer:
    """The plain (Elman) recurrent layer: `h_t = act(x_t @ w_x + h_{t-1} @ w_h + b)`.

    Params: `w_x (F, H)` (LeCun normal), `w_h (H, H)` (orthogonal), `b (H,)` (zeros), and with
    `initial_state="learned"` `h0 (H,)` (zeros), shared by every example. From
    `torch.nn.RNN(F, H, batch_first=True)`: `w_x = weight_ih_l0.T`, `w_h = weight_hh_l0.T`,
    `b = bias_ih_l0 + bias_hh_l0` (only their sum matters).

    Args:
        features: `H`, the size of the state, a positive int.
        return_sequences: True: every step's state `(B, T, H)` (a `Padded` for a padded
            input); False: the last real state `(B, H)`.
        reverse: run each sequence from its last real step to its first (outputs stay in the
            original time order).
        initial_state: `"zeros"`, or `"learned"` (a trained `h0`).
        activation: `"tanh"` or `"relu"`.

    Returns:
        A `Layer` mapping `(B, T, F)` (or a `jdnn.Padded` of it) to `(B, T, H)` or `(B, H)`.

    Examples:
        >>> rnn = jdnn.SimpleRNN(32)
        >>> out_shape, params, _ = rnn.init(jax.random.key(0), (8, 20, 5))   # (8, 20, 32)
    """
    check_hparam("SimpleRNN", "activation", activation, activation in ACTIVATIONS,
                 f"one of {tuple(ACTIVATIONS)}")
    spec = _spec("SimpleRNN", features, return_sequences, reverse, initial_state,
                 activation=activation)
    return _recurrent("SimpleRNN", spec, _simple_cell(activation), "b",
                      {"b": lambda h: jnp.zeros((h,))}, ("h",))


@register_layer(**_TRAITS)
def GRU(features: int, *, return_sequences: bool = True, reverse: bool = False,
        initial_state: str = "zeros") -> Layer:
    """A gated recurrent unit (Cho et al. 2014) with PyTorch's gates (also cuDNN's and Keras'
    `reset_after=True`): the reset gate applies after the recurrent product.

        r = sigmoid(x W_xr + b_xr + h W_hr + b_hr)      z = sigmoid(x W_xz + b_xz + h W_hz + b_hz)
        n = tanh(x W_xn + b_xn + r * (h W_hn + b_hn))   h' = (1 - z) * n + z * h

    Params: `w_x (F, 3H)` (LeCun normal), `w_h (H, 3H)` (an orthogonal block per gate), `b_x`
    and `b_h (3H,)` (zeros), columns in the gate order r, z, n; two biases, since `b_hn` sits
    inside `r * (...)`. With `initial_state="learned"`, `h0 (H,)`. From `torch.nn.GRU(F, H,
    batch_first=True)`: `w_x = weight_ih_l0.T`, `w_h = weight_hh_l0.T`, `b_x = bias_ih_l0`,
    `b_h = bias_hh_l0`.

    Args:
        features: `H`, the size of the state, a positive int.
        return_sequences: True: every step's state `(B, T, H)` (a `Padded` for a padded
            input); False: the last real state `(B, H)`.
        reverse: run each sequence from its last real step to its first (outputs stay in the
            original time order).
        initial_state: `"zeros"`, or `"learned"` (a trained `h0`).

    Returns:
        A `Layer` mapping `(B, T, F)` (or a `jdnn.Padded` of it) to `(B, T, H)` or `(B, H)`.

    Examples:
        >>> model = jdnn.serial(jdnn.GRU(128, return_sequences=False), jdnn.Dense(10))
        >>> logits, _ = model.apply(params, state, jdnn.Padded(x, lengths))   # (B, 10)
    """
    spec = _spec("GRU", features, return_sequences, reverse, initial_state)
    return _recurrent("GRU", spec, _gru_cell, "b_x", {"b_x": lambda h: jnp.zeros((3 * h,)),
                                                           "b_h": lambda h: jnp.zeros((3 * h,))},
                      ("h",))


def _lstm_bias(hidden: int) -> jax.Array:
    """Zeros but 1 for the forget gate, so the cell remembers by default early in training
    (Jozefowicz et al. 2015; Keras' `unit_forget_bias`)."""
    return jnp.zeros((4 * hidden,)).at[hidden:2 * hidden].set(1.0)


@register_layer(**_TRAITS)
def LSTM(features: int, *, return_sequences: bool = True, reverse: bool = False,
         initial_state: str = "zeros") -> Layer:
    """A long short-term memory layer (Hochreiter & Schmidhuber 1997) with PyTorch's gates:

        i, f, o = sigmoid(.), g = tanh(.)   of   x W_x + h W_h + b   (columns i | f | g | o)
        c' = f * c + i * g                  h' = o * tanh(c')

    Params: `w_x (F, 4H)` (LeCun normal), `w_h (H, 4H)` (an orthogonal block per gate), `b
    (4H,)` (zeros, but 1 for the forget gate), and with `initial_state="learned"` `h0` and `c0`
    `(H,)`. From `torch.nn.LSTM(F, H, batch_first=True)`: `w_x = weight_ih_l0.T`, `w_h =
    weight_hh_l0.T`, `b = bias_ih_l0 + bias_hh_l0` (only their sum matters).

    Args:
        features: `H`, the size of the state (and of the cell), a positive int.
        return_sequences: True: every step's `h` `(B, T, H)` (a `Padded` for a padded input);
            False: the last real `h` `(B, H)`.
        reverse: run each sequence from its last real step to its first (outputs stay in the
            original time order).
        initial_state: `"zeros"`, or `"learned"` (a trained `h0` and `c0`).

    Returns:
        A `Layer` mapping `(B, T, F)` (or a `jdnn.Padded` of it) to `(B, T, H)` or `(B, H)`.

    Examples:
        >>> lstm = jdnn.LSTM(64, reverse=True)
        >>> out_shape, params, _ = lstm.init(jax.random.key(0), (8, 20, 5))   # (8, 20, 64)
    """
    spec = _spec("LSTM", features, return_sequences, reverse, initial_state)
    return _recurrent("LSTM", spec, _lstm_cell, "b", {"b": _lstm_bias}, ("h", "c"))


# ---------------------------------------------------------------------------------------------
# bidirectional: the layer and a copy running the other way, as two branches.


def _flipped(spec: Spec) -> Spec:
    """`spec` with `reverse` negated."""
    return Spec(spec.kind, tuple((k, (not v) if k == "reverse" else v) for k, v in spec.hparams),
                spec.children)


def _pair(forward: Layer, backward: Layer, merge: str) -> Layer:
    """Both directions on the same input, merged: `branches`' computation under its own kind."""
    inner = branches(forward, backward, merge=merge)
    return Layer(inner.init, inner.apply,
                 make_spec("bidirectional", forward.spec, backward.spec, merge=merge))


def _merge_flops(spec: Spec, input_shape, output_shape) -> int:
    """A sum adds one number per output entry; a concat costs nothing."""
    del input_shape
    return 0 if spec["merge"] == "concat" else math.prod(output_shape[1:])


@register_layer(family="combinator", padded=True, flops=_merge_flops,
                from_spec=lambda spec, children: _pair(*children, merge=spec["merge"]))
def bidirectional(layer: Layer, merge: str = "concat") -> Layer:
    """A recurrent layer and a copy of it running the other way over the same input.

    The copy is the layer rebuilt from its spec with `reverse` negated, with its own weights.
    Params are filed like `branches`': `{"0_gru": ..., "1_gru": ...}`, the given direction
    first; the key is split into one per direction. Outputs are joined on the feature axis
    (`merge="concat"`, `(..., 2H)`) or added (`"sum"`). With `return_sequences=False` each
    direction gives its last state, the backward one's being the state after the first step:
    the concat is PyTorch's `h_n` of a `bidirectional=True` layer, forward then backward.

    Args:
        layer: a `SimpleRNN`, `GRU` or `LSTM` (any layer whose spec has a `reverse`
            hyper-parameter).
        merge: `"concat"` or `"sum"`.

    Returns:
        A combinator `Layer` whose spec has both directions' specs as children.

    Examples:
        >>> encoder = jdnn.bidirectional(jdnn.GRU(64))   # (B, T, F) -> (B, T, 128)
    """
    check_hparam("bidirectional", "layer", layer,
                 isinstance(layer, Layer) and "reverse" in layer.spec.names,
                 "a recurrent layer with a `reverse` hyper-parameter, e.g. GRU(64)")
    check_hparam("bidirectional", "merge", merge, merge in MERGES, f"one of {MERGES}")
    return _pair(layer, rebuild(_flipped(layer.spec)), merge)
