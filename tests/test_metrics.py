"""jdnn.metrics.accuracy: multi-class (indices and one-hot), binary (thresholds and shapes),
masks, jit, and every shape error."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdnn import metrics

# Predicted classes by argmax: 0, 2, 1, 1; labels 0, 2, 0, 1 -> 3 of 4 correct, example 2 wrong.
LOGITS = jnp.array([[2.0, 0.1, -1.0], [0.0, 0.5, 3.0], [0.3, 0.9, 0.2], [-1.0, 4.0, 1.0]])
INDICES = jnp.array([0, 2, 0, 1])
ONE_HOT = jax.nn.one_hot(INDICES, 3)


def test_multiclass_accuracy_with_indices_and_one_hot_agree():
    assert float(metrics.accuracy(LOGITS, INDICES)) == 0.75
    assert float(metrics.accuracy(LOGITS, ONE_HOT)) == 0.75


def test_all_right_and_all_wrong():
    assert float(metrics.accuracy(LOGITS, jnp.array([0, 2, 1, 1]))) == 1.0
    assert float(metrics.accuracy(LOGITS, jnp.array([1, 0, 0, 0]))) == 0.0


@pytest.mark.parametrize("mask", [
    jnp.array([True, True, False, True]), jnp.array([1.0, 1.0, 0.0, 1.0])], ids=["bool", "float"])
def test_masked_out_examples_do_not_count(mask):
    assert float(metrics.accuracy(LOGITS, INDICES, mask)) == 1.0  # the wrong one is masked


def test_mask_divides_by_the_number_kept():
    mask = jnp.array([1, 0, 1, 0])
    assert float(metrics.accuracy(LOGITS, INDICES, mask)) == 0.5  # 1 right of 2 kept


def test_everything_masked_gives_zero():
    assert float(metrics.accuracy(LOGITS, INDICES, jnp.zeros(4, bool))) == 0.0


def test_binary_logits_use_zero_threshold_and_probabilities_use_a_given_one():
    scores = jnp.array([-2.0, 0.3, 0.7, 1.5])
    labels = jnp.array([0, 0, 1, 1])
    # As logits (threshold 0): predicted 0, 1, 1, 1 -> 3 of 4.
    assert float(metrics.accuracy(scores, labels)) == 0.75
    # As probabilities (threshold 0.5): predicted 0, 0, 1, 1 -> all right.
    assert float(metrics.accuracy(scores, labels, threshold=0.5)) == 1.0


@pytest.mark.parametrize("p_shape", [(5,), (5, 1)])
@pytest.mark.parametrize("l_shape", [(5,), (5, 1)])
def test_binary_shapes_all_agree(p_shape, l_shape):
    scores = jnp.array([-1.0, 2.0, 0.5, -0.2, 3.0]).reshape(p_shape)
    labels = jnp.array([0.0, 1.0, 0.0, 0.0, 1.0]).reshape(l_shape)
    assert float(metrics.accuracy(scores, labels)) == pytest.approx(0.8)
    mask = jnp.array([1, 1, 0, 1, 1])
    assert float(metrics.accuracy(scores, labels, mask)) == 1.0


def test_jit_equals_eager_and_traces_once():
    fn = jax.jit(chex.assert_max_traces(metrics.accuracy, n=1))
    mask = jnp.array([1.0, 0.0, 1.0, 1.0])
    expected = metrics.accuracy(LOGITS, INDICES, mask)
    assert float(fn(LOGITS, INDICES, mask)) == float(expected) == pytest.approx(2 / 3)
    assert float(fn(LOGITS, jnp.array([0, 2, 1, 1]), mask)) == 1.0  # no retrace


@pytest.mark.parametrize("predictions, labels, pattern", [
    (LOGITS, INDICES[:, None], r"predictions have shape \(4, 3\) but labels have shape \(4, 1\)"
                               r"; labels must be class indices of shape \(4,\) or one-hot"),
    (LOGITS, jnp.zeros((4, 5)), r"labels have shape \(4, 5\)"),
    (LOGITS, INDICES[:3], r"labels have shape \(3,\)"),
    (jnp.zeros((4, 1)), jnp.zeros((4, 2)),
     r"single-output predictions have shape \(4, 1\) but labels have shape \(4, 2\); labels must "
     r"be 0/1 of shape \(4,\) or \(4, 1\)"),
    (jnp.zeros(4), jnp.zeros(3), r"labels have shape \(3,\)"),
    (jnp.zeros((4, 2, 3)), jnp.zeros(4),
     r"predictions have shape \(4, 2, 3\); expected \(batch,\)"),
    (jnp.zeros(()), jnp.zeros(()), r"predictions have shape \(\); expected"),
], ids=["column_indices", "wrong_classes", "wrong_batch", "binary_two_columns", "binary_batch",
        "rank3", "scalar"])
def test_shape_errors(predictions, labels, pattern):
    with pytest.raises(ValueError, match=f"accuracy: .*{pattern}"):
        metrics.accuracy(predictions, labels)


@pytest.mark.parametrize("mask", [jnp.ones(3), jnp.ones((4, 1))])
def test_mask_shape_error(mask):
    with pytest.raises(ValueError, match=r"accuracy: mask has shape .* one entry per example, "
                                         r"shape \(4,\)"):
        metrics.accuracy(LOGITS, INDICES, mask)


def test_numpy_inputs_work():
    np_logits = np.asarray(LOGITS)
    assert float(metrics.accuracy(np_logits, np.asarray(INDICES))) == 0.75


# --- the binary decision boundary: `score > threshold`, strictly ------------------------------

F32 = np.float32
TINY = np.finfo(F32).tiny   # the smallest normal float32 (XLA on CPU may flush subnormals)


def _pins(scores, classes, **kwargs):
    """Every score is predicted as its class: all right against `classes`, all wrong against
    the flipped ones, for `(B,)` and `(B, 1)` predictions, and jitted."""
    scores, classes = jnp.asarray(scores, jnp.float32), jnp.asarray(classes)
    for p in (scores, scores[:, None]):
        assert float(metrics.accuracy(p, classes, **kwargs)) == 1.0
        assert float(metrics.accuracy(p, 1 - classes, **kwargs)) == 0.0
    jitted = jax.jit(lambda p, y: metrics.accuracy(p, y, **kwargs))
    assert float(jitted(scores, classes)) == 1.0 and float(jitted(scores, 1 - classes)) == 0.0


def test_binary_logits_at_zero_are_class_0_and_just_above_are_class_1():
    scores = [-1.0, -TINY, -0.0, 0.0, TINY, np.nextafter(F32(0.5), F32(0)), 0.5, 1.0]
    _pins(scores, [0, 0, 0, 0, 1, 1, 1, 1])


def test_binary_probabilities_at_one_half_are_class_0_and_just_above_are_class_1():
    half = F32(0.5)
    scores = [0.0, 0.3, np.nextafter(half, F32(0)), half, np.nextafter(half, F32(1)), 0.7, 1.0]
    _pins(scores, [0, 0, 0, 0, 1, 1, 1], threshold=0.5)


def test_binary_any_threshold_is_strict():
    _pins([-3.0, np.nextafter(F32(-2), F32(-3)), -2.0, np.nextafter(F32(-2), F32(0)), 0.0],
          [0, 0, 0, 1, 1], threshold=-2.0)


def test_binary_logits_and_their_sigmoid_probabilities_agree_at_the_boundary():
    logits = jnp.array([-4.0, -0.5, 0.0, 0.5, 4.0])
    for labels in (jnp.array([0, 0, 0, 1, 1]), jnp.array([1, 1, 1, 0, 0]),
                   jnp.array([0, 1, 0, 1, 0])):
        from_logits = float(metrics.accuracy(logits, labels))
        assert from_logits == float(metrics.accuracy(jax.nn.sigmoid(logits), labels,
                                                     threshold=0.5))
    assert float(jax.nn.sigmoid(0.0)) == 0.5
    assert float(metrics.accuracy(jnp.zeros(3), jnp.zeros(3))) == 1.0   # logit 0: class 0


def test_binary_labels_count_as_class_1_only_above_one_half():
    half = F32(0.5)
    labels = jnp.array([0.0, half, np.nextafter(half, F32(1)), 1.0])
    assert float(metrics.accuracy(jnp.array([-1.0, -1.0, 1.0, 1.0]), labels)) == 1.0
    assert float(metrics.accuracy(jnp.array([1.0, 1.0, -1.0, -1.0]), labels)) == 0.0


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), np.float32("-inf")])
def test_a_non_finite_threshold_is_rejected(threshold):
    with pytest.raises(ValueError, match=r"accuracy: threshold must be a finite number \(0.0 "
                                         r"for logits, 0.5 for probabilities\), got"):
        metrics.accuracy(jnp.zeros(2), jnp.zeros(2), threshold=threshold)


@pytest.mark.parametrize("predictions, labels", [
    (jnp.eye(3), jnp.array([0, 1, -1])),                          # index below 0
    (jnp.eye(3), jnp.array([0, 1, 3])),                           # index past the classes
    (jnp.eye(3), jnp.array([0.0, 1.0, 1.5])),                     # a fractional index
    (jnp.eye(3), jnp.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 2]])),  # one-hot entry above 1
    (jnp.array([1.0, -1.0, 1.0]), jnp.array([1.0, 0.0, 2.0])),     # binary label above 1
    (jnp.array([1.0, -1.0, 1.0]), jnp.array([1, 0, -1])),          # binary label below 0
])
def test_a_label_that_names_no_class_gives_nan_never_a_plausible_number(predictions, labels):
    assert np.isnan(metrics.accuracy(predictions, labels))
    assert np.isnan(jax.jit(metrics.accuracy)(predictions, labels))
    kept = metrics.accuracy(predictions, labels, mask=jnp.array([1, 1, 0]))
    assert float(kept) == 1.0               # masked out, the bad row changes nothing


def test_accuracy_scores_per_position_predictions_position_by_position():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4)))
    labels = logits.argmax(-1).at[0, 0].set((logits.argmax(-1)[0, 0] + 1) % 4)
    accuracy = metrics.accuracy
    assert float(accuracy(logits, labels)) == pytest.approx(5 / 6)
    assert float(accuracy(logits, labels, mask=jnp.array([0, 1]))) == 1.0
    assert float(accuracy(logits, jax.nn.one_hot(labels, 4))) == pytest.approx(5 / 6)
