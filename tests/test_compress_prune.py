"""Magnitude pruning: exact counts, largest kept, the Zhu & Gupta schedule at given steps, and
masks that stay applied through optax steps and through `fit`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdnn
from jdnn.compress import gradual, polynomial_sparsity, prune, sparsity


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {"0_dense": {"w": jnp.asarray(rng.normal(size=(8, 10)), jnp.float32),
                        "b": jnp.asarray(rng.normal(size=(10,)), jnp.float32)},
            "1_dense": {"w": jnp.asarray(3 * rng.normal(size=(10, 4)), jnp.float32),
                        "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}}


def test_per_layer_prunes_exactly_k_smallest_and_leaves_biases():
    params = _params()
    pruned, masks = prune(params, 0.7)
    for name, n in (("0_dense", 80), ("1_dense", 40)):
        w, kept = np.asarray(params[name]["w"]), np.asarray(masks[name]["w"])
        assert (~kept).sum() == round(0.7 * n)
        assert np.abs(w[kept]).min() >= np.abs(w[~kept]).max()   # the largest are kept
        np.testing.assert_array_equal(pruned[name]["w"], np.where(kept, w, 0))
        np.testing.assert_array_equal(pruned[name]["b"], params[name]["b"])
        assert np.asarray(masks[name]["b"]).all()
    assert sparsity(pruned) == {"0_dense/w": 0.7, "1_dense/w": 0.7}


def test_global_scope_uses_one_threshold_over_all_kernels():
    params = _params()
    pruned, masks = prune(params, 0.5, scope="global")
    ws = [np.asarray(params[n]["w"]) for n in ("0_dense", "1_dense")]
    ks = [np.asarray(masks[n]["w"]) for n in ("0_dense", "1_dense")]
    assert sum((~k).sum() for k in ks) == 60
    kept_min = min(np.abs(w[k]).min() for w, k in zip(ws, ks))
    assert kept_min >= max(np.abs(w[~k]).max() for w, k in zip(ws, ks))
    # the second layer's weights are 3x larger, so it loses fewer
    assert sparsity(pruned)["1_dense/w"] < 0.5 < sparsity(pruned)["0_dense/w"]


def test_where_selects_the_leaves():
    pruned, _ = prune(_params(), 0.5, where=r"^1_dense/w$")
    assert sparsity(pruned) == {"0_dense/w": 0.0, "1_dense/w": 0.5}


@pytest.mark.parametrize("call, match", [
    (lambda p: prune(p, 1.0), r"prune: sparsity must be a fraction in \[0, 1\).*got 1.0"),
    (lambda p: prune(p, "0.5"), r"sparsity must be a fraction"),
    (lambda p: prune(p, 0.5, scope="model"), r"scope must be 'layer' .* got 'model'"),
    (lambda p: prune(p, 0.5, where="conv"), r"where='conv' selects no parameter.*0_dense/w"),
])
def test_bad_arguments_say_what_to_pass(call, match):
    with pytest.raises(ValueError, match=match):
        call(_params())


def test_schedule_follows_zhu_and_gupta_at_given_steps():
    schedule = polynomial_sparsity(0.8, 10, 110, frequency=20)

    def expected(t):   # s_f + (s_i - s_f)(1 - (t - t0) / (n dt))^3, t on the update grid
        return 0.8 * (1 - (1 - (t - 10) / 100) ** 3)

    for step, at in [(0, 10), (10, 10), (29, 10), (30, 30), (105, 90), (110, 110), (500, 110)]:
        assert float(schedule(step)) == pytest.approx(expected(at), abs=1e-6), step
    assert float(schedule(30)) == pytest.approx(0.3904, abs=1e-6)
    with pytest.raises(ValueError, match="end_step must be an int > begin_step"):
        polynomial_sparsity(0.8, 10, 10)
    with pytest.raises(ValueError, match="initial_sparsity .* must not exceed"):
        polynomial_sparsity(0.5, 0, 10, initial_sparsity=0.6)


def test_masks_stay_applied_through_optax_steps():
    params = _params()
    tx = gradual(optax.sgd(0.1), 0.75, begin_step=0, end_step=8, frequency=2)
    state = tx.init(params)
    step = jax.jit(tx.update)
    rng = np.random.default_rng(1)
    zero_before = None
    for t in range(12):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        w = np.asarray(params["0_dense"]["w"])
        np.testing.assert_array_equal(w == 0, ~np.asarray(state.masks["0_dense"]["w"]))
        if zero_before is not None:   # pruned once, pruned for good (gradients push them)
            assert (w[zero_before] == 0).all()
        zero_before = w == 0
        expected = float(polynomial_sparsity(0.75, 0, 8, frequency=2)(t))
        assert sparsity(params)["0_dense/w"] == pytest.approx(expected, abs=1 / 80), t
    assert sparsity(params) == {"0_dense/w": 0.75, "1_dense/w": 0.75}
    assert (np.asarray(params["0_dense"]["b"]) != 0).all()


def test_one_shot_zeros_are_kept_and_update_needs_params():
    pruned, _ = prune(_params(), 0.5)
    tx = gradual(optax.adam(1e-2), 0.5, initial_sparsity=0.5, end_step=10)
    state = tx.init(pruned)
    grads = jax.tree.map(jnp.ones_like, pruned)
    updates, _ = jax.jit(tx.update)(grads, state, pruned)
    assert sparsity(optax.apply_updates(pruned, updates))["0_dense/w"] == 0.5
    with pytest.raises(ValueError, match=r"gradual: update needs the current params"):
        tx.update(grads, state)


def test_fit_prunes_with_nothing_new():
    (x, y), _ = jdnn.data.digits()
    x, y = x[:256], y[:256]
    model = jdnn.serial(jdnn.Dense(32), jdnn.Relu(), jdnn.Dense(10))
    tx = gradual(optax.adam(1e-2), 0.8, end_step=12, frequency=4)   # 8 steps an epoch
    train_state, history = jdnn.fit(model, (x, y), loss=jdnn.losses.softmax_cross_entropy,
                                    optimizer=tx, epochs=3, batch_size=32, key=0,
                                    progress=False)
    achieved = sparsity(train_state.params)   # k = round(0.8 * n) of each kernel's n
    assert achieved == {"0_dense/w": round(0.8 * 64 * 32) / (64 * 32), "2_dense/w": 0.8}
    assert history["loss"][-1] < history["loss"][0]
