"""fit, evaluate and predict over a stream of batches (jdnn.train.stream): the same steps as
arrays, one compilation, interrupts that keep each step, resuming mid-epoch bit for bit, and
errors that name the batch."""

import os
import signal
import time

import jax
import numpy as np
import optax
import pytest

import jdnn
from tests.compiles import Compiles
from jdnn.checkpoint.callback import ModelCheckpoint
from jdnn.data.batching import epoch_order
from jdnn.train.stream import decode, encode

N, D, BATCH = 48, 6, 8               # 6 full batches per pass
LOSS = jdnn.losses.softmax_cross_entropy
OPTIMIZER = optax.adam(1e-2)

rng = np.random.default_rng(0)
X = rng.normal(size=(N, D)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int32)


def model(hidden=16):
    return jdnn.serial(jdnn.Dense(hidden), jdnn.Relu(), jdnn.Dense(2))


def fresh_state(hidden=16):
    return jdnn.TrainState.create(model(hidden), OPTIMIZER, 0, (BATCH, D))


def fit(data, **kw):
    kw.setdefault("epochs", 2)
    if "train_state" not in kw:
        kw.setdefault("key", 0)
    return jdnn.fit(model(), data, loss=LOSS, optimizer=OPTIMIZER, progress=False, **kw)


def assert_same_params(a, b):
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


class Ordered:
    """A re-iterable source of the batches fit's array path would cut: each pass (epoch) in
    `epoch_order(key, step, N)`'s order, as `mode="step"` draws them."""

    def __init__(self, key_data):
        self.key_data, self.passes = key_data, 0

    def __len__(self):
        return N // BATCH

    def __iter__(self):
        order = epoch_order(self.key_data, self.passes * len(self), N)
        self.passes += 1
        return iter([(X[i], Y[i]) for i in order.reshape(-1, BATCH)])


class Resumable:
    """An endless iterator over fixed batches that can save and restore its position, and can
    raise `error` once, when batch `fail_at` is read."""

    def __init__(self, batch=BATCH, fail_at=None, error=None):
        self.index, self.batch, self.fail_at, self.error = 0, batch, fail_at, error

    def __iter__(self):
        return self

    def __next__(self):
        if self.index == self.fail_at:
            self.fail_at = None
            raise self.error
        start = self.index * self.batch % N
        self.index += 1
        end = min(start + self.batch, N)    # a short batch at the end of each pass
        return X[start:end], Y[start:end]

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = state["index"]


# --- training over a stream -------------------------------------------------------------------


def test_a_stream_of_the_same_batches_trains_exactly_as_the_arrays_do():
    start = fresh_state()
    key_data = np.asarray(jax.random.key_data(start.key))
    arrays, _ = fit((X, Y), batch_size=BATCH, mode="step", train_state=fresh_state())
    streamed, history = fit(Ordered(key_data), train_state=start)
    assert_same_params(arrays, streamed)
    assert int(streamed.step) == 2 * N // BATCH and len(history) == 2
    assert set(history.records[0]) == {"epoch", "loss", "accuracy", "seconds"}


def test_one_compilation_per_fit_with_a_padded_short_batch():
    source = Resumable(batch=7)              # passes of 7, 7, ..., 6: a short batch each pass
    with Compiles() as compiles:
        state, history = jdnn.fit(model(13), source, loss=LOSS, optimizer=OPTIMIZER, epochs=3,
                                  key=0, steps_per_epoch=5, progress=False)
    assert int(state.step) == 15 and len(history) == 3
    assert sorted(compiles.names) == ["jit(create)", "jit(step)"], compiles.names


def test_a_short_batch_is_masked():
    # One pass of 48 examples in batches of 20, 20, 8: the last padded to 20 and masked, so
    # the means are over the 48 real examples, as evaluate on arrays gives them.
    state = fresh_state()
    batches = [(X[i:i + 20], Y[i:i + 20]) for i in range(0, N, 20)]
    on_arrays = jdnn.evaluate(model(), state, (X, Y), loss=LOSS)
    streamed = jdnn.evaluate(model(), state, iter(batches), loss=LOSS)
    assert streamed.keys() == on_arrays.keys()
    for name in on_arrays:
        np.testing.assert_allclose(streamed[name], on_arrays[name], rtol=1e-5)


def test_predict_over_a_stream_gives_every_example_once_in_order():
    state = fresh_state()
    batches = (X[i:i + 20] for i in range(0, N, 20))
    np.testing.assert_allclose(jdnn.predict(model(), state, batches),
                               jdnn.predict(model(), state, X), rtol=1e-5, atol=1e-6)
    pairs = [(X[i:i + 20], Y[i:i + 20]) for i in range(0, N, 20)]   # (x, y): x is used
    assert jdnn.predict(model(), state, iter(pairs)).shape == (N, 2)


def test_validation_data_may_be_a_stream():
    batches = [(X[i:i + BATCH], Y[i:i + BATCH]) for i in range(0, N, BATCH)]

    class Batches:
        def __iter__(self):
            return iter(batches)

    _, history = fit(Batches(), steps_per_epoch=6, validation_data=Batches())
    on_arrays = jdnn.evaluate(model(), _, (X, Y), loss=LOSS)
    assert history.records[-1]["val_loss"] == pytest.approx(on_arrays["loss"], rel=1e-5)


# --- interrupts, errors in the source, resuming -----------------------------------------------


def test_an_interrupt_keeps_every_step_and_resuming_continues_bit_for_bit():
    whole, _ = fit(Resumable(), steps_per_epoch=4, epochs=3)
    source = Resumable(fail_at=6, error=KeyboardInterrupt())
    stopped, history = fit(source, steps_per_epoch=4, epochs=3)
    assert int(stopped.step) == 6 and history.stopped_by == "interrupted"
    assert "batch 2 of epoch 2" in history.stop_reason and len(history) == 1
    assert source.index == 6        # rewound over the batches read ahead, not trained on
    resumed, history = fit(source, steps_per_epoch=4, epochs=2, train_state=stopped)
    assert [r["epoch"] for r in history.records] == [2, 3]
    assert_same_params(whole, resumed)


def test_ctrl_c_during_an_epoch_stops_between_steps_and_resuming_is_bit_for_bit():
    # A real SIGINT, sent while batch 6 is read ahead: it lands in the main thread wherever it
    # is (waiting for a batch, dispatching a step); every step taken is kept, the source is
    # rewound to the last one, and the run resumed from there ends as an uninterrupted one.
    whole, _ = fit(Resumable(), steps_per_epoch=4, epochs=3)

    class Signalling(Resumable):
        def __next__(self):
            if self.index == 6 and self.fail_at is None:
                self.fail_at = -1
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)            # the main thread takes the signal meanwhile
            return super().__next__()

    source = Signalling()
    stopped, history = fit(source, steps_per_epoch=4, epochs=3)
    step = int(stopped.step)
    assert history.stopped_by == "interrupted" and 0 < step < 12 and source.index == step
    resumed, _ = fit(source, steps_per_epoch=4, epochs=3 - step // 4, train_state=stopped)
    assert int(resumed.step) == 12
    assert_same_params(whole, resumed)


def test_an_error_in_the_source_is_raised_with_the_last_steps_state():
    source = Resumable(fail_at=5, error=OSError("the disk went away"))
    with pytest.raises(OSError, match="the disk went away") as caught:
        fit(source, steps_per_epoch=4)
    assert int(caught.value.train_state.step) == 5


def test_a_checkpoint_records_the_position_and_a_new_process_resumes_from_it(tmp_path):
    whole, _ = fit(Resumable(), steps_per_epoch=4, epochs=3)
    source = Resumable(fail_at=6, error=KeyboardInterrupt())
    fit(source, steps_per_epoch=4, epochs=3, callbacks=[ModelCheckpoint(tmp_path)])
    path = ModelCheckpoint.latest(tmp_path)
    checkpoint = jdnn.checkpoint.restore(path, model())
    assert checkpoint.metadata["data_position"] == {"step": 6, "state": {"index": 6}}
    # as in a new process: a new source at its start, the state restored from the file
    resumed, history = fit(Resumable(), steps_per_epoch=4, epochs=2,
                           train_state=checkpoint.train_state(OPTIMIZER),
                           callbacks=[ModelCheckpoint(tmp_path)])
    assert_same_params(whole, resumed)
    last = jdnn.checkpoint.restore(ModelCheckpoint.latest(tmp_path), model())
    assert last.metadata["data_position"] == {"step": 12, "state": {"index": 12}}


def test_a_position_json_cannot_hold_is_left_out_of_the_checkpoint_with_a_warning(tmp_path):
    class Opaque(Resumable):
        def get_state(self):
            return {"index": self.index, "rng": object()}

    with pytest.warns(RuntimeWarning, match="the data source's position cannot be saved"):
        fit(Opaque(), steps_per_epoch=4, epochs=1, callbacks=[ModelCheckpoint(tmp_path)])
    checkpoint = jdnn.checkpoint.restore(ModelCheckpoint.latest(tmp_path), model())
    assert "data_position" not in checkpoint.metadata and int(checkpoint.step) == 4


def test_a_source_without_a_position_is_fast_forwarded_when_resumed():
    batches = [(X[i:i + BATCH], Y[i:i + BATCH]) for i in range(0, N, BATCH)]

    class Batches:                           # re-iterable, no get_state
        def __len__(self):
            return len(batches)

        def __iter__(self):
            return iter(batches)

    # 4 of the 6 batches per epoch: epoch 2 is batches 4, 5, 0, 1, so a source read from its
    # start again (not fast-forwarded) would train on other batches
    whole, _ = fit(Batches(), epochs=2, steps_per_epoch=4)
    first, _ = fit(Batches(), epochs=1, steps_per_epoch=4)
    resumed, _ = fit(Batches(), epochs=1, steps_per_epoch=4, train_state=first)
    assert_same_params(whole, resumed)
    batches[4:] = []                         # the control: epoch 2 on batches 0-3 again
    control, _ = fit(Batches(), epochs=2, steps_per_epoch=4)
    with pytest.raises(AssertionError):
        assert_same_params(whole, control)


def test_positions_in_bytes_are_kept_as_base64_json():
    assert encode(b"\x00state") == {"base64": "AHN0YXRl"}
    assert decode(encode(b"\x00state")) == b"\x00state"
    assert decode({"index": 3}) == {"index": 3}


def test_grain_iterators_resume_mid_epoch(tmp_path):
    grain = pytest.importorskip("grain")

    def dataset():
        return (grain.MapDataset.source(np.arange(N)).shuffle(seed=3)
                .map(lambda i: (X[i], Y[i])).batch(BATCH))

    whole, _ = fit(dataset(), epochs=2)
    interrupted = dataset().map(lambda b: b)

    class Interrupting:                     # the dataset, interrupted once at batch 4
        def __init__(self):
            self.reads = 0

        def __len__(self):
            return len(interrupted)

        def __iter__(self):
            inner = iter(interrupted)
            outer = self

            class It:
                def __next__(self):
                    outer.reads += 1
                    if outer.reads == 5:
                        raise KeyboardInterrupt
                    return next(inner)

                def get_state(self):
                    return inner.get_state()

                def set_state(self, state):
                    inner.set_state(state)

            return It()

    fit(Interrupting(), epochs=2, callbacks=[ModelCheckpoint(tmp_path)])
    checkpoint = jdnn.checkpoint.restore(ModelCheckpoint.latest(tmp_path), model())
    assert checkpoint.metadata["data_position"]["step"] == 4
    resumed, _ = fit(dataset(), epochs=2, train_state=checkpoint.train_state(OPTIMIZER),
                     callbacks=[ModelCheckpoint(tmp_path)])
    assert_same_params(whole, resumed)


def test_a_grain_data_loader_trains_and_its_bytes_position_is_saved(tmp_path):
    gp = pytest.importorskip("grain.python")

    class Pairs:
        def __len__(self):
            return N

        def __getitem__(self, i):
            return X[i], Y[i]

    loader = gp.DataLoader(data_source=Pairs(), operations=[gp.Batch(BATCH)], worker_count=0,
                           sampler=gp.IndexSampler(N, shard_options=gp.NoSharding(),
                                                   shuffle=True, seed=0, num_epochs=None))
    state, _ = fit(loader, steps_per_epoch=3, epochs=1, callbacks=[ModelCheckpoint(tmp_path)])
    position = jdnn.checkpoint.restore(ModelCheckpoint.latest(tmp_path)).metadata[
        "data_position"]
    assert position["step"] == 3 and isinstance(decode(position["state"]), bytes)


# --- bad input --------------------------------------------------------------------------------


def stream(*batches):
    return iter(batches)


@pytest.mark.parametrize("batches, message", [
    ((X[:8],), r"train_data batch 0 must be an \(x, y\) pair of arrays, got a single array of "
               r"shape \(8, 6\); make the source yield \(x, y\) tuples"),
    (((X[:8], Y[:8]), (X[:8], Y[:8]), {"x": X[:8]}),
     r"batch 2 must be an \(x, y\) pair of arrays, got a dict with keys \['x'\]"),
    (((X[:8], Y[:8]), (X[:8, :5], Y[:8])),
     r"batch 1 has x of shape \(8, 5\) and dtype float32, expected \(<=8, 6\) of dtype "
     r"float32 like batch 0; .* same per-example shape"),
    (((X[:8], Y[:8]), (X[:8], Y[:7])),
     r"batch 1 has x of shape \(8, 6\) but y of shape \(7,\); x and y must hold the same"),
    (((X[:8], Y[:8]), (X[:9], Y[:9])),
     r"batch 1 has 9 examples, more than the batch size 8 .* pass batch_size="),
    (((X[:8], Y[:8]), (X[:8].astype(np.float64), Y[:8])),
     r"batch 1 has x of shape \(8, 6\) and dtype float64, expected .* dtype float32"),
])
def test_bad_batches_are_errors_naming_the_batch(batches, message):
    with pytest.raises(ValueError, match=message):
        fit(stream(*batches), steps_per_epoch=len(batches), epochs=1)


def test_an_iterator_that_runs_dry_inside_an_epoch_says_how_to_fix_it():
    with pytest.raises(ValueError, match=r"train_data ran out after batch 2 of epoch 1, which "
                                         r"has steps_per_epoch=4 .* make it repeat"):
        fit(stream((X[:8], Y[:8]), (X[:8], Y[:8])), steps_per_epoch=4)


@pytest.mark.parametrize("data, kw, message", [
    (lambda: stream((X[:8], Y[:8])), {}, r"a stream with no length \(tuple_iterator\); pass "
                                         r"steps_per_epoch="),
    (lambda: stream(), {"steps_per_epoch": 1}, "train_data yielded no batches"),
    (lambda: (X, Y), {"steps_per_epoch": 2, "batch_size": 8}, "steps_per_epoch= counts the "
                                                              "batches of a stream"),
    (lambda: stream((X[:8], Y[:8])), {"steps_per_epoch": 1, "drop_remainder": True},
     r"drop the short batch there \(e.g. grain's"),
    (lambda: stream((X[:8], Y[:8] + 5)), {"steps_per_epoch": 1}, "train_data"),  # labels
])
def test_stream_options_and_first_batches_are_checked_before_training(data, kw, message):
    with pytest.raises(ValueError, match=message):
        fit(data(), **kw)
