"""jdnn.core: Spec, Layer, LayerError and the shape/hyper-parameter checking helpers."""

import dataclasses
import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdnn.core import (
    Layer,
    LayerError,
    MissingKeyError,
    Spec,
    check_features,
    check_hparam,
    check_images,
    check_input_shape,
    child_name,
    declare,
    entry_point,
    make_spec,
    output_layer,
    padding_mode,
    positive_ints,
    spatial_output_shape,
    trait,
    window_output_size,
)
from jdnn.layers import (Conv2D, Dense, Dropout, MaxPool2D, Relu, Sigmoid, Softmax, residual,
                         serial)

# --- Spec ------------------------------------------------------------------------------------


def test_spec_repr_reads_like_code():
    spec = serial(Dense(3), Sigmoid()).spec
    assert repr(spec) == ("serial(Dense(features=3, use_bias=True, w_init='lecun_normal', "
                          "b_init='zeros'), Sigmoid())")
    assert repr(Conv2D(8, 3, padding="valid").spec) == (
        "Conv2D(features=8, kernel_size=(3, 3), strides=(1, 1), padding='VALID', use_bias=True, "
        "w_init='lecun_normal', b_init='zeros')")
    assert repr(residual(Dropout(0.5)).spec) == "residual(Dropout(rate=0.5))"
    assert repr(Relu()) == "Layer(Relu())"


def test_spec_is_hashable_and_equal_for_equal_constructors():
    a, b = serial(Dense(3), Relu()).spec, serial(Dense(3), Relu()).spec
    assert a == b and hash(a) == hash(b)
    assert {a: "model"}[b] == "model"
    # hyper-parameters are normalized, so equivalent spellings give one spec
    assert Conv2D(8, 3).spec == Conv2D(8, (3, 3), strides=(1, 1), padding="same").spec
    assert MaxPool2D(2).spec == MaxPool2D((2, 2), strides=2).spec
    assert Dropout(0).spec == Dropout(0.0).spec


@pytest.mark.parametrize("other", [
    Dense(4).spec, Dense(3, use_bias=False).spec, Dense(3, w_init="he_normal").spec,
    serial(Dense(3)).spec, Relu().spec,
], ids=["features", "use_bias", "w_init", "wrapped", "kind"])
def test_spec_differs_when_the_layer_differs(other):
    assert Dense(3).spec != other


def test_spec_is_frozen():
    spec = Dense(3).spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.kind = "Conv2D"


def test_spec_to_dict_is_json_serializable():
    spec = serial(Conv2D(8, (3, 2), strides=2), Dropout(0.25), residual(Dense(8))).spec
    assert json.loads(json.dumps(spec.to_dict())) == {
        "kind": "serial",
        "hparams": {},
        "children": [
            {"kind": "Conv2D", "hparams": {"features": 8, "kernel_size": [3, 2],
                                           "strides": [2, 2], "padding": "SAME",
                                           "use_bias": True, "w_init": "lecun_normal",
                                           "b_init": "zeros"}, "children": []},
            {"kind": "Dropout", "hparams": {"rate": 0.25}, "children": []},
            {"kind": "residual", "hparams": {}, "children": [
                {"kind": "Dense", "hparams": {"features": 8, "use_bias": True,
                                              "w_init": "lecun_normal", "b_init": "zeros"},
                 "children": []}]},
        ],
    }


def test_spec_indexing_by_hparam_name():
    spec = Conv2D(8, (3, 2), padding="VALID").spec
    assert spec["features"] == 8
    assert spec["kernel_size"] == (3, 2)
    assert spec["padding"] == "VALID"
    assert spec.names == ("features", "kernel_size", "strides", "padding", "use_bias", "w_init",
                          "b_init")
    with pytest.raises(KeyError, match="Conv2D has no hyper-parameter 'feature'; it has"):
        spec["feature"]


def test_make_spec_keeps_keyword_order_and_children():
    child = make_spec("Relu")
    spec = make_spec("block", child, child, b=2, a=1)
    assert spec == Spec("block", (("b", 2), ("a", 1)), (child, child))
    assert repr(spec) == "block(Relu(), Relu(), b=2, a=1)"


def test_layer_is_a_named_triple():
    layer = Dense(3)
    init, apply, spec = layer
    assert isinstance(layer, Layer) and layer.init is init and layer.apply is apply
    assert spec.kind == "Dense"


def test_child_name():
    assert child_name(2, Dense(3).spec) == "2_dense"
    assert child_name(0, Conv2D(3, 3).spec) == "0_conv2d"
    assert child_name(11, serial().spec) == "11_serial"


# --- LayerError ------------------------------------------------------------------------------


def test_layer_error_names_kind_and_path():
    error = LayerError("Dense", "bad input")
    assert isinstance(error, ValueError)
    assert str(error) == "Dense layer at <root>: bad input"
    nested = error.within("0_dense").within("1_serial")
    assert str(nested) == "Dense layer at 1_serial/0_dense: bad input"
    assert (nested.kind, nested.detail, nested.path) == ("Dense", "bad input",
                                                         ("1_serial", "0_dense"))
    assert error.path == ()  # within() returns a new error


def test_layer_error_survives_pickling():
    # errors cross process boundaries (multiprocessing, parallel runs) by pickle
    error = pickle.loads(pickle.dumps(LayerError("Dense", "bad input", ("1_serial", "0_dense"))))
    assert isinstance(error, LayerError)
    assert str(error) == "Dense layer at 1_serial/0_dense: bad input"
    assert (error.kind, error.detail, error.path) == ("Dense", "bad input", ("1_serial", "0_dense"))


# --- construction-time checks ----------------------------------------------------------------


def test_check_hparam():
    check_hparam("Dense", "features", 3, True, "a positive int")
    with pytest.raises(ValueError, match="Dense: features must be a positive int, got 0"):
        check_hparam("Dense", "features", 0, False, "a positive int")


@pytest.mark.parametrize("value, expected", [
    (3, (3, 3)), (1, (1, 1)), ((2, 3), (2, 3)), ([2, 3], (2, 3)),
])
def test_positive_ints_normalizes(value, expected):
    assert positive_ints("Conv2D", "kernel_size", value, 2) == expected


@pytest.mark.parametrize("value", [0, -1, (3, 0), (3,), (3, 3, 3), True, (2, True), "33", 2.5,
                                   (2.0, 2.0), None])
def test_positive_ints_rejects(value):
    with pytest.raises(ValueError, match="Conv2D: kernel_size must be a positive int or a tuple "
                                         "of 2 positive ints, got"):
        positive_ints("Conv2D", "kernel_size", value, 2)


def test_padding_mode():
    assert padding_mode("Conv2D", "same") == "SAME"
    assert padding_mode("Conv2D", "Valid") == "VALID"
    for bad in ("FULL", None, 1):
        with pytest.raises(ValueError, match='Conv2D: padding must be "SAME" or "VALID", got'):
            padding_mode("Conv2D", bad)


# --- shape checks ----------------------------------------------------------------------------


def test_check_input_shape_accepts_sequences_of_ints():
    assert check_input_shape("Dense", [4, 5]) == (4, 5)
    assert check_input_shape("Dense", (np.int64(4), 5)) == (4, 5)
    assert check_input_shape("Dense", (0, 5)) == (0, 5)


@pytest.mark.parametrize("shape, match", [
    (5, r"Dense layer at <root>: input_shape must be a tuple of ints, got 5"),
    ((None, 5), r"input_shape must be a tuple of ints, got \(None, 5\)"),
    ((4, 3.7), r"input_shape must be a tuple of ints, got \(4, 3.7\)"),
    ("ab", r"input_shape must be a tuple of ints, got 'ab'"),
    ((4, -5), r"expected an input_shape of rank >= 1 \(batch axis first\), got \(4, -5\)"),
    ((), r"expected an input_shape of rank >= 1 \(batch axis first\), got \(\)"),
], ids=["int", "none", "float", "str", "negative", "empty"])
def test_check_input_shape_rejects(shape, match):
    with pytest.raises(LayerError, match=match):
        check_input_shape("Dense", shape)


def test_check_input_shape_min_rank():
    with pytest.raises(LayerError, match=r"rank >= 2 \(batch axis first\), got \(5,\)"):
        check_input_shape("BatchNorm", (5,), min_rank=2)


@pytest.mark.parametrize("size, window, stride, padding, expected", [
    (5, 3, 1, "SAME", 5), (5, 3, 2, "SAME", 3), (6, 3, 2, "SAME", 3), (5, 2, 3, "SAME", 2),
    (5, 3, 1, "VALID", 3), (5, 3, 2, "VALID", 2), (6, 3, 2, "VALID", 2), (3, 3, 2, "VALID", 1),
])
def test_window_output_size(size, window, stride, padding, expected):
    assert window_output_size(size, window, stride, padding) == expected
    # the same count by brute force: window starts that fit (VALID) / that start inside (SAME)
    if padding == "VALID":
        assert expected == len(range(0, size - window + 1, stride))
    else:
        assert expected == len(range(0, size, stride))


def test_spatial_output_shape():
    assert spatial_output_shape("Conv2D", (2, 5, 6, 3), (3, 2), (2, 1), "SAME", 8) == (2, 3, 6, 8)
    assert spatial_output_shape("Conv2D", (2, 5, 6, 3), (3, 2), (2, 1), "VALID", 8) == (2, 2, 5, 8)
    with pytest.raises(LayerError, match=r"expected an NHWC input_shape \(batch, height, width, "
                                         r"channels\), got \(5, 6, 3\)"):
        spatial_output_shape("Conv2D", (5, 6, 3), (3, 3), (1, 1), "SAME", 8)
    with pytest.raises(LayerError, match=r"input of spatial size \(2, 6\) is smaller than the "
                                         r"window \(3, 3\) with padding 'VALID'"):
        spatial_output_shape("Conv2D", (1, 2, 6, 3), (3, 3), (1, 1), "VALID", 8)


def test_check_features():
    check_features("Dense", jnp.ones((4, 3)), 3)
    with pytest.raises(LayerError, match=r"Dense layer at <root>: expected input with last axis "
                                         r"\(in_features\) of size 3, got an input of shape "
                                         r"\(4, 5\)$"):
        check_features("Dense", jnp.ones((4, 5)), 3, "in_features")
    with pytest.raises(LayerError, match=r"an input of rank 1 has no batch axis: a batch of N "
                                         r"examples has shape \(N, 3\), a single example "
                                         r"x\[None\]"):
        check_features("Dense", jnp.ones(5), 3)
    with pytest.raises(LayerError, match=r"got an input of shape \(\); an input of rank 0"):
        check_features("Dense", jnp.ones(()), 3)


def test_check_images():
    check_images("Conv2D", jnp.ones((1, 4, 4, 3)), 3)
    check_images("MaxPool2D", jnp.ones((1, 4, 4, 7)))
    with pytest.raises(LayerError, match=r"rank 4, got an input of shape \(4, 4, 3\); a single "
                                         r"image needs a batch axis: x\[None\]"):
        check_images("Conv2D", jnp.ones((4, 4, 3)), 3)
    with pytest.raises(LayerError, match=r"rank 4, got an input of shape \(4, 3\)$"):
        check_images("Conv2D", jnp.ones((4, 3)), 3)
    with pytest.raises(LayerError, match=r"last axis \(channels\) of size 3, got an input of "
                                         r"shape \(1, 4, 4, 2\)"):
        check_images("Conv2D", jnp.ones((1, 4, 4, 2)), 3)


def test_output_shape_is_read_off_an_abstract_init():
    from jdnn.core import output_shape
    assert output_shape(serial(Dense(10), Relu(), Dense(3)), (32, 64)) == (32, 3)
    assert output_shape(MaxPool2D(2), [8, 28, 28, 4]) == (8, 14, 14, 4)


# --- MissingKeyError and entry_point ---------------------------------------------------------


def test_missing_key_error_keeps_its_type_and_path_through_combinators():
    error = MissingKeyError("Dropout", "train=True needs a random key").within("2_dropout")
    assert isinstance(error, MissingKeyError) and isinstance(error, LayerError)
    assert str(error) == "Dropout layer at 2_dropout: train=True needs a random key"
    nested = error.within("0_serial")
    assert type(nested) is MissingKeyError and nested.path == ("0_serial", "2_dropout")


def test_missing_key_error_names_the_entry_point_and_survives_pickling():
    error = MissingKeyError("Dropout", "needs a key", ("2_dropout",)).called_from("my_entry")
    expected = ("my_entry: the model's Dropout at 2_dropout needs a random key in training "
                "mode; pass key=jax.random.key(0) (or train=False)")
    assert str(error) == expected and error.entry == "my_entry"
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is MissingKeyError and str(again) == expected
    assert str(error.within("1_serial")).startswith("my_entry: the model's Dropout at "
                                                    "1_serial/2_dropout needs")


def test_entry_point_rewords_only_a_missing_key():
    model = serial(Dense(3), Dropout(0.5))
    _, params, state = model.init(jax.random.key(0), (2, 4))
    with pytest.raises(MissingKeyError, match=r"^my_entry: the model's Dropout at 1_dropout "
                                              r"needs a random key in training mode"):
        with entry_point("my_entry"):
            model.apply(params, state, jnp.ones((2, 4)), train=True)
    with pytest.raises(LayerError, match=r"^Dense layer at 0_dense: expected input"):
        with entry_point("my_entry"):  # any other error passes through unchanged
            model.apply(params, state, jnp.ones((2, 5)), train=False)


def test_within_keeps_a_subclass_of_layer_error():
    class ShapeError(LayerError):
        pass

    error = ShapeError("Dense", "bad").within("0_dense")
    assert type(error) is ShapeError and error.path == ("0_dense",)


# --- traits ----------------------------------------------------------------------------------


def test_kinds_declare_traits_and_consumers_ask():
    assert trait(Softmax().spec, "outputs_probabilities", False) is True
    assert trait(Sigmoid().spec, "outputs_probabilities", False) is True
    assert trait(Relu().spec, "outputs_probabilities", False) is False
    assert trait(Dense(3).spec, "no_such_trait") is None


def test_a_users_kind_declares_its_traits_the_same_way():
    declare("TestCoreProbabilities", outputs_probabilities=True)
    spec = make_spec("TestCoreProbabilities")
    assert trait(spec, "outputs_probabilities") is True
    declare("TestCoreProbabilities", family="norm")  # later declarations add to earlier ones
    assert (trait(spec, "outputs_probabilities"), trait(spec, "family")) == (True, "norm")
    with pytest.raises(TypeError, match=r"declare\('TestCoreProbabilities'\): unknown trait\(s\) "
                                        r"\['colour'\]; jdnn reads \['activation_stats', "):
        declare("TestCoreProbabilities", colour="red")


@pytest.mark.parametrize("kind", [None, "", 3])
def test_declare_needs_a_kind_name(kind):
    with pytest.raises(TypeError, match=r"declare: kind must be a layer kind name \(a non-empty "
                                        r"str\), got"):
        declare(kind, outputs_probabilities=True)


def test_output_layer_follows_serial_to_its_last_leaf():
    assert output_layer(serial(Dense(3), Softmax()).spec) == Softmax().spec
    nested = serial(Dense(3), serial(Relu(), serial(Dense(2), Sigmoid())))
    assert output_layer(nested.spec) == Sigmoid().spec
    assert output_layer(Dense(3).spec) == Dense(3).spec
    assert output_layer(serial().spec) == serial().spec  # an empty serial is the identity
    # residual adds its input back in: its output is not its child's
    block = residual(serial(Dense(3), Softmax()))
    assert output_layer(serial(Dense(3), block).spec) == block.spec
