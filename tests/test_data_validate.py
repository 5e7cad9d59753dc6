"""jdnn.data.validate: valid data passes; every error path raises a ValueError naming the data,
what was expected and what was found."""

import functools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
from jdnn.core import Layer, make_spec
from jdnn.data.datasets import digits
from jdnn.data.validate import as_arrays, check_data, check_labels
from jdnn.losses import binary_cross_entropy, mse, softmax_cross_entropy

RNG = np.random.default_rng(0)
X = RNG.uniform(size=(100, 8)).astype(np.float32)
LABELS = RNG.integers(0, 10, 100).astype(np.int32)
MLP = jdnn.serial(jdnn.Dense(16), jdnn.Relu(), jdnn.Dense(10))
BINARY = jdnn.serial(jdnn.Dense(4), jdnn.Relu(), jdnn.Dense(1))
CNN = jdnn.serial(jdnn.Conv2D(4, (3, 3)), jdnn.Flatten(), jdnn.Dense(10))


def raises(match):
    return pytest.raises(ValueError, match=match)


# --- valid data ------------------------------------------------------------------------------


@pytest.mark.parametrize("x, y, model, loss", [
    (X, LABELS, MLP, softmax_cross_entropy),
    (X, np.eye(10, dtype=np.float32)[LABELS], MLP, softmax_cross_entropy),      # one-hot
    (X, LABELS.astype(np.uint8), None, softmax_cross_entropy),
    (X, (LABELS % 2).astype(np.float32), BINARY, binary_cross_entropy),         # (N,) for (N, 1)
    (X, (LABELS % 2)[:, None].astype(np.float32), BINARY, binary_cross_entropy),
    (X, LABELS % 2 == 0, None, binary_cross_entropy),                          # bool labels
    (X, RNG.normal(size=(100, 1)) * 50, BINARY, mse),                          # regression
    (RNG.uniform(size=(100, 8, 8, 1)), LABELS, CNN, softmax_cross_entropy),
    (jnp.asarray(X), jnp.asarray(LABELS), MLP, functools.partial(softmax_cross_entropy,
                                                                 label_smoothing=0.1)),
])
def test_valid_data_passes(x, y, model, loss):
    assert check_data(x, y, model=model, loss=loss) is None


def test_the_real_digits_fit_their_models():
    (x, y), (x_test, y_test) = digits(layout="nhwc")
    check_data(x, y, model=CNN, loss=softmax_cross_entropy)
    check_data(x_test.reshape(-1, 64), y_test, model=MLP, loss=softmax_cross_entropy,
               name="validation_data")


# --- x and y ---------------------------------------------------------------------------------


def test_length_mismatch():
    with raises(r"^train_data: x has 100 examples but y has 90; x and y need one entry per "
                r"example"):
        check_data(X, LABELS[:90])


def test_the_name_appears_in_the_message():
    with raises(r"^validation_data: x has 100 examples but y has 99"):
        check_data(X, LABELS[:99], name="validation_data")


def test_no_examples():
    with raises(r"train_data: x and y have no examples \(shapes \(0, 8\) and \(0,\)\)"):
        check_data(X[:0], LABELS[:0])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_x_reports_the_count_and_the_first_index(value):
    x = X.copy()
    x[37, 5] = value
    x[60, 0] = value
    with raises(r"train_data: x has 2 non-finite value\(s\) \(NaN or inf\); the first is "
                rf"x\[37, 5\] = {re.escape(repr(float(value)))}"):
        check_data(x, LABELS)


def test_non_finite_y():
    y = RNG.normal(size=(100, 1))
    y[3, 0] = np.nan
    with raises(r"train_data: y has 1 non-finite value\(s\) .* the first is y\[3, 0\] = nan"):
        check_data(X, y, loss=mse)


@pytest.mark.parametrize("x, y, match", [
    (np.array(["a", "b"]), np.zeros(2), r"x must be an array of real numbers, got dtype <U1"),
    (np.array([{}, {}], dtype=object), np.zeros(2), r"x must be .* got dtype object"),
    (np.ones(2, np.complex64), np.zeros(2), r"x must be .* got dtype complex64"),
    (np.ones((2, 3)), np.array(["a", "b"]), r"y must be an array of real numbers"),
    (np.float32(1.0), np.zeros(1), r"x is a scalar, but needs a first axis"),
])
def test_non_numeric_or_scalar_arrays(x, y, match):
    with raises("train_data: " + match):
        check_data(x, y)


# --- the model -------------------------------------------------------------------------------


def test_x_that_does_not_fit_the_model():
    with raises(r"^train_data: x of shape \(100, 8\) does not fit the model: Conv2D layer at "
                r"0_conv2d: expected an NHWC input_shape"):
        check_data(X, LABELS, model=CNN, loss=softmax_cross_entropy)


def test_a_model_whose_init_needs_concrete_values_still_works():
    def init(key, input_shape):
        classes = 2 + int(jax.random.randint(key, (), 0, 1))   # concrete only: not traceable
        return (*input_shape[:-1], classes), {}, {}

    model = Layer(init, lambda params, state, x, **kw: (x, state), make_spec("Concrete"))
    check_data(X, LABELS % 2, model=model, loss=softmax_cross_entropy)
    with raises(r"y has class labels up to 9 but the model outputs 2 classes"):
        check_data(X, LABELS, model=model, loss=softmax_cross_entropy)


# --- softmax_cross_entropy labels ------------------------------------------------------------


def test_labels_beyond_the_models_classes():
    model = jdnn.serial(jdnn.Dense(5))
    with raises(r"train_data: y has class labels up to 9 but the model outputs 5 classes "
                r"\(output shape \(1, 5\)\); \d+ label\(s\) are outside \[0, 5\), the first is "
                r"y\[\d+\] = \d.*Dense\(10\)"):
        check_data(X, LABELS, model=model, loss=softmax_cross_entropy)


def test_a_partial_of_the_loss_is_recognized():
    loss = functools.partial(softmax_cross_entropy, label_smoothing=0.1)
    with raises(r"the model outputs 5 classes"):
        check_data(X, LABELS, model=jdnn.serial(jdnn.Dense(5)), loss=loss)


@pytest.mark.parametrize("model", [None, MLP])
def test_negative_labels(model):
    y = LABELS.copy()
    y[[4, 9]] = -1
    with raises(r"train_data: y has 2 negative class label\(s\); the first is y\[4\] = -1\. "
                r"Class labels must lie in \[0, classes\)"):
        check_data(X, y, model=model, loss=softmax_cross_entropy)


def test_non_integer_labels():
    y = LABELS.astype(np.float32)
    y[7] = 2.5
    with raises(r"train_data: y has 1 non-integer class label\(s\); the first is y\[7\] = 2.5"):
        check_data(X, y, model=MLP, loss=softmax_cross_entropy)


def test_whole_float_labels_must_be_cast():
    with raises(r"y holds class indices as float32, but softmax_cross_entropy needs integer "
                r"class indices; use y.astype\(np.int32\)"):
        check_data(X, LABELS.astype(np.float32), loss=softmax_cross_entropy)


def test_one_hot_labels_outside_the_unit_interval():
    y = np.eye(10, dtype=np.float32)[LABELS] * 2
    with raises(r"train_data: y has 100 value\(s\) outside \[0, 1\]; the first is y\[0, \d\] = "
                r"2.0. One-hot or probability labels"):
        check_data(X, y, model=MLP, loss=softmax_cross_entropy)


def test_labels_of_a_shape_that_fits_neither_form():
    with raises(r"y of shape \(100, 3\) does not fit the model's output shape \(1, 10\) under "
                r"softmax_cross_entropy: it needs integer class indices of shape \(100,\) or "
                r"one-hot vectors of shape \(100, 10\)"):
        check_data(X, np.zeros((100, 3), np.int32), model=MLP, loss=softmax_cross_entropy)


def test_softmax_on_a_single_output_unit():
    with raises(r"the model's output shape \(1, 1\) has no class axis of size >= 2.*use "
                r"binary_cross_entropy"):
        check_data(X, LABELS % 2, model=BINARY, loss=softmax_cross_entropy)


# --- binary_cross_entropy labels -------------------------------------------------------------


@pytest.mark.parametrize("model", [None, BINARY])
def test_binary_labels_outside_the_unit_interval(model):
    with raises(r"train_data: y has \d+ value\(s\) outside \[0, 1\]; the first is y\[\d+\] = "
                r"\d\. binary_cross_entropy needs labels in \{0, 1\}.*softmax_cross_entropy"):
        check_data(X, LABELS, model=model, loss=binary_cross_entropy)


def test_binary_labels_for_a_multi_class_model():
    with raises(r"y of shape \(100,\) does not fit the model's output shape \(1, 10\) under "
                r"binary_cross_entropy: it needs shape \(100, 10\); with 10 outputs and one "
                r"label per example, these look like class indices: use softmax_cross_entropy"):
        check_data(X, LABELS % 2, model=MLP, loss=binary_cross_entropy)


def test_unknown_losses_skip_the_label_checks():
    check_data(X, LABELS * 100 - 7, model=MLP, loss=lambda p, t: mse(p, t))


# --- as_arrays -------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [(X, LABELS), [X, LABELS], (jnp.asarray(X), LABELS.tolist())])
def test_as_arrays_returns_numpy_arrays(data):
    x, y = as_arrays(data, "train_data")
    assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
    np.testing.assert_array_equal(x, X)
    np.testing.assert_array_equal(y, LABELS)


@pytest.mark.parametrize("data, got", [
    (X, r"a single array of shape \(100, 8\)"),
    ((X, LABELS, LABELS), r"a tuple of length 3"),
    ({"x": X, "y": LABELS}, r"a dict with keys \['x', 'y'\]"),
    (None, r"NoneType None"),
])
def test_as_arrays_rejects_what_is_not_a_pair(data, got):
    with raises(r"^validation_data must be an \(x, y\) pair, got " + got):
        as_arrays(data, "validation_data")


def test_as_arrays_rejects_missing_or_ragged_parts():
    with raises(r"^data: y is None; pass an array of y values"):
        as_arrays((X, None), "data")
    with raises(r"^data: x cannot be converted to an array .*rectangular"):
        as_arrays(([[1, 2], [3]], [0, 1]), "data")


# --- probabilities before a from-logits loss: warned once ------------------------------------

PROBABILITIES = r"the model's last layer, {kind}, outputs probabilities, but {loss} takes logits"


@pytest.mark.parametrize("model, y, loss, kind", [
    (jdnn.serial(jdnn.Dense(10), jdnn.Softmax()), LABELS, softmax_cross_entropy, "Softmax"),
    (jdnn.serial(jdnn.Dense(10), jdnn.Softmax()), LABELS,
     functools.partial(softmax_cross_entropy, label_smoothing=0.1), "Softmax"),
    (jdnn.serial(jdnn.Dense(1), jdnn.Sigmoid()), LABELS % 2, binary_cross_entropy, "Sigmoid"),
    (jdnn.serial(jdnn.Dense(4), jdnn.serial(jdnn.Relu(), jdnn.Dense(10), jdnn.Softmax())),
     LABELS, softmax_cross_entropy, "Softmax"),
], ids=["softmax", "partial", "sigmoid", "nested"])
def test_probabilities_before_a_from_logits_loss_warn(model, y, loss, kind):
    name = "softmax_cross_entropy" if kind == "Softmax" else "binary_cross_entropy"
    pattern = PROBABILITIES.format(kind=kind, loss=name) + rf".*remove the final {kind}\(\)"
    with pytest.warns(UserWarning, match=pattern):
        check_data(X, y, model=model, loss=loss)


@pytest.mark.parametrize("model, loss", [
    (MLP, softmax_cross_entropy),  # logits
    (jdnn.serial(jdnn.Dense(10), jdnn.Softmax()), mse),  # probabilities regressed on purpose
    (jdnn.serial(jdnn.Dense(10), jdnn.Softmax(), jdnn.Dense(10)), softmax_cross_entropy),
    (jdnn.serial(jdnn.Dense(10), jdnn.residual(jdnn.Softmax())), softmax_cross_entropy),
], ids=["logits", "mse", "softmax_inside", "residual"])
def test_logits_or_other_losses_do_not_warn(model, loss):
    y = LABELS if loss is softmax_cross_entropy else RNG.uniform(size=(100, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_data(X, y, model=model, loss=loss)


def test_the_probabilities_warning_is_shown_once_for_train_and_validation_data():
    model = jdnn.serial(jdnn.Dense(10), jdnn.Softmax())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # the filter Python applies to UserWarning
        check_data(X, LABELS, model=model, loss=softmax_cross_entropy)
        check_data(X[:50], LABELS[:50], model=model, loss=softmax_cross_entropy,
                   name="validation_data")
    assert len([w for w in caught if "outputs probabilities" in str(w.message)]) == 1


# --- check_labels: the label part, for entry points that take one batch ----------------------


def test_check_labels_names_the_entry_point():
    y = LABELS.copy()
    y[3] = -1
    with raises(r"^per_example_grads: y has 1 negative class label\(s\); the first is "
                r"y\[3\] = -1"):
        check_labels(y, loss=softmax_cross_entropy, name="per_example_grads")
    with raises(r"^ghost_clipped_grad: y has class labels up to 10 but the model outputs 10 "
                r"classes"):
        check_labels(np.where(LABELS == 0, 10, LABELS), loss=softmax_cross_entropy, model=MLP,
                     x_shape=X.shape, name="ghost_clipped_grad")


def test_check_labels_checks_binary_labels_and_finiteness():
    with raises(r"^entry: y has 1 value\(s\) outside \[0, 1\]; the first is y\[0\] = 2"):
        check_labels(np.array([2.0, 0.0]), loss=binary_cross_entropy, name="entry")
    with raises(r"^entry: y has 1 non-finite value\(s\)"):
        check_labels(np.array([np.nan, 0.0]), loss=binary_cross_entropy, name="entry")
    with raises(r"^entry: x of shape \(5, 8\) does not fit the model: Conv2D layer at "
                r"0_conv2d: expected an NHWC input_shape"):
        check_labels(LABELS[:5], loss=softmax_cross_entropy, model=CNN, x_shape=(5, 8),
                     name="entry")


def test_check_labels_passes_valid_labels_and_skips_unknown_losses():
    assert check_labels(jnp.asarray(LABELS), loss=softmax_cross_entropy, model=MLP,
                        x_shape=X.shape, name="entry") is None
    assert check_labels(np.array([-5.0, 7.0]), loss=mse, name="entry") is None
    assert check_labels(np.array([-5, 7]), loss=None, name="entry") is None


def test_the_layers_that_see_the_input_check_it():
    from jdnn.core import make_spec, register_layer

    def small_ids(spec, x):
        big = int(np.max(x))
        return None if big < spec["limit"] else f"an id of {big} is not below {spec['limit']}"

    @register_layer(check_input=small_ids)
    def Lookup(limit: int = 4) -> jdnn.Layer:
        return jdnn.Layer(lambda k, s: ((*s, 2), {}, {}),
                          lambda p, st, x, **kw: (jnp.zeros((*x.shape, 2)), st),
                          make_spec("Lookup", limit=limit))

    model = jdnn.serial(jdnn.branches(Lookup(), Lookup(limit=9)), jdnn.Flatten())
    y = np.zeros(3)
    check_data(np.array([[1, 2], [3, 0], [2, 2]]), y, model=model)
    with pytest.raises(ValueError, match=r"train_data: x does not fit the model's first layer "
                                         r"Lookup: an id of 7 is not below 4"):
        check_data(np.array([[1, 2], [7, 0], [2, 2]]), y, model=model)
