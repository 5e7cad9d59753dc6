"""Embeddings, by hand: a table lookup, and a vector added per position.

    Embedding:            y[r, :] = table[ids[r], :]        ids: (...,) ints, table: (V, F)
    PositionalEmbedding:  y[b, t, :] = x[b, t, :] + table[t, :]           x: (B, T, F), T <= L

A lookup is a product with a one-hot matrix, `y = onehot(ids) @ table`, so its backward is the
transposed product, `dtable = onehot(ids).T @ dy`: row `v` of `dtable` adds up `dy` at every
position where id `v` occurs. That sum is written as a scatter-add instead of a (V x rows)
matrix. The ids are indices, not variables: they get no gradient (zeros, for the uniform
signature).

Each kind is a namespace with `forward(params, x, **hparams) -> (y, cache)` and
`backward(params, cache, dy) -> (dx, dparams)`: `lookup` (Embedding) and `positional`
(PositionalEmbedding).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

# --- Embedding ----------------------------------------------------------------------------------


def _as_ids(x, vocab_size):
    """Integer ids from `x`: integer arrays as they are; floats (a batch cast to the float type
    of the computation) only when every entry is a whole number. All must be in `[0, V)`."""
    x = np.asarray(x)
    if x.dtype.kind == "f":
        if not np.all(x == np.round(x)):
            raise ValueError("Embedding: ids must be whole numbers, got an input with fractional "
                             "entries; feed the token ids")
        x = x.astype(np.int64)
    elif x.dtype.kind not in "iu":
        raise ValueError(f"Embedding: ids must be integers, got an input of dtype {x.dtype}")
    bad = (x < 0) | (x >= vocab_size)
    if bad.any():
        position = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"Embedding: id {x[position]} at position {position} is outside the "
                         f"vocabulary [0, {vocab_size})")
    return x


def lookup_forward(params, x):
    """`y = table[ids]`: row `ids[r]` of the table at every position `r`.

    Args:
        params: `{"table": (V, F)}`.
        x: ids of any shape `(...)`, integers in `[0, V)` (or floats holding whole numbers).

    Returns:
        `(y, cache)`: `y` of shape `(..., F)` in the table's dtype; the cache is the ids.
    """
    table = params["table"]
    ids = _as_ids(x, table.shape[0])
    return table[ids], ids


def lookup_backward(params, cache, dy):
    """Gradients of `y[r] = table[ids[r]]`.

    `y[r, f]` depends on `table[v, f]` only when `ids[r] = v`, with derivative 1, so

        dtable[v, f] = sum over r with ids[r] = v of dy[r, f]

    (an id that occurs twice gets both contributions: `np.add.at` accumulates repeated indices,
    where `dtable[ids] += dy` would keep only the last). The ids are not differentiable: `dx`
    is zeros of their shape, in `dy`'s dtype.

    Args:
        params: as in `lookup_forward`.
        cache: the ids `lookup_forward` saw.
        dy: the gradient with respect to `y`, `(..., F)`.

    Returns:
        `(dx, {"table": (V, F)})`.
    """
    ids = cache
    dtable = np.zeros_like(params["table"])
    np.add.at(dtable, ids, dy)
    return np.zeros(ids.shape, dy.dtype), {"table": dtable}


# --- PositionalEmbedding ------------------------------------------------------------------------


def sinusoidal_table(length, features, dtype):
    """`PE[t, 2i] = sin(t / 10000^(2i/F))`, `PE[t, 2i+1] = cos(t / 10000^(2i/F))` (Vaswani et
    al. 2017), `(length, features)` in `dtype`; an odd `F` ends on a sine."""
    t = np.arange(length, dtype=dtype)[:, None]
    angles = t / np.asarray(10000.0, dtype) ** (np.arange(0, features, 2, dtype=dtype) / features)
    table = np.empty((length, features), dtype)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, :features // 2])
    return table


def positional_forward(params, x, *, max_length, encoding):
    """`y[b, t] = x[b, t] + table[t]` for the first `T` rows of the table.

    Args:
        params: `{"table": (max_length, F)}` (learned) or `{}` (sinusoidal).
        x: `(B, T, F)`, `T <= max_length`.
        max_length: the table's length.
        encoding: `"learned"` (the table is `params["table"]`) or `"sinusoidal"` (fixed).

    Returns:
        `(y, cache)`: `y` of `x`'s shape; the cache is `T`.
    """
    steps = x.shape[1]
    if steps > max_length:
        raise ValueError(f"PositionalEmbedding: {steps} time steps but max_length is "
                         f"{max_length}")
    table = params["table"] if encoding == "learned" else sinusoidal_table(steps, x.shape[2],
                                                                            x.dtype)
    return x + table[:steps], steps


def positional_backward(params, cache, dy):
    """Gradients of `y[b, t] = x[b, t] + table[t]`.

    `dy[b, t]/dx[b, t]` is the identity, so `dx = dy`. Row `t` of the table is added to every
    example's step `t`, so its gradient sums over the batch; rows past `T` were not used:

        dtable[t] = sum_b dy[b, t]   (t < T),      dtable[t] = 0   (t >= T).

    The sinusoidal table is a constant: no `dparams`.

    Returns:
        `(dx, dparams)`: `dx = dy`; `{"table": (max_length, F)}` or `{}`.
    """
    steps = cache
    dparams = {}
    if "table" in params:
        dtable = np.zeros_like(params["table"])
        dtable[:steps] = dy.sum(axis=0)
        dparams["table"] = dtable
    return dy, dparams


lookup = SimpleNamespace(forward=lookup_forward, backward=lookup_backward)
positional = SimpleNamespace(forward=positional_forward, backward=positional_backward)
