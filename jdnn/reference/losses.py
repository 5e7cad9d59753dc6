"""Per-example losses and their gradients, by hand: the NumPy twins of `jdnn.losses`.

Each loss maps a batch to one value per example, shape `(B,)`, averaging over every axis but
the first (for softmax cross-entropy: over the axes between batch and classes). Next to each
loss stands its gradient. Training minimizes a weighted sum of the per-example values,

    L = sum_b weights_b * loss_b,

and the gradient functions return `dL/d outputs` (the shape of the outputs) for given weights.
The weights already hold the reduction: a plain mean is `weights = 1 / B`, a masked mean is
`weights = mask / max(sum(mask), 1)`; `mean_weights` builds them, `masked_mean` is the matching
value. Because `loss_b` averages over the `n` non-batch entries of example `b`, each entry's
gradient carries a factor `weights_b / n`.

Conventions shared with `jdnn.losses`: `(B, 1)` outputs with `(B,)` targets read the targets as
`(B, 1)` (they would otherwise broadcast to `(B, B)`); any other shape mismatch is an error.
Cross-entropies take logits and are written so that logits of +-1e4 stay finite.
"""

from __future__ import annotations

import numpy as np

# --- shared helpers --------------------------------------------------------------------------


def _floating(x) -> np.ndarray:
    """`x` as an array, promoted to floating point if it is integer or bool."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating):
        return x
    return x.astype(np.promote_types(x.dtype, np.float32))


def _match(loss: str, outputs: np.ndarray, targets) -> np.ndarray:
    """`targets` with the shape of `outputs`; `(B,)` targets for `(B, 1)` outputs become `(B, 1)`.

    Raises:
        ValueError: if `outputs` is a scalar or the shapes match in no other way.
    """
    if outputs.ndim == 0:
        raise ValueError(f"{loss}: the outputs are a scalar, but losses need a batch axis: pass "
                         f"shape (batch, ...)")
    targets = np.asarray(targets)
    if targets.shape == outputs.shape:
        return targets.astype(outputs.dtype)
    if outputs.ndim >= 2 and outputs.shape[-1] == 1 and targets.shape == outputs.shape[:-1]:
        return targets[..., None].astype(outputs.dtype)
    raise ValueError(f"{loss}: outputs have shape {outputs.shape} but targets have shape "
                     f"{targets.shape}; they must be equal (or (B,) targets for (B, 1) outputs)")


def _per_example(x: np.ndarray) -> np.ndarray:
    """Averages `x` over every axis but the first: `(B, ...) -> (B,)`."""
    return x.mean(axis=tuple(range(1, x.ndim)))


def _spread(loss: str, weights, outputs: np.ndarray) -> np.ndarray:
    """`weights_b / n` broadcastable against `outputs` of shape `(B, ...)`, `n` = entries per
    example: the gradient of `sum_b weights_b * mean(entries of b)` w.r.t. each entry."""
    weights = np.asarray(weights)
    if weights.shape != outputs.shape[:1]:
        raise ValueError(f"{loss}: weights must have shape (batch,) = {outputs.shape[:1]}, got "
                         f"{weights.shape}; build them with mean_weights(mask, batch)")
    weights = weights.astype(outputs.dtype, copy=False)  # the outputs' precision, not the mask's
    per_example = int(np.prod(outputs.shape[1:]))
    return (weights / per_example).reshape(weights.shape + (1,) * (outputs.ndim - 1))


# --- reductions: mean and masked mean --------------------------------------------------------


def mean_weights(mask, batch: int, dtype=None) -> np.ndarray:
    """The weights of a (masked) mean over the batch: `w_b = mask_b / max(sum(mask), 1)`.

    With these weights, `sum_b w_b * loss_b` is the mean of the unmasked losses, and every
    `*_grad` function returns its gradient. An all-zero mask gives zero weights (zero loss and
    zero gradient), not a division by zero.

    Args:
        mask: `(batch,)` of 0/1 (or bool, or any non-negative weights); None means all ones.
        batch: the batch size `B`.
        dtype: the float type of the weights, that of the losses they will weigh; by default
            the mask's own float type, or float64 for a bool, integer or absent mask.

    Returns:
        `(batch,)` weights of `dtype`; `1 / B` each when `mask` is None.

    Raises:
        ValueError: if `mask` does not have shape `(batch,)`.

    Examples:
        >>> grad = mse_grad(outputs, targets, mean_weights(mask, len(outputs), outputs.dtype))
    """
    if dtype is None:
        floating = mask is not None and np.issubdtype(np.asarray(mask).dtype, np.floating)
        dtype = np.asarray(mask).dtype if floating else np.float64
    mask = np.ones(batch, dtype) if mask is None else np.asarray(mask, dtype)
    if mask.shape != (batch,):
        raise ValueError(f"mean_weights: mask must have shape (batch,) = ({batch},), got "
                         f"{mask.shape}")
    return mask / max(mask.sum(), 1)


def masked_mean(values, mask=None):
    """The mean of per-example values over the unmasked examples: `sum(v * m) / max(sum(m), 1)`.

    Args:
        values: `(B,)` per-example losses.
        mask: `(B,)` of 0/1, or None for all ones (a plain mean).

    Returns:
        A NumPy scalar of the values' float type; `0.0` for an all-zero mask.

    Examples:
        >>> loss = masked_mean(softmax_cross_entropy(logits, labels), mask)
    """
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"masked_mean: values must be per-example, shape (batch,), got "
                         f"{values.shape}")
    dtype = values.dtype if np.issubdtype(values.dtype, np.floating) else None
    return np.sum(values * mean_weights(mask, values.shape[0], dtype))


# --- mean squared error ----------------------------------------------------------------------


def mse(outputs, targets) -> np.ndarray:
    """Squared error per example, averaged over non-batch axes.

    Formula:   `loss_b = (1/n) sum_i (o_bi - t_bi)^2`, over the `n` entries `i` of example `b`.
    Gradient:  `dL/do_bi = weights_b * 2 (o_bi - t_bi) / n`   for `L = sum_b weights_b loss_b`.

    Args:
        outputs: `(B, ...)` predictions.
        targets: the shape of `outputs`, or `(B,)` for `(B, 1)` outputs.

    Returns:
        `(B,)` per-example losses.

    Examples:
        >>> mse(np.array([[1.0], [3.0]]), np.array([0.0, 1.0]))  # array([1., 4.])
    """
    outputs = _floating(outputs)
    targets = _match("mse", outputs, targets)
    return _per_example((outputs - targets) ** 2)


def mse_grad(outputs, targets, weights) -> np.ndarray:
    """`d(sum_b weights_b * mse_b)/d outputs`, shape of `outputs`; see `mse` for the formula.

    Examples:
        >>> dout = mse_grad(outputs, targets, mean_weights(None, len(outputs)))
    """
    outputs = _floating(outputs)
    targets = _match("mse_grad", outputs, targets)
    return _spread("mse_grad", weights, outputs) * 2.0 * (outputs - targets)


# --- binary cross-entropy from logits --------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """`1 / (1 + exp(-z))`, written with `exp(-|z|) <= 1` so no exponential overflows."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def binary_cross_entropy(logits, labels) -> np.ndarray:
    """Sigmoid cross-entropy from logits per example, averaged over non-batch axes.

    Formula:   `l(z, y) = -y log s(z) - (1 - y) log(1 - s(z))` with `s` the sigmoid, which
               simplifies to `l(z, y) = max(z, 0) - z y + log1p(exp(-|z|))`: every term stays
               finite for any `z` (the exponent is never positive).
               `loss_b = (1/n) sum_i l(z_bi, y_bi)`.
    Gradient:  `dl/dz = s(z) - y`, so `dL/dz_bi = weights_b * (s(z_bi) - y_bi) / n`.

    Args:
        logits: `(B, ...)` log-odds (no final sigmoid).
        labels: the shape of `logits` (or `(B,)` for `(B, 1)` logits), in `[0, 1]`.

    Returns:
        `(B,)` per-example losses.

    Examples:
        >>> binary_cross_entropy(np.array([[0.0]]), np.array([1.0]))  # array([0.6931...])
    """
    z = _floating(logits)
    y = _match("binary_cross_entropy", z, labels)
    return _per_example(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))


def binary_cross_entropy_grad(logits, labels, weights) -> np.ndarray:
    """`d(sum_b weights_b * bce_b)/d logits`, shape of `logits`; see `binary_cross_entropy`.

    Examples:
        >>> dz = binary_cross_entropy_grad(logits, labels, mean_weights(mask, len(logits)))
    """
    z = _floating(logits)
    y = _match("binary_cross_entropy_grad", z, labels)
    return _spread("binary_cross_entropy_grad", weights, z) * (_sigmoid(z) - y)


# --- softmax cross-entropy from logits -------------------------------------------------------


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """`z - log(sum(exp(z)))` over the last axis, shifted by the max so `exp` never overflows."""
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _targets(loss: str, z: np.ndarray, labels, label_smoothing: float) -> np.ndarray:
    """The target distribution `t`, shape of `z`: one-hot for indices, then smoothed.

    Smoothing as `optax.smooth_labels`: `t = (1 - a) * y + a / C`.
    """
    if z.ndim < 2 or z.shape[-1] < 2:
        raise ValueError(f"{loss}: logits must have shape (batch, ..., classes) with at least "
                         f"2 classes, got {z.shape}")
    if isinstance(label_smoothing, bool) or not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"{loss}: label_smoothing must be a float in [0, 1), got "
                         f"{label_smoothing!r}")
    label_smoothing = float(label_smoothing)  # a Python float: it keeps z's dtype
    labels = np.asarray(labels)
    classes = z.shape[-1]
    if labels.shape == z.shape:
        y = labels.astype(z.dtype)
    elif labels.shape == z.shape[:-1] and np.issubdtype(labels.dtype, np.integer):
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(f"{loss}: integer labels must lie in [0, {classes}), got values "
                             f"from {labels.min()} to {labels.max()}")
        y = (labels[..., None] == np.arange(classes)).astype(z.dtype)  # one-hot
    else:
        raise ValueError(f"{loss}: logits have shape {z.shape} but labels have shape "
                         f"{labels.shape} ({labels.dtype}); labels must be integer class "
                         f"indices of shape {z.shape[:-1]} or probabilities of shape {z.shape}")
    return (1.0 - label_smoothing) * y + label_smoothing / classes


def softmax_cross_entropy(logits, labels, *, label_smoothing: float = 0.0) -> np.ndarray:
    """Softmax cross-entropy from logits per example.

    Formula:   `p = softmax(z)` over the last (class) axis, `t` the target distribution
               (one-hot of an index label, or the given probabilities; with smoothing `a`,
               `t = (1 - a) t + a / C`), and `l(z, t) = -sum_c t_c log p_c`, with
               `log p = z - max(z) - log(sum(exp(z - max(z))))` (finite for any logits).
               `loss_b` averages `l` over the `n` positions between batch and class axes
               (`n = 1` for `(B, C)` logits).
    Gradient:  `dl/dz_c = p_c sum_k t_k - t_c`, which is `p_c - t_c` for a target that sums to
               1 (every one-hot or smoothed label); so `dL/dz_b = weights_b * (p - t) / n`.

    Args:
        logits: `(B, C)` (or `(B, ..., C)`) unnormalized log-probabilities, `C >= 2`.
        labels: integer indices in `[0, C)` of shape `logits.shape[:-1]`, or one-hot or
            probability vectors of shape `logits.shape`.
        label_smoothing: `a` in `[0, 1)`.

    Returns:
        `(B,)` per-example losses.

    Raises:
        ValueError: for logits without a class axis of size >= 2, labels that fit neither form,
            out-of-range indices, or `label_smoothing` outside `[0, 1)`.

    Examples:
        >>> softmax_cross_entropy(np.zeros((1, 4)), np.array([2]))  # array([1.3862...]) = log 4
    """
    z = _floating(logits)
    t = _targets("softmax_cross_entropy", z, labels, label_smoothing)
    return _per_example(-(t * _log_softmax(z)).sum(axis=-1))


def softmax_cross_entropy_grad(logits, labels, weights, *,
                               label_smoothing: float = 0.0) -> np.ndarray:
    """`d(sum_b weights_b * ce_b)/d logits`, shape of `logits`; see `softmax_cross_entropy`.

    Examples:
        >>> dz = softmax_cross_entropy_grad(logits, labels, mean_weights(None, len(logits)))
    """
    z = _floating(logits)
    t = _targets("softmax_cross_entropy_grad", z, labels, label_smoothing)
    p = np.exp(_log_softmax(z))
    positions = _spread("softmax_cross_entropy_grad", weights, z[..., 0])[..., None]
    return positions * (p * t.sum(axis=-1, keepdims=True) - t)
