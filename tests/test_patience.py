"""One meaning of `patience`: `jdnn.EarlyStopping` (in `fit`) and the members engine under
`jdnn.search` (`train_members`) stop the same metric sequence at the same epoch, Keras' epoch:
the `patience`-th consecutive epoch without improvement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
from jdnn.multi.members import train_members
from jdnn.train.callbacks import Run

# Scores to maximize, one per epoch; with the epoch each patience (1, 2, 3) stops after, by
# Keras' rule (None: runs all 8 epochs).
CURVES = {
    "stalls_after_2": ([1, 2, 2, 2, 2, 2, 2, 2], {1: 3, 2: 4, 3: 5}),
    "recovers_in_time": ([1, 2, 1, 3, 2, 1, 4, 4], {1: 3, 2: 6, 3: None}),
    "never_improves": ([5, 4, 3, 2, 1, 0, -1, -2], {1: 2, 2: 3, 3: 4}),
    "improves_always": ([1, 2, 3, 4, 5, 6, 7, 8], {1: None, 2: None, 3: None}),
}


def _early_stopping_stop(curve, patience):
    """The epoch `EarlyStopping` ends the run after, driving its hooks as `fit` does."""
    stopper = jdnn.EarlyStopping("score", patience=patience, mode="max", restore_best=False)
    run = Run(jdnn.serial(jdnn.Dense(1)), None, jdnn.History())
    stopper.on_train_begin(run)
    for epoch, score in enumerate(curve, start=1):
        run.history.append({"epoch": epoch, "loss": 1.0, "score": float(score)})
        run.epoch = epoch
        stopper.on_epoch_end(run)
        if run.stop_reason is not None:
            return epoch
    return None


def _members_stops(curves, patience):
    """The epoch each member of `train_members` stops after (None: it ran every epoch)."""
    k, epochs = len(curves), len(curves[0])
    state = jdnn.TrainState({"w": jnp.zeros(k)}, {}, {}, jax.random.split(jax.random.key(0), k),
                            jnp.zeros(k, jnp.int32))

    def member_epoch(ts, curve, x, y, order):
        ts = ts._replace(params={"w": ts.params["w"] + 1}, step=ts.step + 1)
        return ts, {"loss": jnp.float32(1.0), "score": curve[ts.step - 1]}

    trained = train_members(state, jnp.asarray(curves, jnp.float32), member_epoch,
                            jnp.zeros((4, 1)), None, epochs=epochs, steps_per_epoch=1,
                            monitor="score", mode="max", patience=patience, progress=False)
    return [len(h) if h.stop_reason else None for h in trained.histories]


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_early_stopping_and_search_members_stop_at_the_same_epoch(patience):
    names = list(CURVES)
    curves = [CURVES[name][0] for name in names]
    expected = [CURVES[name][1][patience] for name in names]
    callback = [_early_stopping_stop(curve, patience) for curve in curves]
    members = _members_stops(curves, patience)
    assert callback == expected, dict(zip(names, callback))
    assert members == expected, dict(zip(names, members))


def test_early_stopping_patience_zero_stops_at_the_first_epoch_without_improvement():
    assert _early_stopping_stop([1, 2, 2, 3], 0) == 3
    assert _early_stopping_stop(np.arange(8), 0) is None
