"""SimpleRNN, GRU and LSTM, by hand: a loop over time forward, and backpropagation through time
(BPTT) written out, one step at a time from the last step to the first.

The recurrence. A cell reads one step of input and the previous state (its "carry") and returns
the next state. With `H` units and `G` gates (SimpleRNN 1, GRU 3, LSTM 4):

    xp_t    = x_t @ w_x + b_x                (B, G*H)   the input's share, every step at once
    carry_t = cell(xp_t, carry_{t-1})        carry = (h,) for SimpleRNN and GRU, (h, c) for LSTM
    y_t     = h_t

Lengths. In a padded batch example `b` has `lengths[b]` real steps. With `m_t[b] = 1` at a real
step (`t < lengths[b]`) and 0 past the end, a step past the end keeps the carry and outputs 0:

    carry_t = m_t * cell(xp_t, carry_{t-1}) + (1 - m_t) * carry_{t-1},    y_t = m_t * h_new_t

`reverse` runs t from T-1 down to 0: the padded steps come first and leave the initial state
alone, so each example starts at its own last real step, and y_t stays at position t.

BPTT. `h_t` reaches the loss two ways: through its output `y_t` (the gradient `dy_t`) and through
every later step (via `carry_t`). So walk the steps in the reverse of the order they ran, holding
`dcarry = dL/dcarry_t`, which the later steps have already filled in:

    dnew_t         = m_t * (dcarry_t + [dy_t, 0])   what reaches the cell's new state (h, c)
    dcarry_{t-1}   = cell's backward of dnew_t       at a real step: only through the cell
                   = dcarry_t                        past the end: the carry passed straight through
    dxp_t, dw_h   += the cell's backward of dnew_t   (w_h is shared by every step: gradients add)

After the first step processed, `dcarry` is the gradient of the initial state (a learned `h0`
sums it over the batch). The input projection is then `Dense` on every step:
`dw_x = X^T dXP`, `db_x = sum of dXP`, `dx = dXP @ w_x^T`.

Params are jdnn's (PyTorch's gate order): SimpleRNN `w_x (F, H)`, `w_h (H, H)`, `b (H,)`; GRU
`w_x (F, 3H)`, `w_h (H, 3H)`, `b_x`, `b_h (3H,)` (r | z | n); LSTM `w_x (F, 4H)`, `w_h (H, 4H)`,
`b (4H,)` (i | f | g | o); and, with a learned initial state, `h0 (H,)` (and `c0`).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from jdnn.reference.padded import Padded, sequence_mask


def sigmoid(a):
    """`1 / (1 + e^-a)`, computed as `e^-log(1 + e^-a)` so that no exponential overflows."""
    return np.exp(-np.logaddexp(0, -a))


def make_cell(step, step_backward, input_bias: str, states: tuple) -> SimpleNamespace:
    """A kind of recurrent cell.

    Args:
        step: `step(params, xp_t, carry) -> (new_carry, step_cache)`.
        step_backward: `step_backward(params, step_cache, dnew) -> (dcarry_prev, dxp_t,
            dparams_t)`: `dnew` the gradient of the new carry, `dparams_t` this step's share
            of the recurrent parameters' gradients.
        input_bias: the name of the bias added to the input projection.
        states: the carry's parts, `("h",)` or `("h", "c")`; a learned initial state is the
            params `h0` (and `c0`).
    """
    return SimpleNamespace(step=step, step_backward=step_backward, input_bias=input_bias,
                           states=states)


# ---------------------------------------------------------------------------------------------
# The recurrence, shared by the three cells: forward over time, then BPTT.


def run(cell: SimpleNamespace, params, x, *, return_sequences: bool, reverse: bool, lengths=None):
    """The forward pass over time, keeping every step's cache.

    Args:
        cell: the kind's cell (`make_cell`).
        params: the layer's params (see the module docstring).
        x: `(B, T, F)`.
        return_sequences: return every step's `h` (True) or the last state (False).
        reverse: run t from T-1 down to 0.
        lengths: None, or `(B,)` ints: the real steps of each example.

    Returns:
        `(y, cache)`: `y` is `(B, T, H)` (a `Padded` when `lengths` is given) or `(B, H)`.
    """
    batch, steps, _ = x.shape
    hidden = params["w_h"].shape[0]
    # the input projection of every step at once: (B, T, F) @ (F, G*H)
    xp = x @ params["w_x"] + params[cell.input_bias]
    # the initial state: learned (the same for every example) or zeros
    carry = tuple(np.broadcast_to(params[f"{name}0"], (batch, hidden)) if f"{name}0" in params
                  else np.zeros((batch, hidden), xp.dtype) for name in cell.states)
    real = np.ones((batch, steps), bool) if lengths is None else sequence_mask(lengths, steps)
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    ys = np.zeros((batch, steps, hidden), xp.dtype)
    step_caches = []
    for t in order:
        new, step_cache = cell.step(params, xp[:, t], carry)
        m = real[:, t, None]
        # past an example's end the carry is kept and the output is 0
        carry = tuple(np.where(m, new_part, old) for new_part, old in zip(new, carry))
        ys[:, t] = np.where(m, new[0], 0)
        step_caches.append((t, step_cache))
    cache = (cell, x, real, step_caches, return_sequences)
    if not return_sequences:
        return carry[0], cache
    return (ys if lengths is None else Padded(ys, lengths)), cache


def backprop_through_time(params, cache, dy):
    """The backward pass of `run`: BPTT, last step processed first.

    Args:
        params: as in `run`.
        cache: from `run`.
        dy: the gradient of the loss with respect to `y`: `(B, T, H)` (values at padded steps
            are ignored) or `(B, H)`.

    Returns:
        `(dx, dparams)`: `dx` `(B, T, F)`, zero at padded steps; `dparams` with the keys and
        shapes of `params`.
    """
    cell, x, real, step_caches, return_sequences = cache
    batch, steps, features = x.shape
    hidden = params["w_h"].shape[0]
    dparams = {name: np.zeros_like(value) for name, value in params.items()}
    dxp = np.zeros((batch, steps, params["w_x"].shape[1]), dy.dtype)
    # dL/dcarry after the last step processed: only a returned last state is read by the loss
    dcarry = [np.zeros((batch, hidden), dy.dtype) for _ in cell.states]
    if not return_sequences:
        dcarry[0] = dy
    for t, step_cache in reversed(step_caches):
        m = real[:, t, None]
        # the new h reaches the loss through the carry (later steps) and through y_t
        dnew = [dcarry[0] + dy[:, t] if return_sequences else dcarry[0], *dcarry[1:]]
        dnew = [np.where(m, d, 0) for d in dnew]   # past the end the cell's output is unused
        dprev, dxp[:, t], dstep = cell.step_backward(params, step_cache, dnew)
        for name, value in dstep.items():
            dparams[name] += value
        # carry_{t-1} reaches the loss through the cell at a real step, unchanged past the end
        dcarry = [np.where(m, d_cell, d_kept) for d_cell, d_kept in zip(dprev, dcarry)]
    # the initial state: each example's copy of a learned h0 (c0) adds to its gradient
    for name, d in zip(cell.states, dcarry):
        if f"{name}0" in params:
            dparams[f"{name}0"] = d.sum(axis=0)
    # xp = x @ w_x + b_x on every step, as Dense: dw_x = X^T dXP, db_x = sum dXP, dx = dXP w_x^T
    rows_x, rows_dxp = x.reshape(-1, features), dxp.reshape(batch * steps, -1)
    dparams["w_x"] = rows_x.T @ rows_dxp
    dparams[cell.input_bias] = rows_dxp.sum(axis=0)
    return dxp @ params["w_x"].T, dparams


# ---------------------------------------------------------------------------------------------
# SimpleRNN: h = act(a),  a = xp + h_prev @ w_h  (xp includes the bias b)


def _rnn_cell(activation: str) -> SimpleNamespace:
    def step(params, xp, carry):
        (h_prev,) = carry
        a = xp + h_prev @ params["w_h"]
        h = np.tanh(a) if activation == "tanh" else np.maximum(a, 0)
        return (h,), (h_prev, a, h)

    def step_backward(params, step_cache, dnew):
        h_prev, a, h = step_cache
        (dh,) = dnew
        # h = tanh(a): dh/da = 1 - h^2;   h = relu(a): dh/da = [a > 0]
        da = dh * (1 - h**2) if activation == "tanh" else dh * (a > 0)
        # a = xp + h_prev @ w_h:  dxp = da,  dw_h = h_prev^T da,  dh_prev = da w_h^T
        dw_h = h_prev.T @ da
        dh_prev = da @ params["w_h"].T
        return (dh_prev,), da, {"w_h": dw_h}

    return make_cell(step, step_backward, "b", ("h",))


def simple_rnn_forward(params, x, *, return_sequences, reverse, activation, lengths=None):
    """SimpleRNN: `h_t = act(x_t @ w_x + h_{t-1} @ w_h + b)`; see `run` for the arguments,
    and `activation` is `"tanh"` or `"relu"`."""
    return run(_rnn_cell(activation), params, x, return_sequences=return_sequences,
               reverse=reverse, lengths=lengths)


# ---------------------------------------------------------------------------------------------
# GRU (PyTorch's gates): with xp = x @ w_x + b_x and hp = h_prev @ w_h + b_h, each split r | z | n,
#
#     r = sigmoid(xp_r + hp_r),   z = sigmoid(xp_z + hp_z),   n = tanh(xp_n + r * hp_n),
#     h = (1 - z) * n + z * h_prev


def _gru_step(params, xp, carry):
    (h_prev,) = carry
    hidden = h_prev.shape[1]
    hp = h_prev @ params["w_h"] + params["b_h"]
    r = sigmoid(xp[:, :hidden] + hp[:, :hidden])
    z = sigmoid(xp[:, hidden:2 * hidden] + hp[:, hidden:2 * hidden])
    hp_n = hp[:, 2 * hidden:]
    n = np.tanh(xp[:, 2 * hidden:] + r * hp_n)
    h = (1 - z) * n + z * h_prev
    return (h,), (h_prev, r, z, n, hp_n)


def _gru_step_backward(params, step_cache, dnew):
    h_prev, r, z, n, hp_n = step_cache
    (dh,) = dnew
    # h = (1 - z) * n + z * h_prev
    dn = dh * (1 - z)
    dz = dh * (h_prev - n)
    dh_prev = dh * z
    # n = tanh(a_n), a_n = xp_n + r * hp_n:  da_n = dn (1 - n^2),  dr = da_n hp_n,  dhp_n = da_n r
    da_n = dn * (1 - n**2)
    dr = da_n * hp_n
    dhp_n = da_n * r
    # r = sigmoid(a_r), z = sigmoid(a_z), and sigmoid' = s (1 - s)
    da_r = dr * r * (1 - r)
    da_z = dz * z * (1 - z)
    # a_r = xp_r + hp_r and a_z = xp_z + hp_z: both projections get da_r, da_z; xp_n gets da_n
    dxp = np.concatenate([da_r, da_z, da_n], axis=1)
    dhp = np.concatenate([da_r, da_z, dhp_n], axis=1)
    # hp = h_prev @ w_h + b_h:  dw_h = h_prev^T dhp,  db_h = sum dhp,  dh_prev += dhp w_h^T
    dw_h = h_prev.T @ dhp
    db_h = dhp.sum(axis=0)
    dh_prev = dh_prev + dhp @ params["w_h"].T
    return (dh_prev,), dxp, {"w_h": dw_h, "b_h": db_h}


GRU_CELL = make_cell(_gru_step, _gru_step_backward, "b_x", ("h",))


def gru_forward(params, x, *, return_sequences, reverse, lengths=None):
    """GRU with PyTorch's gates (above); see `run` for the arguments."""
    return run(GRU_CELL, params, x, return_sequences=return_sequences, reverse=reverse,
               lengths=lengths)


# ---------------------------------------------------------------------------------------------
# LSTM (PyTorch's gates): a = xp + h_prev @ w_h (xp includes the bias b), split i | f | g | o,
#
#     i = sigmoid(a_i),  f = sigmoid(a_f),  g = tanh(a_g),  o = sigmoid(a_o)
#     c = f * c_prev + i * g,    h = o * tanh(c)


def _lstm_step(params, xp, carry):
    h_prev, c_prev = carry
    hidden = h_prev.shape[1]
    a = xp + h_prev @ params["w_h"]
    i = sigmoid(a[:, :hidden])
    f = sigmoid(a[:, hidden:2 * hidden])
    g = np.tanh(a[:, 2 * hidden:3 * hidden])
    o = sigmoid(a[:, 3 * hidden:])
    c = f * c_prev + i * g
    tanh_c = np.tanh(c)
    h = o * tanh_c
    return (h, c), (h_prev, c_prev, i, f, g, o, tanh_c)


def _lstm_step_backward(params, step_cache, dnew):
    h_prev, c_prev, i, f, g, o, tanh_c = step_cache
    dh, dc = dnew
    # h = o * tanh(c):  do = dh tanh(c);  c reaches the loss through h and through the carry
    do = dh * tanh_c
    dc = dc + dh * o * (1 - tanh_c**2)
    # c = f * c_prev + i * g
    df = dc * c_prev
    di = dc * g
    dg = dc * i
    dc_prev = dc * f
    # i, f, o = sigmoid(a_*): da = d * s (1 - s);  g = tanh(a_g): da_g = dg (1 - g^2)
    da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g**2),
                         do * o * (1 - o)], axis=1)
    # a = xp + h_prev @ w_h:  dxp = da,  dw_h = h_prev^T da,  dh_prev = da w_h^T
    dw_h = h_prev.T @ da
    dh_prev = da @ params["w_h"].T
    return (dh_prev, dc_prev), da, {"w_h": dw_h}


LSTM_CELL = make_cell(_lstm_step, _lstm_step_backward, "b", ("h", "c"))


def lstm_forward(params, x, *, return_sequences, reverse, lengths=None):
    """LSTM with PyTorch's gates (above); see `run` for the arguments. `y` is `h`; the cell
    state `c` is carried but not returned."""
    return run(LSTM_CELL, params, x, return_sequences=return_sequences, reverse=reverse,
               lengths=lengths)


# The twins, as `KINDS` holds them. Each cache carries its cell, so one backward serves all.
simple_rnn = SimpleNamespace(forward=simple_rnn_forward, backward=backprop_through_time)
gru = SimpleNamespace(forward=gru_forward, backward=backprop_through_time)
lstm = SimpleNamespace(forward=lstm_forward, backward=backprop_through_time)
