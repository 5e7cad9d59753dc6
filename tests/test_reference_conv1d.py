"""The NumPy twins of Conv1D, MaxPool1D, AvgPool1D, GlobalAvgPool and GlobalMaxPool against
jdnn's layers in float64 (forward, and backward against `jax.vjp`), with and without lengths,
every padding mode, strides 1 and 2, dilation 1 and 2; padding never changes the twins'
results; their dtype; and `check_gradients` on sequence models built from them."""

import dataclasses
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
from jdnn.core import Layer
from jdnn.layers.conv1d import Conv1D
from jdnn.layers.pooling import AvgPool1D, GlobalAvgPool, GlobalMaxPool, MaxPool1D
from jdnn.padded import Padded
from jdnn.reference.layers import KINDS
from jdnn.reference.padded import Padded as RefPadded

FORWARD_TOL = 1e-12
BACKWARD_TOL = 1e-10
LENGTHS = np.array([9, 6, 1, 0, 8])   # odd and even, shorter than a window, empty


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], Layer]
    shape: tuple[int, ...] = (5, 9, 3)


CASES = [Case(f"conv_{padding.lower()}_s{s}_d{d}",
              lambda padding=padding, s=s, d=d: Conv1D(4, 3, strides=s, padding=padding,
                                                       dilation=d))
         for padding in ("SAME", "VALID", "CAUSAL") for s in (1, 2) for d in (1, 2)]
CASES += [
    Case("conv_same_even_kernel_s3_no_bias",
         lambda: Conv1D(2, 2, strides=3, padding="SAME", use_bias=False)),
    Case("conv_valid_k1_s2", lambda: Conv1D(3, 1, strides=2, padding="VALID")),
    Case("maxpool_valid", lambda: MaxPool1D(2)),
    Case("maxpool_valid_overlap", lambda: MaxPool1D(3, strides=2)),
    Case("maxpool_same_s1", lambda: MaxPool1D(3, strides=1, padding="SAME")),
    Case("maxpool_same_s2", lambda: MaxPool1D(3, strides=2, padding="SAME")),
    Case("avgpool_valid", lambda: AvgPool1D(2)),
    Case("avgpool_valid_overlap", lambda: AvgPool1D(3, strides=2)),
    Case("avgpool_same_s1", lambda: AvgPool1D(3, strides=1, padding="SAME")),
    Case("avgpool_same_s2", lambda: AvgPool1D(3, strides=2, padding="SAME")),
    Case("globalavg", GlobalAvgPool),
    Case("globalmax", GlobalMaxPool),
    Case("globalavg_steps_of_rows", GlobalAvgPool, (5, 9, 2, 3)),
    Case("globalmax_steps_of_rows", GlobalMaxPool, (5, 9, 2, 3)),
]


def assert_close(actual, expected, tol, what):
    """Shape equality and a normwise relative error `max|a - e| / max|e|` of at most `tol`."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    err = float(np.max(np.abs(actual - expected), initial=0.0)) / scale
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def distinct(shape, rng):
    """A permutation of distinct values in [-2, 2): no two maxima tie."""
    n = int(np.prod(shape))
    return (rng.permutation(n) / n * 4.0 - 2.0).reshape(shape)


def twin_forward(spec, params, x, lengths):
    """The twin driven as the reference network drives it: `KINDS[kind]` with the spec's
    hyper-parameters its forward names, and `lengths`."""
    twin = KINDS[spec.kind]
    takes = inspect.signature(twin.forward).parameters
    kwargs = {name: value for name, value in spec.hparams if name in takes}
    return twin, twin.forward(params, x, lengths=lengths, **kwargs)


def jax_side(layer, x, lengths, rng):
    """float64 params (random, so no bias hides at zero), and jax's output, new lengths, and
    gradients for a random cotangent on the output values."""
    with jax.enable_x64(True):
        params = jax.eval_shape(lambda key: layer.init(key, x.shape)[1], jax.random.key(0))
        params = {k: rng.normal(size=v.shape) for k, v in params.items()}

        def apply(p, values):
            y, _ = layer.apply(p, {}, values if lengths is None else Padded(values, lengths))
            return jdnn.padded.unpad(y)   # (values, new lengths or None)

        @jax.jit
        def forward_and_vjp(p, values, cotangent):
            y, pullback, new_lengths = jax.vjp(apply, p, values, has_aux=True)
            return y, new_lengths, *pullback(cotangent)

        y_shape = jax.eval_shape(apply, params, x)[0].shape
        dy = rng.normal(size=y_shape)
        y, new_lengths, dparams, dx = forward_and_vjp(params, x, dy)
        assert y.dtype == jnp.float64
    return params, dy, y, new_lengths, dparams, dx


@pytest.mark.parametrize("padded", [False, True], ids=["plain", "padded"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_twin_matches_jax(case, padded):
    rng = np.random.default_rng(0)
    layer = case.make()
    x = distinct(case.shape, rng)
    lengths = LENGTHS if padded else None
    params, dy, y_jax, lengths_jax, dparams_jax, dx_jax = jax_side(layer, x, lengths, rng)

    twin, (y, cache) = twin_forward(layer.spec, params, x, lengths)
    if isinstance(y, RefPadded):   # a time axis remains: the new lengths are jax's
        np.testing.assert_array_equal(y.lengths, lengths_jax)
        y = y.values
    else:
        assert lengths_jax is None
    assert_close(y, y_jax, FORWARD_TOL, "y")
    dx, dparams = twin.backward(params, cache, dy)
    assert_close(dx, dx_jax, BACKWARD_TOL, "dx")
    assert dparams.keys() == params.keys()
    for k in params:
        assert_close(dparams[k], dparams_jax[k], BACKWARD_TOL, f"d{k}")


@pytest.mark.parametrize("make", [
    lambda: Conv1D(3, 3, strides=2, padding="SAME", dilation=2),
    lambda: Conv1D(3, 2, strides=2, padding="VALID"),
    lambda: MaxPool1D(3, strides=2, padding="SAME"),
    lambda: AvgPool1D(2, strides=1, padding="SAME"),
    GlobalMaxPool, GlobalAvgPool,
], ids=["conv_same", "conv_valid", "maxpool", "avgpool", "globalmax", "globalavg"])
def test_twin_padding_never_changes_a_result(make):
    """The twin on a padded batch (NaN padding) vs the twin on each example alone: outputs at
    real steps, input gradients and summed parameter gradients for a loss over real steps."""
    rng = np.random.default_rng(1)
    layer = make()
    x = distinct((5, 9, 2), rng)
    x[np.arange(9)[None, :] >= LENGTHS[:, None]] = np.nan
    with jax.enable_x64(True):
        params = jax.eval_shape(lambda key: layer.init(key, x.shape)[1], jax.random.key(0))
    params = {k: rng.normal(size=v.shape) for k, v in params.items()}
    y, cache = twin_forward(layer.spec, params, x, LENGTHS)[1]
    values, new_lengths = (y.values, y.lengths) if isinstance(y, RefPadded) else (y, None)
    weights = rng.normal(size=values.shape)
    if new_lengths is not None:   # a loss over real steps only
        weights = weights * (np.arange(values.shape[1])[None, :, None] < new_lengths[:, None, None])
    twin = KINDS[layer.spec.kind]
    dx, dparams = twin.backward(params, cache, weights)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(dx))
    np.testing.assert_array_equal(dx[np.arange(9)[None, :] >= LENGTHS[:, None]], 0.0)
    total = {k: np.zeros_like(v) for k, v in params.items()}
    for b, n in enumerate(LENGTHS):
        real_out = values.shape[1] if new_lengths is None else new_lengths[b]
        if n == 0 or real_out == 0:
            continue
        y_alone, cache_alone = twin_forward(layer.spec, params, x[b:b + 1, :n], None)[1]
        np.testing.assert_allclose(values[b, :real_out] if new_lengths is not None else values[b],
                                   y_alone[0], rtol=1e-12, atol=1e-12)
        w_alone = weights[b:b + 1, :real_out] if new_lengths is not None else weights[b:b + 1]
        dx_alone, g = twin.backward(params, cache_alone, w_alone)
        np.testing.assert_allclose(dx[b, :n], dx_alone[0], rtol=1e-12, atol=1e-12)
        total = {k: total[k] + g[k] for k in total}
    for k in params:
        np.testing.assert_allclose(dparams[k], total[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind, hparams", [
    ("Conv1D", dict(strides=2, padding="SAME", dilation=2)),
    ("MaxPool1D", dict(window=3, strides=2, padding="SAME")),
    ("AvgPool1D", dict(window=3, strides=2, padding="SAME")),
    ("GlobalAvgPool", {}), ("GlobalMaxPool", {}),
])
def test_twins_compute_in_the_dtype_they_are_given(kind, hparams):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 7, 2)).astype(np.float32)
    params = ({"w": rng.normal(size=(3, 2, 4)).astype(np.float32),
               "b": np.zeros(4, np.float32)} if kind == "Conv1D" else {})
    twin = KINDS[kind]
    for lengths in (None, np.array([7, 3, 0])):
        y, cache = twin.forward(params, x, lengths=lengths, **hparams)
        values = y.values if isinstance(y, RefPadded) else y
        assert values.dtype == np.float32, kind
        dx, dparams = twin.backward(params, cache, np.ones_like(values))
        assert dx.dtype == np.float32 and all(g.dtype == np.float32 for g in dparams.values())


# --- check_gradients: jax.grad against the twins and finite differences ---------------------


def _sequence_batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(5, 11, 2)), np.array([11, 7, 4, 10, 6])


def test_check_gradients_on_a_sequence_classifier_padded_or_not():
    model = jdnn.serial(Conv1D(4, 3, padding="CAUSAL", dilation=2), jdnn.Tanh(), MaxPool1D(2),
                        Conv1D(3, 2, strides=2, padding="SAME"),
                        AvgPool1D(2, strides=1, padding="SAME"), GlobalMaxPool(), jdnn.Dense(3))
    x, lengths = _sequence_batch()
    labels = np.array([0, 2, 1, 1, 0])
    _, params, state = model.init(jax.random.key(0), x.shape)
    for train in (True, False):
        for inputs in (x, Padded(x, lengths)):
            report = jdnn.check_gradients(model, params, state, inputs, labels,
                                          jdnn.losses.softmax_cross_entropy, train=train)
            assert report.ok, report
            assert report.forward_error <= 1e-10


def test_check_gradients_on_per_step_outputs_padded_or_not():
    pooled = jdnn.serial(Conv1D(4, 3, strides=2, padding="SAME"), jdnn.Tanh(),
                         AvgPool1D(2, strides=1, padding="SAME"), GlobalAvgPool(), jdnn.Dense(2))
    per_step = jdnn.serial(Conv1D(4, 3, strides=2, padding="VALID"), jdnn.Tanh(),
                           jdnn.Dense(2))
    x, lengths = _sequence_batch(1)
    for model, targets in ((pooled, np.array([0, 1, 1, 0, 1])),
                           (per_step, np.random.default_rng(2).integers(0, 2, size=(5, 5)))):
        _, params, state = model.init(jax.random.key(1), x.shape)
        for inputs in (x, Padded(x, lengths)):
            report = jdnn.check_gradients(model, params, state, inputs, targets,
                                          jdnn.losses.softmax_cross_entropy, train=False)
            assert report.ok, report


def test_the_five_kinds_have_twins():
    for kind in ("Conv1D", "MaxPool1D", "AvgPool1D", "GlobalAvgPool", "GlobalMaxPool"):
        assert "lengths" in inspect.signature(KINDS[kind].forward).parameters
        assert callable(KINDS[kind].backward)
