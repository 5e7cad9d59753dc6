"""Checks of the arguments every training entry point shares: the loss, the optimizer, the
callbacks, the augmentation, the data and a train state to resume from.

Each check names the entry point the user called (`where`, e.g. `"fit"`), what it received and
how to fix it, so a string loss or an uncalled `optax.adam` fails before anything is traced,
not as an `AttributeError` deep in a compiled step. Counts (`epochs`, `batch_size`) are checked
with `jdnn.core.whole_number`, which accepts NumPy integers and refuses bools and floats.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdnn import losses
from jdnn.core import Layer, LayerError, path_of
from jdnn.data import augment as augment_lib
from jdnn.data.validate import as_arrays, check_data
from jdnn.padded import Padded
from jdnn.train.callbacks import Callback
from jdnn.train.state import TrainState, donated

# Loss names users type from other libraries, and the jdnn loss each one means.
_LOSS_ALIASES = {
    "mean_squared_error": "mse", "l2": "mse",
    "cross_entropy": "softmax_cross_entropy", "crossentropy": "softmax_cross_entropy",
    "categorical_crossentropy": "softmax_cross_entropy",
    "sparse_categorical_crossentropy": "softmax_cross_entropy",
    "binary_crossentropy": "binary_cross_entropy", "bce": "binary_cross_entropy",
}
_HOOKS = ("on_train_begin", "on_epoch_end", "on_train_end")


def _describe(value: Any) -> str:
    """`"the string 'mse'"`, `"the function adam"`, `"the class EarlyStopping"`, `"an int"`."""
    if value is None:
        return "None"
    if isinstance(value, str):
        return f"the string {value!r}"
    if inspect.isclass(value):
        return f"the class {value.__name__}"
    if inspect.isfunction(value) or inspect.isbuiltin(value):
        return f"the function {value.__qualname__}"
    article = "an" if type(value).__name__[:1].lower() in "aeiou" else "a"
    return f"{article} {type(value).__name__}"


def check_loss(where: str, loss: Any) -> Callable:
    """`loss` if it is a per-example loss function; a `TypeError` that says which one to pass
    otherwise (e.g. for the string `"mse"`).

    Examples:
        >>> check_loss("fit", jdnn.losses.mse)        # returns it
        >>> check_loss("fit", "mse")                  # TypeError: ... pass loss=jdnn.losses.mse
    """
    if isinstance(loss, str):
        name = _LOSS_ALIASES.get(loss.lower(), loss.lower())
        found = getattr(losses, name, None)
        if (not name.startswith("_") and inspect.isfunction(found)
                and found.__module__ == losses.__name__):
            fix = f"pass the function: loss=jdnn.losses.{name}"
        else:
            fix = ("pass a function loss(outputs, targets) -> (B,), e.g. jdnn.losses.mse, "
                   "jdnn.losses.softmax_cross_entropy or jdnn.losses.binary_cross_entropy")
        raise TypeError(f"{where}: loss must be a per-example loss function, got the string "
                        f"{loss!r}; {fix}")
    if not callable(loss) or inspect.isclass(loss):
        raise TypeError(f"{where}: loss must be a per-example loss function loss(outputs, "
                        f"targets) -> (B,), got {_describe(loss)}; pass e.g. "
                        f"loss=jdnn.losses.softmax_cross_entropy")
    return loss


def check_optimizer(where: str, optimizer: Any) -> Any:
    """`optimizer` if it is an optax `GradientTransformation` (anything with `init` and
    `update`); a `TypeError` otherwise, e.g. for `optax.adam` passed uncalled.

    Examples:
        >>> check_optimizer("fit", optax.adam)   # TypeError: ... optimizer=optax.adam(1e-3)
    """
    if callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None)):
        return optimizer
    if callable(optimizer):
        name = getattr(optimizer, "__name__", None)
        example = (f"optax.{name}(1e-3)" if name and getattr(optimizer, "__module__", "")
                   .startswith("optax") else f"{name or 'factory'}(...)")
        raise TypeError(f"{where}: optimizer must be an optax GradientTransformation, got "
                        f"{_describe(optimizer)}, which builds one: call it with its "
                        f"hyper-parameters, e.g. optimizer={example}")
    raise TypeError(f"{where}: optimizer must be an optax GradientTransformation (with init and "
                    f"update), got {_describe(optimizer)}; pass e.g. optimizer=optax.adam(1e-3)")


def check_callbacks(where: str, callbacks: Any) -> tuple:
    """The callbacks as a tuple, if `callbacks` is a list or tuple of callback instances
    (`jdnn.Callback`s, or objects with its three hooks); a `TypeError` otherwise, e.g. for a
    single callback or a class passed instead of an instance.

    Examples:
        >>> check_callbacks("fit", jdnn.EarlyStopping())   # TypeError: ... callbacks=[...]
    """
    if isinstance(callbacks, Callback) or (inspect.isclass(callbacks)
                                          and issubclass(callbacks, Callback)):
        name = (callbacks if inspect.isclass(callbacks) else type(callbacks)).__name__
        raise TypeError(f"{where}: callbacks must be a list or tuple of callbacks, got "
                        f"{_describe(callbacks)}; wrap it in a list: callbacks=[{name}(...)]")
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"{where}: callbacks must be a list or tuple of callbacks, got "
                        f"{_describe(callbacks)}; pass e.g. callbacks=[jdnn.EarlyStopping()]")
    for i, callback in enumerate(callbacks):
        if inspect.isclass(callback):
            raise TypeError(f"{where}: callbacks[{i}] is {_describe(callback)}, not an "
                            f"instance; call it: {callback.__name__}(...)")
        if not (isinstance(callback, Callback)
                or all(callable(getattr(callback, hook, None)) for hook in _HOOKS)):
            raise TypeError(f"{where}: callbacks[{i}] must be a callback (a jdnn.Callback "
                            f"subclass instance, with on_train_begin, on_epoch_end and "
                            f"on_train_end), got {_describe(callback)}")
    return tuple(callbacks)


def check_augment(where: str, augment: Any) -> Callable | None:
    """`augment` if it is None or a keyed augmentation `augment(key, x) -> x`; a `TypeError`
    for anything else, including a `jdnn.data.augment` constructor passed uncalled (it is
    callable, but calling it with `(key, x)` fails inside the compiled step), as `compose`
    does.

    Examples:
        >>> check_augment("fit", jdnn.data.augment.random_flip)   # TypeError: random_flip()
    """
    if augment is None:
        return None
    if any(augment is constructor for constructor in augment_lib.CONSTRUCTORS):
        raise TypeError(f"{where}: augment is the constructor {augment.__name__}; call it to get "
                        f"an augmentation, e.g. augment=jdnn.data.augment.{augment.__name__}(...)")
    if not callable(augment) or inspect.isclass(augment):
        raise TypeError(f"{where}: augment must be a function augment(key, x) -> x (see "
                        f"jdnn.data.augment), got {_describe(augment)}")
    return augment


# The keyword arguments that configure fit's own step: meaningless next to a step of one's own.
_STEP_OPTIONS = ("penalty", "augment", "frozen_state")


def check_step(where: str, step: Any, **options: Any) -> Callable:
    """`step` if it can be a training step `step(train_state, x, y, mask) -> (train_state,
    metrics)`: a function (plain or jitted) that takes those four arguments. A `TypeError` for
    anything else, e.g. `jdnn.make_dp_train_step` passed uncalled; a `ValueError` if any of
    `options` (`penalty`, `augment`, `frozen_state`: they configure `fit`'s own step) is set,
    since a step of one's own would silently ignore it.

    Examples:
        >>> check_step("fit", jdnn.make_dp_train_step)   # TypeError: ... build the step first
    """
    if not callable(step) or inspect.isclass(step):
        raise TypeError(f"{where}: step must be a training step step(train_state, x, y, mask) "
                        f"-> (train_state, metrics), got {_describe(step)}; e.g. "
                        f"step=jdnn.make_dp_train_step(model, loss, optimizer, ...)")
    try:
        signature = inspect.signature(step)
    except (TypeError, ValueError):  # no signature to read (some builtins): trust it
        signature = None
    if signature is not None:
        try:
            signature.bind(None, None, None, None)
        except TypeError as error:
            name = getattr(step, "__name__", type(step).__name__)
            if name.startswith(("make_", "build_")) or name.endswith("_fn"):
                raise TypeError(f"{where}: step must be a training step taking (train_state, x, "
                                f"y, mask), got the function {name}, which builds one: call "
                                f"it first, e.g. step={name}(model, loss, optimizer, ...)"
                                ) from None
            raise TypeError(f"{where}: step must take (train_state, x, y, mask), but "
                            f"{name}{signature} cannot ({error})") from None
    given = [name for name in _STEP_OPTIONS if options.get(name) not in (None, ())]
    if given:
        raise ValueError(f"{where}: {', '.join(f'{n}=' for n in given)} configure {where}'s own "
                         f"training step, so with step= they would be ignored; build them into "
                         f"the step you pass")
    return step


def _leaf_specs(tree: Any) -> dict[str, tuple]:
    return {path_of(k): (tuple(jnp.shape(v)), jnp.result_type(v))
            for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_step_result(where: str, train_state: TrainState, result: Any) -> None:
    """Checks, at trace time, what a step of the user's own returned: a pair `(train_state,
    metrics)`, the new `TrainState` with the incoming one's structure, shapes and dtypes (the
    epoch's `lax.scan` carries it), and a dict of scalars (the batch's means).

    Raises:
        TypeError: for a result that is not such a pair, or a state that is not a `TrainState`.
        ValueError: for a state whose leaves differ from the incoming ones, or a metric that is
            not a scalar; each naming the path or the metric.
    """
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise TypeError(f"{where}: step must return a pair (train_state, metrics), got "
                        f"{_describe(result)}")
    new_state, report = result
    if not isinstance(new_state, TrainState):
        raise TypeError(f"{where}: step must return the new TrainState first, got "
                        f"{_describe(new_state)}")
    before, after = _leaf_specs(train_state), _leaf_specs(new_state)
    if before != after:
        changed = sorted(set(before) ^ set(after)) or [
            path for path in before if before[path] != after[path]]
        path = changed[0]
        raise ValueError(f"{where}: step must return a train state of the same structure, "
                         f"shapes and dtypes as the one it got; {path or 'a leaf'} differs "
                         f"({before.get(path, 'absent')} in, {after.get(path, 'absent')} out)")
    if not (isinstance(report, dict) and all(isinstance(k, str) for k in report)):
        raise TypeError(f"{where}: step must return its metrics as a dict of names to scalars, "
                        f"got {_describe(report)}")
    for name, value in report.items():
        if jnp.ndim(value) != 0:
            raise ValueError(f"{where}: step's metric {name!r} has shape {jnp.shape(value)}; "
                             f"metrics must be scalars, the means over the batch's examples "
                             f"where the mask is set (e.g. jdnn.losses.masked_mean(values, mask))")


def checked_step(where: str, step: Callable) -> Callable:
    """`step` with `check_step_result` run on its result when it is traced (free at run time)."""

    def checked(train_state, x, y, mask):
        result = step(train_state, x, y, mask)
        check_step_result(where, train_state, result)
        return result

    return checked


def check_names(where: str, names: Any, what: str) -> tuple[str, ...]:
    """A sequence of strings (e.g. `frozen_state` path prefixes) as a tuple; one string is
    refused (it would be read letter by letter)."""
    if isinstance(names, str):
        raise TypeError(f"{where}: {what} must be a list or tuple of strings, got the string "
                        f"{names!r}; wrap it in a list: {what}=[{names!r}]")
    if not (isinstance(names, Sequence) and all(isinstance(name, str) for name in names)):
        raise TypeError(f"{where}: {what} must be a list or tuple of strings, got "
                        f"{_describe(names)} {names!r:.60}")
    return tuple(names)


def on_device(array: Any) -> jax.Array:
    """`array` on the default device, as `jnp.asarray` puts it (float64 -> float32 unless x64
    is on), but by a plain transfer: `jnp.asarray` of a NumPy array compiles a small program
    per shape and dtype, `jax.device_put` compiles nothing. A JAX array is returned as it is."""
    if isinstance(array, Padded):  # a padded batch: both of its arrays
        return Padded(on_device(array.values), on_device(array.lengths))
    if isinstance(array, jax.Array):
        return array
    return jax.device_put(np.asarray(array))


def checked_data(model: Layer, loss: Callable, train_data: Any, validation_data: Any, *,
                 metrics: Any = None):
    """The training `(x, y)` as NumPy arrays and the validation pair on the device (or None),
    each checked against the model and loss before anything is compiled (`check_data`), and
    the validation inputs against the training inputs' per-example shape: the model is built
    for one input shape, so other validation inputs would fail only after the first epoch.
    `metrics`, as the user passed them (None: not given), are checked against the targets too
    (asking for accuracy needs class labels).

    Raises:
        ValueError: naming `train_data` or `validation_data`.
    """
    x, y = as_arrays(train_data, "train_data")
    check_data(x, y, model=model, loss=loss, name="train_data", metrics=metrics)
    validation = None
    if validation_data is not None:
        validation = as_arrays(validation_data, "validation_data")
        check_data(*validation, model=model, loss=loss, name="validation_data", metrics=metrics)
        if validation[0].shape[1:] != x.shape[1:]:
            raise ValueError(f"validation_data: x has examples of shape "
                             f"{validation[0].shape[1:]}, but train_data's x has examples of "
                             f"shape {x.shape[1:]} (shapes {validation[0].shape} and "
                             f"{x.shape}); the model is built for the training inputs, so the "
                             f"validation inputs need the same per-example shape")
        validation = tuple(on_device(a) for a in validation)
    return x, y, validation


def check_train_state(where: str, model: Layer, train_state: Any, x: np.ndarray,
                      name: str = "train_data") -> None:
    """Checks a train state handed in to resume from: a `TrainState` of one model (not a
    stacked ensemble's), not donated to an earlier call, whose params take `x`'s examples
    (the model is applied abstractly to one example, so a layer's shape error names it).

    Raises:
        TypeError: for something that is not a `TrainState`.
        ValueError: for a stacked or donated state, or params that do not fit `x` (naming
            `name`, e.g. `"train_data"`).
    """
    if not isinstance(train_state, TrainState):
        raise TypeError(f"{where}: train_state must be a TrainState (the one {where} or "
                        f"TrainState.create returned, or checkpoint.restore(path).train_state("
                        f"optimizer)), got {_describe(train_state)}")
    if np.ndim(train_state.step) != 0:
        raise ValueError(f"{where}: train_state is stacked (step of shape "
                         f"{np.shape(train_state.step)}), as fit_ensemble returns; train one "
                         f"member with jdnn.multi.ensemble.member(train_state, i)")
    if donated(train_state):
        raise ValueError(f"{where}: train_state was donated to an earlier call (fit or a "
                         f"compiled step) and its buffers are deleted; pass the train state "
                         f"that call returned")
    one = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    try:
        jax.eval_shape(lambda ts, xb: model.apply(ts.params, ts.state, xb)[0], train_state, one)
    except (LayerError, TypeError) as error:
        raise ValueError(f"{name}: the model cannot apply the params of the train_state passed "
                         f"to {where} to x's examples of shape {x.shape[1:]}: {error}") from None

