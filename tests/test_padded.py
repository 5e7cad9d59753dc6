"""jdnn.padded: the padding rule around layers that do not mix time steps, losses over real
steps, and the reference's twin of both, checked end to end with a user's padded-aware kind."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
from jdnn.core import LayerError, make_spec, register_layer
from jdnn.padded import Padded, apply_child, sequence_mask, unpad
from jdnn.reference.padded import Padded as RefPadded
from jdnn.reference.padded import sequence_mask as ref_sequence_mask


# A user's kind that mixes time steps: the running sum over real steps (0 at padded ones).
@register_layer(padded=True)
def RunningSum() -> jdnn.Layer:
    def init(key, input_shape):
        del key
        return tuple(input_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        values, lengths = unpad(x)
        real = 1.0 if lengths is None else sequence_mask(lengths, values.shape[1])[..., None]
        y = jnp.cumsum(values * real, axis=1) * real
        return (y if lengths is None else Padded(y, lengths)), state

    return jdnn.Layer(init, apply, make_spec("RunningSum"))


def _running_sum_forward(params, x, *, lengths):
    real = 1.0 if lengths is None else ref_sequence_mask(lengths, x.shape[1])[..., None]
    y = np.cumsum(x * real, axis=1) * real
    return (y if lengths is None else RefPadded(y, lengths)), real


def _running_sum_backward(params, real, dy):
    # y_t = sum_{s <= t} x_s (real steps): dx_s = sum_{t >= s} dy_t, a reversed running sum
    return np.cumsum((dy * real)[:, ::-1], axis=1)[:, ::-1] * real, {}


@pytest.fixture
def running_sum_twin(monkeypatch):
    """The twin registered for one test only (the reference's kinds are global)."""
    from jdnn.reference.layers import KINDS
    from jdnn.reference.registry import Twin
    monkeypatch.setitem(KINDS, "RunningSum", Twin(_running_sum_forward, _running_sum_backward))

LENGTHS = np.array([5, 2, 0, 3])


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(4, 5, 2)), rng.integers(0, 3, size=(4, 5))


def test_sequence_mask():
    np.testing.assert_array_equal(sequence_mask(jnp.array([2, 0, 3]), 3),
                                  [[1, 1, 0], [0, 0, 0], [1, 1, 1]])
    assert Padded(jnp.zeros((3, 4, 1)), jnp.array([1, 2, 3])).mask.shape == (3, 4)


def test_per_step_layers_keep_the_lengths_and_time_reducing_ones_drop_them():
    x = Padded(jnp.ones((4, 5, 2)), jnp.asarray(LENGTHS))
    dense = jdnn.Dense(3)
    _, params, state = dense.init(jax.random.key(0), (4, 5, 2))
    y, _ = apply_child(dense, params, state, x)
    assert isinstance(y, Padded) and y.values.shape == (4, 5, 3)
    np.testing.assert_array_equal(y.lengths, LENGTHS)
    flat, _ = apply_child(jdnn.Flatten(), {}, {}, x)
    assert not isinstance(flat, Padded) and flat.shape == (4, 10)


def test_a_layer_that_resamples_time_without_declaring_it_is_refused():
    @register_layer
    def EveryOther() -> jdnn.Layer:
        return jdnn.Layer(lambda k, s: (s, {}, {}), lambda p, s, x, **kw: (x[:, ::2], s),
                          make_spec("EveryOther"))

    model = jdnn.serial(EveryOther())
    with pytest.raises(LayerError, match=r"EveryOther.*from 5 to 3 steps.*padded=True"):
        model.apply({"0_everyother": {}}, {"0_everyother": {}},
                    Padded(jnp.ones((4, 5, 2)), jnp.asarray(LENGTHS)))


def test_combinators_thread_padded_batches():
    model = jdnn.serial(jdnn.Dense(2), jdnn.residual(RunningSum()),
                        jdnn.branches(RunningSum(), jdnn.Dense(1)))
    x, _ = _batch()
    _, params, state = model.init(jax.random.key(0), x.shape)
    y, _ = jax.jit(model.apply)(params, state, Padded(jnp.asarray(x), jnp.asarray(LENGTHS)))
    assert isinstance(y, Padded) and y.values.shape == (4, 5, 3)
    np.testing.assert_array_equal(y.lengths, LENGTHS)


def test_padding_never_changes_a_result_at_real_steps():
    model = jdnn.serial(jdnn.Dense(3), RunningSum(), jdnn.Dense(2))
    x, _ = _batch()
    _, params, state = model.init(jax.random.key(0), x.shape)
    x = x.copy()
    x[1, 2:] = 1e3   # garbage in the padding
    padded, _ = model.apply(params, state, Padded(jnp.asarray(x), jnp.asarray(LENGTHS)))
    for b, n in enumerate(LENGTHS):
        alone, _ = model.apply(params, state, jnp.asarray(x[b:b + 1, :n]))
        np.testing.assert_allclose(padded.values[b, :n], alone[0], rtol=1e-5, atol=1e-6)


def test_losses_average_over_real_steps_only():
    logits = jax.random.normal(jax.random.key(0), (4, 5, 3))
    _, labels = _batch()
    labels = labels.copy()
    labels[1, 2:] = -7   # invalid labels at padded steps count for nothing
    values = jdnn.losses.per_example_values(jdnn.losses.softmax_cross_entropy,
                                            Padded(logits, jnp.asarray(LENGTHS)),
                                            jnp.asarray(labels))
    steps = jax.vmap(jdnn.losses.softmax_cross_entropy, in_axes=(1, 1), out_axes=1)(
        logits, jnp.asarray(np.maximum(labels, 0)))
    for b, n in enumerate(LENGTHS):
        expected = float(jnp.mean(steps[b, :n])) if n else 0.0
        np.testing.assert_allclose(values[b], expected, rtol=1e-6)


def test_per_step_targets_must_cover_every_step():
    with pytest.raises(ValueError, match=r"one entry per step, shape \(4, 5, \.\.\.\)"):
        jdnn.losses.per_example_values(jdnn.losses.mse, Padded(jnp.ones((4, 5, 1)),
                                                               jnp.asarray(LENGTHS)),
                                       jnp.ones((4, 1)))


@pytest.mark.parametrize("train", [True, False])
def test_check_gradients_holds_jax_against_the_twins_on_padded_batches(train,
                                                                      running_sum_twin):
    model = jdnn.serial(jdnn.Dense(4), jdnn.Tanh(), RunningSum(), jdnn.Dense(3))
    x, y = _batch()
    _, params, state = model.init(jax.random.key(0), x.shape)
    report = jdnn.check_gradients(model, params, state, Padded(x, LENGTHS), y,
                                  jdnn.losses.softmax_cross_entropy, train=train)
    assert report.ok, report
    assert report.forward_error <= 1e-10


def test_the_reference_rewraps_like_jdnn():
    net = jdnn.reference.build(jdnn.serial(jdnn.Dense(3), jdnn.Flatten()).spec)
    params = {"0_dense": {"w": np.ones((2, 3)), "b": np.zeros(3)}, "1_flatten": {}}
    state = {"0_dense": {}, "1_flatten": {}}
    x = RefPadded(np.ones((4, 5, 2)), LENGTHS)
    y, _, _ = net.forward(params, state, x)
    assert not isinstance(y, RefPadded) and y.shape == (4, 15)
    y, _, _ = jdnn.reference.build(jdnn.serial(jdnn.Dense(3)).spec).forward(
        {"0_dense": params["0_dense"]}, {"0_dense": {}}, x)
    assert isinstance(y, RefPadded)
    np.testing.assert_array_equal(y.lengths, LENGTHS)


def _sequences(n=24, steps=6, seed=0):
    """Sequences whose label is the sign of their sum over real steps; garbage in the padding."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, steps + 1, size=n)
    x = rng.normal(size=(n, steps, 1)).astype(np.float32)
    real = np.arange(steps)[None, :] < lengths[:, None]
    y = (np.where(real, x[..., 0], 0).sum(1) > 0).astype(np.int32)
    x[~real] = 100.0
    return Padded(x, lengths), y


def test_fit_evaluate_and_predict_take_padded_batches():
    import optax

    model = jdnn.serial(RunningSum(), jdnn.Dense(2))
    x, y = _sequences()
    # per-example targets for a per-step output: the label at every step
    y_steps = np.repeat(y[:, None], x.shape[1], axis=1)
    train_state, history = jdnn.fit(model, (x, y_steps), loss=jdnn.losses.softmax_cross_entropy,
                                    optimizer=optax.adam(0.05), epochs=3, batch_size=8,
                                    key=jax.random.key(0), progress=False)
    assert np.all(np.isfinite(history["loss"]))
    report = jdnn.evaluate(model, train_state, (x, y_steps),
                           loss=jdnn.losses.softmax_cross_entropy)
    assert np.isfinite(report["loss"]) and 0.0 <= report["accuracy"] <= 1.0
    out = jdnn.predict(model, train_state, x, batch_size=5)
    assert isinstance(out, Padded) and out.values.shape == (24, 6, 2)
    np.testing.assert_array_equal(out.lengths, x.lengths)
    # the padding (100.0) never reached a real step's output
    alone = jdnn.predict(model, train_state, x.values[3:4, :x.lengths[3]])
    np.testing.assert_allclose(out.values[3, :x.lengths[3]], alone[0], rtol=1e-5, atol=1e-5)


def test_fit_refuses_bad_lengths():
    import optax

    x, y = _sequences()
    bad = Padded(x.values, x.lengths + 10)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 6\]"):
        jdnn.fit(jdnn.serial(RunningSum(), jdnn.Dense(2)), (bad, np.zeros((24, 6), int)),
                 loss=jdnn.losses.softmax_cross_entropy, optimizer=optax.sgd(0.1), epochs=1,
                 batch_size=8, progress=False)
