"""fit: compiled epochs, padding and masks, modes, history, evaluation and prediction."""

import json
import math
import os
import signal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdnn
from jdnn.data.batching import batches_from_order, epoch_batches, epoch_order, num_batches
from jdnn.train import fit, make_epoch
from jdnn.train.fit import epoch_orders
from jdnn.train.step import train_step_fn

CE = jdnn.losses.softmax_cross_entropy


def _blobs(n=90, d=6, classes=3, seed=0):
    """Separable-ish Gaussian blobs: enough signal to learn in a few epochs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.int32)
    centers = rng.normal(size=(classes, d)) * 3
    x = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
    return x, y


def _mlp(classes=3, dropout=0.0):
    layers = [jdnn.Dense(16), jdnn.Relu()]
    layers += [jdnn.Dropout(dropout)] if dropout else []
    return jdnn.serial(*layers, jdnn.Dense(classes))


def _fit(model=None, data=None, **kwargs):
    options = dict(loss=CE, optimizer=optax.adam(1e-2), epochs=3, batch_size=16,
                   key=jax.random.key(0), progress=False)
    options.update(kwargs)
    return fit(model or _mlp(), data or _blobs(), **options)


def test_epoch_batches_cover_every_example_once_and_mask_the_padding():
    idx, mask = epoch_batches(jax.random.key(0), 10, 4)
    assert idx.shape == mask.shape == (3, 4)
    real = np.asarray(idx)[np.asarray(mask)]
    assert sorted(real.tolist()) == list(range(10))
    assert np.asarray(mask).sum() == 10 and not np.asarray(mask)[-1, 2:].any()
    dropped, dmask = epoch_batches(jax.random.key(0), 10, 4, drop_remainder=True)
    assert dropped.shape == (2, 4) and bool(dmask.all())
    ordered, _ = epoch_batches(None, 5, 2)
    assert np.asarray(ordered).ravel()[:5].tolist() == [0, 1, 2, 3, 4]
    other, _ = epoch_batches(jax.random.key(1), 10, 4)
    assert not np.array_equal(np.asarray(idx), np.asarray(other))
    assert num_batches(10, 4) == 3 and num_batches(10, 4, drop_remainder=True) == 2
    with pytest.raises(ValueError, match="leaves no batch"):
        epoch_batches(None, 3, 4, drop_remainder=True)


def test_epoch_order_is_a_reproducible_permutation_new_with_each_step_and_key():
    words = np.asarray(jax.random.key_data(jax.random.key(0)))
    order = epoch_order(words, 0, 50)
    assert order.dtype == np.int32 and sorted(order.tolist()) == list(range(50))
    assert np.array_equal(order, epoch_order(words, 0, 50))                  # reproducible
    assert not np.array_equal(order, epoch_order(words, 7, 50))              # next epoch
    other = np.asarray(jax.random.key_data(jax.random.key(1)))
    assert not np.array_equal(order, epoch_order(other, 0, 50))              # another key


def test_batches_from_order_cuts_the_same_batches_on_host_and_device():
    order = epoch_order(np.asarray(jax.random.key_data(jax.random.key(3))), 0, 10)
    idx, mask = batches_from_order(order, 4)
    didx, dmask = jax.jit(lambda o: batches_from_order(o, 4))(jnp.asarray(order))
    assert np.array_equal(idx, didx) and np.array_equal(mask, dmask)
    assert idx[:2].ravel().tolist() == order[:8].tolist()
    assert idx[2].tolist() == [*order[8:], *order[:2]]       # padded with the epoch's first
    assert mask[2].tolist() == [True, True, False, False]



def test_fit_learns_and_records_history():
    x, y = _blobs()
    ts, history = _fit(data=(x, y), epochs=8, validation_data=_blobs(seed=1))
    assert len(history) == 8 and [r["epoch"] for r in history.records] == list(range(1, 9))
    assert set(history.keys()) >= {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] > 0.9
    assert int(ts.step) == 8 * math.ceil(90 / 16)
    data = json.loads(json.dumps(history.to_dict()))
    assert data["records"][-1]["epoch"] == 8 and data["stop_reason"] is None
    assert jdnn.History.from_dict(data).records == history.records


def test_one_compile_per_fit():
    traces = []

    def counting(outputs, labels):
        traces.append(1)
        return CE(outputs, labels)

    _fit(loss=counting, epochs=4)
    assert len(traces) == 1


def test_epoch_metrics_are_exact_means_over_real_examples():
    """The epoch's loss equals the mean of per-example losses weighted by real examples only;
    check with a learning rate of 0, so every batch sees the same parameters."""
    x, y = _blobs(n=37)
    model = _mlp()
    ts = jdnn.TrainState.create(model, optax.sgd(0.0), jax.random.key(0), (16, 6))
    logits, _ = model.apply(ts.params, ts.state, x)
    expected = float(jnp.mean(CE(logits, y)))
    _, history = _fit(model, (x, y), optimizer=optax.sgd(0.0), epochs=1, train_state=ts)
    assert history["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_padded_epoch_equals_the_same_batches_stepped_by_hand():
    x, y = _blobs(n=21)
    model, optimizer = _mlp(), optax.sgd(0.1)
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), (8, 6))
    step = train_step_fn(model, CE, optimizer)
    epoch = make_epoch(step, 8)
    by_hand = jax.tree.map(lambda a: a.copy(), ts)
    order = epoch_orders(ts, 21)
    idx, mask = batches_from_order(order, 8)
    for i, m in zip(np.asarray(idx), np.asarray(mask)):
        real = i[m]  # the unpadded batch: the real rows only
        by_hand, _ = jax.jit(step)(by_hand, x[real], y[real])
    scanned, _ = epoch(ts, jnp.asarray(x), jnp.asarray(y), order)
    chex.assert_trees_all_close(scanned.params, by_hand.params, rtol=1e-5, atol=1e-6)


def test_step_mode_draws_the_same_batches_as_scan_mode():
    data = _blobs()
    scan_ts, scan_h = _fit(model=_mlp(dropout=0.3), data=data, mode="scan")
    step_ts, step_h = _fit(model=_mlp(dropout=0.3), data=data, mode="step")
    chex.assert_trees_all_close(scan_ts.params, step_ts.params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scan_h["loss"], step_h["loss"], rtol=1e-4)


def test_fit_is_reproducible_and_the_key_matters():
    a, _ = _fit(model=_mlp(dropout=0.3))
    b, _ = _fit(model=_mlp(dropout=0.3))
    c, _ = _fit(model=_mlp(dropout=0.3), key=jax.random.key(1))
    chex.assert_trees_all_equal(a.params, b.params)
    assert not np.allclose(a.params["0_dense"]["w"], c.params["0_dense"]["w"])


def test_optax_schedules_work_as_they_are():
    schedule = optax.cosine_decay_schedule(0.05, decay_steps=18)
    ts, history = _fit(optimizer=optax.adam(schedule), epochs=3)
    assert history["loss"][-1] < history["loss"][0]


def test_augmentation_is_applied_inside_the_compiled_epoch():
    def zero_inputs(key, x):
        del key
        return jnp.zeros_like(x)

    ts, history = _fit(augment=zero_inputs, epochs=4)
    # With every input zeroed, nothing beyond the class prior can be learnt.
    assert history["accuracy"][-1] < 0.6
    _, plain = _fit(epochs=4)
    assert plain["accuracy"][-1] > 0.9


def test_frozen_state_keeps_batch_norm_statistics():
    model = jdnn.serial(jdnn.Dense(8), jdnn.BatchNorm(), jdnn.Relu(), jdnn.Dense(3))
    ts, _ = _fit(model, frozen_state=["1_batchnorm"])
    np.testing.assert_array_equal(ts.state["1_batchnorm"]["mean"], np.zeros(8))
    moved, _ = _fit(model)
    assert not np.allclose(moved.state["1_batchnorm"]["mean"], 0.0)


def test_freeze_leaves_frozen_parameters_untouched():
    model = _mlp()
    ts = jdnn.TrainState.create(model, optax.adam(1e-2), jax.random.key(0), (16, 6))
    before = jax.tree.map(lambda a: np.asarray(a).copy(), ts.params)
    optimizer = jdnn.freeze(optax.adam(1e-2), ts.params, ["0_dense"])
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), (16, 6))
    ts, _ = _fit(model, optimizer=optimizer, train_state=ts)
    np.testing.assert_array_equal(ts.params["0_dense"]["w"], before["0_dense"]["w"])
    np.testing.assert_array_equal(ts.params["0_dense"]["b"], before["0_dense"]["b"])
    assert not np.allclose(ts.params["2_dense"]["w"], before["2_dense"]["w"])
    with pytest.raises(ValueError, match="no parameter lies under '0_dens'"):
        jdnn.freeze(optax.adam(1e-2), ts.params, ["0_dens"])


def test_evaluate_and_predict_match_apply():
    x, y = _blobs()
    model = _mlp()
    ts, _ = _fit(model, (x, y))
    logits, _ = model.apply(ts.params, ts.state, x)
    predicted = jdnn.predict(model, ts, x, batch_size=32)
    np.testing.assert_allclose(predicted, logits, rtol=1e-5, atol=1e-6)
    report = jdnn.evaluate(model, ts, (x, y), loss=CE, batch_size=32)
    assert report["loss"] == pytest.approx(float(jnp.mean(CE(logits, y))), rel=1e-5)
    assert report["accuracy"] == pytest.approx(float(jnp.mean(jnp.argmax(logits, -1) == y)))


def test_progress_bar_stays_silent_when_not_a_terminal(capsys):
    _fit(progress=True, epochs=2)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_resuming_continues_the_epoch_count():
    data = _blobs()
    ts, first = _fit(data=data, epochs=2)
    _, second = _fit(data=data, epochs=2, train_state=ts)
    assert [r["epoch"] for r in second.records] == [3, 4]


def test_bad_arguments_and_data_fail_before_training():
    x, y = _blobs()
    with pytest.raises(ValueError, match="mode must be one of"):
        _fit(mode="fast")
    with pytest.raises(ValueError, match="fit: batch_size must be a positive int, got 0"):
        _fit(batch_size=0)
    with pytest.raises(ValueError, match="90 examples but y has 80"):
        _fit(data=(x, y[:80]))
    bad = x.copy()
    bad[5, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _fit(data=(bad, y))
    with pytest.raises(ValueError, match="does not fit the model"):
        _fit(model=jdnn.serial(jdnn.Conv2D(4, 3), jdnn.Flatten(), jdnn.Dense(3)))


def test_padding_repeats_real_examples_not_one_copy():
    """Batch norm sees the padded rows: they must be real, distinct examples."""
    idx, mask = epoch_batches(jax.random.key(0), 67, 64)
    padding = np.asarray(idx)[~np.asarray(mask)]
    assert len(padding) == 61 and len(set(padding.tolist())) == 61
    small, small_mask = epoch_batches(jax.random.key(0), 3, 8)
    assert sorted(np.asarray(small)[0][:3].tolist()) == [0, 1, 2]
    assert set(np.asarray(small).ravel().tolist()) == {0, 1, 2}


def test_serial_names_missing_state_entries():
    model = _mlp()
    _, params, _ = model.init(jax.random.key(0), (2, 6))
    with pytest.raises(ValueError, match=r"state have no entry '0_dense'.*that init returned"):
        model.apply(params, {}, np.ones((2, 6), np.float32))


# --- interrupts and errors lose nothing -----------------------------------------------------


class _Recorder(jdnn.Callback):
    """Keeps a copy of the state after epoch `at` and counts the hooks that ran."""

    def __init__(self, at=2, raise_at=None, error=None):
        self.at, self.raise_at, self.error = at, raise_at, error
        self.snapshot, self.ended = None, 0

    def on_epoch_end(self, run):
        if run.epoch == self.at:
            self.snapshot = jax.tree.map(lambda a: a.copy(), run.train_state)
        if run.epoch == self.raise_at:
            raise self.error

    def on_train_end(self, run):
        self.ended += 1


_INTERRUPT_DATA = _blobs(n=40)


def _run(mode, epochs, train_state=None, callbacks=(), loss=CE, **kwargs):
    model = _mlp(dropout=0.2)
    if train_state is None:
        train_state = jdnn.TrainState.create(model, optax.adam(1e-2), jax.random.key(0), (16, 6))
    return fit(model, _INTERRUPT_DATA, loss=loss, optimizer=optax.adam(1e-2), epochs=epochs,
               batch_size=16, train_state=train_state, callbacks=list(callbacks),
               progress=False, mode=mode, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted():
    """Per mode: the state after epoch 2 and after epoch 4 of a run nothing interrupts."""
    runs = {}
    for mode in ("scan", "step"):
        recorder = _Recorder(at=2)
        final, history = _run(mode, 4, callbacks=[recorder])
        runs[mode] = recorder.snapshot, final, history
    return runs


@pytest.mark.parametrize("mode", ["scan", "step"])
def test_an_interrupt_returns_the_last_completed_state_and_resumes_exactly(mode, uninterrupted):
    after_2, after_4, history_4 = uninterrupted[mode]
    recorder = _Recorder(raise_at=2, error=KeyboardInterrupt())
    ts, history = _run(mode, 4, callbacks=[recorder])
    assert history.stopped_by == "interrupted" and len(history) == 2
    assert "after epoch 2 of 4" in history.stop_reason
    assert recorder.ended == 1                      # on_train_end ran: checkpoints get saved
    chex.assert_trees_all_equal(ts, after_2)
    resumed, rest = _run(mode, 2, train_state=ts)
    chex.assert_trees_all_equal(resumed, after_4)
    assert [r["epoch"] for r in rest.records] == [3, 4]
    assert [r["loss"] for r in history.records + rest.records] == history_4["loss"]


@pytest.mark.parametrize("mode", ["scan", "step"])
def test_an_exception_carries_the_last_completed_state_and_the_history(mode, uninterrupted):
    after_2, after_4, _ = uninterrupted[mode]
    recorder = _Recorder(raise_at=2, error=RuntimeError("disk full"))
    with pytest.raises(RuntimeError, match="disk full") as caught:
        _run(mode, 4, callbacks=[recorder])
    error = caught.value
    assert recorder.ended == 0                      # on_train_end does not run on an error
    assert len(error.history) == 2 and error.history.stopped_by is None
    assert any("error.train_state" in note for note in error.__notes__)
    chex.assert_trees_all_equal(error.train_state, after_2)
    resumed, _ = _run(mode, 2, train_state=error.train_state)
    chex.assert_trees_all_equal(resumed, after_4)


@pytest.mark.parametrize("mode", ["scan", "step"])
def test_a_failure_before_the_first_epoch_hands_back_the_callers_state_undonated(mode):
    model = _mlp(dropout=0.2)
    ts = jdnn.TrainState.create(model, optax.adam(1e-2), jax.random.key(0), (16, 6))
    before = jax.tree.map(lambda a: a.copy(), ts)

    def broken(key, x):   # fails while the first epoch is traced: nothing was donated yet
        raise RuntimeError("bad batch")

    with pytest.raises(RuntimeError, match="bad batch") as caught:
        _run(mode, 3, train_state=ts, augment=broken)
    assert caught.value.train_state is ts and len(caught.value.history) == 0
    assert not jdnn.train.state.donated(ts)
    chex.assert_trees_all_equal(ts, before)

    def interrupted(key, x):   # Ctrl-C while the first epoch compiles
        raise KeyboardInterrupt

    returned, history = _run(mode, 3, train_state=ts, augment=interrupted)
    assert returned is ts and history.stopped_by == "interrupted" and len(history) == 0
    assert "before epoch 1 of 3 finished" in history.stop_reason


def test_ctrl_c_during_a_donated_epoch_waits_for_it_and_keeps_it(uninterrupted):
    """A real SIGINT, sent from inside the compiled epoch 2 (its input already donated), is
    held until that epoch is recorded: fit returns epoch 2's state, not a deleted buffer."""
    after_2, _, _ = uninterrupted["scan"]
    calls = {"n": 0}

    def fire(_):
        calls["n"] += 1
        if calls["n"] == 4:   # epoch 2's first step (3 steps per epoch)
            os.kill(os.getpid(), signal.SIGINT)

    def signalling(outputs, labels):   # CE's numbers, and a host call once per step
        jax.debug.callback(fire, labels[0])
        return CE(outputs, labels)

    try:
        ts, history = _run("scan", 4, loss=signalling)
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped fit without a state")
    assert calls["n"] == 6 and len(history) == 2 and history.stopped_by == "interrupted"
    assert int(ts.step) == int(after_2.step) == 6
    chex.assert_trees_all_close((ts.params, ts.opt_state), (after_2.params, after_2.opt_state),
                                rtol=1e-6, atol=1e-7)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # put back


def test_the_guard_defers_only_while_a_donated_state_is_watched():
    guard = jdnn.train.state.DonationGuard()
    double = jax.jit(lambda a: 2 * a, donate_argnums=0)
    with guard:
        intact = jnp.ones(3)
        guard.watch(intact)
        with pytest.raises(KeyboardInterrupt):   # not donated yet (e.g. still compiling)
            signal.raise_signal(signal.SIGINT)
        donated = jnp.ones(3)
        guard.watch(donated)
        double(donated)
        signal.raise_signal(signal.SIGINT)       # held: no whole state right now
        with pytest.raises(KeyboardInterrupt):
            guard.release()                      # ... until the run holds one again
        guard.hold()
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):   # a second signal acts at once
            signal.raise_signal(signal.SIGINT)
        guard.release()                          # nothing left pending


# --- argument checks: each names fit and says how to fix it --------------------------------


def test_validation_data_of_another_shape_is_refused_before_training():
    x, y = _blobs()
    with pytest.raises(ValueError, match=r"^validation_data: x has examples of shape \(5,\), "
                                         r"but train_data's x has examples of shape \(6,\)"):
        _fit(validation_data=(x[:, :5], y))


def test_resumed_data_must_fit_the_train_states_params():
    x, y = _blobs()
    ts = jdnn.TrainState.create(_mlp(), optax.adam(1e-2), jax.random.key(0), (16, 4))
    with pytest.raises(ValueError, match=r"^train_data: the model cannot apply the params of "
                                         r"the train_state passed to fit.*0_dense.*size 4"):
        _fit(data=(x, y), train_state=ts)
    used = jdnn.TrainState.create(_mlp(), optax.adam(1e-2), jax.random.key(0), (16, 6))
    _fit(data=(x, y), train_state=used, epochs=1)   # donates `used`
    with pytest.raises(ValueError, match="fit: train_state was donated to an earlier call"):
        _fit(data=(x, y), train_state=used)
    with pytest.raises(TypeError, match="fit: train_state must be a TrainState"):
        _fit(train_state=used.params)


def test_counts_accept_numpy_integers_and_refuse_bools_and_floats():
    ts, history = _fit(epochs=np.int32(2), batch_size=np.int64(16), key=np.int64(0),
                       eval_batch_size=np.int16(8), validation_data=_blobs(seed=1))
    assert len(history) == 2 and int(ts.step) == 2 * 6
    with pytest.raises(ValueError, match="fit: batch_size must be a positive int, got True"):
        _fit(batch_size=True)
    with pytest.raises(ValueError, match="fit: epochs must be an int >= 0, got 2.0"):
        _fit(epochs=2.0)
    with pytest.raises(ValueError, match="fit: eval_batch_size must be a positive int, got 0"):
        _fit(eval_batch_size=0)
    with pytest.raises(TypeError, match="fit: key must be a jax.random.key"):
        _fit(key="0")
    x, _ = _blobs()
    assert jdnn.predict(_mlp(), ts, x, batch_size=np.int64(32)).shape == (90, 3)
    with pytest.raises(ValueError, match="predict: batch_size must be a positive int"):
        jdnn.predict(_mlp(), ts, x, batch_size=0)


def test_a_batch_larger_than_the_data_with_drop_remainder_is_a_clear_error():
    with pytest.raises(ValueError, match=r"fit: batch_size=128 is larger than train_data's 90 "
                                         r"examples, and drop_remainder=True"):
        _fit(batch_size=128, drop_remainder=True)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(loss="mse"), TypeError, r"fit: loss must be .* the string 'mse'; pass the function: "
                                  r"loss=jdnn.losses.mse"),
    (dict(loss="sparse_categorical_crossentropy"), TypeError,
     r"loss=jdnn.losses.softmax_cross_entropy"),
    (dict(loss=3), TypeError, r"fit: loss must be a per-example loss function"),
    (dict(optimizer=optax.adam), TypeError,
     r"fit: optimizer must be an optax GradientTransformation, got the function adam, which "
     r"builds one: .* optimizer=optax.adam\(1e-3\)"),
    (dict(optimizer="adam"), TypeError, r"fit: optimizer must be .* got the string 'adam'"),
    (dict(callbacks=jdnn.TerminateOnNaN()), TypeError,
     r"fit: callbacks must be a list or tuple .* callbacks=\[TerminateOnNaN\(...\)\]"),
    (dict(callbacks=[jdnn.EarlyStopping]), TypeError,
     r"fit: callbacks\[0\] is the class EarlyStopping, not an instance; call it"),
    (dict(callbacks=[print]), TypeError, r"fit: callbacks\[0\] must be a callback"),
    (dict(augment=jdnn.data.augment.random_flip), TypeError,
     r"fit: augment is the constructor random_flip; call it.*random_flip\(...\)"),
    (dict(augment=jdnn.data.augment.compose), TypeError, r"constructor compose"),
    (dict(augment=0.5), TypeError, r"fit: augment must be a function augment\(key, x\)"),
    (dict(metrics=7), TypeError, r"fit: metrics must be a list or tuple"),
    (dict(metrics=["accuracy", 7]), TypeError, r"fit: each metric must be a name"),
    (dict(metrics=["precision"]), ValueError, r"fit: unknown metric 'precision'"),
    (dict(penalty=1e-4), TypeError, r"fit: penalty must be a function penalty\(params\)"),
    (dict(frozen_state="0_dense"), TypeError, r"fit: frozen_state must be a list .* "
                                              r"frozen_state=\['0_dense'\]"),
])
def test_arguments_of_the_wrong_kind_say_how_to_fix_them(kwargs, error, message):
    with pytest.raises(error, match=message):
        _fit(**kwargs)


def test_metrics_as_one_name_or_one_function_are_accepted():
    def hits(outputs, labels, mask):
        return jdnn.metrics.accuracy(outputs, labels, mask)

    _, history = _fit(epochs=1, metrics=hits)
    _, named = _fit(epochs=1, metrics="accuracy")
    assert history["hits"] == named["accuracy"]


def test_evaluate_and_predict_check_their_arguments_and_predict_handles_no_examples():
    x, y = _blobs()
    model = _mlp()
    ts = jdnn.TrainState.create(model, optax.sgd(0.1), jax.random.key(0), (16, 6))
    with pytest.raises(TypeError, match="evaluate: loss must be .* loss=jdnn.losses.mse"):
        jdnn.evaluate(model, ts, (x, y), loss="mse")
    with pytest.raises(ValueError, match="evaluate: batch_size must be a positive int"):
        jdnn.evaluate(model, ts, (x, y), loss=CE, batch_size=-1)
    report = jdnn.evaluate(model, ts, (x, y), loss=CE, batch_size=np.int64(32))
    assert set(report) == {"loss", "accuracy"}
    empty = jdnn.predict(model, ts, x[:0])
    assert empty.shape == (0, 3) and empty.dtype == np.float32
    with pytest.raises(ValueError, match="predict: x must have a first axis"):
        jdnn.predict(model, ts, np.float32(1.0))
