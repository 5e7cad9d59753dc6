"""Per-example losses: each maps a batch to a vector of shape `(batch,)`; the caller reduces.

Returning one value per example keeps masking (`sum(loss * mask) / sum(mask)`), per-example
gradients and `vmap` free. Each loss averages over every axis but the first, so the result is
always `(batch,)`, whatever the rank of the predictions. All are built on `optax.losses` and
computed from logits where that matters, so they stay finite for logits of any size.

Shapes are checked rather than broadcast: predictions `(B, 1)` against targets `(B,)` would
silently broadcast to `(B, B)`. That one case is accepted (targets are read as `(B, 1)`); any
other mismatch is a `ValueError` naming both shapes.

Labels a loss cannot mean never give a plausible number: an integer class index outside
`[0, C)`, or a one-hot/probability/binary label outside `[0, 1]` (NaN included), makes that
example's loss NaN, eagerly, under `jit` and under `vmap` alike (values are not known at trace
time, so they cannot raise; `jdnn.data.check_data` raises for them on concrete data). The NaN is
put in by a select, and the loss is computed with a harmless stand-in label, so gradients stay
finite: an example masked out with `jnp.where(mask, loss, 0)` leaves the others untouched, and
a NaN example itself contributes a zero gradient (its NaN loss is the signal).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jdnn.core import Array


def _floating(x: Array) -> Array:
    """`x` as an array, promoted to floating point if it is integer or bool."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_batched(loss: str, name: str, x: Array, example: str) -> None:
    if x.ndim == 0:
        raise ValueError(f"{loss}: {name} is a scalar, but losses need a batch axis: pass "
                         f"shape {example}, e.g. {name}[None] for a single example")


def _shape_hint(t_name: str, p_shape: tuple, t_shape: tuple) -> str:
    if t_shape == (*p_shape, 1):
        return f"; drop the trailing axis of size 1 with {t_name}[..., 0]"
    if t_shape and p_shape and t_shape[0] != p_shape[0]:
        return "; the batch sizes differ, check that both come from the same batch"
    return ""


def _match(loss: str, p_name: str, t_name: str, predictions: Array, targets: Array) -> Array:
    """Checks `targets` has `predictions`'s shape; `(B,)` targets for `(B, 1)` become `(B, 1)`.

    Raises:
        ValueError: naming `loss`, both shapes and the fix, for any other mismatch.
    """
    _check_batched(loss, p_name, predictions, "(batch, ...)")
    p_shape, t_shape = tuple(predictions.shape), tuple(targets.shape)
    if t_shape == p_shape:
        return targets
    if predictions.ndim >= 2 and p_shape[-1] == 1 and t_shape == p_shape[:-1]:
        return targets[..., None]
    also = f" or {p_shape[:-1]}" if predictions.ndim >= 2 and p_shape[-1] == 1 else ""
    hint = _shape_hint(t_name, p_shape, t_shape)
    if predictions.ndim >= 2 and t_shape == p_shape[:-1]:
        hint = (f"; if the {t_name} are class indices, use softmax_cross_entropy or one-hot them "
                f"with jax.nn.one_hot({t_name}, {p_shape[-1]})")
    raise ValueError(f"{loss}: {p_name} have shape {p_shape} but {t_name} have shape {t_shape}; "
                     f"{t_name} must have the {p_name}' shape {p_shape}{also}{hint}")


def _per_example(x: Array) -> Array:
    """Averages `x` over every axis but the first: `(B, ...) -> (B,)`."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def _in_unit_interval(labels: Array) -> Array:
    """Elementwise: is the label in `[0, 1]` (False for NaN)."""
    return (labels >= 0) & (labels <= 1)


def _nan_unless(valid: Array, values: Array) -> Array:
    """`values` where `valid`, NaN elsewhere: a select, so no gradient reaches the NaN side."""
    return jnp.where(valid, values, jnp.nan)


def mse(predictions: Array, targets: Array) -> Array:
    """Mean squared error per example: `mean((predictions - targets) ** 2)` over non-batch axes.

    Args:
        predictions: `(B, ...)` floats; `(B,)` for scalar regression.
        targets: the same shape as `predictions`; for `(B, 1)` predictions, `(B,)` also works.

    Returns:
        `(B,)`: the squared error of each example, averaged over its non-batch axes.

    Raises:
        ValueError: if `predictions` is a scalar or the shapes do not match as described.

    Example:
        >>> loss = jdnn.losses.mse(model_out, y).mean()  # model_out (32, 1), y (32,) -> (32,)
    """
    predictions = _floating(predictions)
    targets = _match("mse", "predictions", "targets", predictions, jnp.asarray(targets))
    return _per_example(optax.losses.squared_error(predictions, targets.astype(predictions.dtype)))


def binary_cross_entropy(logits: Array, labels: Array) -> Array:
    """Sigmoid cross-entropy from logits per example, averaged over non-batch axes.

    Computed as `-y log(sigmoid(x)) - (1 - y) log(1 - sigmoid(x))` through `log_sigmoid`, so it
    is finite (and so is its gradient, `sigmoid(x) - y`) for logits of any size. Pass logits,
    not probabilities: leave out the final `Sigmoid()` layer.

    Args:
        logits: `(B, ...)` unnormalized log-odds, typically `(B, 1)` or `(B,)`.
        labels: the same shape as `logits` (or `(B,)` for `(B, 1)` logits), in `{0, 1}`;
            soft labels in `[0, 1]` are fine. A label outside `[0, 1]` (or NaN) makes its
            example's loss NaN: such a label gives a finite but meaningless value otherwise.

    Returns:
        `(B,)`: the cross-entropy of each example, averaged over its non-batch axes; NaN for
        an example with a label outside `[0, 1]`.

    Raises:
        ValueError: if `logits` is a scalar or the shapes do not match as described.

    Example:
        >>> loss = jdnn.losses.binary_cross_entropy(logits, y).mean()  # (32, 1), (32,) -> (32,)
    """
    logits = _floating(logits)
    labels = _match("binary_cross_entropy", "logits", "labels", logits, jnp.asarray(labels))
    labels = labels.astype(logits.dtype)
    valid = _in_unit_interval(labels)
    values = optax.losses.sigmoid_binary_cross_entropy(logits, jnp.where(valid, labels, 0))
    return _per_example(_nan_unless(valid, values))


def _check_smoothing(label_smoothing: float | Array) -> float | Array:
    """A concrete smoothing must lie in `[0, 1)`; a traced one (e.g. under vmap) is trusted."""
    if isinstance(label_smoothing, jax.core.Tracer):
        return label_smoothing
    try:
        value = float(label_smoothing)
        ok = not isinstance(label_smoothing, (bool, str, bytes)) and 0.0 <= value < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"softmax_cross_entropy: label_smoothing must be a float in [0, 1), got "
                         f"{label_smoothing!r}")
    return value


def _softmax_labels(logits: Array, labels: Array) -> tuple[Array, bool]:
    """Checks the labels against `(..., C)` logits; returns them and whether they are indices."""
    loss, shape = "softmax_cross_entropy", tuple(logits.shape)
    if logits.ndim < 2:
        raise ValueError(f"{loss}: logits have shape {shape} but need a batch axis and a class "
                         f"axis, (batch, classes); for a single example pass logits[None]")
    if shape[-1] == 1:
        raise ValueError(f"{loss}: logits have shape {shape}, a single class; a softmax over one "
                         f"class is always 1, so the loss would be 0 and nothing would learn. For "
                         f"a binary problem use binary_cross_entropy on these logits")
    label_shape = tuple(labels.shape)
    if label_shape == shape:
        return labels, False
    if label_shape == shape[:-1] and jnp.issubdtype(labels.dtype, jnp.integer):
        return labels, True
    hint = _shape_hint("labels", shape[:-1], label_shape)
    if label_shape == shape[:-1]:
        hint = f"; these {labels.dtype} labels look like class indices: use labels.astype(int)"
    raise ValueError(f"{loss}: logits have shape {shape} but labels have shape {label_shape}; "
                     f"labels must be integer class indices of shape {shape[:-1]} or "
                     f"one-hot/probability vectors of shape {shape}{hint}")


def softmax_cross_entropy(logits: Array, labels: Array, *,
                          label_smoothing: float = 0.0) -> Array:
    """Softmax cross-entropy from logits per example: `-sum(y * log_softmax(logits))`.

    Computed through `log_softmax`, so it is finite (and so is its gradient, `softmax(x) - y`)
    for logits of any size. Pass logits, not probabilities: leave out a final `Softmax()` layer.
    With label smoothing `a`, the targets become `(1 - a) * y + a / C`.

    Args:
        logits: `(B, C)` unnormalized log-probabilities over `C >= 2` classes, or `(B, ..., C)`.
        labels: integer class indices in `[0, C)` of shape `logits.shape[:-1]`, or one-hot (or
            probability) vectors of shape `logits.shape` with entries in `[0, 1]`. An index
            outside `[0, C)` (negative ones included: they do not wrap around) or a vector
            with an entry outside `[0, 1]` makes its example's loss NaN, with or without
            smoothing, at any rank.
        label_smoothing: `a` in `[0, 1)`; `0` is plain cross-entropy. A traced value (e.g. under
            `vmap` in a hyper-parameter search) is not range-checked.

    Returns:
        `(B,)`: the cross-entropy of each example (for rank > 2, averaged over the axes between
        batch and classes); NaN for an example with any out-of-range label.

    Raises:
        ValueError: if `logits` has rank < 2 or a single class, the labels' shape fits neither
            form, or `label_smoothing` is outside `[0, 1)`.

    Example:
        >>> loss = jdnn.losses.softmax_cross_entropy(logits, y, label_smoothing=0.1).mean()
    """
    smoothing = _check_smoothing(label_smoothing)
    smooth = not (isinstance(smoothing, float) and smoothing == 0.0)
    logits = _floating(logits)
    labels, is_index = _softmax_labels(logits, jnp.asarray(labels))
    if is_index:  # (B, ...) indices: class 0 stands in for an out-of-range one
        valid = (labels >= 0) & (labels < logits.shape[-1])
        labels = jnp.where(valid, labels, 0)
        if not smooth:
            values = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
            return _per_example(_nan_unless(valid, values))
        labels = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    else:  # (B, ..., C) vectors: a zero vector stands in for one with an entry outside [0, 1]
        labels = labels.astype(logits.dtype)
        valid = jnp.all(_in_unit_interval(labels), axis=-1)
        labels = jnp.where(valid[..., None], labels, 0)
    if smooth:
        labels = optax.smooth_labels(labels, smoothing)
    return _per_example(_nan_unless(valid, optax.losses.softmax_cross_entropy(logits, labels)))
