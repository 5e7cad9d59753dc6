"""MultiHeadAttention, by hand: self-attention over the time axis, forward and backward.

For one example `x` of shape `(T, F)` and each head `n` (of `N`, each `d` wide):

    Q = x Wq[:, n] + bq[n]     K = x Wk[:, n] + bk[n]     V = x Wv[:, n] + bv[n]     (T, d)
    S = Q K^T / sqrt(d)        (T, T): S[t, s] says how well query t matches key s
    S[t, s] = -inf where t may not look at s (s > t when causal; s a padded step)
    P = softmax(S) over s      each row sums to 1 over the steps it may look at
    O = P V                    (T, d): each step's weighted mean of the values
    C = [O_1, ..., O_N]        (T, N d): the heads side by side
    y = C Wo + bo              (T, F_out), 0 at padded steps

The batch axis `b` and the head axis `n` are carried along in every formula (einsum letters
`b t s n h f o`: batch, query step, key step, head, head feature, input and output feature).
Backward runs the same lines bottom to top; the one step that is not a matrix product is the
softmax's, whose Jacobian-vector product is `dS = P * (dP - sum_s(dP * P))`.

Padded batches (`lengths`, see `jdnn.reference.padded`): padded input steps are zeroed before
anything reads them, masked as keys, and the outputs at padded steps are set to 0. A row with no
step to look at (every step of a length-0 example) gets `P = 0`, not `0 / 0`.
"""

from __future__ import annotations

import math

import numpy as np

from jdnn.reference.padded import Padded, sequence_mask


def forward(params, x, *, causal, lengths=None):
    """Multi-head self-attention.

    Args:
        params: `{"w_q", "w_k", "w_v": (F, N, d), "w_o": (N d, F_out)}` and, with biases,
            `{"b_q", "b_k", "b_v": (N, d), "b_o": (F_out,)}`.
        x: inputs `(B, T, F)`.
        causal: whether step t may look only at steps s <= t.
        lengths: `(B,)` ints, each example's length, or None (every step real).

    Returns:
        `(y, cache)`: `y` of shape `(B, T, F_out)`, a `Padded(y, lengths)` when `lengths` is
        given; the cache for `backward`.
    """
    batch, steps, _ = x.shape
    heads, d = params["w_q"].shape[1:]
    scale = 1.0 / math.sqrt(d)  # a Python float: the computation keeps x's dtype
    real = np.ones((batch, steps), bool) if lengths is None else sequence_mask(lengths, steps)
    # padded steps are zeroed, so whatever they hold (even NaN) reaches no result
    x = np.where(real[..., None], x, 0)

    # Q[b,t,n,h] = sum_f x[b,t,f] Wq[f,n,h] + bq[n,h], and the same for K and V
    q = np.einsum("btf,fnh->btnh", x, params["w_q"])
    k = np.einsum("btf,fnh->btnh", x, params["w_k"])
    v = np.einsum("btf,fnh->btnh", x, params["w_v"])
    if "b_q" in params:
        q, k, v = q + params["b_q"], k + params["b_k"], v + params["b_v"]

    # S[b,n,t,s] = sum_h Q[b,t,n,h] K[b,s,n,h] / sqrt(d)
    s = np.einsum("btnh,bsnh->bnts", q, k) * scale
    # allowed[b,t,s]: key s is a real step, and s <= t when causal
    allowed = np.broadcast_to(real[:, None, :], (batch, steps, steps))
    if causal:
        allowed = allowed & np.tril(np.ones((steps, steps), bool))
    allowed = allowed[:, None]  # (B, 1, T, T): the same for every head
    s = np.where(allowed, s, -np.inf)

    # P[b,n,t,s] = exp(S[t,s] - m_t) / sum_s' exp(S[t,s'] - m_t), m_t = max_s S[t,s] (for
    # stability; the softmax does not depend on it). A row with every key masked has m_t = -inf:
    # take m_t = 0 there, so exp(-inf) = 0 everywhere and the row of P is 0 (no 0 / 0).
    m = s.max(axis=-1, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0)
    e = np.where(allowed, np.exp(s - m), 0)
    z = e.sum(axis=-1, keepdims=True)
    p = e / np.where(z > 0, z, 1)

    # O[b,t,n,h] = sum_s P[b,n,t,s] V[b,s,n,h]
    o = np.einsum("bnts,bsnh->btnh", p, v)
    # C = the heads side by side: C[b,t,n*d+h] = O[b,t,n,h]
    c = o.reshape(batch, steps, heads * d)
    # y = C Wo + bo, then 0 at padded steps
    y = c @ params["w_o"]
    if "b_o" in params:
        y = y + params["b_o"]
    y = np.where(real[..., None], y, 0)

    cache = (x, q, k, v, p, c, real, scale)
    return (y if lengths is None else Padded(y, lengths)), cache


def backward(params, cache, dy):
    """Gradients of multi-head self-attention.

    Args:
        params: as in `forward`.
        cache: from `forward`.
        dy: the gradient with respect to `y`'s values, `(B, T, F_out)`.

    Returns:
        `(dx, dparams)`: `dx` of shape `(B, T, F)` (0 at padded steps); `dparams` with the keys
        and shapes of `params`.
    """
    x, q, k, v, p, c, real, scale = cache
    heads, d = params["w_q"].shape[1:]
    # y was set to 0 at padded steps: nothing there depends on anything
    dy = np.where(real[..., None], dy, 0)
    dparams = {}

    # y = C Wo + bo:  dWo = C^T dy (summed over b, t),  dbo = sum_{b,t} dy,  dC = dy Wo^T
    dparams["w_o"] = np.einsum("bti,bto->io", c, dy)
    if "b_o" in params:
        dparams["b_o"] = dy.sum(axis=(0, 1))
    dc = dy @ params["w_o"].T
    # C is O with the heads side by side: dO is dC with the heads taken apart again
    do = dc.reshape(*dc.shape[:2], heads, d)

    # O = P V:  dV = P^T dO   (dV[b,s,n,h] = sum_t P[b,n,t,s] dO[b,t,n,h])
    dv = np.einsum("bnts,btnh->bsnh", p, do)
    #           dP = dO V^T   (dP[b,n,t,s] = sum_h dO[b,t,n,h] V[b,s,n,h])
    dp = np.einsum("btnh,bsnh->bnts", do, v)

    # P = softmax(S) row by row: dP_s/dS_r = P_s ([s = r] - P_r), so
    #   dS_r = sum_s dP_s P_s ([s = r] - P_r) = P_r (dP_r - sum_s dP_s P_s).
    # Masked entries have P = 0, hence dS = 0: no gradient reaches a step that was not looked at.
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))

    # S = Q K^T / sqrt(d):  dQ = dS K / sqrt(d),  dK = dS^T Q / sqrt(d)
    dq = np.einsum("bnts,bsnh->btnh", ds, k) * scale
    dk = np.einsum("bnts,btnh->bsnh", ds, q) * scale

    # Q = x Wq + bq (and K, V alike):  dWq = x^T dQ,  dbq = sum_{b,t} dQ,  dx_q = dQ Wq^T
    dx = np.zeros_like(x)
    for name, grad in (("q", dq), ("k", dk), ("v", dv)):
        dparams[f"w_{name}"] = np.einsum("btf,btnh->fnh", x, grad)
        if f"b_{name}" in params:
            dparams[f"b_{name}"] = grad.sum(axis=(0, 1))
        # x feeds all three projections: its gradient is the sum of the three paths
        dx = dx + np.einsum("btnh,fnh->btf", grad, params[f"w_{name}"])
    # padded steps were replaced by 0 before any use
    dx = np.where(real[..., None], dx, 0)
    return dx, {key: dparams[key] for key in params}
