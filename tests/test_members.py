"""The members engine: stacked members trained together, each with its own epoch orders,
stopped early one by one by masking."""

import math

import jax
import jax.numpy as jnp
import numpy as np

import jdnn
from jdnn.train.fit import epoch_orders
from jdnn.train.members import chunk_orders, stack, train_members


def _toy_members(curves):
    """Members whose `score` per epoch follows `curves` `(K, E)`; params count the updates."""
    k = len(curves)
    state = jdnn.TrainState({"w": jnp.zeros(k)}, {}, {}, jax.random.split(jax.random.key(0), k),
                            jnp.zeros(k, jnp.int32))

    def member_epoch(ts, curve, x, y, order):
        score = curve[ts.step]
        loss = jnp.where(jnp.isnan(score), jnp.nan, 1.0)
        ts = ts._replace(params={"w": ts.params["w"] + 1}, step=ts.step + 1)
        return ts, {"loss": loss, "score": score}

    return state, jnp.asarray(curves, jnp.float32), member_epoch


def test_a_member_stops_early_and_freezes_while_others_go_on():
    curves = [[1, 2, 3, 4, 5, 6, 7, 8],              # improves every epoch
              [1, 2, 2, 1, 9, 9, 9, 9],              # stalls after epoch 2
              [1, 2, math.nan, 4, 5, 6, 7, 8]]       # diverges at epoch 3
    state, curves, member_epoch = _toy_members(curves)
    trained = train_members(state, curves, member_epoch, jnp.zeros((4, 1)), None, epochs=8,
                            steps_per_epoch=1, monitor="score", mode="max", patience=2,
                            keep_best=True, epochs_per_call=3, progress=False)
    assert [len(h) for h in trained.histories] == [8, 4, 3]
    np.testing.assert_array_equal(trained.train_state.params["w"], [8, 4, 3])
    np.testing.assert_array_equal(trained.best_state.params["w"], [8, 2, 2])
    np.testing.assert_array_equal(trained.best_epoch, [8, 2, 2])
    assert trained.histories[0].stop_reason is None
    assert "did not improve for 2 epochs" in trained.histories[1].stop_reason
    assert "non-finite loss at epoch 3" in trained.histories[2].stop_reason




def test_chunk_orders_are_the_orders_fit_would_draw_for_each_member_and_epoch():
    keys = jax.random.split(jax.random.key(0), 3)
    states = stack([jdnn.TrainState({}, {}, (), k, jnp.asarray(s, jnp.int32))
                    for k, s in zip(keys, (0, 5, 9))])
    orders = chunk_orders(states, 20, 2, steps_per_epoch=4)
    assert orders.shape == (2, 3, 20)
    for i, (k, s) in enumerate(zip(keys, (0, 5, 9))):
        for e in range(2):
            one = jdnn.TrainState({}, {}, (), k, jnp.asarray(s + 4 * e, jnp.int32))
            np.testing.assert_array_equal(orders[e, i], epoch_orders(one, 20))
