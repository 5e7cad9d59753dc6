"""jdnn.losses: hand-computed values, agreement with optax, per-example shapes, stability at
large logits, the (B, 1)-vs-(B,) case, every error path, and jit == eager."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdnn import losses


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


LOGITS = np.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1], [0.0, 0.0, 0.0], [3.0, 1.0, -2.0]],
                  np.float32)
INDICES = np.array([0, 1, 2, 1])
ONE_HOT = np.eye(3, dtype=np.float32)[INDICES]


# --- mse -------------------------------------------------------------------------------------


def test_mse_matches_hand_computed_mean_over_features():
    p = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]], np.float32)
    t = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
    expected = [(0 + 4 + 9) / 3, (1 + 4 + 9) / 3]
    np.testing.assert_allclose(losses.mse(p, t), expected, rtol=1e-6)


def test_mse_agrees_with_optax_squared_error():
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    out = losses.mse(p, t)
    chex.assert_shape(out, (5,))
    np.testing.assert_allclose(out, optax.losses.squared_error(p, t).mean(axis=(1, 2)),
                               rtol=1e-6)


def test_mse_of_column_predictions_and_flat_targets_is_per_example():
    p = jnp.array([[1.0], [2.0], [3.0]])
    t = jnp.array([1.0, 0.0, 5.0])
    out = losses.mse(p, t)
    chex.assert_shape(out, (3,))  # not (3, 3), which plain broadcasting would give
    np.testing.assert_allclose(out, [0.0, 4.0, 4.0])
    np.testing.assert_allclose(out, losses.mse(p, t[:, None]))


def test_mse_accepts_integer_targets():
    np.testing.assert_allclose(losses.mse(jnp.array([0.5, 2.0]), jnp.array([0, 1])),
                               [0.25, 1.0])


# --- binary cross-entropy ----------------------------------------------------------------------


def test_binary_cross_entropy_matches_hand_formula_with_soft_labels():
    x = np.array([[0.5, -1.0], [2.0, 0.0], [-3.0, 1.5]], np.float32)
    y = np.array([[1.0, 0.0], [0.0, 0.3], [1.0, 1.0]], np.float32)
    s = np_sigmoid(x)
    expected = (-y * np.log(s) - (1 - y) * np.log(1 - s)).mean(axis=1)
    np.testing.assert_allclose(losses.binary_cross_entropy(x, y), expected, rtol=1e-5)


def test_binary_cross_entropy_agrees_with_optax_and_column_case():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 1)) * 3, jnp.float32)
    y = jnp.array([0, 1, 1, 0, 1, 0])
    out = losses.binary_cross_entropy(x, y)
    chex.assert_shape(out, (6,))
    np.testing.assert_allclose(
        out, optax.losses.sigmoid_binary_cross_entropy(x[:, 0], y.astype(jnp.float32)),
        rtol=1e-6)
    np.testing.assert_allclose(out, losses.binary_cross_entropy(x[:, 0], y), rtol=1e-6)


# --- softmax cross-entropy ---------------------------------------------------------------------


def test_softmax_cross_entropy_is_minus_log_softmax_of_the_label():
    expected = -np_log_softmax(LOGITS)[np.arange(4), INDICES]
    np.testing.assert_allclose(losses.softmax_cross_entropy(LOGITS, INDICES), expected,
                               rtol=1e-6)
    np.testing.assert_allclose(losses.softmax_cross_entropy(LOGITS, ONE_HOT), expected,
                               rtol=1e-6)


def test_softmax_cross_entropy_agrees_with_optax():
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(LOGITS, INDICES),
        optax.losses.softmax_cross_entropy_with_integer_labels(LOGITS, INDICES), rtol=1e-6)
    probs = np.array([[0.2, 0.3, 0.5]] * 4, np.float32)
    np.testing.assert_allclose(losses.softmax_cross_entropy(LOGITS, probs),
                               optax.losses.softmax_cross_entropy(LOGITS, probs), rtol=1e-6)


@pytest.mark.parametrize("labels", [INDICES, ONE_HOT], ids=["indices", "one_hot"])
def test_label_smoothing_matches_hand_computed_targets(labels):
    a, classes = 0.1, 3
    targets = (1 - a) * ONE_HOT + a / classes
    expected = -(targets * np_log_softmax(LOGITS)).sum(axis=1)
    out = losses.softmax_cross_entropy(LOGITS, labels, label_smoothing=a)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert not np.allclose(out, losses.softmax_cross_entropy(LOGITS, labels))


def test_integer_one_hot_labels_are_read_as_one_hot():
    np.testing.assert_allclose(losses.softmax_cross_entropy(LOGITS, ONE_HOT.astype(np.int32)),
                               losses.softmax_cross_entropy(LOGITS, INDICES), rtol=1e-6)


def test_softmax_cross_entropy_averages_extra_axes_to_per_example():
    logits = np.random.default_rng(2).normal(size=(2, 5, 4)).astype(np.float32)
    labels = np.arange(10).reshape(2, 5) % 4
    out = losses.softmax_cross_entropy(logits, labels)
    chex.assert_shape(out, (2,))
    per_position = -np.take_along_axis(np_log_softmax(logits), labels[..., None],
                                       axis=-1)[..., 0]
    np.testing.assert_allclose(out, per_position.mean(axis=1), rtol=1e-5)


def test_traced_label_smoothing_under_vmap_matches_eager():
    smoothings = jnp.array([0.0, 0.1, 0.3])
    batched = jax.vmap(lambda a: losses.softmax_cross_entropy(LOGITS, INDICES,
                                                              label_smoothing=a))(smoothings)
    for row, a in zip(batched, [0.0, 0.1, 0.3], strict=True):
        np.testing.assert_allclose(row, losses.softmax_cross_entropy(LOGITS, INDICES,
                                                                     label_smoothing=a),
                                   rtol=1e-5)


# --- stability ---------------------------------------------------------------------------------


def test_binary_cross_entropy_is_finite_and_exact_at_huge_logits():
    x = jnp.array([1e4, -1e4, 1e4, -1e4])
    y = jnp.array([1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(losses.binary_cross_entropy(x, y), [0.0, 0.0, 1e4, 1e4])
    grad = jax.grad(lambda x: losses.binary_cross_entropy(x, y).sum())(x)
    np.testing.assert_allclose(grad, [0.0, 0.0, 1.0, -1.0])  # sigmoid(x) - y


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("one_hot", [False, True])
def test_softmax_cross_entropy_is_finite_at_huge_logits(smoothing, one_hot):
    x = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4]])
    y = jnp.array([1, 1])
    labels = jax.nn.one_hot(y, 3) if one_hot else y

    def loss(x):
        return losses.softmax_cross_entropy(x, labels, label_smoothing=smoothing).sum()

    value, grad = jax.value_and_grad(loss)(x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    if smoothing == 0.0:
        np.testing.assert_allclose(losses.softmax_cross_entropy(x, labels), [2e4, 0.0])
        np.testing.assert_allclose(grad, [[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]], atol=1e-6)


def test_mse_is_finite_at_huge_predictions():
    p = jnp.array([[1e4], [-1e4]])
    t = jnp.array([-1e4, -1e4])
    value, grad = jax.value_and_grad(lambda p: losses.mse(p, t).sum())(p)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, [[4e4], [0.0]])


# --- jit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss, args", [
    (losses.mse, (LOGITS, ONE_HOT)),
    (losses.binary_cross_entropy, (LOGITS, ONE_HOT)),
    (losses.softmax_cross_entropy, (LOGITS, INDICES)),
    (lambda x, y: losses.softmax_cross_entropy(x, y, label_smoothing=0.2), (LOGITS, ONE_HOT)),
], ids=["mse", "bce", "softmax", "softmax_smoothed"])
def test_jit_equals_eager_and_traces_once(loss, args):
    traced = jax.jit(chex.assert_max_traces(loss, n=1))
    first = traced(*args)
    second = traced(*(jnp.asarray(a) for a in args))
    np.testing.assert_allclose(first, loss(*args), rtol=1e-6)
    np.testing.assert_allclose(second, first)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss, names", [
    (losses.mse, ("predictions", "targets")),
    (losses.binary_cross_entropy, ("logits", "labels")),
], ids=["mse", "bce"])
class TestShapeErrors:
    def test_class_indices_against_many_outputs(self, loss, names):
        pattern = (rf"{loss.__name__}: {names[0]} have shape \(32, 10\) but {names[1]} have "
                   rf"shape \(32,\); {names[1]} must have the {names[0]}' shape \(32, 10\)")
        with pytest.raises(ValueError, match=pattern):
            loss(jnp.zeros((32, 10)), jnp.zeros((32,)))

    def test_column_targets_against_flat_predictions(self, loss, names):
        with pytest.raises(ValueError, match=rf"\(32, 1\).*{names[1]}\[\.\.\., 0\]"):
            loss(jnp.zeros((32,)), jnp.zeros((32, 1)))

    def test_different_batch_sizes(self, loss, names):
        with pytest.raises(ValueError, match=r"shape \(32, 1\) or \(32,\); the batch sizes differ"):
            loss(jnp.zeros((32, 1)), jnp.zeros((16,)))

    def test_scalar_predictions(self, loss, names):
        with pytest.raises(ValueError, match=f"{names[0]} is a scalar.*batch axis"):
            loss(jnp.zeros(()), jnp.zeros(()))


def test_softmax_needs_batch_and_class_axes():
    with pytest.raises(ValueError, match=r"logits have shape \(10,\).*logits\[None\]"):
        losses.softmax_cross_entropy(jnp.zeros(10), jnp.array(3))
    with pytest.raises(ValueError, match=r"logits have shape \(\)"):
        losses.softmax_cross_entropy(jnp.zeros(()), jnp.array(0))


def test_softmax_rejects_a_single_class():
    with pytest.raises(ValueError, match="single class.*binary_cross_entropy"):
        losses.softmax_cross_entropy(jnp.zeros((4, 1)), jnp.zeros(4, jnp.int32))


@pytest.mark.parametrize("labels, hint", [
    (jnp.zeros((32, 1), jnp.int32), r"labels\[\.\.\., 0\]"),
    (jnp.zeros((16,), jnp.int32), "batch sizes differ"),
    (jnp.zeros((32,), jnp.float32), r"look like class indices: use labels\.astype\(int\)"),
    (jnp.zeros((32, 3), jnp.float32), ""),
], ids=["int_column", "int_batch", "float_indices", "float_classes"])
def test_softmax_label_shape_errors_name_both_forms(labels, hint):
    pattern = (re.escape(f"softmax_cross_entropy: logits have shape (32, 10) but labels have "
                         f"shape {jnp.shape(labels)}")
               + r".*integer class indices of shape \(32,\) or one-hot.*shape \(32, 10\)"
               + (f".*{hint}" if hint else ""))
    with pytest.raises(ValueError, match=pattern):
        losses.softmax_cross_entropy(jnp.zeros((32, 10)), labels)


@pytest.mark.parametrize("smoothing", [-0.1, 1.0, 1.5, float("nan"), True, "0.1", None])
def test_label_smoothing_outside_unit_interval_is_rejected(smoothing):
    with pytest.raises(ValueError, match=r"label_smoothing must be a float in \[0, 1\)"):
        losses.softmax_cross_entropy(LOGITS, INDICES, label_smoothing=smoothing)


# --- labels a loss cannot mean: NaN, never a plausible number ----------------------------------

# Rows 1 and 3 hold labels outside [0, 3): -1 must not wrap around to class 2, and 3 must not
# be read as anything; rows 0 and 2 are valid and keep their exact loss.
BAD_INDICES = np.array([0, -1, 2, 3])
VALID = np.array([True, False, True, False])


def _softmax(smoothing):
    return lambda x, y: losses.softmax_cross_entropy(x, y, label_smoothing=smoothing)


@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["plain", "smoothed"])
@pytest.mark.parametrize("how", ["eager", "jit", "vmap"])
def test_out_of_range_indices_give_nan_and_leave_the_others_exact(smoothing, how):
    loss = _softmax(smoothing)
    if how == "jit":
        loss = jax.jit(loss)
    elif how == "vmap":  # one example at a time: each a batch of one
        single = loss
        loss = jax.vmap(lambda x, y: single(x[None], y[None])[0])
    out = np.asarray(loss(LOGITS, BAD_INDICES))
    assert np.isnan(out[~VALID]).all()
    safe = np.where(VALID, BAD_INDICES, 0)
    np.testing.assert_allclose(out[VALID], np.asarray(_softmax(smoothing)(LOGITS, safe))[VALID],
                               rtol=1e-6)


def test_negative_index_does_not_score_the_last_class():
    # before: label -1 scored class C-1, a finite and plausible loss
    out = losses.softmax_cross_entropy(LOGITS, np.array([-1, -1, -1, -1]))
    assert np.isnan(out).all()
    assert np.isfinite(losses.softmax_cross_entropy(LOGITS, np.array([2, 2, 2, 2]))).all()


@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["plain", "smoothed"])
def test_an_out_of_range_index_at_any_position_makes_its_example_nan(smoothing):
    logits = np.random.default_rng(3).normal(size=(3, 4, 5)).astype(np.float32)
    labels = np.arange(12).reshape(3, 4) % 5
    labels[1, 2] = 5
    labels[2, 0] = -3
    out = np.asarray(jax.jit(_softmax(smoothing))(logits, labels))
    chex.assert_shape(out, (3,))
    assert np.isfinite(out[0]) and np.isnan(out[1:]).all()


@pytest.mark.parametrize("bad", [-0.5, 1.5, np.nan], ids=["negative", "above_one", "nan"])
def test_probability_labels_outside_the_unit_interval_give_nan(bad):
    probs = np.array([[0.2, 0.3, 0.5]] * 4, np.float32)
    probs[2, 1] = bad
    out = np.asarray(losses.softmax_cross_entropy(LOGITS, probs))
    assert np.isnan(out[2]) and np.isfinite(np.delete(out, 2)).all()
    np.testing.assert_allclose(np.delete(out, 2), np.delete(np.asarray(
        optax.losses.softmax_cross_entropy(LOGITS, probs)), 2), rtol=1e-6)


def test_integer_one_hot_with_a_two_gives_nan():
    labels = ONE_HOT.astype(np.int32)
    labels[0, 0] = 2
    out = np.asarray(losses.softmax_cross_entropy(LOGITS, labels))
    assert np.isnan(out[0]) and np.isfinite(out[1:]).all()


@pytest.mark.parametrize("bad", [-1.0, 2.0, 1.0001, np.nan], ids=["minus_one", "two", "above",
                                                                    "nan"])
def test_binary_labels_outside_the_unit_interval_give_nan(bad):
    x = np.array([[0.5, -1.0], [2.0, 0.0], [-3.0, 1.5]], np.float32)
    y = np.array([[1.0, 0.0], [0.0, 0.3], [1.0, 1.0]], np.float32)
    y[1, 0] = bad
    out = np.asarray(jax.jit(losses.binary_cross_entropy)(x, y))
    assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()
    np.testing.assert_allclose(out[[0, 2]], np.asarray(losses.binary_cross_entropy(
        x[[0, 2]], y[[0, 2]])), rtol=1e-6)


def test_binary_integer_labels_outside_zero_one_give_nan():
    out = np.asarray(losses.binary_cross_entropy(jnp.zeros((3, 1)), jnp.array([0, 1, 2])))
    np.testing.assert_allclose(out[:2], np.log(2.0), rtol=1e-6)
    assert np.isnan(out[2])


def _masked_sum(loss, mask):
    """`sum(loss * mask)` done as it must be with NaN rows: a select, since NaN * 0 is NaN."""
    return lambda x, y: jnp.sum(jnp.where(mask, loss(x, y), 0.0))


@pytest.mark.parametrize("loss, labels", [
    (_softmax(0.0), BAD_INDICES),
    (_softmax(0.1), BAD_INDICES),
    (losses.softmax_cross_entropy,
     np.where(VALID[:, None], ONE_HOT, np.float32(3.0))),
    (losses.binary_cross_entropy, np.where(VALID[:, None], ONE_HOT, np.float32(-2.0))),
], ids=["indices", "smoothed", "probabilities", "binary"])
def test_masked_out_nan_rows_leave_the_value_and_gradient_of_the_others(loss, labels):
    @jax.jit
    def run(x, kept_x):
        return (jax.value_and_grad(_masked_sum(loss, VALID))(x, labels),
                jax.value_and_grad(lambda x: jnp.sum(loss(x, labels[VALID])))(kept_x),
                jax.value_and_grad(lambda x: jnp.sum(loss(x, labels)))(x))

    (value, grad), (kept_value, kept_grad), (unmasked, unmasked_grad) = run(LOGITS,
                                                                            LOGITS[VALID])
    np.testing.assert_allclose(value, kept_value, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad)[VALID], kept_grad, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(grad)[~VALID], 0.0)
    # unmasked, the sum is NaN (the signal) while the gradient stays finite: zero on NaN rows
    assert np.isnan(unmasked)
    np.testing.assert_array_equal(np.asarray(unmasked_grad)[~VALID], 0.0)
    np.testing.assert_allclose(np.asarray(unmasked_grad)[VALID], kept_grad, rtol=1e-6)
