"""DP-SGD (`jdnn.privacy.dp`): the step's update, noise scale and reproducibility; the noise draw
against its reference computation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdnn
from jdnn.privacy.dp import NOISE_BLOCK, dp_train_step_fn, gaussian_noise, make_dp_train_step
from jdnn.privacy.per_example import clip_and_aggregate, per_example_grads
from tests.test_ghost import _setup

LOSS = jdnn.losses.softmax_cross_entropy
B = 6
MASK = np.array([True, True, False, True, True, True])


def _train_state(model, optimizer, shape, seed=0):
    params, state, x, y = _setup(model, shape, seed=seed)
    ts = jdnn.TrainState(params, state, optimizer.init(params), jax.random.key(seed),
                         jnp.zeros((), jnp.int32))
    return ts, x, y


def _copy(tree):
    return jax.tree.map(lambda a: a.copy(), tree)


def test_dp_step_without_noise_applies_the_clipped_mean_gradient():
    model, optimizer = jdnn.serial(jdnn.Dense(8), jdnn.Relu(), jdnn.Dense(3)), optax.sgd(0.1)
    ts, x, y = _train_state(model, optimizer, (B, 5))
    mask = jnp.asarray(MASK)
    clipped, norms = jax.jit(lambda: clip_and_aggregate(
        per_example_grads(model, LOSS, ts.params, ts.state, x, y, mask=mask), 0.5, mask=mask))()
    expected = jax.tree.map(lambda p, g: np.asarray(p) - 0.1 * np.asarray(g), ts.params, clipped)
    for method in ("ghost", "vmap"):
        step = make_dp_train_step(model, LOSS, optimizer, l2_norm_clip=0.5, noise_multiplier=0.0,
                                  method=method, metrics=("accuracy",))
        new, metrics = step(_copy(ts), x, y, mask)
        chex.assert_trees_all_close(new.params, expected, rtol=1e-5, atol=1e-7)
        assert int(new.step) == 1 and set(metrics) == {"loss", "clipped", "grad_norm",
                                                       "accuracy"}
        np.testing.assert_allclose(metrics["grad_norm"], np.mean(np.asarray(norms)[MASK]),
                                   rtol=1e-5)
        np.testing.assert_allclose(metrics["clipped"], np.mean(np.asarray(norms)[MASK] > 0.5))


def test_dp_step_noise_has_the_stated_scale_and_is_reproducible_from_the_key():
    model, optimizer = jdnn.serial(jdnn.Dense(40), jdnn.Relu(), jdnn.Dense(3)), optax.sgd(1.0)
    ts, x, y = _train_state(model, optimizer, (B, 30))
    clip, sigma = 0.5, 2.0
    noiseless = make_dp_train_step(model, LOSS, optimizer, l2_norm_clip=clip,
                                   noise_multiplier=0.0)(_copy(ts), x, y)[0].params
    step = make_dp_train_step(model, LOSS, optimizer, l2_norm_clip=clip,
                              noise_multiplier=sigma)
    first = step(_copy(ts), x, y)[0]
    again = step(_copy(ts), x, y)[0]
    other = step(_copy(ts._replace(key=jax.random.key(99))), x, y)[0]
    noise = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(noiseless),
                                                           jax.tree.leaves(first.params))])
    assert noise.size > 1300
    std = sigma * clip / B  # on the mean: sigma * C on the sum, divided by the batch
    assert abs(np.std(noise) / std - 1) < 0.1 and abs(np.mean(noise)) < 0.1 * std
    chex.assert_trees_all_equal(first.params, again.params)
    assert not np.allclose(first.params["2_dense"]["w"], other.params["2_dense"]["w"])
    assert not np.array_equal(first.key, ts.key)


def test_masked_dp_step_scales_the_noise_by_the_examples_the_mask_keeps():
    # 5 real examples padded to 8: the noise on the mean is sigma * C / 5, not / 8.
    model, optimizer = jdnn.serial(jdnn.Dense(3)), optax.sgd(1.0)  # one layer: compiles fast
    ts, x, y = _train_state(model, optimizer, (8, 450))
    mask = jnp.asarray([True, True, False, True, True, False, True, False])
    clip, sigma = 0.5, 2.0
    step = make_dp_train_step(model, LOSS, optimizer, l2_norm_clip=clip, noise_multiplier=sigma)
    # Two keys, the same clipped mean gradient (no dropout): the difference is noise alone,
    # with twice the variance of one draw.
    a = step(_copy(ts), x, y, mask)[0].params
    b = step(_copy(ts._replace(key=jax.random.key(1))), x, y, mask)[0].params
    difference = np.concatenate([np.ravel(u - v) for u, v in zip(jax.tree.leaves(a),
                                                                jax.tree.leaves(b))])
    assert difference.size > 1300
    measured = np.std(difference) / np.sqrt(2)
    expected = sigma * clip / 5
    assert abs(measured / expected - 1) < 0.1, (measured, expected, sigma * clip / 8)
    assert abs(np.mean(difference)) < 0.1 * expected


def test_dp_step_rejects_bad_settings():
    model, optimizer = jdnn.serial(jdnn.Dense(3)), optax.sgd(0.1)
    with pytest.raises(ValueError, match="method must be one of"):
        make_dp_train_step(model, LOSS, optimizer, l2_norm_clip=1.0, noise_multiplier=1.0,
                           method="fast")
    with pytest.raises(ValueError, match="l2_norm_clip must be a finite number > 0, got 0.0"):
        make_dp_train_step(model, LOSS, optimizer, l2_norm_clip=0.0, noise_multiplier=1.0)
    for clip in (float("inf"), float("nan"), -1.0, "1.0", True, None):
        with pytest.raises(ValueError, match=r"make_dp_train_step: l2_norm_clip must be a "
                                             r"finite number > 0, got"):
            make_dp_train_step(model, LOSS, optimizer, l2_norm_clip=clip, noise_multiplier=1.0)
    for sigma in (float("inf"), float("nan"), -0.5, "1.1"):
        with pytest.raises(ValueError, match=r"make_dp_train_step: noise_multiplier must be a "
                                             r"finite number >= 0, got"):
            make_dp_train_step(model, LOSS, optimizer, l2_norm_clip=1.0, noise_multiplier=sigma)
    with pytest.raises(TypeError, match=r"make_dp_train_step: optimizer must be an optax "
                                        r"GradientTransformation, got the function sgd"):
        make_dp_train_step(model, LOSS, optax.sgd, l2_norm_clip=1.0, noise_multiplier=1.0)
    with pytest.raises(TypeError, match=r"make_dp_train_step: loss must be a per-example loss"):
        make_dp_train_step(model, "cross_entropy", optimizer, l2_norm_clip=1.0,
                           noise_multiplier=1.0)
    with pytest.raises(ValueError, match=r"dp_train_step_fn: method must be one of"):
        dp_train_step_fn(model, LOSS, optimizer, l2_norm_clip=1.0, noise_multiplier=1.0,
                         method="fast")
    # NumPy and 0-d JAX numbers are numbers
    dp_train_step_fn(model, LOSS, optimizer, l2_norm_clip=np.float32(1.0),
                     noise_multiplier=jnp.asarray(1.1))


# ---------------------------------------------------------------------------------------------
# The noise.


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gaussian_noise_is_one_jax_random_normal_draw_cut_into_the_leaves(dtype):
    # 2,061 entries (odd): the draw is rounded up to 2,064 and its first 2,061 entries used.
    with jax.enable_x64(dtype == "float64"):
        tree = {"w": jnp.ones((40, 50), dtype), "b": jnp.zeros((51,), dtype),
                "c": [jnp.full((5, 2), 3.0, dtype)]}
        key, std = jax.random.key(4), 0.25
        got = jax.jit(lambda k: gaussian_noise(k, tree, std))(key)
        size = -(-2061 // NOISE_BLOCK) * NOISE_BLOCK
        assert size == 2064
        with jax.threefry_partitionable(False):
            draw = np.asarray(jax.random.normal(key, (size,), dtype))
        # jax.tree order: "b" (51), "c" (10), "w" (2000). `std` is a power of two, so each
        # entry is one exact product and one rounded sum, fused or not.
        expected = {"b": 0.0 + std * draw[:51], "c": [3.0 + std * draw[51:61].reshape(5, 2)],
                    "w": 1.0 + std * draw[61:2061].reshape(40, 50)}
        chex.assert_trees_all_equal_shapes_and_dtypes(got, tree)
        chex.assert_trees_all_close(got, expected, rtol=0, atol=0)


def test_gaussian_noise_is_reproducible_from_the_key_and_fresh_for_each_key_and_leaf():
    tree = {"w": jnp.zeros((300, 7)), "b": jnp.zeros((33,)), "c": jnp.zeros((5, 5, 3)),
            "twins": [jnp.zeros((64, 64)), jnp.zeros((64, 64))]}
    noise = jax.jit(lambda k: gaussian_noise(k, tree, 2.0))
    first, again, other = noise(jax.random.key(1)), noise(jax.random.key(1)), noise(
        jax.random.key(2))
    chex.assert_trees_all_equal(first, again)
    chex.assert_trees_all_equal_shapes_and_dtypes(first, tree)
    flat = [np.concatenate([np.ravel(a) for a in jax.tree.leaves(t)]) for t in (first, other)]
    assert abs(np.std(flat[0]) / 2.0 - 1) < 0.05 and abs(np.mean(flat[0])) < 0.05
    assert abs(np.corrcoef(*flat)[0, 1]) < 0.05  # another key: independent noise
    twins = [np.ravel(a) for a in first["twins"]]
    assert abs(np.corrcoef(*twins)[0, 1]) < 0.05  # leaves of one shape: not the same noise
    assert gaussian_noise(jax.random.key(0), {}, 1.0) == {}
