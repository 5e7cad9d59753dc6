"""Bad hyper-parameters fail at construction; bad inputs fail at init/apply naming the layer path.

Every message is matched: it must say which layer (by path), what was expected and what came.
"""

import re

import jax
import jax.numpy as jnp
import pytest

from jdnn.core import LayerError
from jdnn.layers import (
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Elu,
    LeakyRelu,
    MaxPool2D,
    PRelu,
    Relu,
    residual,
    serial,
)

# --- invalid hyper-parameters raise at construction ------------------------------------------

INIT_NAMES = r"must be an initializer or the name of one in jax.nn.initializers"


@pytest.mark.parametrize("make, match", [
    (lambda: Dense(0), r"Dense: features must be a positive int, got 0"),
    (lambda: Dense(-3), r"Dense: features must be a positive int, got -3"),
    (lambda: Dense(2.5), r"Dense: features must be a positive int, got 2.5"),
    (lambda: Dense(3.0), r"Dense: features must be a positive int, got 3.0"),
    (lambda: Dense(True), r"Dense: features must be a positive int, got True"),
    (lambda: Conv2D(0, 3), r"Conv2D: features must be a positive int, got 0"),
    (lambda: Conv2D(-1, 3), r"Conv2D: features must be a positive int, got -1"),
    (lambda: Conv2D(2.5, 3), r"Conv2D: features must be a positive int, got 2.5"),
    (lambda: Conv2D(4, 0), r"Conv2D: kernel_size must be a positive int or a tuple of 2 "
                           r"positive ints, got 0"),
    (lambda: Conv2D(4, (3,)), r"Conv2D: kernel_size must be .*, got \(3,\)"),
    (lambda: Conv2D(4, (3, -1)), r"Conv2D: kernel_size must be .*, got \(3, -1\)"),
    (lambda: Conv2D(4, (3, 3, 3)), r"Conv2D: kernel_size must be .*, got \(3, 3, 3\)"),
    (lambda: Conv2D(4, 2.5), r"Conv2D: kernel_size must be .*, got 2.5"),
    (lambda: Conv2D(4, 3, strides=0), r"Conv2D: strides must be a positive int or a tuple of 2 "
                                      r"positive ints, got 0"),
    (lambda: Conv2D(4, 3, padding="FULL"), r"Conv2D: padding must be \"SAME\" or \"VALID\", "
                                           r"got 'FULL'"),
    (lambda: MaxPool2D(0), r"MaxPool2D: window must be a positive int or a tuple of 2 positive "
                           r"ints, got 0"),
    (lambda: MaxPool2D(2, padding="FULL"), r"MaxPool2D: padding must be .*, got 'FULL'"),
    (lambda: AvgPool2D(2, strides=(1, 0)), r"AvgPool2D: strides must be .*, got \(1, 0\)"),
    (lambda: AvgPool2D((2, 2, 2)), r"AvgPool2D: window must be .*, got \(2, 2, 2\)"),
    (lambda: Dropout(1.5), r"Dropout: rate must be a drop probability in \[0, 1\), got 1.5"),
    (lambda: Dropout(1.0), r"Dropout: rate must be a drop probability in \[0, 1\), got 1.0"),
    (lambda: Dropout(-0.1), r"Dropout: rate must be a drop probability in \[0, 1\), got -0.1"),
    (lambda: Dropout("0.5"), r"Dropout: rate must be .*, got '0.5'"),
    (lambda: BatchNorm(momentum=1.0), r"BatchNorm: momentum must be a float in \[0, 1\), "
                                      r"got 1.0"),
    (lambda: BatchNorm(momentum=-0.1), r"BatchNorm: momentum must be .*, got -0.1"),
    (lambda: BatchNorm(eps=0), r"BatchNorm: eps must be a float > 0, got 0"),
    (lambda: BatchNorm(eps=-1e-5), r"BatchNorm: eps must be a float > 0, got -1e-05"),
    (lambda: LeakyRelu(-1), r"LeakyRelu: negative_slope must be a finite float >= 0, got -1"),
    (lambda: LeakyRelu(float("inf")), r"LeakyRelu: negative_slope must be .*, got inf"),
    (lambda: Elu(0), r"Elu: alpha must be a finite float > 0, got 0"),
    (lambda: Elu(-1.0), r"Elu: alpha must be a finite float > 0, got -1.0"),
    (lambda: PRelu(float("nan")), r"PRelu: alpha_init must be a finite float, got nan"),
    (lambda: Dense(3, w_init="glorot_sideways"), rf"Dense: w_init {INIT_NAMES} "
                                                 r"\(e.g. .*\), got 'glorot_sideways'"),
    (lambda: Dense(3, b_init=0.0), rf"Dense: b_init {INIT_NAMES} .*, got 0.0"),
    (lambda: Conv2D(3, 3, w_init="nope"), rf"Conv2D: w_init {INIT_NAMES} .*, got 'nope'"),
    # a real jax.nn.initializers name that needs arguments cannot be used by name
    (lambda: Dense(3, w_init="constant"), r"Dense: w_init .*'constant'"),
    (lambda: serial(Dense(3), Relu), r"serial: layer 1 must be a jdnn Layer \(did you forget to "
                                     r"call the constructor, e.g. Relu\(\)\?\), got <function"),
    (lambda: serial(Dense(3), "relu"), r"serial: layer 1 must be a jdnn Layer .*, got 'relu'"),
    (lambda: residual(Dense), r"residual: layer 0 must be a jdnn Layer"),
], ids=lambda v: None if callable(v) else re.sub(r"\W+", "_", v).strip("_")[:60])
def test_invalid_hparams_raise_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --- bad input shapes at init ----------------------------------------------------------------


def test_dense_init_without_batch_axis_hints(key):
    with pytest.raises(LayerError, match=r"Dense layer at <root>: input_shape \(5,\) has no "
                                         r"feature axis: input_shape includes the batch axis "
                                         r"first, e.g. \(1, 5\) or \(batch_size, 5\)"):
        Dense(3).init(key, (5,))


def test_init_error_names_the_path_expected_and_received(key):
    model = serial(Dense(3), Relu(), Conv2D(3, 3))
    with pytest.raises(LayerError, match=r"^Conv2D layer at 2_conv2d: expected an NHWC "
                                         r"input_shape \(batch, height, width, channels\), got "
                                         r"\(2, 3\)"):
        model.init(key, (2, 5))


def test_init_error_names_the_nested_path(key):
    model = serial(Dense(3), serial(Conv2D(3, 3), Relu()))
    with pytest.raises(LayerError, match=r"^Conv2D layer at 1_serial/0_conv2d: .* got \(2, 3\)"):
        model.init(key, (2, 5))
    model = serial(Relu(), serial(Relu(), Dense(3)))
    with pytest.raises(LayerError, match=r"^Dense layer at 1_serial/1_dense: input_shape \(6,\) "
                                         r"has no feature axis"):
        model.init(key, (6,))


@pytest.mark.parametrize("layer, shape, match", [
    (Conv2D(3, 3), (5, 5, 3), r"Conv2D layer at <root>: expected an NHWC input_shape .*, got "
                              r"\(5, 5, 3\); flat images can be reshaped"),
    (Conv2D(3, 3, padding="VALID"), (1, 2, 5, 3), r"Conv2D layer at <root>: input of spatial "
                                                  r"size \(2, 5\) is smaller than the window "
                                                  r"\(3, 3\) with padding 'VALID'"),
    (MaxPool2D(2), (4, 8), r"MaxPool2D layer at <root>: expected an NHWC input_shape"),
    (AvgPool2D(3), (1, 2, 2, 1), r"AvgPool2D layer at <root>: input of spatial size \(2, 2\) is "
                                 r"smaller than the window \(3, 3\)"),
    (BatchNorm(), (5,), r"BatchNorm layer at <root>: expected an input_shape of rank >= 2 "
                        r"\(batch axis first\), got \(5,\)"),
    (PRelu(), (5,), r"PRelu layer at <root>: expected an input_shape of rank >= 2"),
    (Dense(3), 5, r"Dense layer at <root>: input_shape must be a tuple of ints, got 5"),
    (Relu(), (4, -1), r"Relu layer at <root>: expected an input_shape of rank >= 1 \(batch axis "
                      r"first\), got \(4, -1\)"),
], ids=["conv_rank3", "conv_too_small", "maxpool_rank2", "avgpool_too_small", "bn_rank1",
        "prelu_rank1", "dense_int", "relu_negative"])
def test_init_rejects_bad_shapes(layer, shape, match, key):
    with pytest.raises(LayerError, match=match):
        layer.init(key, shape)


# --- bad inputs at apply ---------------------------------------------------------------------


def _mlp(key):
    model = serial(Dense(3), Relu(), Dense(3))
    _, params, state = model.init(key, (2, 5))
    return model, params, state


def test_apply_error_names_path_expected_and_received(key):
    model, params, state = _mlp(key)
    with pytest.raises(LayerError, match=r"^Dense layer at 0_dense: expected input with last "
                                         r"axis \(in_features\) of size 5, got an input of shape "
                                         r"\(2, 6\)$"):
        model.apply(params, state, jnp.ones((2, 6)))


def test_apply_error_in_a_later_child(key):
    model, params, state = _mlp(key)
    params = {**params, "2_dense": Dense(3).init(key, (1, 5))[1]}  # params of another model
    with pytest.raises(LayerError, match=r"^Dense layer at 2_dense: .* of size 5, got an input "
                                         r"of shape \(2, 3\)$"):
        model.apply(params, state, jnp.ones((2, 5)))


def test_apply_error_names_the_nested_path(key):
    model = serial(Dense(3), serial(Dense(3), Relu()))
    _, params, state = model.init(key, (2, 5))
    params["1_serial"]["0_dense"] = Dense(3).init(key, (1, 5))[1]
    with pytest.raises(LayerError, match=r"^Dense layer at 1_serial/0_dense: .* of size 5, got "
                                         r"an input of shape \(2, 3\)$"):
        model.apply(params, state, jnp.ones((2, 5)))


@pytest.mark.parametrize("layer, init_shape, x_shape, match", [
    (Dense(3), (1, 5), (5, 5, 2), r"Dense layer at <root>: expected input with last axis "
                                  r"\(in_features\) of size 5, got an input of shape \(5, 5, 2\)$"),
    (Dense(3), (1, 5), (4,), r"an input of rank 1 has no batch axis: a batch of N examples has "
                             r"shape \(N, 5\), a single example x\[None\]"),
    (Conv2D(3, 3), (1, 4, 4, 3), (4, 4, 3), r"Conv2D layer at <root>: expected an NHWC input "
                                            r"\(batch, height, width, channels\) of rank 4, got "
                                            r"an input of shape \(4, 4, 3\); a single image needs "
                                            r"a batch axis: x\[None\]"),
    (Conv2D(3, 3), (1, 4, 4, 3), (1, 4, 4, 2), r"Conv2D layer at <root>: expected input with "
                                               r"last axis \(channels\) of size 3, got an input "
                                               r"of shape \(1, 4, 4, 2\)"),
    (MaxPool2D(2), (1, 4, 4, 3), (4, 4, 3), r"MaxPool2D layer at <root>: .* x\[None\]"),
    (AvgPool2D(2), (1, 4, 4, 3), (16, 3), r"AvgPool2D layer at <root>: .* of rank 4, got an "
                                          r"input of shape \(16, 3\)$"),
    (BatchNorm(), (2, 5), (2, 4), r"BatchNorm layer at <root>: expected input with last axis "
                                  r"\(features\) of size 5, got an input of shape \(2, 4\)"),
    (PRelu(), (2, 5), (2, 4), r"PRelu layer at <root>: .* of size 5, got .* \(2, 4\)"),
], ids=["dense_features", "dense_rank1", "conv_rank3", "conv_channels", "maxpool_rank3",
        "avgpool_rank2", "batchnorm_features", "prelu_features"])
def test_apply_rejects_bad_inputs(layer, init_shape, x_shape, match, key):
    _, params, state = layer.init(key, init_shape)
    with pytest.raises(LayerError, match=match):
        layer.apply(params, state, jnp.ones(x_shape))


def test_apply_errors_surface_under_jit(key):
    model, params, state = _mlp(key)
    with pytest.raises(LayerError, match=r"^Dense layer at 0_dense: .* got an input of shape "
                                         r"\(2, 6\)"):
        jax.jit(model.apply)(params, state, jnp.ones((2, 6)))
    conv = serial(Relu(), Conv2D(3, 3))
    _, params, state = conv.init(key, (1, 4, 4, 3))
    with pytest.raises(LayerError, match=r"^Conv2D layer at 1_conv2d: .* x\[None\]"):
        jax.jit(conv.apply)(params, state, jnp.ones((4, 4, 3)))
    drop = serial(Dense(3), Dropout(0.5))
    _, params, state = drop.init(key, (2, 5))
    with pytest.raises(LayerError, match=r"^Dropout layer at 1_dropout: train=True needs a "
                                         r"random key"):
        jax.jit(drop.apply, static_argnames="train")(params, state, jnp.ones((2, 5)), train=True)
