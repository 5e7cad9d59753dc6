"""The NumPy reference optimizers against optax, step for step in float64; and the tree helpers."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdnn.reference import optimizers as ref
from jdnn.reference.tree import tree_leaves, tree_map, tree_map_with_path, tree_paths

STEPS = 5


def _tree(rng):
    return {
        "0_dense": {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))},
        "1_relu": {},
        "2_batchnorm": {"scale": rng.normal(size=(4,)), "bias": rng.normal(size=(4,))},
        "3_dense": {"w": rng.normal(size=(4, 2)), "b": rng.normal(size=(2,))},
    }


def _problem():
    rng = np.random.default_rng(0)
    params = _tree(rng)
    grads = [_tree(rng) for _ in range(STEPS)]
    return params, grads


CASES = {
    "sgd": (lambda: ref.sgd(0.1), lambda: optax.sgd(0.1, momentum=0.0)),
    "sgd_momentum": (lambda: ref.sgd(0.05, momentum=0.9), lambda: optax.sgd(0.05, momentum=0.9)),
    "sgd_nesterov": (lambda: ref.sgd(0.05, momentum=0.8, nesterov=True),
                     lambda: optax.sgd(0.05, momentum=0.8, nesterov=True)),
    "adam": (lambda: ref.adam(0.01), lambda: optax.adam(0.01)),
    "adam_custom": (lambda: ref.adam(0.02, b1=0.5, b2=0.9, eps=1e-3),
                    lambda: optax.adam(0.02, b1=0.5, b2=0.9, eps=1e-3)),
    "rmsprop": (lambda: ref.rmsprop(0.01), lambda: optax.rmsprop(0.01)),
    "rmsprop_custom": (lambda: ref.rmsprop(0.02, decay=0.5, eps=1e-2),
                       lambda: optax.rmsprop(0.02, decay=0.5, eps=1e-2)),
    "rmsprop_eps_outside": (lambda: ref.rmsprop(0.01, eps=1e-3, eps_in_sqrt=False),
                            lambda: optax.rmsprop(0.01, eps=1e-3, eps_in_sqrt=False)),
}
cases = pytest.mark.parametrize("make, make_optax", CASES.values(), ids=CASES.keys())


def _run_optax(make_optax, params, grads):
    with jax.enable_x64(True):
        opt = make_optax()
        params = jax.tree.map(jnp.asarray, params)
        state = opt.init(params)
        for g in grads:
            updates, state = opt.update(jax.tree.map(jnp.asarray, g), state, params)
            params = optax.apply_updates(params, updates)
        return jax.tree.map(np.asarray, params), state


def _run_ref(make, params, grads):
    opt = make()
    state = opt.init(params)
    for g in grads:
        params, state = opt.update(g, state, params)
    return params, state


def _assert_trees_close(got, expected, rtol=1e-12):
    assert tree_paths(got) and [p for p, _ in tree_paths(got)] == [
        "/".join(str(k.key) for k in keypath)
        for keypath, _ in jax.tree_util.tree_flatten_with_path(expected)[0]]
    for (path, g), e in zip(tree_paths(got), jax.tree_util.tree_leaves(expected), strict=True):
        np.testing.assert_allclose(g, np.asarray(e), rtol=rtol, atol=1e-14, err_msg=path)


@cases
def test_params_match_optax_after_five_steps(make, make_optax):
    params, grads = _problem()
    got, _ = _run_ref(make, params, grads)
    expected, _ = _run_optax(make_optax, params, grads)
    _assert_trees_close(got, expected)
    assert got["1_relu"] == {}
    pairs = zip(tree_leaves(got), tree_leaves(params), strict=True)
    moved = max(np.abs(a - b).max() for a, b in pairs)
    assert moved > 1e-3  # the optimizer really moved the params


@cases
def test_state_matches_optax(make, make_optax):
    params, grads = _problem()
    _, state = _run_ref(make, params, grads)
    _, optax_state = _run_optax(make_optax, params, grads)
    inner = optax_state[0]  # the first link of optax's chain holds the statistics
    if isinstance(state, ref.SgdState):
        _assert_trees_close(state.trace, inner.trace)
    elif isinstance(state, ref.AdamState):
        assert state.count == int(inner.count) == STEPS
        _assert_trees_close(state.mu, inner.mu)
        _assert_trees_close(state.nu, inner.nu)
    else:
        assert isinstance(state, ref.RmsPropState)
        _assert_trees_close(state.nu, inner.nu)


@cases
def test_init_and_update_are_pure(make, make_optax):
    params, grads = _problem()
    opt = make()
    state = opt.init(params)
    moments = [field for field in state if isinstance(field, dict)]
    assert moments and all(not leaf.any() for m in moments for leaf in tree_leaves(m))
    before = copy.deepcopy((params, grads[0], moments))
    new_params, new_state = opt.update(grads[0], state, params)
    for a, b in zip(tree_leaves({"p": params, "g": grads[0], "s": dict(enumerate(moments))}),
                    tree_leaves({"p": before[0], "g": before[1], "s": dict(enumerate(before[2]))}),
                    strict=True):
        np.testing.assert_array_equal(a, b)  # inputs untouched
    for new, old in zip(tree_leaves(new_params), tree_leaves(params), strict=True):
        assert not np.shares_memory(new, old) and new.dtype == old.dtype


def test_plain_sgd_is_one_line():
    params = {"w": np.array([1.0, 2.0])}
    new, _ = ref.sgd(0.5).update({"w": np.array([2.0, -2.0])}, ref.sgd(0.5).init(params), params)
    np.testing.assert_array_equal(new["w"], [0.0, 3.0])


def test_float32_params_stay_float32():
    params = {"w": np.ones(3, np.float32)}
    opt = ref.adam(0.1)
    new, state = opt.update({"w": np.ones(3, np.float32)}, opt.init(params), params)
    assert new["w"].dtype == np.float32
    np.testing.assert_allclose(new["w"], 0.9, rtol=1e-6)  # first Adam step is lr * sign(g)


@pytest.mark.parametrize("make, match", [
    (lambda: ref.sgd(0.1, momentum=-0.1), r"sgd: momentum must be a finite float in \[0.0, 1.0\]"),
    (lambda: ref.sgd(float("nan")), "sgd: learning_rate must be a finite float"),
    (lambda: ref.adam(0.1, b1=1.0), r"adam: b1 must be a finite float in \[0.0, 1.0\)"),
    (lambda: ref.adam(0.1, b2=1.5), "adam: b2"),
    (lambda: ref.adam(0.1, eps=-1e-8), "adam: eps must be a finite float >= 0.0, got -1e-08"),
    (lambda: ref.adam("fast"), "adam: learning_rate must be a finite float, got 'fast'"),
    (lambda: ref.rmsprop(0.1, decay=1.0), r"rmsprop: decay must be a finite float in \[0.0"),
    (lambda: ref.rmsprop(0.1, eps=float("inf")), "rmsprop: eps"),
])
def test_bad_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_mismatched_grads_name_the_path():
    params = {"0_dense": {"w": np.ones(2), "b": np.ones(1)}}
    opt = ref.sgd(0.1)
    with pytest.raises(ValueError, match=r"differ at 0_dense: keys \['w'\] vs \['b', 'w'\]"):
        opt.update({"0_dense": {"w": np.ones(2)}}, opt.init(params), params)


# --- the tree helpers ------------------------------------------------------------------------


def test_tree_paths_and_leaves_follow_jax_order():
    tree = {"b": {"z": np.array(1.0), "a": np.array(2.0)}, "a": np.array(3.0), "c": {},
            "10_x": {"w": np.array(4.0)}, "9_x": {"w": np.array(5.0)}}
    jax_pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
    assert [p for p, _ in tree_paths(tree)] == [
        "/".join(str(k.key) for k in keypath) for keypath, _ in jax_pairs]
    assert tree_leaves(tree) == jax.tree_util.tree_leaves(tree)
    assert [p for p, _ in tree_paths(tree)] == ["10_x/w", "9_x/w", "a", "b/a", "b/z"]
    assert tree_paths(np.array(1.0)) == [("", np.array(1.0))]


def test_tree_map():
    a = {"x": np.array([1.0, 2.0]), "y": {"z": np.array(3.0)}, "e": {}}
    b = {"x": np.array([10.0, 20.0]), "y": {"z": np.array(30.0)}, "e": {}}
    out = tree_map(lambda u, v: u + v, a, b)
    np.testing.assert_array_equal(out["x"], [11.0, 22.0])
    assert out["y"]["z"] == 33.0 and out["e"] == {}
    paths = tree_map_with_path(lambda path, u: path, a)
    assert paths == {"x": "x", "y": {"z": "y/z"}, "e": {}}
    with pytest.raises(ValueError, match="at y the first tree has a leaf but another has a dict"):
        tree_map(lambda u, v: u, {"y": 1.0}, {"y": {"z": 1.0}})
    with pytest.raises(ValueError, match="differ at y: keys .* vs a leaf float"):
        tree_map(lambda u, v: u, {"y": {"z": 1.0}}, {"y": 1.0})
