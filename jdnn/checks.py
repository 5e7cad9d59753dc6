"""Errors that name the layer, and the checks every layer runs on its hyper-parameters (at
construction) and its inputs (at `init` and `apply`).

`LayerError` names the layer path; its subclass `MissingKeyError` (a stochastic layer in training
mode without a key) is re-raised by `entry_point(name)` naming the function the user called, e.g.
`per_example_grads`, rather than an `apply` they never called. `jdnn.core` re-exports all of it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

Array = jax.Array
Shape = tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# Errors that name the layer. A layer raises `LayerError` with its own kind; each combinator it
# sits in prefixes the child's key on the way out, so the message names the full path.


class LayerError(ValueError):
    """A bad input or hyper-parameter, naming the layer path, what was expected and what came.

    Attributes:
        kind: the kind of the layer that raised, e.g. `"Dense"`.
        path: the layer's path inside the model, e.g. `("1_serial", "2_dense")`; `()` at the root.
        detail: the message without the path.
    """

    def __init__(self, kind: str, detail: str, path: tuple[str, ...] = ()):
        self.kind, self.detail, self.path = kind, detail, path
        super().__init__(self.message())

    @property
    def where(self) -> str:
        """The path as text, `"1_serial/2_dense"`, or `"<root>"`."""
        return "/".join(self.path) if self.path else "<root>"

    def message(self) -> str:
        """The full message: `"Dense layer at 1_serial/2_dense: <detail>"`."""
        return f"{self.kind} layer at {self.where}: {self.detail}"

    def __reduce__(self):
        return (type(self), (self.kind, self.detail, self.path))

    def within(self, name: str) -> LayerError:
        """The same error, seen from the combinator that files this layer under `name`."""
        return type(self)(self.kind, self.detail, (name, *self.path))


class MissingKeyError(LayerError):
    """A stochastic layer (Dropout) applied with `train=True` and no random key.

    The layer raises it telling the caller of `apply` to pass `key=`; an entry point that takes
    `key=` itself runs the model inside `entry_point(name)`, which re-raises it naming that
    entry point: `"per_example_grads: the model's Dropout at 2_dropout needs a random key in
    training mode; pass key=jax.random.key(0) (or train=False)"`.

    Attributes:
        entry: the entry point the user called, or None (the message then names `apply`).
    """

    def __init__(self, kind: str, detail: str, path: tuple[str, ...] = (),
                 entry: str | None = None):
        self.entry = entry
        super().__init__(kind, detail, path)

    def message(self) -> str:
        if self.entry is None:
            return super().message()
        return (f"{self.entry}: the model's {self.kind} at {self.where} needs a random key in "
                f"training mode; pass key=jax.random.key(0) (or train=False)")

    def __reduce__(self):
        return (MissingKeyError, (self.kind, self.detail, self.path, self.entry))

    def within(self, name: str) -> MissingKeyError:
        return MissingKeyError(self.kind, self.detail, (name, *self.path), self.entry)

    def called_from(self, entry: str) -> MissingKeyError:
        """The same error, worded for `entry`, the function the user called."""
        return MissingKeyError(self.kind, self.detail, self.path, entry)


@contextlib.contextmanager
def entry_point(name: str) -> Iterator[None]:
    """Re-raises a `MissingKeyError` from inside as one naming `name`, the function the user
    called (with a `key=` argument of its own), instead of `apply`.

    Examples:
        >>> with entry_point("per_example_grads"):
        ...     outputs, _ = model.apply(params, state, x, key=key, train=True)
    """
    try:
        yield
    except MissingKeyError as error:
        raise error.called_from(name) from None


def check_hparam(kind: str, name: str, value: Any, ok: bool, expected: str) -> None:
    """Raises `ValueError` at construction when a hyper-parameter is invalid."""
    if not ok:
        raise ValueError(f"{kind}: {name} must be {expected}, got {value!r}")


def whole_number(where: str, name: str, value: Any, minimum: int = 0) -> int:
    """An int argument `>= minimum` as a Python `int`; NumPy ints are accepted, bools and floats
    are not. `where` names what the user called (a layer kind or a function such as `"fit"`).

    Raises:
        ValueError: `"fit: batch_size must be an int >= 1, got 0"`.
    """
    ok = (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
          and value >= minimum)
    expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    check_hparam(where, name, value, ok, expected)
    return int(value)


def positive_int(kind: str, name: str, value: Any) -> int:
    """A positive int hyper-parameter (NumPy ints accepted, bools and floats not), as `int`."""
    return whole_number(kind, name, value, minimum=1)


def positive_ints(kind: str, name: str, value: int | tuple[int, ...], n: int) -> tuple[int, ...]:
    """Normalizes an int or an n-tuple of ints (e.g. a kernel size) and checks each is >= 1."""
    if isinstance(value, (int, np.integer)):
        values = (value,) * n
    else:
        try:
            values = tuple(value)
        except TypeError:
            values = ()
    ok = len(values) == n and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                  for v in values)
    check_hparam(kind, name, value, ok and all(v >= 1 for v in values),
                 f"a positive int or a tuple of {n} positive ints")
    return tuple(int(v) for v in values)


def padding_mode(kind: str, padding: str) -> str:
    """Validates a padding name; returns it upper-cased (`"SAME"` or `"VALID"`)."""
    ok = isinstance(padding, str) and padding.upper() in ("SAME", "VALID")
    check_hparam(kind, "padding", padding, ok, '"SAME" or "VALID"')
    return padding.upper()


def check_input_shape(kind: str, input_shape: Any, min_rank: int = 1) -> Shape:
    """Checks an `init` input shape is a tuple of non-negative ints of rank >= `min_rank`."""
    dims = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if dims is None or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                               for d in dims):
        raise LayerError(kind, f"input_shape must be a tuple of ints, got {input_shape!r}")
    shape = tuple(int(d) for d in dims)
    if len(shape) < min_rank or any(d < 0 for d in shape):
        raise LayerError(kind, f"expected an input_shape of rank >= {min_rank} (batch axis first),"
                               f" got {shape}")
    return shape


def window_output_size(size: int, window: int, stride: int, padding: str) -> int:
    """Output length of a sliding window (convolution, pooling) along one axis."""
    if padding == "SAME":
        return math.ceil(size / stride)
    return (size - window) // stride + 1


def spatial_output_shape(kind: str, shape: Shape, window: tuple[int, int],
                         strides: tuple[int, int], padding: str, channels: int) -> Shape:
    """Output shape of a 2-D windowed layer on an NHWC `shape`, with a clear error if too small."""
    if len(shape) != 4:
        raise LayerError(kind, f"expected an NHWC input_shape (batch, height, width, channels), "
                               f"got {shape}; flat images can be reshaped, e.g. to "
                               f"(batch, 8, 8, 1)")
    height, width = shape[1:3]
    if padding == "VALID" and (height < window[0] or width < window[1]):
        raise LayerError(kind, f"input of spatial size {(height, width)} is smaller than the "
                               f"window {window} with padding 'VALID'; use padding='SAME' or a "
                               f"smaller window")
    out_h = window_output_size(height, window[0], strides[0], padding)
    out_w = window_output_size(width, window[1], strides[1], padding)
    return (shape[0], out_h, out_w, channels)


def check_features(kind: str, x: Array, expected: int, name: str = "features") -> None:
    """At `apply`: checks the last axis of `x` has `expected` entries."""
    if x.ndim == 0 or x.shape[-1] != expected:
        hint = ""
        if x.ndim <= 1:
            hint = (f"; an input of rank {x.ndim} has no batch axis: a batch of N examples has "
                    f"shape (N, {expected}), a single example x[None]")
        raise LayerError(kind, f"expected input with last axis ({name}) of size {expected}, got an "
                               f"input of shape {tuple(x.shape)}{hint}")


def check_images(kind: str, x: Array, channels: int | None = None) -> None:
    """At `apply`: checks `x` is an NHWC batch (rank 4) with `channels` on the last axis."""
    if x.ndim != 4:
        hint = "; a single image needs a batch axis: x[None]" if x.ndim == 3 else ""
        raise LayerError(kind, f"expected an NHWC input (batch, height, width, channels) of rank "
                               f"4, got an input of shape {tuple(x.shape)}{hint}")
    if channels is not None:
        check_features(kind, x, channels, "channels")
