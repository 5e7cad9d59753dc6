"""summary: shapes, parameter and state counts against the real `init`, FLOPs by hand, the
printed table and its dict, and the spec twins it is built on."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
from jdnn.cli import zoo
from jdnn.core import Layer, LayerError, make_spec
from jdnn.summarize import Summary, layer_flops, rebuild, summary
from jdnn.viz import layer_outputs


# The "rbg" generator compiles far faster than the default threefry, and these tests need real
# parameters only for their shapes and sizes.
KEY = jax.random.key(0, impl="rbg")


def _subtree(tree, path):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def _count(tree):
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def test_xor_net_table():
    model = zoo.xor_sigmoid()
    table = summary(model, (4, 2))
    assert [row.path for row in table.rows] == ["0_dense", "1_sigmoid", "2_dense", "3_sigmoid",
                                                "4_dense"]
    assert [row.output_shape for row in table.rows] == [(4, 3), (4, 3), (4, 2), (4, 2), (4, 1)]
    assert [row.params for row in table.rows] == [9, 0, 8, 0, 3]
    assert (table.params, table.state, table.param_bytes) == (20, 0, 80)
    # Dense 2*in*out, activations 1 per element: 2*2*3 + 3 + 2*3*2 + 2 + 2*2*1
    assert [row.flops for row in table.rows] == [12, 3, 12, 2, 4]
    assert table.flops == 33


def _real_inits(models, shapes):
    """Every model's real `init` (with the fast-compiling key): `[(out, params, state)]`."""
    return [model.init(KEY, shape) for model, shape in zip(models, shapes)]


def test_counts_and_shapes_match_the_real_init():
    names = sorted(zoo.MODELS)
    models = [zoo.MODELS[name].build(5) for name in names]
    shapes = [(3, *zoo.MODELS[name].example_shape) for name in names]
    for name, model, shape, (out_shape, params, state) in zip(names, models, shapes,
                                                              _real_inits(models, shapes)):
        table = summary(model, shape)
        assert table.output_shape == tuple(out_shape), name
        assert table.params == _count(params) and table.state == _count(state), name
        nbytes = sum(leaf.nbytes for leaf in jax.tree.leaves((params, state)))
        assert table.bytes == nbytes and table.total == table.params + table.state
        outputs = jax.eval_shape(lambda p, s, x, m=model: layer_outputs(m, p, s, x), params,
                                 state, jnp.zeros(shape, jnp.int32 if zoo.MODELS[name].inputs
                                                  == "ids" else jnp.float32))
        for row in table.rows:
            where = f"{name}: {row.path}"
            assert row.params == _count(_subtree(params, row.path)), where
            assert row.state == _count(_subtree(state, row.path)), where
            assert row.output_shape == outputs[row.path].shape, where


def test_flops_by_hand_for_conv_pool_batchnorm_and_residual():
    model = jdnn.serial(jdnn.Conv2D(4, (3, 2), strides=2, padding="VALID"), jdnn.BatchNorm(),
                        jdnn.MaxPool2D(2, strides=1), jdnn.Flatten(),
                        jdnn.residual(jdnn.serial(jdnn.Dense(24), jdnn.Tanh())), jdnn.Dense(5))
    table = summary(model, (8, 9, 7, 3))
    rows = {row.path: row for row in table.rows}
    # VALID, stride 2: H' = (9 - 3) // 2 + 1 = 4, W' = (7 - 2) // 2 + 1 = 3
    assert rows["0_conv2d"].output_shape == (8, 4, 3, 4)
    assert rows["0_conv2d"].flops == 2 * 3 * 2 * 3 * 4 * 4 * 3
    assert rows["1_batchnorm"].flops == 4 * 4 * 3 * 4
    assert rows["2_maxpool2d"].output_shape == (8, 3, 2, 4)
    assert rows["2_maxpool2d"].flops == 2 * 2 * 3 * 2 * 4
    assert rows["3_flatten"].flops == 0 and rows["3_flatten"].output_shape == (8, 24)
    inner = 2 * 24 * 24 + 24
    assert rows["4_residual/0_serial"].flops == inner
    assert rows["4_residual"].flops == inner + 24  # plus the addition
    assert rows["4_residual/0_serial/0_dense"].depth == 2
    assert rows["5_dense"].flops == 2 * 24 * 5
    assert table.flops == sum(r.flops for r in table.rows if r.depth == 0)


def test_flops_are_per_example_and_dense_counts_positions():
    assert summary(jdnn.Dense(10), (1, 64)).flops == summary(jdnn.Dense(10), (32, 64)).flops
    assert layer_flops(jdnn.Dense(10).spec, (1, 64), (1, 10)) == 1280
    assert layer_flops(jdnn.Dense(10).spec, (1, 7, 64), (1, 7, 10)) == 7 * 1280


def test_single_layer_model_is_one_row():
    table = summary(jdnn.Dense(4), (3, 5))
    assert len(table.rows) == 1
    row = table.rows[0]
    assert (row.path, row.kind, row.output_shape, row.params, row.flops) == (
        "dense", "Dense", (3, 4), 24, 40)


def test_printed_table_and_dict():
    table = summary(zoo.mlp(10), (1, 8))
    text = str(table)
    assert text.splitlines()[0].split() == ["Layer", "Kind", "Output", "shape", "Params",
                                            "State", "FLOPs/example"]
    assert "1_batchnorm" in text and "Parameters (trainable): 906" in text
    assert "State (non-trainable):  32" in text
    assert repr(table) == text
    data = json.loads(json.dumps(table.to_dict()))
    assert data["totals"]["params"] == 906 and data["totals"]["state"] == 32
    assert data["layers"][0]["output_shape"] == [1, 16]
    assert "multiply-add" in data["flops_convention"]


def test_nested_rows_are_indented_in_the_text():
    text = str(summary(zoo.residual_mlp(10), (1, 8)))
    assert "\n2_residual " in text and "\n  0_serial " in text and "\n    1_gelu " in text


def test_unknown_layer_kind_degrades_to_question_marks():
    dense = jdnn.Dense(3)
    custom = Layer(dense.init, dense.apply, make_spec("MyDense", features=3))
    model = jdnn.serial(custom, jdnn.Relu())
    table = summary(model, (2, 4))
    assert [row.output_shape for row in table.rows] == [None, None]
    assert table.rows[0].params == 15 and table.flops is None
    assert table.output_shape == (2, 3)  # from the model's own init
    assert "?" in str(table)


def test_rebuild_twins_apply_like_the_original():
    model = jdnn.serial(jdnn.Dense(3, w_init=jax.nn.initializers.ones), jdnn.LeakyRelu(0.2),
                        jdnn.Dense(2))
    assert model.spec.children[0]["w_init"].startswith("<")
    twin = rebuild(model.spec)  # the initializer function cannot be rebuilt: the default is
    assert twin.spec.children[0]["w_init"] == "lecun_normal"
    assert twin.spec.children[1:] == model.spec.children[1:]
    [(_, params, state)] = _real_inits([model], [(4, 5)])
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_array_equal(twin.apply(params, state, x)[0], model.apply(params, state, x)[0])


def test_rate_in_state_dropout_counts_its_rate_as_state():
    model = jdnn.serial(jdnn.Dense(4), jdnn.Dropout(0.3, rate_in_state=True), jdnn.Dense(2))
    table = summary(model, (1, 3))
    row = table.rows[1]
    assert (row.path, row.kind, row.output_shape, row.params, row.state, row.flops) == (
        "1_dropout", "Dropout", (1, 4), 0, 1, 0)
    assert (table.params, table.state, table.state_bytes) == (16 + 10, 1, 4)
    assert "State (non-trainable):  1 (4 B)" in str(table)
    assert table.to_dict()["model"]["children"][1]["hparams"] == {"rate": 0.3,
                                                                  "rate_in_state": True}
    twin = rebuild(model.spec.children[1])  # the twin keeps the rate in its state too
    assert twin.spec == model.spec.children[1]
    x, key = jnp.ones((2, 4)), jax.random.key(1)
    np.testing.assert_array_equal(
        twin.apply({}, {"rate": jnp.float32(0.0)}, x, key=key, train=True)[0], x)


def test_bad_input_shape_is_the_layers_error():
    with pytest.raises(LayerError, match="NHWC"):
        summary(zoo.cnn(10), (1, 8))


def test_summary_is_abstract():
    # A 100M-parameter layer would take ~400 MB if initialized for real; eval_shape draws none.
    table = summary(jdnn.serial(jdnn.Dense(10_000), jdnn.Relu()), (1, 10_000))
    assert isinstance(table, Summary) and table.params == 10_000 * 10_000 + 10_000
    assert math.isclose(table.param_bytes, 4 * table.params)


# --- what input_shape accepts --------------------------------------------------------------


@pytest.mark.parametrize("given", [
    (4, 2), [4, 2], (np.int64(4), np.int32(2)), np.zeros((4, 2), np.float32),
    jnp.zeros((4, 2)), np.zeros((4, 2), np.int64), jax.ShapeDtypeStruct((4, 2), jnp.float32),
], ids=["tuple", "list", "numpy_ints", "numpy_batch", "jax_batch", "int_batch", "struct"])
def test_input_shape_accepts_shapes_numpy_ints_and_arrays(given):
    table = summary(zoo.xor_sigmoid(), given)
    assert table.input_shape == (4, 2) and table.output_shape == (4, 1)
    assert all(type(d) is int for d in table.input_shape)
    assert json.loads(json.dumps(table.to_dict()))["input_shape"] == [4, 2]
    assert [row.output_shape for row in table.rows] == [(4, 3), (4, 3), (4, 2), (4, 2), (4, 1)]


@pytest.mark.parametrize("given, error, match", [
    (784, TypeError, r"must be a shape, got the int 784; pass the input shape with its batch "
                     r"axis, e.g. \(1, 784\), or x.shape for a batch x"),
    (np.int64(2), TypeError, r"got the int 2"),
    ("4, 2", TypeError, r"must be a tuple of ints, an array or a jax.ShapeDtypeStruct, got str"),
    (None, TypeError, r"got NoneType None; pass the input shape"),
    ({"x": (4, 2)}, TypeError, r"got dict"),
    (np.array([4, 2]), TypeError, r"is a 1-D integer array, array\(\[4, 2\]\), which could be a "
                                  r"shape or a batch: pass tuple\(a\) .* or a.shape"),
    ((4.0, 2.0), TypeError, r"must hold ints, got \(4.0, 2.0\)"),
    ((4, True), TypeError, r"must hold ints"),
    ((4, None), TypeError, r"must hold ints"),
    ((), ValueError, r"needs a batch axis and dimensions >= 1, got \(\)"),
    (np.zeros(()), ValueError, r"needs a batch axis"),
    ((4, 0), ValueError, r"dimensions >= 1, got \(4, 0\)"),
    ((-1, 2), ValueError, r"dimensions >= 1, got \(-1, 2\)"),
], ids=["int", "numpy_int", "str", "none", "dict", "int_vector", "floats", "bool", "none_dim",
        "empty", "scalar_array", "zero", "negative"])
def test_input_shape_errors_say_what_to_pass(given, error, match):
    with pytest.raises(error, match=r"summary: input_shape .*" + match):
        summary(zoo.xor_sigmoid(), given)
