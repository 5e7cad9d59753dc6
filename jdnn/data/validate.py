"""Checks a dataset against the model and the loss *before* training starts.

A NaN in the inputs, a label the model has no output for, or images of the wrong rank all
surface late and obscurely once training runs: as a NaN loss after a few epochs, as silent
garbage (`softmax_cross_entropy` gives NaN for an out-of-range index) or as a shape error deep
inside a compiled step. `check_data` finds them up front and says what is wrong, where, and how
to fix it. It reads the model only through `model.init` on an abstract key (no parameters are
materialized), and the loss only by identity, so it costs one pass over the data.

Every loss gets its targets' shape checked against the model's outputs. The built-in losses
check their own shapes; for any other loss (a user's `my_mse`) targets whose rank differs from
the outputs' in a way broadcasting accepts (`(B, 1)` outputs against `(B,)` targets broadcast to
`(B, B)`) are an error: such a loss would compare every example with every other and train a
silently wrong model. Asking for accuracy explicitly needs targets that are class labels.

`check_labels` is the label part alone, for entry points that get a batch rather than a dataset
(`per_example_grads`, `ghost_clipped_grad`). A model whose last layer outputs probabilities
(it declares the trait `outputs_probabilities`, e.g. `Softmax`) before a loss that takes logits
is a warning, once: it trains, but badly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdnn import metrics as metrics_lib
from jdnn.core import (Layer, LayerError, Shape, input_layers, output_layer, output_shape,
                       trait)
from jdnn.losses import checks_shapes, label_kind, loss_name
from jdnn.padded import Padded, unpad


def _describe(data: Any) -> str:
    if isinstance(data, (tuple, list)):
        return f"a {type(data).__name__} of length {len(data)}"
    if isinstance(data, dict):
        return f"a dict with keys {sorted(map(str, data))}"
    if hasattr(data, "shape") and hasattr(data, "dtype"):
        return f"a single array of shape {tuple(data.shape)}"
    return f"{type(data).__name__} {data!r:.60}"


def as_arrays(data: Any, name: str = "train_data") -> tuple[np.ndarray, np.ndarray]:
    """Unpacks an `(x, y)` pair into two NumPy arrays.

    Args:
        data: a tuple or list `(x, y)` of arrays (NumPy, JAX or nested lists), examples first.
        name: what the data are called in error messages, e.g. `"validation_data"`.

    Returns:
        `(x, y)` as NumPy arrays (JAX arrays are copied to the host).

    Raises:
        ValueError: if `data` is not a pair, or `x` or `y` is None or cannot be made an array.

    Examples:
        >>> x, y = as_arrays((x_train, y_train), "train_data")
    """
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"{name} must be an (x, y) pair, got {_describe(data)}; pass e.g. "
                         f"(x_train, y_train), with the inputs and the targets of the same "
                         f"examples")
    arrays = []
    for part, value in zip(("x", "y"), data):
        if value is None:
            raise ValueError(f"{name}: {part} is None; pass an array of {part} values")
        if part == "x" and isinstance(value, Padded):
            arrays.append(padded_arrays(name, value))
            continue
        try:
            arrays.append(np.asarray(value))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name}: {part} cannot be converted to an array ({error}); "
                             f"nested lists must be rectangular") from None
    return arrays[0], arrays[1]


def padded_arrays(name: str, x: Padded) -> Padded:
    """A padded batch as NumPy arrays, its lengths checked: `(N,)` whole numbers in `[0, T]`.

    Raises:
        ValueError: naming `name`, the expected and the found shape or value.
    """
    values, lengths = np.asarray(x.values), np.asarray(x.lengths)
    if values.ndim < 2:
        raise ValueError(f"{name}: a Padded x needs values of shape (N, T, ...), with a time "
                         f"axis T, got shape {values.shape}")
    if lengths.shape != values.shape[:1]:
        raise ValueError(f"{name}: a Padded x needs one length per example, shape "
                         f"({values.shape[0]},), got lengths of shape {lengths.shape}")
    if not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"{name}: a Padded x's lengths must be integers, got dtype "
                         f"{lengths.dtype}; convert them with lengths.astype(int)")
    bad = (lengths < 0) | (lengths > values.shape[1])
    if bad.any():
        raise ValueError(f"{name}: a Padded x's lengths must lie in [0, {values.shape[1]}] (the "
                         f"padded length T), but {int(bad.sum())} do not; "
                         f"{_where('lengths', lengths, bad)}")
    return Padded(values, lengths)


def _check_numeric(name: str, part: str, a: np.ndarray) -> None:
    numeric = a.dtype == np.bool_ or (jnp.issubdtype(a.dtype, jnp.number)
                                      and not jnp.issubdtype(a.dtype, jnp.complexfloating))
    if not numeric:
        raise ValueError(f"{name}: {part} must be an array of real numbers, got dtype "
                         f"{a.dtype}; convert it, e.g. {part}.astype(np.float32)")
    if a.ndim == 0:
        raise ValueError(f"{name}: {part} is a scalar, but needs a first axis with one entry "
                         f"per example")


def _first(mask: np.ndarray) -> tuple[int, ...]:
    """The index of the first True entry of `mask` (which has at least one)."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _where(part: str, a: np.ndarray, mask: np.ndarray) -> str:
    """`'3 values ...; the first is y[12] = -1'` for the True entries of `mask`."""
    index = _first(mask)
    shown = ", ".join(map(str, index))
    return f"the first is {part}[{shown}] = {a[index].item()!r}"


def _check_finite(name: str, part: str, a: np.ndarray) -> None:
    if not jnp.issubdtype(a.dtype, jnp.floating):
        return
    bad = ~np.isfinite(a)
    count = int(bad.sum())
    if count:
        raise ValueError(f"{name}: {part} has {count} non-finite value(s) (NaN or inf); "
                         f"{_where(part, a, bad)}. Remove or impute them before training")


def _misfit(name: str, shape: Shape, error: LayerError) -> ValueError:
    return ValueError(f"{name}: x of shape {shape} does not fit the model: {error}")


def model_output_shape(name: str, model: Layer, x_shape: Shape) -> Shape:
    """The model's output shape for one example of `x_shape` `(N, ...)`, via an abstract
    (allocation-free) `init`; an `init` that needs concrete values is run for real.

    Raises:
        ValueError: naming `name` and `x_shape` when the model's `init` rejects the shape.
    """
    input_shape = (1, *tuple(x_shape)[1:])
    try:
        return output_shape(model, input_shape)
    except LayerError as error:
        raise _misfit(name, tuple(x_shape), error) from None
    except Exception:  # an init that needs concrete values: run it for real below
        pass
    try:
        return tuple(model.init(jax.random.key(0), input_shape)[0])
    except LayerError as error:
        raise _misfit(name, tuple(x_shape), error) from None


def _check_model_inputs(name: str, model: Layer, x: np.ndarray) -> None:
    """Runs the `check_input` trait of every layer that receives the model's input (an
    `Embedding`'s ids must lie in its vocabulary), on the concrete data."""
    for spec in input_layers(model.spec):
        check = trait(spec, "check_input")
        problem = check(spec, x) if check is not None else None
        if problem:
            raise ValueError(f"{name}: x does not fit the model's first layer {spec.kind}: "
                             f"{problem}")


def _warn_if_probabilities(model: Layer, kind: str) -> None:
    """Warns once when the model's output layer outputs probabilities but the loss of `kind`
    takes logits. Once: the message does not depend on the data, so the default warning filter
    shows it once per session however many entry points check."""
    last = output_layer(model.spec)
    if not trait(last, "outputs_probabilities", False):
        return
    loss, squash = {"softmax": ("softmax_cross_entropy", "softmax"),
                    "binary": ("binary_cross_entropy", "sigmoid")}[kind]
    warnings.warn(f"the model's last layer, {last.kind}, outputs probabilities, but {loss} takes "
                  f"logits and applies the {squash} itself, so the outputs are squashed twice "
                  f"and training stalls; remove the final {last.kind}() and apply "
                  f"jax.nn.{squash} to the model's outputs when you need probabilities",
                  UserWarning, stacklevel=2)


def _check_indices(name: str, y: np.ndarray, classes: int | None, out: Shape | None) -> None:
    """Integer class indices: whole numbers in `[0, classes)`."""
    if jnp.issubdtype(y.dtype, jnp.floating):
        fraction = y != np.round(y)
        if fraction.any():
            raise ValueError(f"{name}: y has {int(fraction.sum())} non-integer class label(s); "
                             f"{_where('y', y, fraction)}. Class labels must be whole numbers "
                             f"in [0, classes)")
        raise ValueError(f"{name}: y holds class indices as {y.dtype}, but "
                         f"softmax_cross_entropy needs integer class indices; use "
                         f"y.astype(np.int32)")
    negative = y < 0
    if negative.any():
        raise ValueError(f"{name}: y has {int(negative.sum())} negative class label(s); "
                         f"{_where('y', y, negative)}. Class labels must lie in [0, classes)")
    if classes is not None:
        high = y >= classes
        if high.any():
            raise ValueError(f"{name}: y has class labels up to {int(y.max())} but the model "
                             f"outputs {classes} classes (output shape {out}); "
                             f"{int(high.sum())} label(s) are outside [0, {classes}), "
                             f"{_where('y', y, high)}. Give the last layer one unit per class, "
                             f"e.g. Dense({int(y.max()) + 1})")


def _check_unit_interval(name: str, y: np.ndarray, what: str) -> None:
    outside = (y < 0) | (y > 1)
    if outside.any():
        raise ValueError(f"{name}: y has {int(outside.sum())} value(s) outside [0, 1]; "
                         f"{_where('y', y, outside)}. {what}")


def _check_softmax_labels(name: str, y: np.ndarray, out: Shape | None) -> None:
    if out is None:  # no model: integer or rank-1 labels are indices, others probabilities
        if jnp.issubdtype(y.dtype, jnp.integer) or y.ndim == 1:
            _check_indices(name, y, None, None)
        else:
            _check_unit_interval(name, y, "One-hot or probability labels lie in [0, 1]")
        return
    if len(out) < 2 or out[-1] < 2:
        raise ValueError(f"{name}: the model's output shape {out} has no class axis of size >= "
                         f"2, but softmax_cross_entropy needs one output per class; end the "
                         f"model with Dense(classes), or use binary_cross_entropy for a single "
                         f"output unit")
    classes, n = out[-1], y.shape[0]
    if y.shape[1:] == out[1:-1]:
        _check_indices(name, y, classes, out)
    elif y.shape[1:] == out[1:]:
        _check_unit_interval(name, y, "One-hot or probability labels lie in [0, 1]")
    else:
        raise ValueError(f"{name}: y of shape {y.shape} does not fit the model's output shape "
                         f"{out} under softmax_cross_entropy: it needs integer class indices "
                         f"of shape {(n, *out[1:-1])} or one-hot vectors of shape "
                         f"{(n, *out[1:])}")


def _check_binary_labels(name: str, y: np.ndarray, out: Shape | None) -> None:
    if out is not None:
        fits = y.shape[1:] == out[1:] or (out[-1] == 1 and y.shape[1:] == out[1:-1])
        if not fits:
            hint = ""
            if out[-1] > 1 and y.shape[1:] == out[1:-1]:
                hint = (f"; with {out[-1]} outputs and one label per example, these look like "
                        f"class indices: use softmax_cross_entropy")
            raise ValueError(f"{name}: y of shape {y.shape} does not fit the model's output "
                             f"shape {out} under binary_cross_entropy: it needs shape "
                             f"{(y.shape[0], *out[1:])}{hint}")
    _check_unit_interval(name, y, "binary_cross_entropy needs labels in {0, 1} (or "
                                  "probabilities in between); for more than two classes use "
                                  "softmax_cross_entropy with integer labels")


def _broadcasts_across_examples(out: Shape, target: Shape) -> bool:
    """Whether outputs of shape `out` and targets of shape `target` (batch axis first) differ
    in rank yet broadcast together at any batch size. The batch axis of one then meets another
    axis of the other: `(B, 1)` against `(B,)` gives `(B, B)`, every example paired with every
    other. Tried with a batch size no other axis has, so that only axes of size 1 let it pass."""
    if len(out) == len(target):
        return False
    batch = max((*out[1:], *target[1:], 1)) + 2
    try:
        np.broadcast_shapes((batch, *out[1:]), (batch, *target[1:]))
    except ValueError:
        return False
    return True


def _reshape_hint(out: Shape, target: Shape) -> str:
    """How to give targets of shape `target` the outputs' shape `out`."""
    if out[1:] == (*target[1:], 1):
        return "y.reshape(-1, 1) (or y[:, None])" if len(target) == 1 else "y[..., None]"
    if target[1:] == (*out[1:], 1):
        return "y.reshape(-1) (or y[:, 0])" if len(out) == 1 else "y[..., 0]"
    if math.prod(out[1:]) == math.prod(target[1:]):
        return f"y.reshape{(-1, *out[1:])}"
    return "targets of the outputs' shape"


def _check_target_shape(name: str, target: Shape, out: Shape, loss: Callable) -> None:
    """Raises for targets a loss that does not check shapes would broadcast across examples."""
    target, out = tuple(target), tuple(out)
    if not _broadcasts_across_examples(out, target):
        return
    n = target[0]
    mixed = np.broadcast_shapes((n, *out[1:]), target)
    raise ValueError(f"{name}: y of shape {target} does not match the model's output shape "
                     f"{(n, *out[1:])} under the loss {loss_name(loss)}: it would broadcast "
                     f"the outputs against the targets to shape {mixed}, pairing every example "
                     f"with every other, and train a silently wrong model. Give y the outputs' "
                     f"shape: {_reshape_hint(out, target)}")


_NOT_CLASSES = ("Accuracy compares predicted classes with class labels: for regression targets "
                "leave metrics out (the default follows the loss: accuracy only for a "
                "classification loss) or pass metrics=()")


def _check_accuracy_targets(name: str, y: np.ndarray, out: Shape | None) -> None:
    """Explicitly asked-for accuracy needs class labels: whole indices in `[0, C)` against `C`
    outputs, one-hot or probability rows of the outputs' shape, or 0/1 for one output."""
    y = y.astype(np.int8) if y.dtype == np.bool_ else y
    classes = out[-1] if out is not None and len(out) == 2 and out[-1] > 1 else None
    rows = y.ndim == 2 and y.shape[1] > 1 and (out is None or y.shape[1:] == out[1:])
    single = y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)
    if rows:
        off = ((y < 0) | (y > 1)).any(axis=1) | ~np.isclose(y.sum(axis=1), 1.0, atol=1e-3)
        if off.any():
            first = int(np.argmax(off))
            raise ValueError(f"{name}: metrics asks for accuracy, but y has {int(off.sum())} "
                             f"row(s) that are not one-hot or probability vectors (entries in "
                             f"[0, 1] summing to 1); the first is y[{first}] = "
                             f"{y[first].tolist()!r:.80}. {_NOT_CLASSES}")
        return
    if single and classes is not None:
        off = (y != np.round(y)) | (y < 0) | (y >= classes)
        what = f"values that are not class indices in [0, {classes})"
    elif single and out is not None and out[1:] in ((), (1,)):
        off = (y != 0) & (y != 1)
        what = "values other than 0 and 1 (a single output's classes)"
    elif single and out is None:
        off = (y != np.round(y)) | (y < 0)
        what = "values that are not class indices (whole numbers >= 0)"
    else:   # shapes accuracy does not take: it names them when the step is traced
        return
    if off.any():
        raise ValueError(f"{name}: metrics asks for accuracy, but y has {int(off.sum())} "
                         f"{what}; {_where('y', y, off)}. {_NOT_CLASSES}")


def check_data(x: Any, y: Any, *, model: Layer | None = None, loss: Callable | None = None,
               name: str = "train_data", metrics: Any = None) -> None:
    """Raises a clear `ValueError` if `(x, y)` cannot train `model` under `loss`.

    Checked, in order: `x` and `y` are real-valued arrays with a first (example) axis of the
    same non-zero length; neither holds NaN or inf; with a `model`, `x`'s per-example shape
    fits it (the model's `LayerError` is re-raised as a `ValueError` naming `x`'s shape). With
    a known `loss` the labels are checked too:

    - `softmax_cross_entropy`: integer class indices must be whole, non-negative and, with a
      model, below the number of classes its last axis outputs; float labels of the output's
      shape (one-hot or probabilities) must lie in `[0, 1]`.
    - `binary_cross_entropy`: labels must lie in `[0, 1]` and (with a model) have the output's
      shape, or `(N,)` for a `(N, 1)` output.

    `functools.partial`s of these losses are recognized; any other loss (e.g. `mse`) skips the
    label checks. With a model and one of these losses, a model whose last layer outputs
    probabilities (`Softmax`, `Sigmoid`: layers that declare `outputs_probabilities`) is a
    `UserWarning`, shown once: these losses take logits.

    With a model and a loss other than the built-in ones (which check their own shapes), `y`
    must not differ from the outputs in rank where broadcasting would accept it: outputs
    `(N, 1)` against targets `(N,)` (or `(N,)` against `(N, 1)`) would broadcast to `(B, B)`
    in every batch. Targets of the outputs' shape, class indices `(N,)` for `(N, C)` outputs,
    and any other pair broadcasting refuses pass.

    With `metrics` naming `accuracy` (an explicit request: None, the default, checks nothing),
    the targets must be class labels: integer-valued indices in `[0, C)` for `(N, C)` outputs,
    one-hot or probability rows (entries in `[0, 1]` summing to 1) of the outputs' shape, or
    `0`/`1` for a single output.

    Args:
        x: inputs `(N, ...)`.
        y: targets `(N, ...)`.
        model: optional; its `init` is traced abstractly on `(1, *x.shape[1:])`.
        loss: optional per-example loss, e.g. `jdnn.losses.softmax_cross_entropy`.
        name: what the data are called in messages, e.g. `"validation_data"`.
        metrics: the metrics the user asked for, as passed to `fit` (names or functions);
            None when they were not given.

    Raises:
        ValueError: naming `name`, what was expected and what was found (with counts and the
            index of the first offending value).

    Examples:
        >>> (x, y), _ = jdnn.data.digits()
        >>> model = jdnn.serial(jdnn.Dense(64), jdnn.Relu(), jdnn.Dense(10))
        >>> check_data(x, y, model=model, loss=jdnn.losses.softmax_cross_entropy)  # passes
    """
    x = padded_arrays(name, x) if isinstance(x, Padded) else np.asarray(x)
    values, y = unpad(x)[0], np.asarray(y)
    _check_numeric(name, "x", values)
    _check_numeric(name, "y", y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: x has {x.shape[0]} examples but y has {y.shape[0]}; x and y "
                         f"need one entry per example along their first axis (shapes "
                         f"{x.shape} and {y.shape})")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: x and y have no examples (shapes {x.shape} and {y.shape})")
    _check_finite(name, "x", values)
    _check_finite(name, "y", y)
    out = model_output_shape(name, model, x.shape) if model is not None else None
    if model is not None:
        _check_model_inputs(name, model, values)
    if out is not None and loss is not None and not checks_shapes(loss):
        _check_target_shape(name, y.shape, out, loss)
    _check_labels_of(name, y, out, label_kind(loss), model)
    if metrics is not None and any(map(metrics_lib.is_accuracy,
                                       metrics_lib.resolve_metrics(metrics).values())):
        _check_accuracy_targets(name, y, out)


def _check_labels_of(name: str, y: np.ndarray, out: Shape | None, labels: str | None,
                     model: Layer | None) -> None:
    if labels is None:
        return
    if model is not None:
        _warn_if_probabilities(model, labels)
    if labels == "softmax":
        _check_softmax_labels(name, y, out)
    else:
        _check_binary_labels(name, y, out)


def check_labels(y: Any, *, loss: Callable | None, model: Layer | None = None,
                 x_shape: Shape | None = None, name: str = "labels") -> None:
    """The label part of `check_data`, for one batch of concrete labels.

    For entry points that take a batch (`jdnn.per_example_grads`, `jdnn.ghost_clipped_grad`):
    they call it when `y` is concrete, naming themselves; under `jit` the labels are traced and
    the losses' NaN rule (an out-of-range label gives a NaN loss) is the guard instead. Checks
    that `y` is a real, finite array with a first axis, then the labels as `check_data` does for
    `loss` against the model's output for inputs of shape `x_shape` when both are given; warns,
    as `check_data` does, when the model's last layer outputs probabilities. For a loss it does
    not know, only the labels' shape is checked against the outputs' (as `check_data` does).

    Args:
        y: the labels `(B, ...)` (NumPy or concrete JAX array).
        loss: the per-example loss, e.g. `jdnn.losses.softmax_cross_entropy`.
        model: optional; with `x_shape`, the number of classes is read off its output shape.
        x_shape: the shape of the inputs `(B, ...)` (only the shape is needed).
        name: what the user called, e.g. `"per_example_grads"`; it starts every message.

    Raises:
        ValueError: as `check_data`, e.g. `"per_example_grads: y has 1 negative class
            label(s); the first is y[2] = -1. Class labels must lie in [0, classes)"`.

    Examples:
        >>> check_labels(y, loss=jdnn.losses.softmax_cross_entropy, model=model,
        ...              x_shape=x.shape, name="per_example_grads")
    """
    kind = label_kind(loss)
    if kind is None:
        if not (loss is None or checks_shapes(loss) or model is None or x_shape is None):
            _check_target_shape(name, np.shape(y), model_output_shape(name, model, x_shape), loss)
        return
    y = np.asarray(y)
    _check_numeric(name, "y", y)
    _check_finite(name, "y", y)
    out = None
    if model is not None and x_shape is not None:
        out = model_output_shape(name, model, x_shape)
    _check_labels_of(name, y, out, kind, model)
