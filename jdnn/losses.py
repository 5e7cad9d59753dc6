"""Per-example losses: each maps a batch to a vector of shape `(batch,)`; the caller reduces.

Returning one value per example keeps masking (`sum(loss * mask) / sum(mask)`), per-example
gradients and `vmap` free. Each loss averages over every axis but the first, so the result is
always `(batch,)`, whatever the rank of the predictions. All are built on `optax.losses` and
computed from logits where that matters, so they stay finite for logits of any size.

Shapes are checked rather than broadcast: predictions `(B, 1)` against targets `(B,)` would
silently broadcast to `(B, B)`. That one case is accepted (targets are read as `(B, 1)`); any
other mismatch is a `ValueError` naming both shapes.

Which targets a loss takes is a property of the loss (`label_kind`): class labels for the two
cross-entropies, anything else for `mse` and a user's own loss. Training reads it to pick the
default metrics (accuracy only for class labels) and to check the labels before anything runs.

Labels a loss cannot mean never give a plausible number: an integer class index outside
`[0, C)`, or a one-hot/probability/binary label outside `[0, 1]` (NaN included), makes that
example's loss NaN, eagerly, under `jit` and under `vmap` alike (values are not known at trace
time, so they cannot raise; `jdnn.data.check_data` raises for them on concrete data). The NaN is
put in by a select, and the loss is computed with a harmless stand-in label, so gradients stay
finite: an example masked out with `jnp.where(mask, loss, 0)` leaves the others untouched, and
a NaN example itself contributes a zero gradient (its NaN loss is the signal).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jdnn.core import Array
from jdnn.padded import Padded, sequence_mask

Loss = Callable[[Array, Array], Array]
"""A loss: `loss(outputs (B, ...), targets (B, ...)) -> (B,)`, one value per example."""


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

    Examples:
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

    Examples:
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

    Examples:
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


def _unwrapped(loss: Any) -> Any:
    """`loss` with any `functools.partial`s around it taken off."""
    while isinstance(loss, functools.partial):
        loss = loss.func
    return loss


def loss_name(loss: Any) -> str:
    """`loss`'s name in messages: its `__name__` (a partial's function's), e.g. `"my_mse"`."""
    loss = _unwrapped(loss)
    return getattr(loss, "__name__", type(loss).__name__)


# The kind of targets each built-in classification loss takes (see `label_kind`).
_LABEL_KINDS = ((softmax_cross_entropy, "softmax"), (binary_cross_entropy, "binary"))


def label_kind(loss: Any) -> str | None:
    """The kind of class labels `loss` takes, or None for any other loss.

    `"softmax"` for `softmax_cross_entropy` (integer class indices, or one-hot/probability
    vectors, against `(B, ..., C)` logits), `"binary"` for `binary_cross_entropy` (labels in
    `{0, 1}` against one logit per example); `functools.partial`s of them are the same loss.
    None for `mse` and for a user's own loss: their targets are not known to be class labels,
    so accuracy is not their default metric and no label check applies.

    Examples:
        >>> label_kind(jdnn.losses.softmax_cross_entropy), label_kind(jdnn.losses.mse)
        ('softmax', None)
    """
    loss = _unwrapped(loss)
    return next((kind for known, kind in _LABEL_KINDS if loss is known), None)


def checks_shapes(loss: Any) -> bool:
    """Whether `loss` is a built-in loss, which checks its targets' shape against the outputs
    itself (`mse` and the cross-entropies raise rather than broadcast). Partials unwrapped."""
    loss = _unwrapped(loss)
    return any(loss is known for known in (mse, binary_cross_entropy, softmax_cross_entropy))


def per_example_values(loss: Loss, outputs: Array, targets: Array) -> Array:
    """`loss(outputs, targets)`, checked to hold one value per example, `(B,)`, when traced.

    The guard every training step puts around a loss, built-in or a user's: a loss that
    averages over the batch, keeps a feature axis, or lets its targets broadcast across
    examples fails here, at trace time, with its name and all three shapes.

    Args:
        loss: a per-example loss `loss(outputs, targets) -> (B,)`.
        outputs: the model's outputs `(B, ...)`.
        targets: the targets `(B, ...)`.

    Returns:
        The per-example values `(B,)`.

    Raises:
        ValueError: if the values are not of shape `(B,)`.

    Outputs that are a `jdnn.Padded` (a sequence model's per-step outputs `(B, T, ...)`) take
    targets `(B, T, ...)`: the loss is applied to every step as if it were an example, and each
    example's value is the mean over its real steps (0 for an example of length 0). Padded
    steps never count, even where their targets are garbage (a NaN there is selected away).

    Examples:
        >>> values = per_example_values(my_loss, outputs, y)   # (B,)
    """
    if isinstance(outputs, Padded):
        return _per_sequence(loss, outputs, jnp.asarray(targets))
    values = jnp.asarray(loss(outputs, targets))
    batch = outputs.shape[0]
    if values.shape == (batch,):
        return values
    out_shape, target_shape = tuple(outputs.shape), tuple(targets.shape)
    if values.ndim == 0:
        hint = ("it reduces over the batch: average over the non-batch axes only (e.g. "
                "jnp.mean(..., axis=-1)); the caller takes the masked mean")
    elif batch in values.shape[1:]:
        hint = (f"the batch size appears twice, so the outputs and targets probably broadcast "
                f"against each other across examples: give the targets the outputs' shape "
                f"{out_shape} (e.g. y.reshape(-1, 1) for (B,) targets and (B, 1) outputs) and "
                f"average over every axis but the first")
    else:
        hint = "average over every axis but the first, e.g. jnp.mean(values, axis=-1)"
    raise ValueError(f"the loss {loss_name(loss)} must return one value per example, shape "
                     f"({batch},), got shape {tuple(values.shape)} for outputs of shape "
                     f"{out_shape} and targets of shape {target_shape}; {hint}")


def _per_sequence(loss: Loss, outputs: Padded, targets: Array) -> Array:
    """`per_example_values` of padded per-step outputs: the mean over each example's real steps."""
    values, lengths = outputs.values, outputs.lengths
    batch, steps = values.shape[:2]
    if tuple(targets.shape[:2]) != (batch, steps):
        raise ValueError(f"the loss {loss_name(loss)} gets padded per-step outputs of shape "
                         f"{tuple(values.shape)} (batch, time, ...), so the targets need one "
                         f"entry per step, shape ({batch}, {steps}, ...); got "
                         f"{tuple(targets.shape)}. Pad the targets like the inputs")
    flat = per_example_values(loss, values.reshape(batch * steps, *values.shape[2:]),
                              targets.reshape(batch * steps, *targets.shape[2:]))
    kept = jnp.where(sequence_mask(lengths, steps), flat.reshape(batch, steps), 0.0)
    return jnp.sum(kept, axis=1) / jnp.maximum(jnp.asarray(lengths), 1).astype(kept.dtype)


def masked_mean(values: Array, mask: Array | None) -> Array:
    """Mean of per-example `values` `(B,)` over the examples where `mask` `(B,)` is set.

    A masked-out row counts for nothing, even when its value is NaN (an out-of-range label's
    loss): it is selected away, never multiplied by zero (NaN * 0 is NaN). With no example
    kept the mean is 0.

    Args:
        values: `(B,)`, e.g. a loss's per-example values.
        mask: `(B,)` bools or 0/1 weights, or None for all examples.

    Returns:
        A scalar: `sum(values * mask) / max(sum(mask), 1)`.

    Examples:
        >>> masked_mean(jdnn.losses.mse(out, y), batch_mask)   # out (B, 1), y (B,)
    """
    if mask is None:
        return jnp.mean(values)
    weights = mask.astype(values.dtype)
    kept = jnp.where(weights != 0, values * weights, 0.0)
    return jnp.sum(kept) / jnp.maximum(jnp.sum(weights), 1.0)


# ---------------------------------------------------------------------------------------------
# Distillation (Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network"): a
# student learns from a teacher's softened class probabilities as well as from the labels.


def _check_distillation(temperature: Any, alpha: Any) -> None:
    """A concrete temperature must be > 0 and alpha in [0, 1]; traced ones are trusted."""
    for name, value, ok, want in (
            ("temperature", temperature, lambda v: v > 0, "a float > 0 (e.g. 4.0)"),
            ("alpha", alpha, lambda v: 0 <= v <= 1, "a float in [0, 1] (the soft term's weight)")):
        if isinstance(value, jax.core.Tracer):
            continue
        try:
            good = not isinstance(value, (bool, str)) and bool(ok(float(value)))
        except (TypeError, ValueError):
            good = False
        if not good:
            raise ValueError(f"distillation: {name} must be {want}, got {value!r}")


def distillation(student_logits: Array, teacher_logits: Array, labels: Array, *,
                 temperature: float = 4.0, alpha: float = 0.9) -> Array:
    """Knowledge-distillation loss per example (Hinton et al. 2015):

        alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)

    The `T^2` keeps the soft term's gradients the size of the hard term's as `T` changes. The
    KL divergence is `optax.losses.kl_divergence_with_log_targets` on log-softmaxes (finite for
    any logits); the hard term is `softmax_cross_entropy`. No gradient flows to the teacher.

    Args:
        student_logits: `(B, C)` (or `(B, ..., C)`) logits of the model being trained.
        teacher_logits: the teacher's logits, the student's shape.
        labels: the true labels, as `softmax_cross_entropy` takes them (class indices
            `(B, ...)` or one-hot `(B, ..., C)`).
        temperature: `T > 0`; larger values soften both distributions (2 to 10 is usual).
        alpha: the weight of the soft term in `[0, 1]`; `0` is plain cross-entropy.

    Returns:
        `(B,)`: each example's loss (averaged over the axes between batch and classes).

    Raises:
        ValueError: if the teacher's and the student's logits differ in shape, the labels do
            not fit the logits, `temperature <= 0` or `alpha` is outside `[0, 1]`.

    Examples:
        >>> values = jdnn.losses.distillation(student(x), teacher_logits, y, temperature=4.0)
    """
    _check_distillation(temperature, alpha)
    student_logits, teacher_logits = _floating(student_logits), _floating(teacher_logits)
    if tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise ValueError(f"distillation: student_logits have shape "
                         f"{tuple(student_logits.shape)} but teacher_logits have shape "
                         f"{tuple(teacher_logits.shape)}; both need one logit per class for "
                         f"the same examples, (batch, classes)")
    hard = softmax_cross_entropy(student_logits, labels)
    teacher = jax.lax.stop_gradient(teacher_logits)
    soft = optax.losses.kl_divergence_with_log_targets(
        jax.nn.log_softmax(student_logits / temperature),
        jax.nn.log_softmax(teacher / temperature))
    return alpha * temperature ** 2 * _per_example(soft) + (1 - alpha) * hard


# `fit` takes the targets as one array per example, `y[i]` (a pytree of targets is not part of
# its data path: `jdnn.data.validate.as_arrays` and the batch gathers index a single array). So a
# student's targets travel packed: the teacher's logits with the class label as a last column.


def distillation_targets(labels: Array, teacher_logits: Array) -> Array:
    """The teacher's logits and the labels packed into one target array for `fit`.

    Args:
        labels: class indices `(N,)`.
        teacher_logits: `(N, C)`, e.g. `jdnn.predict(teacher, teacher_state, x)`.

    Returns:
        `(N, C + 1)` float32: `teacher_logits` with `labels` as the last column (exact: class
        indices are small integers). `Distillation` unpacks them.

    Raises:
        ValueError: for labels that are not `(N,)` or teacher logits that are not `(N, C)`.

    Examples:
        >>> y_packed = jdnn.losses.distillation_targets(y, teacher_logits)   # (N, 11)
    """
    labels, teacher_logits = jnp.asarray(labels), jnp.asarray(teacher_logits)
    if labels.ndim != 1 or teacher_logits.ndim != 2 or labels.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"distillation_targets: labels must be class indices (N,) and "
                         f"teacher_logits (N, C) for the same N examples; got shapes "
                         f"{tuple(labels.shape)} and {tuple(teacher_logits.shape)}")
    return jnp.concatenate([teacher_logits.astype(jnp.float32),
                            labels.astype(jnp.float32)[:, None]], axis=1)


@dataclasses.dataclass(frozen=True)
class Distillation:
    """`distillation` as a loss for `fit`: `loss(student_logits (B, C), targets (B, C + 1))`,
    the targets packed by `distillation_targets`. A frozen dataclass, so two equal ones are the
    same loss to fit's cache of compiled epochs.

    Attributes:
        temperature, alpha: as in `distillation`.

    Examples:
        >>> loss = jdnn.losses.Distillation(temperature=4.0, alpha=0.9)
        >>> jdnn.fit(student, (x, distillation_targets(y, teacher_logits)), loss=loss, ...)
    """

    temperature: float = 4.0
    alpha: float = 0.9

    def __post_init__(self):
        _check_distillation(self.temperature, self.alpha)

    def __call__(self, student_logits: Array, targets: Array) -> Array:
        student_logits, targets = jnp.asarray(student_logits), jnp.asarray(targets)
        want = (*student_logits.shape[:-1], student_logits.shape[-1] + 1)
        if tuple(targets.shape) != want:
            raise ValueError(f"Distillation: targets must be distillation_targets(labels, "
                             f"teacher_logits), shape {want} for student logits of shape "
                             f"{tuple(student_logits.shape)}; got {tuple(targets.shape)}")
        labels = targets[..., -1].astype(jnp.int32)
        return distillation(student_logits, targets[..., :-1], labels,
                            temperature=self.temperature, alpha=self.alpha)
