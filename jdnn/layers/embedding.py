"""Embeddings: token ids to vectors (`Embedding`), a vector per position (`PositionalEmbedding`).

Neither mixes time steps, so neither declares `padded=True`: inside a combinator a padded batch
reaches them as plain values and keeps its lengths around them (`jdnn.padded`). Padding ids go
through `Embedding` like any other id, so they too must lie in the vocabulary (pad with 0, or a
reserved `<pad>` id).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jdnn.core import (Layer, LayerError, check_features, check_hparam, check_input_shape,
                       make_spec, positive_int, register_layer)
from jdnn.layers import initializers

# ---------------------------------------------------------------------------------------------
# Embedding


def _table_init(w_init: str | initializers.Initializer) -> tuple[initializers.Initializer, str]:
    """`"unit_normal"`: N(0, 1), PyTorch's default for `nn.Embedding` (jax's `"normal"` has
    stddev 0.01); anything else as `Dense`'s `w_init` takes it."""
    if isinstance(w_init, str) and w_init == "unit_normal":
        return jax.nn.initializers.normal(1.0), w_init
    return initializers.resolve("Embedding", "w_init", w_init)


def _not_integers(vocab_size: int, dtype) -> str:
    return (f"ids must be integers (token indices in [0, {vocab_size})), got an input of dtype "
            f"{dtype}; cast them, e.g. x.astype(jnp.int32), or feed the token ids rather than "
            f"vectors (one-hot or already embedded)")


def id_problem(vocab_size: int, ids: np.ndarray) -> str | None:
    """What is wrong with concrete token ids for a vocabulary of `vocab_size`, or None.

    Args:
        vocab_size: the number of rows of the table.
        ids: a NumPy array of any shape.

    Returns:
        None when every id is an integer in `[0, vocab_size)`; otherwise a message naming the
        first offending value, its position (index into `ids`) and the fix.

    Examples:
        >>> id_problem(10, np.array([[1, 12]]))   # 'id 12 at position (0, 1) is outside ...'
    """
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        return _not_integers(vocab_size, ids.dtype)
    bad = (ids < 0) | (ids >= vocab_size)
    if not bad.any():
        return None
    position = tuple(int(i) for i in np.argwhere(bad)[0])
    value = ids[position]
    fix = (f"raise vocab_size to at least {int(ids.max()) + 1}, or map rare tokens to a "
           f"reserved <unk> id" if value >= vocab_size
           else "ids are indices from 0: map negative markers (e.g. -1 for padding) to a "
                "reserved id such as 0")
    return (f"id {int(value)} at position {position} is outside the vocabulary [0, "
            f"{vocab_size}) ({int(bad.sum())} of {ids.size} ids are); {fix}")


def _check_input(spec, x) -> str | None:
    """The `check_input` trait: `id_problem` on the concrete data (`jdnn.data.check_data`)."""
    return id_problem(spec["vocab_size"], np.asarray(x))


def _lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
    """`table[ids]`, with a NaN row for every id outside `[0, vocab_size)`.

    `jnp.take` would wrap negative ids around (-1 -> the last row) and clamp or fill the others,
    so validity is computed here, in the ids' own dtype (a vocabulary larger than that dtype's
    largest value bounds nothing). Invalid rows get no gradient: `where` routes it to the NaNs.
    """
    info = jnp.iinfo(ids.dtype)
    valid = ids >= 0 if info.min < 0 else jnp.ones(ids.shape, bool)
    if table.shape[0] <= info.max:
        valid = valid & (ids < table.shape[0])
    rows = jnp.take(table, jnp.where(valid, ids, 0), axis=0, mode="clip")
    return jnp.where(valid[..., None], rows, jnp.nan)


@register_layer(family="embedding", flops=lambda spec, i, o: 0, check_input=_check_input,
                label=lambda spec: f"Embedding({spec['vocab_size']}, {spec['features']})")
def Embedding(vocab_size: int, features: int, *,
              w_init: str | initializers.Initializer = "unit_normal") -> Layer:
    """A lookup table: each integer id becomes a learned vector, `y[..., :] = table[ids[...]]`.

    Params: `table` of shape `(vocab_size, features)`, by default drawn from N(0, 1) as
    PyTorch's `nn.Embedding` does (`w_init="unit_normal"`; Flax's `nn.Embed` uses stddev
    `1 / sqrt(features)`, i.e. `w_init=jax.nn.initializers.normal(features ** -0.5)`).

    Ids outside `[0, vocab_size)`: when `apply` sees concrete ids (eagerly) it raises a
    `LayerError` naming the first such id and its position. Under `jit` or `vmap` the ids'
    values are unknown when `apply` runs, so nothing can be raised: the output row of such an
    id is NaN, never a plausible vector, and a loss that reads it is NaN too (the table gets no
    gradient from it). `jdnn.data.check_data`, which `fit` and `evaluate` run, checks the ids
    of the whole data set before anything is compiled.

    Args:
        vocab_size: the number of ids, a positive int.
        features: the length of each vector, a positive int.
        w_init: `"unit_normal"`, a `jax.nn.initializers` name, or an initializer for `table`.

    Returns:
        A `Layer` mapping integer ids `(B, ...)` (typically `(B, T)`) to `(B, ..., features)`.

    Examples:
        >>> layer = jdnn.Embedding(1000, 64)
        >>> out_shape, params, state = layer.init(jax.random.key(0), (32, 20))  # (32, 20, 64)
        >>> y, _ = layer.apply(params, state, jnp.zeros((32, 20), jnp.int32))
    """
    vocab_size = positive_int("Embedding", "vocab_size", vocab_size)
    features = positive_int("Embedding", "features", features)
    w_fn, w_name = _table_init(w_init)
    spec = make_spec("Embedding", vocab_size=vocab_size, features=features, w_init=w_name)

    def init(key, input_shape):
        shape = check_input_shape("Embedding", input_shape)
        return (*shape, features), {"table": w_fn(key, (vocab_size, features))}, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise LayerError("Embedding", _not_integers(vocab_size, x.dtype))
        if not isinstance(x, jax.core.Tracer):  # concrete ids: say which one is wrong
            problem = id_problem(vocab_size, np.asarray(x))
            if problem:
                raise LayerError("Embedding", problem)
        return _lookup(params["table"], jnp.asarray(x)), state

    return Layer(init, apply, spec)


# ---------------------------------------------------------------------------------------------
# PositionalEmbedding

ENCODINGS = ("learned", "sinusoidal")


def sinusoidal_table(length: int, features: int) -> np.ndarray:
    """The Transformer's position vectors (Vaswani et al. 2017), `(length, features)` float64.

    `PE[t, 2i] = sin(t / 10000^(2i / F))` and `PE[t, 2i + 1] = cos(t / 10000^(2i / F))`: pair
    `i` of features turns at its own frequency, from one radian per step (i = 0) down to
    1/10000. An odd `F` ends on a sine whose cosine partner is dropped.

    Examples:
        >>> sinusoidal_table(3, 4)[1]   # [sin 1, cos 1, sin 0.01, cos 0.01]
    """
    t = np.arange(length, dtype=np.float64)[:, None]
    angles = t / 10000.0 ** (np.arange(0, features, 2, dtype=np.float64) / features)
    # angles: (length, ceil(F / 2)), one column per pair of features
    table = np.empty((length, features))
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, :features // 2])
    return table


def _check_length(max_length: int, steps: int, shape) -> None:
    if steps > max_length:
        raise LayerError("PositionalEmbedding",
                         f"the input of shape {tuple(shape)} has {steps} time steps (axis 1) but "
                         f"max_length is {max_length}; build the layer with max_length >= "
                         f"{steps}, or cut the sequences to at most {max_length} steps")


def _check_sequences(shape) -> None:
    if len(shape) != 3:
        raise LayerError("PositionalEmbedding",
                         f"expected sequences of shape (batch, time, features), got shape "
                         f"{tuple(shape)}; a single sequence needs a batch axis: x[None]")


@register_layer(family="embedding", flops=lambda spec, i, o: math.prod(o[1:]),
                label=lambda spec: f"PositionalEmbedding({spec['max_length']}, "
                                   f"{spec['encoding']})")
def PositionalEmbedding(max_length: int, encoding: str = "learned") -> Layer:
    """Adds a vector that depends on the position: `y[b, t] = x[b, t] + table[t]`.

    `encoding="learned"`: `table` is a parameter of shape `(max_length, F)`, drawn from
    N(0, 0.02^2) as in BERT and GPT-2: small next to N(0, 1) token embeddings, so at first the
    tokens dominate and the positions are learned as far as they help.
    `encoding="sinusoidal"`: no parameters; the fixed table of `sinusoidal_table`, which needs
    no `F` at `init` and reaches positions no learned row would have been trained on.

    Positions count from the start of each sequence, so right-padded sequences (`jdnn.Padded`)
    get the same vectors at their real steps as unpadded ones.

    Args:
        max_length: the longest sequence the layer takes, a positive int.
        encoding: `"learned"` or `"sinusoidal"`.

    Returns:
        A shape-preserving `Layer` on `(B, T, F)` with `T <= max_length`.

    Raises:
        LayerError: at `init` or `apply`, for sequences longer than `max_length`.

    Examples:
        >>> layer = jdnn.serial(jdnn.Embedding(1000, 64), jdnn.PositionalEmbedding(128))
        >>> out_shape, params, state = layer.init(jax.random.key(0), (32, 20))  # (32, 20, 64)
    """
    max_length = positive_int("PositionalEmbedding", "max_length", max_length)
    check_hparam("PositionalEmbedding", "encoding", encoding, encoding in ENCODINGS,
                 " or ".join(repr(e) for e in ENCODINGS))
    learned = encoding == "learned"

    def init(key, input_shape):
        shape = check_input_shape("PositionalEmbedding", input_shape)
        _check_sequences(shape)
        _check_length(max_length, shape[1], shape)
        params = {}
        if learned:
            params["table"] = jax.nn.initializers.normal(0.02)(key, (max_length, shape[2]))
        return shape, params, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        _check_sequences(x.shape)
        steps = x.shape[1]
        _check_length(max_length, steps, x.shape)
        if learned:
            check_features("PositionalEmbedding", x, params["table"].shape[1])
            return x + params["table"][:steps], state
        return x + jnp.asarray(sinusoidal_table(steps, x.shape[2]), x.dtype), state

    return Layer(init, apply, make_spec("PositionalEmbedding", max_length=max_length,
                                        encoding=encoding))
