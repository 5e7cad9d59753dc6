"""fit: compiled epochs, padding and masks, modes, history, evaluation and prediction."""

import json
import math

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
    with pytest.raises(ValueError, match="batch_size an int >= 1"):
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
