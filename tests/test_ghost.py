"""Ghost clipping (`jdnn.privacy.ghost`): equal to the naive `vmap(grad)` route, norms and
clipped mean gradients alike."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
from jdnn.core import MissingKeyError
from jdnn.privacy.ghost import ghost_clipped_grad, outer_sq_norms
from jdnn.privacy.per_example import clip_and_aggregate, per_example_grads

LOSS = jdnn.losses.softmax_cross_entropy
B = 6
MASK = np.array([True, True, False, True, True, True])


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _setup(model, shape, label_shape=None, seed=0):
    """Random params (NumPy-drawn: compiling initializers would dominate the tests' time), unit
    batch-norm state, inputs and labels in [0, 3)."""
    rng = np.random.default_rng(seed)
    _, params, state = jax.eval_shape(lambda k: model.init(k, shape), jax.random.key(seed))
    params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype), params)
    state = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), state)
    x = jnp.asarray(rng.normal(size=shape), jnp.zeros(()).dtype)
    y = jnp.asarray(rng.integers(0, 3, size=label_shape or shape[:1]))
    return params, state, x, y


CASES = {
    "mlp": (lambda: jdnn.serial(jdnn.Dense(8), jdnn.Relu(), jdnn.Dense(7, use_bias=False),
                                jdnn.PRelu(), jdnn.Dense(3)), (B, 5), None, None),
    "mlp_batch_stats": (lambda: jdnn.serial(jdnn.Dense(8), jdnn.BatchNorm(), jdnn.Tanh(),
                                            jdnn.Dense(3)), (B, 5), None, "batch_stats"),
    "mlp_running": (lambda: jdnn.serial(jdnn.Dense(8), jdnn.BatchNorm(), jdnn.Tanh(),
                                        jdnn.Dense(3)), (B, 5), None, "running"),
    "cnn": (lambda: jdnn.serial(jdnn.Conv2D(3, 3), jdnn.Relu(), jdnn.MaxPool2D(2),
                                jdnn.Conv2D(4, (2, 3), strides=2, padding="VALID",
                                            use_bias=False),
                                jdnn.Flatten(), jdnn.Dense(3)), (B, 8, 8, 2), None, None),
    "cnn_batch_stats": (lambda: jdnn.serial(jdnn.Conv2D(4, 3, strides=2), jdnn.BatchNorm(),
                                            jdnn.Elu(), jdnn.Flatten(), jdnn.Dense(3)),
                        (B, 6, 6, 2), None, "batch_stats"),
    "sequence_residual": (lambda: jdnn.serial(
        jdnn.Dense(6), jdnn.Relu(), jdnn.residual(jdnn.serial(jdnn.Dense(6), jdnn.Gelu(),
                                                              jdnn.Dense(6))),
        jdnn.Dense(3)), (B, 4, 5), (B, 4), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ghost_equals_naive_vmap_grad_then_clip(x64, case):
    build, shape, label_shape, rule = CASES[case]
    model = build()
    params, state, x, y = _setup(model, shape, label_shape)
    mask = jnp.asarray(MASK)

    @jax.jit
    def both(clip):
        per_example = per_example_grads(model, LOSS, params, state, x, y, mask=mask,
                                        batch_norm=rule)
        naive = clip_and_aggregate(per_example, clip, mask=mask)
        ghost = ghost_clipped_grad(model, LOSS, params, state, x, y, l2_norm_clip=clip,
                                   mask=mask, batch_norm=rule)
        return naive, ghost

    for clip in (0.3, 1e6):  # most examples clipped; none clipped
        (naive, naive_norms), (ghost, ghost_norms) = both(clip)
        np.testing.assert_allclose(ghost_norms, naive_norms, rtol=1e-10)
        assert np.all(np.asarray(naive_norms)[MASK] > 0) and naive_norms[2] == 0
        chex.assert_trees_all_close(ghost, naive, rtol=1e-10, atol=1e-14)


def test_ghost_equals_naive_in_float32():
    model = CASES["mlp"][0]()
    params, state, x, y = _setup(model, (B, 5))

    @jax.jit
    def both():
        per_example = per_example_grads(model, LOSS, params, state, x, y, train=False)
        return (clip_and_aggregate(per_example, 0.5),
                ghost_clipped_grad(model, LOSS, params, state, x, y, l2_norm_clip=0.5,
                                   train=False))

    (naive, naive_norms), (ghost, ghost_norms) = both()
    np.testing.assert_allclose(ghost_norms, naive_norms, rtol=1e-5)
    chex.assert_trees_all_close(ghost, naive, rtol=1e-5, atol=1e-7)


def test_ghost_with_dropout_uses_the_batched_forward_masks(x64):
    model = jdnn.serial(jdnn.Dense(8), jdnn.Relu(), jdnn.Dropout(0.5), jdnn.Dense(3))
    params, state, x, y = _setup(model, (B, 5))
    key = jax.random.key(4)

    @jax.jit
    def both():
        # Independently: the Jacobian of the batched forward's per-example losses (examples do
        # not interact without batch norm), drawn with the same key.
        jacobian = jax.jacrev(lambda p: LOSS(model.apply(p, state, x, key=key, train=True)[0],
                                             y))(params)
        return (clip_and_aggregate(jacobian, 0.5),
                ghost_clipped_grad(model, LOSS, params, state, x, y, l2_norm_clip=0.5, key=key))

    (naive, naive_norms), (ghost, ghost_norms) = both()
    np.testing.assert_allclose(ghost_norms, naive_norms, rtol=1e-10)
    chex.assert_trees_all_close(ghost, naive, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("positions, k, o", [(1, 5, 4), (3, 20, 30), (12, 4, 3)],
                         ids=["one_row", "gram", "explicit"])
def test_outer_sq_norms_both_forms(x64, positions, k, o):
    rng = np.random.default_rng(0)
    xs, deltas = rng.normal(size=(B, positions, k)), rng.normal(size=(B, positions, o))
    expected = np.sum(np.einsum("bpk,bpo->bko", xs, deltas) ** 2, axis=(1, 2))
    np.testing.assert_allclose(outer_sq_norms(jnp.asarray(xs), jnp.asarray(deltas)), expected,
                               rtol=1e-12)


def test_ghost_takes_one_backward_pass():
    # The clipped mean comes from each layer's own pullback of its scaled deltas: as many matrix
    # products as a plain gradient (forward, deltas, weight gradients), no second backward pass.
    model = jdnn.serial(jdnn.Dense(16), jdnn.Relu(), jdnn.Dense(16), jdnn.Relu(), jdnn.Dense(3))
    params, state, x, y = _setup(model, (8, 12))

    def dots(fn):
        return len(re.findall(r"= \S+ dot\(", jax.jit(fn).lower(params).compile().as_text()))

    plain = jax.grad(lambda p: jnp.mean(LOSS(model.apply(p, state, x, train=True)[0], y)))
    assert dots(lambda p: ghost_clipped_grad(model, LOSS, p, state, x, y,
                                             l2_norm_clip=1.0)[0]) == dots(plain)


def test_ghost_needs_a_batch_norm_rule_and_jdnn_layers():
    model = CASES["mlp_batch_stats"][0]()
    params, state, x, y = _setup(model, (B, 5))
    with pytest.raises(ValueError, match="ill-defined for BatchNorm in training mode"):
        ghost_clipped_grad(model, LOSS, params, state, x, y, l2_norm_clip=1.0)
    custom = jdnn.Layer(jdnn.Relu().init, jdnn.Relu().apply, jdnn.Spec("MyLayer"))
    model = jdnn.serial(jdnn.Dense(4), custom, jdnn.Dense(3))
    params, state, x, y = _setup(model, (B, 5))
    with pytest.raises(ValueError, match="cannot rebuild the layer 'MyLayer' at 1_mylayer"):
        ghost_clipped_grad(model, LOSS, params, state, x, y, l2_norm_clip=1.0)


def test_dropout_without_a_key_is_an_error_naming_ghost_clipped_grad():
    model = jdnn.serial(jdnn.Dense(8), jdnn.Relu(), jdnn.Dropout(0.5), jdnn.Dense(3))
    params, state, x, y = _setup(model, (B, 5))
    with pytest.raises(MissingKeyError, match=r"^ghost_clipped_grad: the model's Dropout at "
                                              r"2_dropout needs a random key in training mode; "
                                              r"pass key=jax\.random\.key\(0\)"):
        ghost_clipped_grad(model, LOSS, params, state, x, y, l2_norm_clip=1.0)


def test_concrete_labels_outside_the_classes_are_errors_naming_ghost_clipped_grad():
    model = CASES["mlp"][0]()
    params, state, x, y = _setup(model, (B, 5))
    with pytest.raises(ValueError, match=r"^ghost_clipped_grad: y has class labels up to 7 but "
                                         r"the model outputs 3 classes"):
        ghost_clipped_grad(model, LOSS, params, state, x, y.at[0].set(7), l2_norm_clip=1.0)
    with pytest.raises(ValueError, match=r"^ghost_clipped_grad: x and y need the same leading"):
        ghost_clipped_grad(model, LOSS, params, state, x, y[:2], l2_norm_clip=1.0)


def test_an_out_of_range_label_under_jit_is_a_nan_loss_with_no_gradient():
    model = jdnn.serial(jdnn.Dense(4), jdnn.Relu(), jdnn.Dense(3))
    params, state, x, y = _setup(model, (B, 5))
    mask = jnp.asarray(MASK)  # example 2 is masked out; give it a label that means nothing

    @jax.jit
    def run(bad_y, y):
        return [ghost_clipped_grad(model, LOSS, params, state, x, labels, l2_norm_clip=0.5,
                                   mask=m, return_aux=True)
                for labels, m in ((bad_y, mask), (y, mask), (bad_y, None))]

    bad, good, unmasked = jax.tree.map(np.asarray, run(y.at[2].set(-1), y))
    chex.assert_trees_all_equal(bad, good)  # masked out: loss, norms and mean all unchanged
    assert np.isfinite(bad[2].loss).all()
    _, norms, aux = unmasked  # not masked: its loss is NaN, its gradient zero
    assert np.isnan(aux.loss[2]) and norms[2] == 0.0
    np.testing.assert_array_equal(np.delete(aux.loss, 2), np.delete(good[2].loss, 2))
    np.testing.assert_array_equal(np.delete(norms, 2), np.delete(good[1], 2))


# ---------------------------------------------------------------------------------------------
# The DP-SGD step.
