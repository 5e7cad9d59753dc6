"""Metrics: scalar summaries of predictions against labels, with an optional example mask.

The mask is how padded batches stay honest: the last batch of an epoch is padded to full size
and its padding rows are masked out, so the step compiles once and the numbers stay exact.
Everything here works under `jax.jit` (shapes are checked at trace time).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jdnn.core import Array


def _in_unit_interval(labels: Array) -> Array:
    return (labels >= 0) & (labels <= 1)


def _predicted_and_true(predictions: Array, labels: Array, threshold: float
                        ) -> tuple[Array, Array, Array]:
    """The predicted and the true class of each example and whether its label means a class,
    all `(B,)`."""
    p_shape, l_shape = tuple(predictions.shape), tuple(labels.shape)
    if predictions.ndim not in (1, 2):
        raise ValueError(f"accuracy: predictions have shape {p_shape}; expected (batch,), "
                         f"(batch, 1) or (batch, classes); reshape to (batch, classes)")
    batch = p_shape[0]
    if predictions.ndim == 2 and p_shape[1] > 1:
        if l_shape == p_shape:
            return (jnp.argmax(predictions, axis=-1), jnp.argmax(labels, axis=-1),
                    jnp.all(_in_unit_interval(labels), axis=-1))
        if l_shape == (batch,):
            valid = (labels >= 0) & (labels < p_shape[1]) & (labels == jnp.floor(labels))
            return jnp.argmax(predictions, axis=-1), labels, valid
        raise ValueError(f"accuracy: predictions have shape {p_shape} but labels have shape "
                         f"{l_shape}; labels must be class indices of shape {(batch,)} or "
                         f"one-hot of shape {p_shape}")
    if l_shape not in ((batch,), (batch, 1)):
        raise ValueError(f"accuracy: single-output predictions have shape {p_shape} but labels "
                         f"have shape {l_shape}; labels must be 0/1 of shape {(batch,)} or "
                         f"{(batch, 1)}")
    labels = labels.reshape(batch)
    return predictions.reshape(batch) > threshold, labels > 0.5, _in_unit_interval(labels)


def accuracy(predictions: Array, labels: Array, mask: Array | None = None, *,
             threshold: float = 0.0) -> Array:
    """The fraction of (unmasked) examples whose predicted class is the label.

    With `C > 1` outputs the predicted class is the argmax. With one output, `(B,)` or `(B, 1)`,
    it is `predictions > threshold`, strictly: a score exactly at the threshold is class 0. The
    default `0.0` suits logits; pass `threshold=0.5` for sigmoid probabilities. The two rules
    agree, since `sigmoid(0) == 0.5`: a logit of exactly 0 and a probability of exactly 0.5
    are both class 0. `threshold` is ignored when `C > 1`.

    Args:
        predictions: `(B, C)` scores (logits or probabilities), or `(B,)` / `(B, 1)` for a
            binary problem.
        labels: for `(B, C)` predictions, class indices `(B,)` or one-hot `(B, C)` (compared by
            argmax); for single outputs, `(B,)` or `(B, 1)` in `{0, 1}` (a label counts as class
            1 when it is above 0.5).
            A label that names no class (an index outside `[0, C)`, a one-hot or binary
            entry outside `[0, 1]`) makes the accuracy NaN unless its example is masked out:
            never a plausible number.
        mask: optional `(B,)`, bool or 0/1 floats; examples with mask 0 do not count.
        threshold: the decision threshold for single-output predictions, a finite number.

    Returns:
        A float scalar, `sum(correct * mask) / max(sum(mask), 1)`; `0.0` if all are masked;
        NaN if an unmasked label names no class.

    Raises:
        ValueError: if `predictions`, `labels` or `mask` has an unexpected shape, or
            `threshold` is NaN or infinite.

    Example:
        >>> acc = jdnn.metrics.accuracy(logits, y, mask=batch_mask)  # logits (32, 10), y (32,)
    """
    if isinstance(threshold, (int, float, np.number)) and not math.isfinite(threshold):
        raise ValueError(f"accuracy: threshold must be a finite number (0.0 for logits, 0.5 for "
                         f"probabilities), got {threshold!r}")
    predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
    predicted, true, valid = _predicted_and_true(predictions, labels, threshold)
    correct = jnp.where(valid, (predicted == true).astype(jnp.float32), jnp.nan)
    if mask is None:
        return jnp.mean(correct) if correct.size else jnp.zeros((), jnp.float32)
    mask = jnp.asarray(mask)
    if tuple(mask.shape) != tuple(correct.shape):
        raise ValueError(f"accuracy: mask has shape {tuple(mask.shape)} but predictions have "
                         f"shape {tuple(predictions.shape)}; the mask needs one entry per "
                         f"example, shape {tuple(correct.shape)}")
    weights = mask.astype(jnp.float32)
    kept = jnp.where(weights != 0, correct * weights, 0.0)  # NaN * 0 is NaN: masked rows drop out
    return jnp.sum(kept) / jnp.maximum(jnp.sum(weights), 1.0)


# The metrics that can be asked for by name (`make_train_step(..., metrics=("accuracy",))`).
BY_NAME = {"accuracy": accuracy}
