"""The NumPy reference computes in the dtype it is given, intermediates included.

How the tests see intermediates, not just results:
- `Tracked` is an ndarray subclass whose `__array_ufunc__` and `__array_function__` note the
  dtype of every NumPy operation's result and pass the tracking on to it, so every sum,
  product, `np.where` or `np.pad` inside a twin is seen.
- `TrackingNumpy` stands in for `np` inside every reference module: the arrays it creates
  (`np.asarray`, `np.ones`, `np.zeros_like`, ...) are noted and come out `Tracked`, so no array
  the reference makes or converts escapes (plain `np.asarray` would drop the subclass).
- `_spy(fn, name)` wraps a reference function: its array arguments enter as `Tracked`, and
  every array it returns (a layer's output and cache, or dx and dparams; a loss's values; a
  regularizer's term; ...) is noted under its name. The `spied` fixture does all of this: the
  stand-in `np`, and spies on every registered layer kind's forward and backward and on the
  losses and regularizers `Network.loss_and_grads` calls; the tests run the gradcheck zoo,
  the losses, regularizers and optimizers through it.

Every note of a float array must be of the dtype given (integer indices and boolean masks
aside), in float32 and in float64.
"""

import functools
from types import ModuleType, SimpleNamespace

import jax
import numpy as np
import pytest

import jdnn
from jdnn import reference
from jdnn.cli import zoo
from jdnn.reference import losses, network, optimizers, regularizers
from jdnn.reference import padded
from jdnn.reference.layers import (KINDS, activations, attention, conv, conv1d, dropout,
                                   embedding, normalization, pooling, recurrent)

DTYPES = [np.float32, np.float64]
NOTES: list[tuple[str, str, np.dtype]] = []  # (where, what, dtype)
CONTEXT: list[str] = []  # the spied functions running now, innermost last


def _note(where, what, value):
    if isinstance(value, dict):
        for item in value.values():
            _note(where, what, item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _note(where, what, item)
    elif isinstance(value, (np.ndarray, np.generic)):
        NOTES.append((where, what, value.dtype))


def _plain(value):
    return value.view(np.ndarray) if isinstance(value, Tracked) else value


def _track(value):
    if isinstance(value, np.ndarray):
        return value if isinstance(value, Tracked) else value.view(Tracked)
    if isinstance(value, dict):
        return {k: _track(v) for k, v in value.items()}
    if type(value) in (tuple, list):
        return type(value)(_track(v) for v in value)
    return value


class Tracked(np.ndarray):
    """An array that notes the dtype of every NumPy operation on it; results are `Tracked`."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if out is not None:
            kwargs["out"] = tuple(_plain(o) for o in out)
        result = getattr(ufunc, method)(*map(_plain, inputs), **kwargs)
        _note(CONTEXT[-1] if CONTEXT else "?", f"np.{ufunc.__name__}.{method}", result)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _track(result)

    def __array_function__(self, func, types, args, kwargs):
        result = super().__array_function__(func, types, args, kwargs)
        _note(CONTEXT[-1] if CONTEXT else "?", f"np.{func.__name__}", result)
        return _track(result)


class TrackingNumpy(ModuleType):
    """`numpy`, except that the arrays its constructors return are noted and `Tracked`."""

    CREATORS = ("array", "asarray", "ones", "zeros", "full", "empty", "arange", "eye",
                "linspace", "ones_like", "zeros_like", "full_like", "empty_like")

    def __init__(self):
        super().__init__("numpy")

    def __getattr__(self, name):
        value = getattr(np, name)
        if name not in self.CREATORS:
            return value

        def create(*args, **kwargs):
            result = value(*args, **kwargs)
            converts = name not in ("array", "asarray") or len(args) > 1 or "dtype" in kwargs
            if converts:  # np.asarray(x) without a dtype only looks at its input
                _note(CONTEXT[-1] if CONTEXT else "?", f"np.{name}", result)
            return _track(result)

        return create


REFERENCE_MODULES = (network, losses, regularizers, optimizers, activations, conv, dropout,
                     normalization, pooling, embedding, conv1d, recurrent, attention,
                     padded)  # those that use np


def _spy(fn, name):
    @functools.wraps(fn)  # keeps the signature, which the network reads
    def spied(*args, **kwargs):
        CONTEXT.append(name)
        try:
            result = fn(*_track(args), **_track(kwargs))
        finally:
            CONTEXT.pop()
        _note(name, "returns", result)
        return _track(result)

    return spied


@pytest.fixture
def spied(monkeypatch):
    """`TrackingNumpy` in every reference module; spies on every registered layer kind, the
    loss twins, `mean_weights` and the regularizers; yields the notes, fresh."""
    for module in REFERENCE_MODULES:
        monkeypatch.setattr(module, "np", TrackingNumpy())
    for kind, impl in list(KINDS.items()):
        monkeypatch.setitem(KINDS, kind, SimpleNamespace(
            forward=_spy(impl.forward, f"{kind}.forward"),
            backward=_spy(impl.backward, f"{kind}.backward")))
    for name, twin in list(network.BUILTIN_LOSSES.items()):
        monkeypatch.setitem(network.BUILTIN_LOSSES, name, _spy(twin, f"loss {name}"))
    monkeypatch.setattr(losses, "mean_weights", _spy(losses.mean_weights, "mean_weights"))
    monkeypatch.setattr(network.Network, "loss_and_grads",
                        _spy(network.Network.loss_and_grads, "loss_and_grads"))
    for name in ("l1", "l2", "l1_grad", "l2_grad"):
        monkeypatch.setattr(regularizers, name, _spy(getattr(regularizers, name), name))
    NOTES.clear()
    yield NOTES
    NOTES.clear()


def _assert_all_floats_are(dtype, notes=None):
    notes = NOTES if notes is None else notes
    assert notes, "nothing was noted: the spies saw no arrays"
    leaks = sorted({(where, what, str(dt)) for where, what, dt in notes
                    if dt.kind in "fc" and dt != np.dtype(dtype)})
    assert not leaks, f"{len(leaks)} float results are not {np.dtype(dtype)}:\n" + "\n".join(
        f"  {where}: {what} -> {dt}" for where, what, dt in leaks)


# --- every layer kind, combinator and loss twin, through the zoo -----------------------------

MODELS = {
    **{name: (entry.build, entry.example_shape) for name, entry in zoo.MODELS.items()},
    "rate_in_state": (lambda k: jdnn.serial(jdnn.Dense(6), jdnn.Dropout(0.3, rate_in_state=True),
                                            jdnn.Dense(k)), (5,)),
}
OUTPUTS = 3
LOSSES = {  # loss name -> (labels(rng, batch), loss_and_grads keywords)
    "mse": (lambda rng, b: rng.normal(size=(b, OUTPUTS)), {}),
    "binary_cross_entropy": (lambda rng, b: rng.integers(0, 2, (b, OUTPUTS)).astype(float), {}),
    "softmax_cross_entropy": (lambda rng, b: rng.integers(0, OUTPUTS, b),
                              {"label_smoothing": 0.1}),
}


def _arrays(model, input_shape):
    """float64 params and state for `model`: the shapes from `jax.eval_shape` (nothing is
    compiled), the numbers from NumPy (the state positive: variances, rates)."""
    _, params, state = jax.eval_shape(lambda key: model.init(key, input_shape),
                                      jax.random.key(0))
    rng = np.random.default_rng(0)
    return (jax.tree.map(lambda a: rng.normal(0, 0.5, a.shape), params),
            jax.tree.map(lambda a: rng.uniform(0.1, 0.5, a.shape), state))


@functools.cache
def _model(name):
    build, shape = MODELS[name]
    model = build(OUTPUTS)
    return (model.spec, *_arrays(model, (4, *shape)), shape)


def _run(name, dtype):
    spec, params, state, shape = _model(name)
    net = reference.build(spec)
    rng = np.random.default_rng(0)
    if name in zoo.MODELS:  # the zoo's own inputs: token ids, padded sequences
        x, _ = zoo.example_batch(name, 4, OUTPUTS, "regression")
    else:
        x = rng.normal(size=(4, *shape))  # float64 on purpose: loss_and_grads casts to dtype
    for loss, (labels, kwargs) in LOSSES.items():
        for train in (True, False):
            penalty = 1e-2 if train else 0.0  # the objective with and without penalty terms
            value, _, _ = net.loss_and_grads(
                params, state, x, labels(rng, 4), loss=loss, mask=np.array([1, 1, 0, 1]),
                l1=penalty, l2=penalty, train=train, dtype=dtype,
                masks=reference.numpy_masks(np.random.default_rng(1)), **kwargs)
            assert isinstance(value, np.generic) and value.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(MODELS))
def test_every_intermediate_of_loss_and_grads_has_the_dtype_given(spied, name, dtype):
    _run(name, dtype)
    _assert_all_floats_are(dtype)


def test_the_zoo_exercises_every_registered_kind_and_loss_twin(spied):
    for name in MODELS:
        _run(name, np.float32)
    seen = {where for where, what, _ in spied if what == "returns"}
    for kind in KINDS:
        assert {f"{kind}.forward", f"{kind}.backward"} <= seen, kind
    for name in network.BUILTIN_LOSSES:
        assert f"loss {name}" in seen
    assert {"mean_weights", "l1", "l2", "l1_grad", "l2_grad"} <= seen
    inner = {where for where, what, _ in spied if what != "returns"}
    assert {"Conv2D.forward", "BatchNorm.backward", "Gelu.forward"} <= inner  # ops seen inside
    _assert_all_floats_are(np.float32)


def test_numpy_scalar_hyperparameters_do_not_upcast(spied):
    f64 = np.float64
    model = jdnn.serial(jdnn.Dense(4), jdnn.BatchNorm(f64(0.8), f64(1e-3)),
                        jdnn.LeakyRelu(f64(0.2)), jdnn.Dropout(f64(0.25)), jdnn.Elu(f64(0.7)),
                        jdnn.Dense(2))
    spec = model.spec.to_dict()
    for child, value in zip(spec["children"][1:5], [0.8, 0.2, 0.25, 0.7]):
        key = next(iter(child["hparams"]))  # whatever the layer stores, make it a np.float64
        child["hparams"] = {**child["hparams"], key: f64(value)}
    params, state = _arrays(model, (3, 5))
    net = reference.build(spec)
    x, y = np.ones((3, 5), np.float32), np.zeros((3, 2), np.float32)
    net.loss_and_grads(params, state, x, y, loss="mse", dtype=np.float32,
                       masks=reference.numpy_masks(np.random.default_rng(0)))
    drop = KINDS["Dropout"]  # called directly, with the rate a np.float64
    y, cache = drop.forward({}, x, keep_mask=x > 0, rate=f64(0.25))
    drop.backward({}, cache, y)
    _assert_all_floats_are(np.float32)


# --- the losses, called directly -------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_and_their_gradients_keep_the_outputs_dtype(spied, dtype):
    rng = np.random.default_rng(0)
    out = rng.normal(size=(4, 3)).astype(dtype).view(Tracked)
    col = out[:, :1]
    cases = [  # (value_fn, grad_fn, outputs, targets, kwargs); targets of every kind
        (losses.mse, losses.mse_grad, out, rng.normal(size=(4, 3)), {}),
        (losses.mse, losses.mse_grad, col, np.arange(4), {}),
        (losses.binary_cross_entropy, losses.binary_cross_entropy_grad, col,
         np.array([0, 1, 1, 0]), {}),
        (losses.softmax_cross_entropy, losses.softmax_cross_entropy_grad, out,
         np.array([0, 2, 1, 2]), {"label_smoothing": np.float64(0.1)}),
        (losses.softmax_cross_entropy, losses.softmax_cross_entropy_grad, out,
         np.full((4, 3), 1 / 3), {}),
    ]
    CONTEXT.append("losses")
    try:
        for value_fn, grad_fn, outputs, targets, kwargs in cases:
            for weights in (losses.mean_weights(np.array([1, 0, 1, 1]), 4, dtype),
                            np.array([0.25, 0.5, 0.0, 0.25])):  # float64, whatever the outputs
                values, grad = value_fn(outputs, targets, **kwargs), \
                    grad_fn(outputs, targets, weights, **kwargs)
                assert values.dtype == dtype and grad.dtype == dtype, value_fn.__name__
                _note("losses", value_fn.__name__, (values, grad))
            assert losses.masked_mean(values, np.array([1, 0, 1, 1])).dtype == dtype
        for mask in (None, np.array([True, False, True, True]), np.array([1, 0, 2, 1])):
            assert losses.mean_weights(mask, 4, dtype).dtype == dtype
        assert losses.mean_weights(np.ones(4, dtype), 4).dtype == dtype  # the mask's own
    finally:
        CONTEXT.pop()
    _assert_all_floats_are(dtype)


# --- regularizers and optimizers -------------------------------------------------------------


def _params(dtype, rng):
    tree = {"0_dense": {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)},
            "1_relu": {},
            "2_batchnorm": {"scale": rng.normal(size=4), "bias": rng.normal(size=4)},
            "3_prelu": {"alpha": rng.normal(size=4)}}
    return _track(jax.tree.map(lambda a: np.asarray(a, dtype), tree))


@pytest.mark.parametrize("dtype", DTYPES)
def test_regularizer_terms_and_gradients_keep_the_params_dtype(spied, dtype):
    params = _params(dtype, np.random.default_rng(0))
    CONTEXT.append("regularizers")
    try:
        for where in (regularizers.is_weight, "batchnorm", "nothing matches this"):
            for fn in (regularizers.l1, regularizers.l2):
                term = fn(params, where=where)
                assert isinstance(term, np.generic) and term.dtype == dtype, (fn, where)
            for fn in (regularizers.l1_grad, regularizers.l2_grad):
                _note("regularizers", fn.__name__, fn(params, where=where))
            _note("regularizers", "soft_threshold",
                  regularizers.soft_threshold(params, np.float64(0.5), where=where))
    finally:
        CONTEXT.pop()
    _assert_all_floats_are(dtype)


OPTIMIZERS = {
    "sgd": lambda: optimizers.sgd(0.1),
    "momentum": lambda: optimizers.sgd(0.1, momentum=0.9),
    "nesterov": lambda: optimizers.sgd(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: optimizers.adam(1e-2),
    "rmsprop": lambda: optimizers.rmsprop(1e-2),
    "rmsprop_eps_outside": lambda: optimizers.rmsprop(1e-2, eps_in_sqrt=False),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_states_and_updates_keep_the_params_dtype(spied, name, dtype):
    rng = np.random.default_rng(0)
    opt, params = OPTIMIZERS[name](), _params(dtype, rng)
    CONTEXT.append(name)
    try:
        state = opt.init(params)
        for step in range(3):
            if name == "adam" and step == 2:  # a count that arrives as a NumPy integer
                state = state._replace(count=np.int64(state.count))
            params, state = opt.update(_params(dtype, rng), state, params)
            _note(name, f"step {step}", (params, tuple(state)))
    finally:
        CONTEXT.pop()
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(params))
    _assert_all_floats_are(dtype)
