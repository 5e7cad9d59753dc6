"""The NumPy twins of SimpleRNN, GRU and LSTM (backprop through time written out) against
jax.vjp of jdnn's layers in float64, with and without lengths, learned or zero initial states,
both directions; and check_gradients on recurrent models, padded or not."""

import jax
import numpy as np
import pytest

import jdnn
from jdnn.layers.recurrent import GRU, LSTM, SimpleRNN, bidirectional
from jdnn.padded import Padded
from jdnn.reference.layers import KINDS
from jdnn.reference.layers import recurrent as twins
from jdnn.reference.padded import Padded as RefPadded

B, T, F, H = 3, 5, 4, 6
LENGTHS = np.array([5, 0, 2])
LAYERS = {"SimpleRNN": SimpleRNN, "GRU": GRU, "LSTM": LSTM}
# the hyper-parameters a twin's forward takes, as the reference network passes them
HPARAMS = ("return_sequences", "reverse", "activation")


def _twin_forward(layer, params, x, lengths):
    hparams = {k: v for k, v in layer.spec.hparams if k in HPARAMS}
    return KINDS[layer.spec.kind].forward(params, x, lengths=lengths, **hparams)


# (kind, padded, initial_state, reverse, return_sequences): each option met with each other
CASES = [
    ("GRU", False, "zeros", False, True), ("GRU", True, "learned", True, True),
    ("GRU", True, "zeros", False, False), ("GRU", False, "learned", True, False),
    ("LSTM", False, "zeros", False, True), ("LSTM", True, "learned", True, True),
    ("LSTM", True, "zeros", False, False), ("LSTM", False, "learned", True, False),
    ("SimpleRNN", False, "zeros", False, True), ("SimpleRNN", True, "learned", True, True),
    ("SimpleRNN", True, "zeros", False, False), ("SimpleRNN", False, "learned", True, False),
]


def _layer(kind, initial_state, reverse, return_sequences, **more):
    return LAYERS[kind](H, initial_state=initial_state, reverse=reverse,
                        return_sequences=return_sequences, **more)


def _params(layer, seed):
    """float64 params from `init`, shifted so that biases and initial states are not 0."""
    _, params, _ = layer.init(jax.random.key(seed), (B, T, F))
    rng = np.random.default_rng(seed)
    return {k: np.asarray(v) + 0.3 * rng.normal(size=v.shape) for k, v in params.items()}


def _jax_forward_and_vjp(layer, params, x, lengths, dy):
    def run(params, x):
        y, _ = layer.apply(params, {}, x if lengths is None else Padded(x, lengths))
        return y.values if isinstance(y, Padded) else y

    @jax.jit
    def both(params, x, dy):
        y, vjp = jax.vjp(run, params, x)
        return y, vjp(dy)

    return both(params, x, dy)


@pytest.mark.parametrize("kind, padded, initial_state, reverse, return_sequences", CASES,
                         ids=["-".join(map(str, c)) for c in CASES])
def test_twin_equals_jax_vjp(kind, padded, initial_state, reverse, return_sequences):
    layer = _layer(kind, initial_state, reverse, return_sequences)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B, T, F))
    lengths = LENGTHS if padded else None
    with jax.enable_x64(True):
        params = _params(layer, 0)
        y_twin, cache = _twin_forward(layer, params, x, lengths)
        dy = rng.normal(size=(B, T, H) if return_sequences else (B, H))
        y, (dparams, dx) = _jax_forward_and_vjp(layer, params, x, lengths, dy)
    assert isinstance(y_twin, RefPadded) == (padded and return_sequences)
    if isinstance(y_twin, RefPadded):
        np.testing.assert_array_equal(y_twin.lengths, LENGTHS)
        y_twin = y_twin.values
    np.testing.assert_allclose(y_twin, y, rtol=1e-12, atol=1e-14)
    dx_twin, dparams_twin = KINDS[kind].backward(params, cache, dy)
    np.testing.assert_allclose(dx_twin, dx, rtol=1e-10, atol=1e-13)
    assert set(dparams_twin) == set(dparams) == set(params)
    for name in params:
        assert dparams_twin[name].shape == params[name].shape
        np.testing.assert_allclose(dparams_twin[name], dparams[name], rtol=1e-10, atol=1e-13,
                                   err_msg=name)
    if padded:   # padded steps receive no gradient
        assert np.all(dx_twin[np.arange(T)[None, :] >= LENGTHS[:, None]] == 0)


def test_relu_rnn_twin_equals_jax_vjp():
    layer = SimpleRNN(H, activation="relu", reverse=True)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(B, T, F))
    with jax.enable_x64(True):
        params = _params(layer, 3)
        y_twin, cache = _twin_forward(layer, params, x, LENGTHS)
        dy = rng.normal(size=(B, T, H))
        y, (dparams, dx) = _jax_forward_and_vjp(layer, params, x, LENGTHS, dy)
    assert np.mean(y_twin.values == 0) > 0.3   # some units are off
    np.testing.assert_allclose(y_twin.values, y, rtol=1e-12, atol=1e-14)
    dx_twin, dparams_twin = KINDS["SimpleRNN"].backward(params, cache, dy)
    np.testing.assert_allclose(dx_twin, dx, rtol=1e-10, atol=1e-13)
    for name in params:
        np.testing.assert_allclose(dparams_twin[name], dparams[name], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", LAYERS)
def test_reverse_runs_each_example_from_its_last_real_step(kind):
    """NumPy only: an example reversed in a padded batch equals its real steps flipped and run
    forward, flipped back."""
    rng = np.random.default_rng(4)
    params = {"w_x": rng.normal(size=(F, 4 * H)), "w_h": rng.normal(size=(H, 4 * H)) / 3,
              "b": rng.normal(size=4 * H), "b_x": rng.normal(size=4 * H),
              "b_h": rng.normal(size=4 * H)}
    gates = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}[kind]
    keep = ("w_x", "w_h", "b_x", "b_h") if kind == "GRU" else ("w_x", "w_h", "b")
    params = {k: params[k][..., :gates * H] for k in keep}
    extra = {"activation": "tanh"} if kind == "SimpleRNN" else {}
    x = rng.normal(size=(1, T, F))
    reverse, _ = KINDS[kind].forward(params, x, return_sequences=True, reverse=True,
                                     lengths=np.array([3]), **extra)
    forward, _ = KINDS[kind].forward(params, x[:, 2::-1], return_sequences=True, reverse=False,
                                     **extra)
    np.testing.assert_allclose(reverse.values[:, :3], forward[:, ::-1], rtol=1e-14)
    np.testing.assert_array_equal(reverse.values[:, 3:], 0.0)


@pytest.mark.parametrize("kind", LAYERS)
def test_float32_stays_float32(kind):
    layer = _layer(kind, "learned", True, False)
    with jax.enable_x64(True):
        params = {k: v.astype(np.float32) for k, v in _params(layer, 5).items()}
    x = np.random.default_rng(6).normal(size=(B, T, F)).astype(np.float32)
    y, cache = _twin_forward(layer, params, x, LENGTHS)
    dx, dparams = KINDS[kind].backward(params, cache, np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32
    assert all(v.dtype == np.float32 for v in dparams.values())


def test_twins_are_registered_under_the_kinds():
    assert KINDS["SimpleRNN"] is twins.simple_rnn
    assert KINDS["GRU"] is twins.gru
    assert KINDS["LSTM"] is twins.lstm


# --- check_gradients: jax.grad against the twins and finite differences, whole models --------


def _sequences(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, T, F)), rng.integers(0, 3, size=(B, T)), rng.integers(0, 3, B)


MODELS = {
    "gru_per_step": lambda: jdnn.serial(GRU(H, initial_state="learned"), jdnn.Dense(3)),
    "lstm_reverse_last": lambda: jdnn.serial(LSTM(H, reverse=True, return_sequences=False),
                                             jdnn.Dense(3)),
    "bidirectional_rnn_last": lambda: jdnn.serial(
        bidirectional(SimpleRNN(H, return_sequences=False), merge="sum"), jdnn.Dense(3)),
    "bidirectional_gru_per_step": lambda: jdnn.serial(bidirectional(GRU(H)), jdnn.Dense(3)),
}


# each model in one mode, padded or not, so every mode meets both kinds of input
CHECKS = [("gru_per_step", True, True), ("gru_per_step", False, False),
          ("lstm_reverse_last", False, True), ("bidirectional_rnn_last", True, False),
          ("bidirectional_gru_per_step", False, True)]


@pytest.mark.parametrize("name, train, padded", CHECKS,
                         ids=[f"{n}-{'train' if t else 'eval'}-{'padded' if p else 'plain'}"
                              for n, t, p in CHECKS])
def test_check_gradients(name, train, padded):
    model = MODELS[name]()
    x, per_step, per_example = _sequences()
    y = per_step if name.endswith("per_step") else per_example
    _, params, state = model.init(jax.random.key(0), x.shape)
    inputs = Padded(x, LENGTHS) if padded else x
    report = jdnn.check_gradients(model, params, state, inputs, y,
                                  jdnn.losses.softmax_cross_entropy, train=train, samples=3)
    assert report.ok, report
    assert report.forward_error <= 1e-10
    assert "reference" in str(report) and "finite" in str(report)
