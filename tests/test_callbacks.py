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
    assert len(history) == best + 2  # patience 2: the second epoch without improvement stops
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


def _plateau_run(optimizer):
    """A `Run` for driving a callback by hand: a one-layer model, no training."""
    params = {"0_dense": {"w": np.ones((2, 2), np.float32), "b": np.zeros(2, np.float32)}}
    ts = jdnn.TrainState(params, {"0_dense": {}}, optimizer.init(params), jax.random.key(0),
                         np.int32(0))
    return jdnn.train.Run(jdnn.serial(jdnn.Dense(2)), ts, jdnn.History())


def test_reduce_lr_waits_out_its_cooldown_and_stops_at_min_lr():
    """patience 1, cooldown 2, floor 0.03, nothing ever improves: a reduction every third epoch
    (ignoring the cooldown would reduce every epoch), and 0.05 * 0.5 is floored at 0.03."""
    run = _plateau_run(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1))
    reducer = jdnn.ReduceLROnPlateau("val_loss", factor=0.5, patience=1, cooldown=2,
                                     min_lr=0.03)
    reducer.on_train_begin(run)
    for epoch in range(1, 10):
        run.epoch = epoch
        run.history.append({"epoch": epoch, "val_loss": 1.0})
        reducer.on_epoch_end(run)
    np.testing.assert_allclose(run.history["lr"], [0.1, 0.1, 0.05, 0.05, 0.05, 0.03, 0.03, 0.03,
                                                   0.03], rtol=1e-6)
    assert reducer.learning_rate(run.train_state) == pytest.approx(0.03)


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


# ModelCheckpoint driven by hand: a `Run` whose state after epoch e has step e and params e.
SMALL = jdnn.serial(jdnn.Dense(2))


def _state(epoch, value=None):
    value = float(epoch) if value is None else value
    params = {"0_dense": {"w": np.full((3, 2), value, np.float32), "b": np.zeros(2, np.float32)}}
    return jdnn.TrainState(params, {"0_dense": {}}, (), jax.random.key(0), np.int32(epoch))


def _begin(saver, start=0, value=None):
    run = jdnn.train.Run(SMALL, _state(start, value), jdnn.History(), epoch=start)
    saver.on_train_begin(run)
    return run


def _epochs(saver, run, count, loss=lambda epoch: 1.0 / epoch, value=None):
    for epoch in range(run.epoch + 1, run.epoch + count + 1):
        run.train_state, run.epoch = _state(epoch, value), epoch
        run.history.append({"epoch": epoch, "loss": loss(epoch)})
        saver.on_epoch_end(run)
    return run


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def _session(path):
    return checkpoint.restore(path).metadata["model_checkpoint"]["session"]


def test_a_second_run_into_the_same_directory_keeps_its_own_checkpoints(tmp_path):
    first = jdnn.ModelCheckpoint(tmp_path, keep=2)
    _epochs(first, _begin(first), 5)
    second = jdnn.ModelCheckpoint(tmp_path, keep=2)
    with pytest.warns(UserWarning, match=r"already holds 2 checkpoint file\(s\) this run did "
                                         r"not write \(epoch-0004.safetensors, epoch-0005"):
        run = _begin(second)
    _epochs(second, run, 3)
    assert _files(tmp_path) == ["epoch-0002.safetensors", "epoch-0003.safetensors",
                                "epoch-0004.safetensors", "epoch-0005.safetensors"]
    assert jdnn.ModelCheckpoint.latest(tmp_path) == tmp_path / "epoch-0003.safetensors"
    assert _session(tmp_path / "epoch-0005.safetensors") == first._session


def test_a_name_another_run_took_is_never_overwritten(tmp_path):
    first = jdnn.ModelCheckpoint(tmp_path, keep=None)
    _epochs(first, _begin(first), 2)
    second = jdnn.ModelCheckpoint(tmp_path, keep=None)
    with pytest.warns(UserWarning, match="already holds 2"):
        _epochs(second, _begin(second), 3, value=-1.0)
    suffix = second._session[:8]
    assert _files(tmp_path) == ["epoch-0001-" + suffix + ".safetensors", "epoch-0001.safetensors",
                                "epoch-0002-" + suffix + ".safetensors", "epoch-0002.safetensors",
                                "epoch-0003.safetensors"]
    for epoch in (1, 2):
        assert _session(tmp_path / f"epoch-{epoch:04d}.safetensors") == first._session
        assert _session(tmp_path / f"epoch-{epoch:04d}-{suffix}.safetensors") == second._session
    assert jdnn.ModelCheckpoint.latest(tmp_path) == tmp_path / "epoch-0003.safetensors"


def test_rotation_deletes_no_file_it_cannot_account_for(tmp_path):
    user = tmp_path / "epoch-best.safetensors"
    checkpoint.save(user, _state(7), SMALL, metadata={"note": "mine"})
    (tmp_path / "epoch-notes.safetensors").write_text("not a checkpoint")
    saver = jdnn.ModelCheckpoint(tmp_path, keep=1)
    with pytest.warns(UserWarning, match="already holds 2"):
        run = _begin(saver)
    _epochs(saver, run, 1)
    replaced = tmp_path / "epoch-0001.safetensors"        # another writer replaces our file
    checkpoint.save(replaced, _state(1, value=5.0), SMALL)
    _epochs(saver, run, 2)
    assert _files(tmp_path) == ["epoch-0001.safetensors", "epoch-0003.safetensors",
                                "epoch-best.safetensors", "epoch-notes.safetensors"]
    assert checkpoint.restore(user).metadata == {"note": "mine"}
    assert float(checkpoint.restore(replaced).params["0_dense"]["w"][0, 0]) == 5.0
    assert jdnn.ModelCheckpoint.latest(tmp_path) == tmp_path / "epoch-0003.safetensors"


def test_a_resumed_run_rotates_the_checkpoints_of_the_run_it_continues(tmp_path):
    first = jdnn.ModelCheckpoint(tmp_path, keep=2)
    _epochs(first, _begin(first), 3)
    resumed = jdnn.ModelCheckpoint(tmp_path, keep=2)
    run = _begin(resumed, start=3)                   # the state epoch-0003 holds: proven, adopted
    _epochs(resumed, run, 2)
    assert _files(tmp_path) == ["epoch-0004.safetensors", "epoch-0005.safetensors"]
    lineage = checkpoint.restore(tmp_path / "epoch-0005.safetensors").metadata[
        "model_checkpoint"]["lineage"]
    assert lineage == first._lineage
    other = jdnn.ModelCheckpoint(tmp_path, keep=1)   # step 5, other params: not that run
    with pytest.warns(UserWarning, match="already holds 2"):
        run = _begin(other, start=5, value=-1.0)
    _epochs(other, run, 2)
    assert _files(tmp_path) == ["epoch-0004.safetensors", "epoch-0005.safetensors",
                                "epoch-0007.safetensors"]


@pytest.mark.parametrize("where", ["loss", "params"])
def test_a_non_finite_epoch_is_never_saved(tmp_path, where):
    saver = jdnn.ModelCheckpoint(tmp_path, keep=1)
    run = _epochs(saver, _begin(saver), 2)
    run.train_state = _state(3, value=np.nan if where == "params" else 3.0)
    run.epoch = 3
    run.history.append({"epoch": 3, "loss": np.nan if where == "loss" else 0.1})
    with pytest.warns(RuntimeWarning, match=r"epoch 3 not saved: .*the last finite checkpoint "
                                            r"stays \(epoch-0002.safetensors\)"):
        saver.on_epoch_end(run)
        saver.on_train_end(run)
    assert _files(tmp_path) == ["epoch-0002.safetensors"]


@pytest.mark.parametrize("guard_first", [False, True], ids=["saver_first", "guard_first"])
def test_a_diverging_run_keeps_its_last_finite_checkpoint(tmp_path, guard_first):
    callbacks = [jdnn.ModelCheckpoint(tmp_path, keep=1), jdnn.TerminateOnNaN()]
    with pytest.warns(RuntimeWarning) as caught:
        ts, history = _fit(optimizer=_exploding(2, 1e30), epochs=8, validation_data=None,
                           callbacks=callbacks[::-1] if guard_first else callbacks)
    assert not np.isfinite(history["loss"][-1]) and history.stopped_by == "non_finite"
    good = len(history) - 1
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and messages[0].startswith(f"ModelCheckpoint: epoch {good + 1} not "
                                                         f"saved: its loss is nan")
    assert messages[1].startswith("non-finite training loss")
    assert _files(tmp_path) == [f"epoch-{good:04d}.safetensors"]
    restored = checkpoint.restore(jdnn.ModelCheckpoint.latest(tmp_path))
    chex.assert_trees_all_equal(restored.params, ts.params)
    assert restored.metadata["epoch"] == good and np.isfinite(restored.metadata["record"]["loss"])


def test_the_final_state_is_always_saved_once(tmp_path):
    saver = jdnn.ModelCheckpoint(tmp_path, every=2, keep=None)
    run = _epochs(saver, _begin(saver), 5)
    saver.on_train_end(run)
    saver.on_train_end(run)                           # already on disk: not written again
    assert _files(tmp_path) == ["epoch-0002.safetensors", "epoch-0004.safetensors",
                                "epoch-0005.safetensors"]
    assert checkpoint.restore(tmp_path / "epoch-0005.safetensors").metadata["record"] == {
        "epoch": 5, "loss": 0.2}
    run.train_state = _state(3)                       # a callback restored epoch 3's state
    saver.on_train_end(run)
    assert checkpoint.restore(jdnn.ModelCheckpoint.latest(tmp_path)).metadata["epoch"] == 3
    untrained = jdnn.ModelCheckpoint(tmp_path / "none")
    untrained.on_train_end(_begin(untrained))         # nothing trained: nothing to keep
    assert _files(tmp_path / "none") == []


class Interrupt(Callback):
    """Ctrl-C after epoch `epoch`."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, run):
        if run.epoch == self.epoch:
            raise KeyboardInterrupt


def test_an_interrupted_run_keeps_its_progress(tmp_path):
    ts, history = _fit(epochs=4, validation_data=None,
                       callbacks=[jdnn.ModelCheckpoint(tmp_path, every=3), Interrupt(2)])
    assert history.stopped_by == "interrupted" and len(history) == 2
    assert _files(tmp_path) == ["epoch-0002.safetensors"]         # saved by on_train_end
    restored = checkpoint.restore(jdnn.ModelCheckpoint.latest(tmp_path))
    chex.assert_trees_all_equal(restored.params, ts.params)
    assert int(restored.step) == int(ts.step) == 2 * STEPS_PER_EPOCH


def test_an_interrupt_right_after_a_save_leaves_no_file_unaccounted_for(tmp_path, monkeypatch):
    """Ctrl-C lands just after epoch 2's file is renamed into place: that file is still the
    run's (rotated like the others, not saved twice under another name)."""
    saver = jdnn.ModelCheckpoint(tmp_path, keep=2)
    run = _epochs(saver, _begin(saver), 1)
    save = checkpoint.save

    def save_then_interrupt(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.callback, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _epochs(saver, run, 1)
    monkeypatch.undo()
    saver.on_train_end(run)                   # what fit does after an interrupt
    assert _files(tmp_path) == ["epoch-0001.safetensors", "epoch-0002.safetensors"]
    _epochs(saver, run, 2)
    assert _files(tmp_path) == ["epoch-0003.safetensors", "epoch-0004.safetensors"]


def test_an_unwritable_directory_fails_before_the_first_epoch(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(checkpoint.CheckpointError, match=r"ModelCheckpoint: cannot write "
                                                         r"checkpoints into .*file: it is a file"):
        _fit(callbacks=[jdnn.ModelCheckpoint(tmp_path / "file")])
    with pytest.raises(checkpoint.CheckpointError, match="file/sub: Not a directory"):
        _begin(jdnn.ModelCheckpoint(tmp_path / "file" / "sub"))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoint.disk.os, "open", refuse)
    with pytest.raises(checkpoint.CheckpointError, match="ro: Permission denied; pass a "
                                                         "directory this process can"):
        _begin(jdnn.ModelCheckpoint(tmp_path / "ro"))


@pytest.mark.parametrize("options, message", [
    (dict(every=0), "ModelCheckpoint: every must be a positive int, got 0"),
    (dict(keep=0), "ModelCheckpoint: keep must be a positive int, got 0"),
    (dict(every=1.5), "every must be a positive int, got 1.5"),
])
def test_model_checkpoint_checks_its_arguments(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        jdnn.ModelCheckpoint(tmp_path, **options)
    assert jdnn.ModelCheckpoint(tmp_path, every=np.int64(2)).every == 2


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
