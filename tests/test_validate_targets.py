"""Targets against outputs for every loss, and one value per example from every loss.

A loss of one's own (`my_mse`) does not check shapes: `(B, 1)` outputs against `(B,)` targets
broadcast to `(B, B)` and train a silently wrong model. fit, evaluate, check_data and
check_labels refuse such targets before anything compiles; the step refuses a loss that does
not return `(B,)` when it is traced."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdnn
from jdnn.core import Layer, make_spec
from jdnn.data.validate import check_data, check_labels
from jdnn.losses import binary_cross_entropy, mse, per_example_values, softmax_cross_entropy

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 3)).astype(np.float32)
Y = (X @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)     # (40,) regression
ONE = jdnn.serial(jdnn.Dense(4), jdnn.Relu(), jdnn.Dense(1))             # outputs (B, 1)
CLASSES = jdnn.serial(jdnn.Dense(4), jdnn.Relu(), jdnn.Dense(3))         # outputs (B, 3)


def my_mse(outputs, targets):
    return jnp.mean((outputs - targets) ** 2, axis=-1)


def _squeeze(layer):
    """`layer` with its trailing output axis of size 1 dropped: outputs `(B,)`."""

    def init(key, input_shape):
        shape, params, state = layer.init(key, input_shape)
        return shape[:-1], params, state

    def apply(params, state, x, *, key=None, train=False):
        y, state = layer.apply(params, state, x, key=key, train=train)
        return y[..., 0], state

    return Layer(init, apply, make_spec("Squeezed", layer.spec))


FLAT = _squeeze(ONE)                                                      # outputs (B,)


def _fit(model=ONE, data=(X, Y), **kwargs):
    options = dict(loss=my_mse, optimizer=optax.adam(1e-2), epochs=1, batch_size=8, key=0,
                   progress=False)
    options.update(kwargs)
    return jdnn.fit(model, data, **options)


MISMATCH = (r"train_data: y of shape \(40,\) does not match the model's output shape \(40, 1\) "
            r"under the loss my_mse: it would broadcast the outputs against the targets to shape "
            r"\(40, 40\), pairing every example with every other, and train a silently wrong "
            r"model. Give y the outputs' shape: y.reshape\(-1, 1\) \(or y\[:, None\]\)")


def test_fit_refuses_flat_targets_for_single_outputs_under_a_loss_of_ones_own():
    with pytest.raises(ValueError, match=MISMATCH):
        _fit()


def test_fit_refuses_column_targets_for_flat_outputs_under_a_loss_of_ones_own():
    with pytest.raises(ValueError, match=r"train_data: y of shape \(40, 1\) does not match the "
                                         r"model's output shape \(40,\) under the loss my_mse.*"
                                         r"y.reshape\(-1\) \(or y\[:, 0\]\)"):
        _fit(FLAT, (X, Y[:, None]))


def test_validation_data_and_partials_are_checked_too():
    with pytest.raises(ValueError, match=r"^validation_data: y of shape \(40,\) .* under the "
                                         r"loss my_mse"):
        _fit(data=(X, Y[:, None]), validation_data=(X, Y))
    weighted = functools.partial(my_mse)
    with pytest.raises(ValueError, match=r"under the loss my_mse"):
        _fit(loss=weighted)


def test_evaluate_check_data_and_check_labels_refuse_the_mismatch():
    ts, _ = _fit(data=(X, Y[:, None]))
    with pytest.raises(ValueError, match=r"^data: y of shape \(40,\) does not match"):
        jdnn.evaluate(ONE, ts, (X, Y), loss=my_mse)
    with pytest.raises(ValueError, match=r"^train_data: y of shape \(40,\) does not match"):
        check_data(X, Y, model=ONE, loss=my_mse)
    with pytest.raises(ValueError, match=r"^per_example_grads: y of shape \(40,\) does not "):
        check_labels(Y, loss=my_mse, model=ONE, x_shape=X.shape, name="per_example_grads")
    with pytest.raises(ValueError, match=r"^ghost_clipped_grad: y of shape \(8,\) does not "):
        jdnn.ghost_clipped_grad(ONE, my_mse, ts.params, ts.state, X[:8], Y[:8],
                                l2_norm_clip=1.0)


@pytest.mark.parametrize("model, y, loss", [
    (ONE, Y[:, None], my_mse),                       # the outputs' shape
    (ONE, Y, mse),                                   # mse reads (B,) targets as (B, 1)
    (ONE, (Y > 0).astype(np.float32), binary_cross_entropy),
    (CLASSES, (Y > 0).astype(np.int32), softmax_cross_entropy),
    (CLASSES, (Y > 0).astype(np.int32),              # class indices for a loss of one's own
     lambda out, y: optax.losses.softmax_cross_entropy_with_integer_labels(out, y)),
    (CLASSES, np.stack([Y, -Y], 1), lambda out, y: jnp.mean(out[:, :2] - y, -1)),
    (FLAT, Y, my_mse),
])
def test_targets_that_fit_the_outputs_pass(model, y, loss):
    check_data(X, y, model=model, loss=loss)


def test_integer_targets_broadcast_across_examples_are_refused_too():
    def my_bce(out, y):
        return jnp.mean(optax.losses.sigmoid_binary_cross_entropy(out, y), axis=-1)

    with pytest.raises(ValueError, match=r"y of shape \(40,\) does not match the model's output "
                                         r"shape \(40, 1\) under the loss my_bce"):
        check_data(X, (Y > 0).astype(np.int32), model=ONE, loss=my_bce)


# --- one value per example, at trace time ----------------------------------------------------


@pytest.mark.parametrize("loss, y, match", [
    (lambda out, y: jnp.mean((out - y) ** 2), Y[:, None],
     r"the loss <lambda> must return one value per example, shape \(8,\), got shape \(\) for "
     r"outputs of shape \(8, 1\) and targets of shape \(8, 1\); it reduces over the batch"),
    (lambda out, y: (out - y) ** 2, Y[:, None],
     r"got shape \(8, 1\) .*; average over every axis but the first"),
    (lambda out, y: (out - y[:, 0]) ** 2, Y[:, None],
     r"got shape \(8, 8\) .*the batch size appears twice, so the outputs and targets probably "
     r"broadcast against each other across examples"),
])
def test_a_loss_that_does_not_return_one_value_per_example_is_named(loss, y, match):
    with pytest.raises(ValueError, match=match):
        _fit(data=(X, y), loss=loss)


def test_per_example_values_passes_per_example_losses_through_under_jit():
    out = jnp.ones((5, 1))
    values = jax.jit(lambda o, t: per_example_values(mse, o, t))(out, jnp.zeros(5))
    np.testing.assert_allclose(values, np.ones(5))
