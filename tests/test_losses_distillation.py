"""Distillation loss: Hinton et al.'s formula against NumPy, its limits, its gradient, the packed
targets fit takes, and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdnn
from jdnn.losses import Distillation, distillation, distillation_targets, softmax_cross_entropy

RNG = np.random.default_rng(0)
STUDENT = RNG.normal(size=(5, 4)).astype(np.float32)
TEACHER = (2 * RNG.normal(size=(5, 4))).astype(np.float32)
LABELS = np.array([0, 3, 1, 2, 3])


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_matches_the_formula_in_numpy():
    t, a = 3.0, 0.6
    p_teacher = np.exp(_log_softmax(TEACHER / t))
    kl = np.sum(p_teacher * (_log_softmax(TEACHER / t) - _log_softmax(STUDENT / t)), axis=-1)
    ce = -_log_softmax(STUDENT)[np.arange(5), LABELS]
    expected = a * t ** 2 * kl + (1 - a) * ce
    got = distillation(STUDENT, TEACHER, LABELS, temperature=t, alpha=a)
    assert got.shape == (5,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_limits_alpha_zero_is_cross_entropy_and_a_copy_costs_nothing_soft():
    np.testing.assert_allclose(distillation(STUDENT, TEACHER, LABELS, alpha=0.0),
                               softmax_cross_entropy(STUDENT, LABELS), rtol=1e-6)
    np.testing.assert_allclose(distillation(TEACHER, TEACHER, LABELS, alpha=1.0), 0, atol=1e-6)


def test_gradient_is_t_times_the_softened_difference_and_spares_the_teacher():
    t, a = 4.0, 1.0
    grads = jax.grad(lambda s, te: jnp.sum(distillation(s, te, LABELS, temperature=t, alpha=a)),
                     argnums=(0, 1))(STUDENT, TEACHER)
    expected = a * t * (jax.nn.softmax(STUDENT / t) - jax.nn.softmax(TEACHER / t))
    np.testing.assert_allclose(grads[0], expected, rtol=1e-4, atol=1e-6)
    assert not np.any(grads[1])


def test_packed_targets_give_the_same_loss_and_train_with_fit():
    packed = distillation_targets(LABELS, TEACHER)
    assert packed.shape == (5, 5) and packed.dtype == jnp.float32
    np.testing.assert_allclose(Distillation(2.0, 0.5)(STUDENT, packed),
                               distillation(STUDENT, TEACHER, LABELS, temperature=2.0, alpha=0.5))
    assert Distillation(2.0, 0.5) == Distillation(2.0, 0.5)   # one compiled epoch for both
    x = RNG.normal(size=(64, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    teacher = 4 * np.stack([-x[:, 0], x[:, 0]], axis=1)
    model = jdnn.serial(jdnn.Dense(2))
    _, history = jdnn.fit(model, (x, distillation_targets(y, teacher)), loss=Distillation(),
                          optimizer=optax.adam(0.05), epochs=4, batch_size=16, key=0,
                          progress=False)
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("call, match", [
    (lambda: distillation(STUDENT, TEACHER[:, :3], LABELS), r"student_logits have shape \(5, 4\)"
                                                             r" but teacher_logits have shape"),
    (lambda: distillation(STUDENT, TEACHER, LABELS, temperature=0), r"temperature must be a "
                                                                    r"float > 0.*got 0"),
    (lambda: distillation(STUDENT, TEACHER, LABELS, alpha=1.5), r"alpha must be a float in "
                                                                r"\[0, 1\].*got 1.5"),
    (lambda: Distillation(alpha=-1), r"alpha must be"),
    (lambda: Distillation()(STUDENT, TEACHER), r"targets must be distillation_targets\(labels, "
                                               r"teacher_logits\), shape \(5, 5\)"),
    (lambda: distillation_targets(LABELS[:, None], TEACHER), r"labels must be class indices"),
])
def test_errors_say_what_was_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
