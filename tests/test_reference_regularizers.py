"""The NumPy reference L1/L2 penalties against the same sums written in JAX, in float64."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdnn.reference import regularizers as ref
from jdnn.reference.tree import tree_leaves


def _params(seed=0):
    """A params tree with every kind of leaf, all entries away from 0 (|x| >= 0.1)."""
    rng = np.random.default_rng(seed)

    def draw(*shape):
        x = rng.normal(size=shape)
        return x + np.where(x >= 0, 0.1, -0.1)

    return {
        "0_conv2d": {"w": draw(3, 3, 2, 4), "b": draw(4)},
        "1_batchnorm": {"scale": draw(4), "bias": draw(4)},
        "2_prelu": {"alpha": draw(4)},
        "3_relu": {},
        "4_dense": {"w": draw(4, 3), "b": draw(3)},
    }


# --- the JAX side: paths from jax.tree_util, sums and jax.grad -------------------------------


def _jax_paths(tree):
    pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
    return ["/".join(str(k.key) for k in keypath) for keypath, _ in pairs]


def _jax_sum(params, select, term):
    paths = _jax_paths(params)
    leaves = jax.tree_util.tree_leaves(params)
    return sum((jnp.sum(term(x)) for p, x in zip(paths, leaves, strict=True) if select(p)),
               jnp.zeros(()))


def _jax_value_and_grad(params, select, term):
    with jax.enable_x64(True):
        value, grads = jax.value_and_grad(lambda p: _jax_sum(p, select, term))(
            jax.tree.map(jnp.asarray, params))
        return float(value), jax.tree.map(np.asarray, grads)


WEIGHTS = ["0_conv2d/w", "4_dense/w"]
FILTERS = {
    "default": (ref.is_weight, lambda p: p.endswith("/w")),
    "regex": (r"dense", lambda p: "dense" in p),
    "regex_anchor": (r"^0_conv2d/", lambda p: p.startswith("0_conv2d/")),
    "callable": (lambda p: p.endswith(("alpha", "scale")), lambda p: p.endswith(("alpha",
                                                                                 "scale"))),
    "nothing": (r"no-such-leaf", lambda p: False),
}
filters = pytest.mark.parametrize("where, select", FILTERS.values(), ids=FILTERS.keys())
PENALTIES = {"l1": (ref.l1, ref.l1_grad, jnp.abs), "l2": (ref.l2, ref.l2_grad, jnp.square)}
penalties = pytest.mark.parametrize("value_fn, grad_fn, term", PENALTIES.values(),
                                    ids=PENALTIES.keys())


def test_leaf_paths_match_jax_order():
    params = _params()
    assert ref.leaf_paths(params) == _jax_paths(params)
    assert [p for p in ref.leaf_paths(params) if ref.is_weight(p)] == WEIGHTS


def test_is_weight():
    assert ref.is_weight("0_dense/w") and ref.is_weight("w")
    assert ref.is_weight("1_multiheadattention/w_q") and ref.is_weight("0_gru/w_h")
    for path in ["0_dense/b", "1_batchnorm/scale", "1_batchnorm/bias", "2_prelu/alpha",
                 "0_w/b", "0_dense/ww", "0_embedding/table", "0_gru/b_x"]:
        assert not ref.is_weight(path), path


@penalties
@filters
def test_values_and_grads_match_jax(value_fn, grad_fn, term, where, select):
    params = _params()
    value, expected = _jax_value_and_grad(params, select, term)
    got = grad_fn(params, where=where)
    assert isinstance(value_fn(params, where=where), float)
    assert value_fn(params, where=where) == pytest.approx(value, rel=1e-13, abs=1e-13)
    assert ref.leaf_paths(got) == ref.leaf_paths(params) and got["3_relu"] == {}
    for path, g, e, p in zip(ref.leaf_paths(params), tree_leaves(got), tree_leaves(expected),
                             tree_leaves(params), strict=True):
        assert g.shape == p.shape and g.dtype == p.dtype
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=0, err_msg=path)
        assert g.any() == select(path)  # zeros exactly on the unselected leaves


def test_default_selects_only_kernels():
    params = _params()
    grads = ref.l2_grad(params)
    for name in ["b", "scale", "bias", "alpha"]:
        for path, g in zip(ref.leaf_paths(params), tree_leaves(grads), strict=True):
            if path.endswith("/" + name):
                assert not g.any(), path
    np.testing.assert_allclose(grads["4_dense"]["w"], 2 * params["4_dense"]["w"], rtol=1e-15)
    expected = sum(np.abs(params[layer]["w"]).sum() for layer in ["0_conv2d", "4_dense"])
    assert ref.l1(params) == pytest.approx(expected, rel=1e-14)


def test_l1_gradient_at_zero_is_zero():
    params = {"0_dense": {"w": np.array([[0.0, -2.0], [3.0, 0.0]])}}
    np.testing.assert_array_equal(ref.l1_grad(params)["0_dense"]["w"], [[0, -1], [1, 0]])
    assert ref.l1(params) == 5.0 and ref.l2(params) == 13.0


def test_matches_the_jax_twin():
    import jdnn.regularizers

    params = _params()
    assert ref.leaf_paths(params) == jdnn.regularizers.leaf_paths(params)
    with jax.enable_x64(True):
        for where in [ref.is_weight, r"batchnorm", lambda p: "prelu" in p]:
            jax_params = jax.tree.map(jnp.asarray, params)
            assert ref.l1(params, where=where) == pytest.approx(
                float(jdnn.regularizers.l1(jax_params, where=where)), rel=1e-13)
            assert ref.l2(params, where=where) == pytest.approx(
                float(jdnn.regularizers.l2(jax_params, where=where)), rel=1e-13)


# --- soft thresholding -----------------------------------------------------------------------


def test_soft_threshold():
    params = {"0_dense": {"w": np.array([-2.0, -0.5, 0.0, 0.3, 1.5]), "b": np.array([0.2])}}
    out = ref.soft_threshold(params, 0.5)
    np.testing.assert_allclose(out["0_dense"]["w"], [-1.5, 0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(out["0_dense"]["b"], [0.2])  # not selected
    np.testing.assert_array_equal(params["0_dense"]["w"], [-2.0, -0.5, 0.0, 0.3, 1.5])  # pure
    everything = ref.soft_threshold(params, 0.5, where=lambda p: True)
    np.testing.assert_array_equal(everything["0_dense"]["b"], [0.0])
    same = ref.soft_threshold(params, 0.0)
    np.testing.assert_array_equal(same["0_dense"]["w"], params["0_dense"]["w"])


@pytest.mark.parametrize("where", [ref.is_weight, r"prelu|batchnorm/scale"])
def test_soft_threshold_matches_jdnn_l1_proximal(where):
    """The JAX twin's proximal step, fed zero updates, lands on the soft-thresholded params."""
    import jdnn.regularizers

    params = _params()
    threshold, lr = 0.35, 0.5
    with jax.enable_x64(True):
        jax_params = jax.tree.map(jnp.asarray, params)
        prox = jdnn.regularizers.l1_proximal(threshold / lr, lr, where=where)
        zeros = jax.tree.map(jnp.zeros_like, jax_params)
        updates, _ = prox.update(zeros, prox.init(jax_params), jax_params)
        expected = optax.apply_updates(jax_params, updates)
    got = ref.soft_threshold(params, threshold, where=where)
    for g, e in zip(tree_leaves(got), jax.tree_util.tree_leaves(expected), strict=True):
        np.testing.assert_allclose(g, np.asarray(e), rtol=1e-14, atol=1e-15)
    assert any((g == 0).any() for g in tree_leaves(got))  # some entries land on exact zeros


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("call, error, match", [
    (lambda p: ref.l1(p, where="("), ValueError, re.escape("where='(' is not a valid regular")),
    (lambda p: ref.l2_grad(p, where="[a-"), ValueError, "not a valid regular expression"),
    (lambda p: ref.l2(p, where=3), TypeError, "where must be a callable path -> bool or a regex"),
    (lambda p: ref.soft_threshold(p, -0.1), ValueError, "threshold must be a finite float >= 0"),
    (lambda p: ref.soft_threshold(p, float("nan")), ValueError, "threshold must be a finite"),
])
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(_params())
