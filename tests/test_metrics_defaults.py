"""The default metrics follow the loss: accuracy for classification losses only; asking for
accuracy on targets that are not class labels is an error."""

import functools

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdnn
from jdnn.losses import binary_cross_entropy, mse, softmax_cross_entropy
from jdnn.metrics import accuracy, default_metrics, is_accuracy, resolve_metrics

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 3)).astype(np.float32)
Y = (X @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)    # regression targets
LABELS = (Y > 0).astype(np.int32)
ONE = jdnn.serial(jdnn.Dense(4), jdnn.Relu(), jdnn.Dense(1))
CLASSES = jdnn.serial(jdnn.Dense(4), jdnn.Relu(), jdnn.Dense(3))


def my_mse(outputs, targets):
    return jnp.mean((outputs - targets) ** 2, axis=-1)


def _fit(model, data, loss, **kwargs):
    return jdnn.fit(model, data, loss=loss, optimizer=optax.adam(1e-2), epochs=1, batch_size=8,
                    key=0, progress=False, validation_data=data, **kwargs)


@pytest.mark.parametrize("model, data, loss, keys", [
    (ONE, (X, Y), mse, {"loss", "val_loss"}),
    (ONE, (X, Y[:, None]), my_mse, {"loss", "val_loss"}),
    (CLASSES, (X, LABELS), softmax_cross_entropy,
     {"loss", "accuracy", "val_loss", "val_accuracy"}),
    (CLASSES, (X, LABELS), functools.partial(softmax_cross_entropy, label_smoothing=0.1),
     {"loss", "accuracy", "val_loss", "val_accuracy"}),
    (ONE, (X, LABELS), binary_cross_entropy, {"loss", "accuracy", "val_loss", "val_accuracy"}),
], ids=["mse", "own_loss", "softmax", "smoothed", "binary"])
def test_fits_default_metrics_follow_the_loss(model, data, loss, keys):
    _, history = _fit(model, data, loss)
    assert set(history.keys()) - {"epoch", "seconds"} == keys


def test_evaluates_default_metrics_follow_the_loss():
    ts, _ = _fit(ONE, (X, Y), mse)
    assert set(jdnn.evaluate(ONE, ts, (X, Y), loss=mse)) == {"loss"}
    ts, _ = _fit(CLASSES, (X, LABELS), softmax_cross_entropy)
    assert set(jdnn.evaluate(CLASSES, ts, (X, LABELS), loss=softmax_cross_entropy)) == {
        "loss", "accuracy"}
    evaluator = jdnn.train.make_evaluator(ONE, mse)
    assert set(evaluator(_fit(ONE, (X, Y), mse)[0], jnp.asarray(X), jnp.asarray(Y))) == {"loss"}


def test_asked_for_metrics_are_reported_whatever_the_loss():
    _, history = _fit(ONE, (X, Y), mse, metrics=())
    assert "accuracy" not in history.keys()
    _, history = _fit(ONE, (X, (Y > 0).astype(np.float32)), mse, metrics=("accuracy",))
    assert "accuracy" in history.keys() and "val_accuracy" in history.keys()


@pytest.mark.parametrize("model, y, loss, match", [
    (ONE, Y, mse, r"train_data: metrics asks for accuracy, but y has 40 values other than 0 and "
                  r"1 \(a single output's classes\); the first is y\[0\] = .*Accuracy compares "
                  r"predicted classes with class labels: for regression targets leave metrics "
                  r"out \(the default follows the loss: accuracy only for a classification "
                  r"loss\) or pass metrics=\(\)"),
    (CLASSES, Y, lambda out, y: jnp.mean(out, -1) - y,
     r"train_data: metrics asks for accuracy, but y has \d+ values that are not class indices "
     r"in \[0, 3\)"),
    (CLASSES, np.abs(np.stack([Y, Y, Y], 1)), my_mse,
     r"train_data: metrics asks for accuracy, but y has \d+ row\(s\) that are not one-hot or "
     r"probability vectors \(entries in \[0, 1\] summing to 1\); the first is y\[0\] = "),
], ids=["single_output", "indices", "rows"])
def test_accuracy_asked_for_on_targets_that_are_not_class_labels_is_an_error(model, y, loss,
                                                                            match):
    with pytest.raises(ValueError, match=match):
        _fit(model, (X, y), loss, metrics=("accuracy",))


def test_evaluate_refuses_accuracy_on_regression_targets():
    ts, _ = _fit(ONE, (X, Y), mse)
    with pytest.raises(ValueError, match=r"^data: metrics asks for accuracy, but y has 40 "):
        jdnn.evaluate(ONE, ts, (X, Y), loss=mse, metrics=["accuracy"])


@pytest.mark.parametrize("model, y", [
    (ONE, (Y > 0).astype(np.float32)),                      # 0/1 floats for one output
    (CLASSES, (Y > 0).astype(np.float32)),                  # whole-number floats as indices
    (CLASSES, np.eye(3, dtype=np.float32)[LABELS]),         # one-hot rows
])
def test_accuracy_on_class_labels_of_any_dtype_passes(model, y):
    jdnn.data.check_data(X, y, model=model, loss=my_mse if y.ndim == 2 else mse,
                         metrics=("accuracy",))


def test_resolve_metrics_defaults_to_the_losss_metrics_and_keeps_its_old_call_form():
    assert resolve_metrics(None, loss=softmax_cross_entropy) == {"accuracy": accuracy}
    assert resolve_metrics(None, loss=mse) == {} and resolve_metrics(None) == {}
    assert resolve_metrics(("accuracy",), "fit") == {"accuracy": accuracy}
    assert resolve_metrics("accuracy") == {"accuracy": accuracy}
    assert default_metrics(functools.partial(binary_cross_entropy)) == ("accuracy",)
    assert default_metrics(my_mse) == ()
    assert is_accuracy(functools.partial(accuracy, threshold=0.5)) and not is_accuracy(my_mse)
    with pytest.raises(ValueError, match=r"^fit: unknown metric 'f1'"):
        resolve_metrics(("f1",), "fit")
