"""The layer contract, checked for every layer: shapes, vmap, jit, gradients, params structure.

Each case is a layer, an input shape, how to draw inputs that keep away from kinks (ReLU at 0,
max-pool ties) and whether the layer has parameters. Family-specific behavior lives in
test_layers_<family>.py.
"""

import dataclasses
import functools
import math
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jdnn.core import Layer
from jdnn.layers import (
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Elu,
    Flatten,
    Gelu,
    LeakyRelu,
    MaxPool2D,
    PRelu,
    Relu,
    Sigmoid,
    Softmax,
    Tanh,
    residual,
    serial,
)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], Layer]
    shape: tuple[int, ...]
    has_params: bool = False
    inputs: str = "away"  # "away": |x| >= 0.3; "distinct": a permutation of distinct values

    def x(self):
        rng = np.random.default_rng(0)
        if self.inputs == "distinct":
            n = math.prod(self.shape)
            return (rng.permutation(n) / n * 4.0 - 2.0).reshape(self.shape).astype(np.float32)
        x = rng.normal(size=self.shape)
        return (x + np.where(x >= 0, 0.3, -0.3)).astype(np.float32)


VEC = (4, 5)
IMG = (2, 5, 6, 3)

# Weight shapes repeat across cases on purpose: each new shape costs an initializer compile.
CASES = [
    Case("dense", lambda: Dense(3), VEC, has_params=True),
    # SAME and VALID, each with strides 1 and 2; square and non-square kernels
    Case("conv_same_s1", lambda: Conv2D(3, (3, 3)), IMG, has_params=True),
    Case("conv_valid_s2", lambda: Conv2D(3, 3, strides=2, padding="VALID"), IMG, has_params=True),
    Case("conv_nonsquare_same_s2", lambda: Conv2D(3, (3, 2), strides=2), IMG, has_params=True),
    Case("conv_nonsquare_valid_s12", lambda: Conv2D(3, (3, 2), (1, 2), "VALID"), IMG,
         has_params=True),
    Case("maxpool_valid", lambda: MaxPool2D(2), IMG, inputs="distinct"),
    Case("maxpool_same_s2", lambda: MaxPool2D(3, strides=2, padding="SAME"), IMG,
         inputs="distinct"),
    Case("avgpool_valid_strided", lambda: AvgPool2D((3, 2), strides=(2, 1)), IMG),
    Case("avgpool_same_s2", lambda: AvgPool2D(3, strides=2, padding="SAME"), IMG),
    Case("flatten", Flatten, (2, 3, 4, 2)),
    Case("dropout", lambda: Dropout(0.5), (4, 6)),
    Case("dropout_rate_in_state", lambda: Dropout(0.5, rate_in_state=True), (4, 6)),
    Case("batchnorm", BatchNorm, (8, 5), has_params=True),
    Case("batchnorm_images", lambda: BatchNorm(momentum=0.8), (4, 3, 3, 2), has_params=True),
    Case("relu", Relu, VEC),
    Case("sigmoid", Sigmoid, VEC),
    Case("tanh", Tanh, VEC),
    Case("leakyrelu", lambda: LeakyRelu(0.2), VEC),
    Case("prelu", PRelu, VEC, has_params=True),
    Case("softmax", Softmax, VEC),
    Case("gelu_tanh", lambda: Gelu(approximate=True), VEC),
    Case("gelu_erf", lambda: Gelu(approximate=False), VEC),
    Case("elu", lambda: Elu(0.7), VEC),
    Case("serial_mlp", lambda: serial(Dense(3), Tanh(), Dropout(0.3), Dense(3)), VEC,
         has_params=True),
    Case("serial_cnn", lambda: serial(Conv2D(3, 3, strides=2), BatchNorm(), Tanh(), AvgPool2D(2),
                                      Flatten(), Dense(3)), IMG, has_params=True),
    Case("serial_nested", lambda: serial(Dense(3), serial(Dense(3), Sigmoid())), VEC,
         has_params=True),
    Case("residual_mlp", lambda: residual(serial(Dense(5), Tanh(), Dense(5))), VEC,
         has_params=True),
    Case("residual_conv", lambda: residual(Conv2D(3, 3)), IMG, has_params=True),
]

# Layers whose apply also works on one example without a batch axis.
UNBATCHED = ["dense", "relu", "sigmoid", "tanh", "leakyrelu", "prelu",
             "softmax", "gelu_tanh", "gelu_erf", "elu"]

BY_NAME = {case.name: case for case in CASES}
all_cases = pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
modes = pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])


@functools.cache
def _initialized(case):
    layer = case.make()
    return (layer, *layer.init(jax.random.key(0), case.shape))


def _setup(case, x64=False):
    """The case's layer, output shape, params, state and input, initialized once per case.

    With `x64` (inside `jax.enable_x64`), params, state and input are cast to float64; that the
    initializers themselves honor x64 is checked once, in test_init_under_x64_gives_float64.
    """
    layer, out_shape, params, state = _initialized(case)
    x = jnp.asarray(case.x())
    if x64:
        params, state, x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, state, x))
    return layer, out_shape, params, state, x


def test_every_layer_kind_is_covered():
    kinds = set()

    def collect(spec):
        kinds.add(spec.kind)
        for child in spec.children:
            collect(child)

    for case in CASES:
        collect(case.make().spec)
    assert kinds >= {"Dense", "Conv2D", "MaxPool2D", "AvgPool2D", "Flatten", "Dropout",
                     "BatchNorm", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "PRelu", "Softmax",
                     "Gelu", "Elu", "serial", "residual"}


def _uses_train(case):
    def walk(spec):
        return spec.kind in ("Dropout", "BatchNorm") or any(walk(c) for c in spec.children)

    return walk(case.make().spec)


# Eval mode for every layer; train mode too where it changes the computation (dropout, here
# with a fixed key and so a fixed mask; batch norm, whose batch statistics must pass gradients).
MODE_CASES = [pytest.param(c, False, id=f"eval-{c.name}") for c in CASES] + [
    pytest.param(c, True, id=f"train-{c.name}") for c in CASES if _uses_train(c)]


# --- shapes ----------------------------------------------------------------------------------


@all_cases
@modes
def test_init_shape_equals_apply_shape(case, train):
    layer, out_shape, params, state, x = _setup(case)
    assert isinstance(out_shape, tuple) and all(isinstance(d, int) for d in out_shape)
    y, new_state = layer.apply(params, state, x, key=jax.random.key(1), train=train)
    assert y.shape == out_shape
    assert y.dtype == x.dtype
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)


@all_cases
def test_init_threads_any_batch_size(case, key):
    layer, out_shape, params, _, _ = _setup(case)
    other_shape, other_params, _ = layer.init(key, (7, *case.shape[1:]))
    assert other_shape == (7, *out_shape[1:])
    chex.assert_trees_all_equal_shapes(other_params, params)


@all_cases
def test_params_presence_matches_case(case):
    _, _, params, _, _ = _setup(case)
    assert bool(jax.tree.leaves(params)) == case.has_params


# --- vmap ------------------------------------------------------------------------------------


# Batch statistics and dropout masks depend on the whole batch, so in train mode only the layers
# without them are checked; in eval mode every layer is.
VMAP_CASES = [pytest.param(c, False, id=f"eval-{c.name}") for c in CASES] + [
    pytest.param(c, True, id=f"train-{c.name}") for c in CASES if not _uses_train(c)]


@pytest.mark.parametrize("case, train", VMAP_CASES)
def test_batch_equals_vmap_over_examples(case, train):
    layer, _, params, state, x = _setup(case)
    batch, _ = layer.apply(params, state, x, train=train)
    per_example = jax.vmap(
        lambda xi: layer.apply(params, state, xi[None], train=train)[0][0])(x)
    np.testing.assert_allclose(per_example, batch, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [BY_NAME[n] for n in UNBATCHED], ids=lambda c: c.name)
def test_batch_equals_plain_vmap(case):
    layer, _, params, state, x = _setup(case)
    batch, _ = layer.apply(params, state, x)
    per_example = jax.vmap(lambda xi: layer.apply(params, state, xi)[0])(x)
    np.testing.assert_allclose(per_example, batch, rtol=1e-5, atol=1e-5)


# --- jit -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, train", MODE_CASES)
def test_jit_equals_eager_and_compiles_once(case, train):
    layer, _, params, state, x = _setup(case)
    k = jax.random.key(2)
    eager = layer.apply(params, state, x, key=k, train=train)

    traces = []

    @jax.jit
    def apply(params, state, x, key):
        traces.append(1)
        return layer.apply(params, state, x, key=key, train=train)

    jitted = apply(params, state, x, k)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-6)
    # new values of the same shapes, the new state fed back: no retrace
    apply(params, jitted[1], 2.0 * x, jax.random.key(5))
    assert len(traces) == 1


# --- gradients, in float64 -------------------------------------------------------------------

# Second order too for a smooth activation and for batch norm's statistics (each costs a compile).
SECOND_ORDER = {"gelu_tanh", "batchnorm"}


def test_init_under_x64_gives_float64():
    with jax.enable_x64(True):
        for layer in (Dense(3), BatchNorm(), PRelu(), Dropout(0.5, rate_in_state=True)):
            _, params, state = layer.init(jax.random.key(0), VEC)
            for leaf in jax.tree.leaves((params, state)):
                assert leaf.dtype == jnp.float64


@pytest.mark.parametrize("case, train", MODE_CASES)
def test_grads_wrt_input_and_params(case, train):
    with jax.enable_x64(True):
        layer, _, params, state, x = _setup(case, x64=True)
        # biases start at zero and BatchNorm at the identity: move off that special point
        rng = np.random.default_rng(4)
        params = jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape), params)
        assert x.dtype == jnp.float64
        k = jax.random.key(3)

        def f(x, params):
            return layer.apply(params, state, x, key=k, train=train)[0]

        order = 2 if case.name in SECOND_ORDER else 1
        check_grads(jax.jit(f), (x, params), order=order, modes=("rev",))


# --- params and state structure --------------------------------------------------------------


@pytest.mark.parametrize("make, shape, params, state", [
    (lambda: Dense(3), (4, 5), {"w": (5, 3), "b": (3,)}, {}),
    (lambda: Dense(3, use_bias=False), (4, 5), {"w": (5, 3)}, {}),
    (lambda: Conv2D(3, (3, 2)), (2, 5, 6, 3), {"w": (3, 2, 3, 3), "b": (3,)}, {}),
    (lambda: Conv2D(3, 3, use_bias=False), (2, 5, 6, 3), {"w": (3, 3, 3, 3)}, {}),
    (BatchNorm, (4, 5), {"scale": (5,), "bias": (5,)}, {"mean": (5,), "var": (5,)}),
    (BatchNorm, (2, 3, 3, 2), {"scale": (2,), "bias": (2,)}, {"mean": (2,), "var": (2,)}),
    (PRelu, (4, 5), {"alpha": (5,)}, {}),
    (lambda: Dropout(0.5, rate_in_state=True), (4, 5), {}, {"rate": ()}),
], ids=["dense", "dense_no_bias", "conv", "conv_no_bias", "batchnorm", "batchnorm_images",
        "prelu", "dropout_rate_in_state"])
def test_param_and_state_names_and_shapes(make, shape, params, state, key):
    _, got_params, got_state = make().init(key, shape)
    assert jax.tree.map(jnp.shape, got_params) == params
    assert jax.tree.map(jnp.shape, got_state) == state


@pytest.mark.parametrize("make, shape", [
    (Relu, VEC), (Sigmoid, VEC), (Tanh, VEC), (LeakyRelu, VEC), (Softmax, VEC), (Gelu, VEC),
    (Elu, VEC), (lambda: Dropout(0.2), VEC), (Flatten, IMG), (lambda: MaxPool2D(2), IMG),
    (lambda: AvgPool2D(2), IMG),
], ids=["relu", "sigmoid", "tanh", "leakyrelu", "softmax", "gelu", "elu", "dropout", "flatten",
        "maxpool", "avgpool"])
def test_paramless_layers_return_empty_dicts(make, shape, key):
    layer = make()
    _, params, state = layer.init(key, shape)
    assert params == {} and state == {}
    _, new_state = layer.apply(params, state, jnp.ones(shape), key=key, train=True)
    assert new_state == {}


def test_bn_initial_values(key):
    _, params, state = BatchNorm().init(key, (4, 3))
    chex.assert_trees_all_equal(params, {"scale": jnp.ones(3), "bias": jnp.zeros(3)})
    chex.assert_trees_all_equal(state, {"mean": jnp.zeros(3), "var": jnp.ones(3)})


def test_serial_children_are_keyed_by_index_and_kind(key):
    model = serial(Conv2D(3, 3), BatchNorm(), LeakyRelu(), MaxPool2D(2), Flatten(), Dropout(0.1),
                   Dense(3), PRelu(), residual(Dense(3)), Dense(3))
    _, params, state = model.init(key, (2, 4, 4, 3))
    names = ["0_conv2d", "1_batchnorm", "2_leakyrelu", "3_maxpool2d", "4_flatten", "5_dropout",
             "6_dense", "7_prelu", "8_residual", "9_dense"]
    assert list(params) == names and list(state) == names
    assert set(params["0_conv2d"]) == {"w", "b"}
    assert set(params["1_batchnorm"]) == {"scale", "bias"}
    assert set(state["1_batchnorm"]) == {"mean", "var"}
    assert params["2_leakyrelu"] == {} and state["2_leakyrelu"] == {}
    assert params["3_maxpool2d"] == {} and params["4_flatten"] == {}
    assert set(params["7_prelu"]) == {"alpha"}
    assert set(params["8_residual"]) == {"0_dense"}
    assert set(params["8_residual"]["0_dense"]) == {"w", "b"}
    assert params["6_dense"]["w"].shape == (2 * 2 * 3, 3)


def test_nested_serial_params_read_like_paths(key):
    model = serial(Dense(3), serial(Dense(3), Relu()), Dense(3))
    _, params, state = model.init(key, (2, 5))
    assert set(params) == {"0_dense", "1_serial", "2_dense"}
    assert set(params["1_serial"]) == {"0_dense", "1_relu"}
    assert params["1_serial"]["0_dense"]["w"].shape == (3, 3)
    paths = {jax.tree_util.keystr(path, simple=True, separator="/")
             for path, _ in jax.tree_util.tree_leaves_with_path(params)}
    assert paths == {"0_dense/w", "0_dense/b", "1_serial/0_dense/w", "1_serial/0_dense/b",
                     "2_dense/w", "2_dense/b"}
    assert state == {"0_dense": {}, "1_serial": {"0_dense": {}, "1_relu": {}}, "2_dense": {}}


def test_flatten_keeps_the_batch_axis(key):
    layer = Flatten()
    x = jnp.arange(2 * 3 * 4 * 2.0).reshape(2, 3, 4, 2)
    out_shape, _, _ = layer.init(key, x.shape)
    y, _ = layer.apply({}, {}, x)
    assert out_shape == y.shape == (2, 24)
    np.testing.assert_array_equal(y, np.asarray(x).reshape(2, 24))
