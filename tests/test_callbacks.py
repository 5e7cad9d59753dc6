"""Callbacks: early stopping, the NaN guard, learning-rate reduction, checkpoints, loggers,
and the bit-identical resume."""

import csv
import json

import chex
import jax
import numpy as np
import optax
import pytest

import jdnn
from jdnn import checkpoint
from jdnn.train.callbacks import Callback, copy_state

CE = jdnn.losses.softmax_cross_entropy
STEPS_PER_EPOCH = 6  # 90 examples, batches of 16


def _blobs(n=90, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.int32)
    x = (rng.normal(size=(classes, d))[y] * 3 + rng.normal(size=(n, d))).astype(np.float32)
    return x, y


def _model(dropout=0.0):
    return jdnn.serial(jdnn.Dense(16), jdnn.Relu(), jdnn.Dropout(dropout), jdnn.Dense(3))


def _fit(model=None, **kwargs):
    options = dict(loss=CE, optimizer=optax.adam(1e-2), epochs=4, batch_size=16,
                   key=jax.random.key(0), progress=False, validation_data=_blobs(seed=1))
    options.update(kwargs)
    return jdnn.fit(model or _model(), _blobs(), **options)


class Recorder(Callback):
    """Keeps a copy of the train state after every epoch."""

    def on_train_begin(self, run):
        self.states = {}

    def on_epoch_end(self, run):
        self.states[run.epoch] = copy_state(run.train_state)


def _exploding(after_epochs, factor):
    """Adam whose learning rate jumps by `factor` after `after_epochs` epochs."""
    return optax.adam(optax.piecewise_constant_schedule(
        1e-2, {after_epochs * STEPS_PER_EPOCH: factor}))


def test_early_stopping_stops_and_restores_the_best_parameters():
    recorder = Recorder()
    stopper = jdnn.EarlyStopping("val_loss", patience=2)
    ts, history = _fit(optimizer=_exploding(3, 1e3), epochs=20, callbacks=[recorder, stopper])
    best = history.best("val_loss")["epoch"]
    assert best <= 4
    assert len(history) == best + 3  # patience 2: the third epoch without improvement stops
    assert "early stopping: val_loss did not improve for 2 epochs" in history.stop_reason
    chex.assert_trees_all_equal(ts.params, recorder.states[best].params)
    assert not np.array_equal(ts.params["0_dense"]["w"],
                              recorder.states[len(history)].params["0_dense"]["w"])


def test_early_stopping_without_restore_keeps_the_last_parameters():
    recorder = Recorder()
    stopper = jdnn.EarlyStopping("val_loss", patience=1, restore_best=False)
    ts, history = _fit(optimizer=_exploding(2, 1e3), epochs=20, callbacks=[recorder, stopper])
    chex.assert_trees_all_equal(ts.params, recorder.states[len(history)].params)


def test_early_stopping_on_accuracy_maximizes():
    stopper = jdnn.EarlyStopping("val_accuracy", patience=0)
    assert stopper.mode == "max"
    with pytest.raises(ValueError, match="cannot monitor 'val_f1'"):
        _fit(callbacks=[jdnn.EarlyStopping("val_f1")])


def test_nan_guard_stops_and_keeps_the_last_good_state():
    recorder = Recorder()
    with pytest.warns(RuntimeWarning, match="non-finite training loss"):
        ts, history = _fit(optimizer=_exploding(2, 1e30), epochs=8,
                           callbacks=[recorder, jdnn.TerminateOnNaN()])
    bad = len(history)
    assert not np.isfinite(history["loss"][-1]) and np.isfinite(history["loss"][-2])
    assert "non-finite training loss" in history.stop_reason
    chex.assert_trees_all_equal(ts.params, recorder.states[bad - 1].params)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(ts.params))


def test_reduce_lr_on_plateau_lowers_the_learning_rate():
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    # With a huge min_delta nothing counts as an improvement after the first epoch.
    reducer = jdnn.ReduceLROnPlateau("val_loss", factor=0.5, patience=2, min_delta=1e9)
    ts, history = _fit(optimizer=optimizer, epochs=6, callbacks=[reducer])
    np.testing.assert_allclose(history["lr"], [0.1, 0.1, 0.1, 0.05, 0.05, 0.025])
    assert float(optax.tree_utils.tree_get(ts.opt_state, "learning_rate")) == pytest.approx(0.025)


def test_reduce_lr_needs_an_injected_learning_rate():
    with pytest.raises(ValueError, match="optax.inject_hyperparams"):
        _fit(callbacks=[jdnn.ReduceLROnPlateau()])


def test_model_checkpoint_keeps_the_newest_and_they_restore(tmp_path):
    saver = jdnn.ModelCheckpoint(tmp_path / "ckpt", every=1, keep=2)
    ts, history = _fit(epochs=4, callbacks=[saver])
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["epoch-0003.safetensors", "epoch-0004.safetensors"]
    latest = jdnn.ModelCheckpoint.latest(tmp_path / "ckpt")
    restored = checkpoint.restore(latest, _model()).train_state(optax.adam(1e-2))
    chex.assert_trees_all_equal(restored.params, ts.params)
    assert int(restored.step) == int(ts.step)


def test_csv_and_json_loggers_write_the_history(tmp_path):
    _, history = _fit(epochs=3, callbacks=[jdnn.CSVLogger(tmp_path / "log.csv"),
                                           jdnn.JSONLogger(tmp_path / "log.json")])
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["val_loss"]) == pytest.approx(history["val_loss"][-1])
    data = json.loads((tmp_path / "log.json").read_text())
    assert data["records"] == history.records and data["stop_reason"] is None


@pytest.mark.parametrize("mode", ["scan", "step"])
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path, mode):
    """3 epochs, save, restore, 3 more epochs == 6 uninterrupted epochs, dropout included."""
    model = _model(dropout=0.3)
    optimizer = optax.adam(1e-2)
    straight, _ = _fit(model=model, optimizer=optimizer, epochs=6, mode=mode)
    first, _ = _fit(model=model, optimizer=optimizer, epochs=3, mode=mode)
    checkpoint.save(tmp_path / "half.safetensors", first, model)
    restored = checkpoint.restore(tmp_path / "half.safetensors", model).train_state(optimizer)
    resumed, history = _fit(model=model, optimizer=optimizer, epochs=3, mode=mode,
                            train_state=restored)
    assert [r["epoch"] for r in history.records] == [4, 5, 6]
    chex.assert_trees_all_equal(resumed.params, straight.params)
    chex.assert_trees_all_equal(resumed.opt_state, straight.opt_state)
    assert int(resumed.step) == int(straight.step)
