"""fit(..., step=...): any pure training step, e.g. DP-SGD's, through fit's one loop (callbacks,
history, validation, checkpoints), with the step contract checked."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdnn
from jdnn.data.batching import batches_from_order
from jdnn.train import fit
from jdnn.train.fit import epoch_orders
from jdnn.train.state import TrainState, as_key
from jdnn.train.step import train_step_fn

CE = jdnn.losses.softmax_cross_entropy
N, D, BATCH = 45, 5, 16          # 45 = 2 * 16 + 13: the last batch is padded and masked


def _data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype(np.float32)
    return x, (x[:, 0] + 0.3 * x[:, 1] > 0).astype(np.int32)


def _model():
    return jdnn.serial(jdnn.Dense(8), jdnn.Relu(), jdnn.Dense(2))


def _dp_step(model, optimizer, **kwargs):
    return jdnn.make_dp_train_step(model, CE, optimizer, l2_norm_clip=0.5,
                                   noise_multiplier=0.7, **kwargs)


def _by_hand(step, train_state, x, y, epochs):
    """The step run over the batches fit draws: each epoch's order from the state's key and
    step, cut into padded, masked batches."""
    for _ in range(epochs):
        indices, masks = batches_from_order(epoch_orders(train_state, len(x)), BATCH)
        for i, mask in zip(indices, masks):
            train_state, _ = step(train_state, x[i], y[i], mask)
    return train_state


@pytest.mark.parametrize("mode", ["scan", "step"])
def test_fit_runs_a_dp_step_with_callbacks_and_equals_the_step_by_hand(tmp_path, mode):
    x, y = _data()
    model, optimizer = _model(), optax.sgd(0.2)
    step = _dp_step(model, optimizer)
    # min_delta too large to meet: epoch 1 sets the best, epoch 2 does not improve, it stops.
    stopper = jdnn.EarlyStopping("val_loss", patience=1, min_delta=1e9, restore_best=False)
    saver = jdnn.ModelCheckpoint(tmp_path / "checkpoints", keep=None)
    trained, history = fit(model, (x, y), loss=CE, optimizer=optimizer, epochs=5,
                           batch_size=BATCH, key=3, validation_data=_data(20, seed=1),
                           callbacks=[saver, stopper], step=step, progress=False, mode=mode)

    assert history.stopped_by == "early_stopping" and len(history) == 2
    assert set(history.keys()) >= {"loss", "clipped", "grad_norm", "val_loss", "val_accuracy"}
    assert int(trained.step) == 2 * 3

    start = TrainState.create(model, optimizer, as_key("fit", 3), (BATCH, D))
    expected = _by_hand(step, start, jnp.asarray(x), jnp.asarray(y), epochs=2)
    chex.assert_trees_all_close(trained.params, expected.params, rtol=1e-5, atol=1e-6)

    saved = sorted((tmp_path / "checkpoints").iterdir())
    assert len(saved) >= 2
    latest = jdnn.ModelCheckpoint.latest(tmp_path / "checkpoints")
    restored = jdnn.checkpoint.restore(latest, model).train_state(optimizer)
    chex.assert_trees_all_close(restored.params, trained.params, rtol=1e-6, atol=1e-7)


def test_a_resumed_fit_with_a_step_continues_where_it_stopped():
    x, y = _data()
    model, optimizer = _model(), optax.sgd(0.2)
    step = _dp_step(model, optimizer)
    options = dict(loss=CE, optimizer=optimizer, batch_size=BATCH, step=step, progress=False)
    whole, _ = fit(model, (x, y), epochs=3, key=0, **options)
    half, _ = fit(model, (x, y), epochs=1, key=0, **options)
    resumed, history = fit(model, (x, y), epochs=2, train_state=half, **options)
    assert [r["epoch"] for r in history.records] == [2, 3]
    chex.assert_trees_all_close(resumed.params, whole.params, rtol=1e-6, atol=1e-7)


def test_fits_own_step_passed_explicitly_equals_the_default():
    x, y = _data()
    model, optimizer = _model(), optax.adam(1e-2)
    options = dict(loss=CE, optimizer=optimizer, epochs=2, batch_size=BATCH, key=1,
                   progress=False)
    default, default_history = fit(model, (x, y), **options)
    own, own_history = fit(model, (x, y), step=train_step_fn(model, CE, optimizer,
                                                             metrics=("accuracy",)), **options)
    chex.assert_trees_all_close(own.params, default.params)
    assert own_history["loss"] == default_history["loss"]
    assert own_history["accuracy"] == default_history["accuracy"]


def test_a_step_of_ones_own_runs_data_parallel_on_a_mesh():
    x, y = _data()
    model, optimizer = _model(), optax.sgd(0.2)
    options = dict(loss=CE, optimizer=optimizer, epochs=2, batch_size=BATCH, key=0,
                   progress=False, step=_dp_step(model, optimizer))
    plain, _ = fit(model, (x, y), **options)
    meshed, _ = fit(model, (x, y), mesh=jdnn.parallel.data_mesh(jax.devices()[:1]), **options)
    chex.assert_trees_all_close(meshed.params, plain.params, rtol=1e-5, atol=1e-6)


# --- the step contract, checked -------------------------------------------------------------


def _fit(step, **kwargs):
    x, y = _data()
    options = dict(loss=CE, optimizer=optax.sgd(0.1), epochs=1, batch_size=BATCH, key=0,
                   progress=False)
    options.update(kwargs)
    return fit(_model(), (x, y), step=step, **options)


def _plain_step():
    return train_step_fn(_model(), CE, optax.sgd(0.1))


@pytest.mark.parametrize("step, error, match", [
    (jdnn.make_dp_train_step, TypeError,
     r"fit: step must be a training step taking \(train_state, x, y, mask\), got the function "
     r"make_dp_train_step, which builds one: call it first"),
    (jdnn.make_train_step, TypeError, r"got the function make_train_step, which builds one"),
    ("dp", TypeError, r"fit: step must be a training step step\(train_state, x, y, mask\) -> "
                      r"\(train_state, metrics\), got the string 'dp'"),
    (TrainState, TypeError, r"got the class TrainState"),
    (lambda ts, x, y: None, TypeError,
     r"fit: step must take \(train_state, x, y, mask\), but <lambda>\(ts, x, y\) cannot"),
])
def test_a_step_that_is_not_a_step_is_a_clear_error(step, error, match):
    with pytest.raises(error, match=match):
        _fit(step)


@pytest.mark.parametrize("option", [dict(penalty=jdnn.regularizers.penalty(l2=1e-3)),
                                    dict(frozen_state=["0_dense"]),
                                    dict(augment=lambda key, x: x)])
def test_options_of_fits_own_step_are_refused_next_to_a_step(option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=rf"fit: {name}= configure fit's own training step, so "
                                         rf"with step= they would be ignored"):
        _fit(_plain_step(), **option)


def _returning(make_result):
    step = _plain_step()

    def wrong(train_state, x, y, mask):
        return make_result(*step(train_state, x, y, mask))

    return wrong


@pytest.mark.parametrize("result, error, match", [
    (lambda ts, m: ts, TypeError, r"fit: step must return a pair \(train_state, metrics\), got "
                                  r"a TrainState"),
    (lambda ts, m: (m, ts), TypeError, r"fit: step must return the new TrainState first, got a "
                                       r"dict"),
    (lambda ts, m: (ts._replace(step=ts.step.astype(jnp.float32)), m), ValueError,
     r"fit: step must return a train state of the same structure, shapes and dtypes as the one "
     r"it got; step differs"),
    (lambda ts, m: (ts, {"loss": jnp.zeros(16)}), ValueError,
     r"fit: step's metric 'loss' has shape \(16,\); metrics must be scalars"),
    (lambda ts, m: (ts, [m["loss"]]), TypeError,
     r"fit: step must return its metrics as a dict of names to scalars, got a list"),
])
def test_a_step_returning_the_wrong_things_is_a_clear_error_when_traced(result, error, match):
    with pytest.raises(error, match=match):
        _fit(_returning(result))


def test_a_step_that_does_not_count_its_steps_is_an_error_after_the_first_epoch():
    step = _plain_step()

    def uncounted(train_state, x, y, mask):
        new, report = step(train_state, x, y, mask)
        return new._replace(step=train_state.step), report

    with pytest.raises(ValueError, match=r"fit: step= must advance train_state.step by one per "
                                         r"call .* after an epoch of 3 steps it is 0, not 3"):
        _fit(uncounted, epochs=2)


def test_with_a_step_metrics_apply_to_validation_only():
    x, y = _data()
    _, history = _fit(_plain_step(), validation_data=(x, y), metrics=("accuracy",))
    assert "val_accuracy" in history.keys() and "accuracy" not in history.keys()
