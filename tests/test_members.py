"""The members engine: stacked members trained together, each with its own epoch orders,
stopped early one by one by masking."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
from jdnn.train.fit import epoch_orders
from jdnn.multi.members import chunk_orders, member, one_key, stack, train_members


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
    trained = train_members(state, curves, member_epoch, jnp.zeros((4, 1)), None,
                            epochs=np.int64(8), steps_per_epoch=np.int32(1), monitor="score",
                            mode="max", patience=np.int64(2), keep_best=True,
                            epochs_per_call=np.int64(3), progress=False)  # NumPy ints are ints
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


def test_train_members_rejects_bad_arguments_before_compiling():
    state, curves, member_epoch = _toy_members([[1, 2, 3, 4], [4, 3, 2, 1]])
    options = dict(steps_per_epoch=1, monitor="score", mode="max", progress=False)

    def run(**changes):
        train_members(state, curves, member_epoch, jnp.zeros((4, 1)), None,
                      **{"epochs": 2, **options, **changes})

    for name, value, expected in (("epochs", -1, "an int >= 0"),
                                  ("epochs", 2.0, "an int >= 0"),
                                  ("epochs_per_call", 0, "a positive int"),
                                  ("steps_per_epoch", 0, "a positive int"),
                                  ("patience", 0, "a positive int"),
                                  ("patience", True, "a positive int")):
        with pytest.raises(ValueError, match=f"train_members: {name} must be {expected}"):
            run(**{name: value})
    with pytest.raises(ValueError, match="train_members: mode must be 'max' or 'min'"):
        run(mode="maximum")
    with pytest.raises(ValueError, match=r"train_members: monitor 'val_score' is not recorded; "
                                         r"each epoch records \['loss', 'score'\]"):
        run(monitor="val_score")
    with pytest.raises(ValueError, match=r"train_members: train_state must be the stacked "
                                         r"TrainState .* step has shape \(\)"):
        train_members(member(state, 0), curves, member_epoch, jnp.zeros((4, 1)), None,
                      epochs=2, **options)


def test_member_indexes_like_a_list_and_names_a_bad_index():
    keys = jax.random.split(jax.random.key(0), 3)
    states = stack([jdnn.TrainState({"w": jnp.full(2, i, jnp.float32)}, {}, (), k,
                                    jnp.asarray(i, jnp.int32)) for i, k in enumerate(keys)])
    for i, expected in ((np.int64(1), 1), (jnp.asarray(2), 2), (-1, 2), (0, 0)):
        assert int(member(states, i).step) == expected
    for i in (3, -4, 1.0, True, "0", jnp.arange(2)):
        with pytest.raises(ValueError, match=r"member: i must be an int in \[-3, 3\) for a "
                                             r"state of 3 members"):
            member(states, i)
    with pytest.raises(ValueError, match="member: train_state must be the stacked"):
        member(member(states, 0), 0)


def test_one_key_takes_seeds_and_keys_and_names_anything_else():
    typed = jax.random.key(5)
    assert one_key("search", typed) is typed
    for seed in (5, np.int64(5), np.uint8(5)):
        np.testing.assert_array_equal(jax.random.key_data(one_key("search", seed)),
                                      jax.random.key_data(typed))
    legacy = jax.random.PRNGKey(5)  # a raw uint32[2] key: the same key, typed
    np.testing.assert_array_equal(jax.random.key_data(one_key("search", legacy)), legacy)
    for bad in ("0", 1.5, True):
        with pytest.raises(TypeError, match="fit_ensemble: key must be"):
            one_key("fit_ensemble", bad)
    for keys in (jax.random.split(typed, 2), jax.random.split(legacy, 3)):
        with pytest.raises(TypeError, match=r"fit_ensemble: key must be one key \(an int seed or "
                                            r"jax.random.key\(seed\)\), got an array of keys"):
            one_key("fit_ensemble", keys)
