"""Tests for jdnn.checkpoint.restore_matching: layer by layer, whole or not at all, with
`only=`/`exclude=`, dtypes compared, and a report of what was loaded and why not."""

import jax
import numpy as np
import optax
import pytest

from jdnn.checkpoint import restore_matching, save
from jdnn.layers import BatchNorm, Dense, PRelu, Relu, serial
from jdnn.train.state import TrainState


def random_init(model, input_shape, seed):
    """Random numpy (params, state) for `model` without running its init (nothing compiles)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), input_shape)[1:])
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


def saved(tmp_path, model, input_shape, seed=0, cast=None):
    """`model` with random params saved (cast to `cast` if given): `(path, params, state)`."""
    params, state = random_init(model, input_shape, seed)
    if cast is not None:
        params = jax.tree.map(lambda a: a.astype(cast), params)
    ts = TrainState(params, state, optax.sgd(0.1).init(params), jax.random.key(0), np.int32(0))
    return save(tmp_path / "pretrained.safetensors", ts, model), params, state


def equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                     strict=True))


def test_loads_the_body_and_keeps_a_new_head(tmp_path):
    path, old, old_state = saved(tmp_path, serial(Dense(8), BatchNorm(), Relu(), Dense(10)),
                                 (2, 4))
    fresh, fresh_state = random_init(serial(Dense(8), BatchNorm(), Relu(), Dense(3), PRelu()),
                                     (2, 4), 1)
    params, state, report = restore_matching(path, fresh, state=fresh_state)
    assert report.loaded == ["params/0_dense/b", "params/0_dense/w", "params/1_batchnorm/bias",
                             "params/1_batchnorm/scale", "state/1_batchnorm/mean",
                             "state/1_batchnorm/var"]
    assert report.skipped_shape_mismatch == ["params/3_dense/b", "params/3_dense/w"]
    assert report.kept == ["params/4_prelu/alpha"] and report.unused == []
    assert equal(params["0_dense"], old["0_dense"])
    assert equal(state["1_batchnorm"], old_state["1_batchnorm"])
    assert equal(params["3_dense"], fresh["3_dense"])
    assert jax.tree.structure(params) == jax.tree.structure(fresh)
    assert {p: m.status for p, m in report.layers.items()} == {
        "0_dense": "loaded", "1_batchnorm": "loaded", "3_dense": "differs", "4_prelu": "absent"}
    text = str(report)
    assert "loaded 2 layers (6 leaves): 0_dense, 1_batchnorm" in text
    assert "3_dense: params/3_dense/b: shape (10,) saved, (3,) given" in text
    assert "4_prelu: not in the checkpoint" in text
    _, none, report = restore_matching(path, {"0_dense": fresh["0_dense"]})
    assert none is None and report.unused == ["params/1_batchnorm/bias",
                                              "params/1_batchnorm/scale", "params/3_dense/b",
                                              "params/3_dense/w"]


def test_a_layer_is_never_half_restored(tmp_path):
    # The first layer's kernel changes shape with the input size; its bias does not.
    path, old, _ = saved(tmp_path, serial(Dense(8), Dense(3)), (2, 4))
    fresh, _ = random_init(serial(Dense(8), Dense(3)), (2, 5), 1)
    params, _, report = restore_matching(path, fresh)
    assert equal(params["0_dense"], fresh["0_dense"])           # b kept too, not only w
    assert equal(params["1_dense"], old["1_dense"])
    assert report.layers["0_dense"].status == "differs"
    assert report.layers["0_dense"].reason == "params/0_dense/w: shape (4, 8) saved, (5, 8) given"
    assert report.skipped_shape_mismatch == ["params/0_dense/b", "params/0_dense/w"]


def test_a_layer_loads_with_its_state_or_not_at_all(tmp_path):
    path, _, _ = saved(tmp_path, serial(Dense(4), BatchNorm()), (2, 3))
    fresh, fresh_state = random_init(serial(Dense(4), BatchNorm()), (2, 3), 1)
    fresh_state = {**fresh_state, "1_batchnorm": {**fresh_state["1_batchnorm"],
                                                  "var": np.ones(5, np.float32)}}
    params, state, report = restore_matching(path, fresh, state=fresh_state)
    assert equal(params["1_batchnorm"], fresh["1_batchnorm"])   # scale, bias: shapes match
    assert equal(state, fresh_state)
    assert report.layers["1_batchnorm"].reason == ("state/1_batchnorm/var: shape (4,) saved, "
                                                   "(5,) given")
    assert report.layers["0_dense"].status == "loaded"


def test_a_saved_layer_with_other_leaves_is_not_loaded(tmp_path):
    path, _, _ = saved(tmp_path, serial(Dense(4)), (2, 3))
    fresh, _ = random_init(serial(Dense(4, use_bias=False)), (2, 3), 1)
    with pytest.warns(UserWarning, match="no layer was loaded"):
        params, _, report = restore_matching(path, fresh)
    assert report.layers["0_dense"].reason == "params/0_dense/b saved but not given"
    assert equal(params, fresh)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_a_leaf_whose_dtype_differs_is_not_loaded(tmp_path, dtype):
    # float64 saved, float32 given: JAX (without x64) would load it as float32; it is not the
    # same number, so it is not loaded.
    path, _, _ = saved(tmp_path, serial(Dense(4), Dense(2)), (2, 3), cast=dtype)
    fresh, _ = random_init(serial(Dense(4), Dense(2)), (2, 3), 1)
    with pytest.warns(UserWarning, match="no layer was loaded from .*pretrained"):
        params, _, report = restore_matching(path, fresh)
    assert equal(params, fresh) and report.loaded == []
    name = np.dtype(dtype).name
    assert report.layers["0_dense"].reason == (f"params/0_dense/b: dtype {name} saved, float32 "
                                               f"given; params/0_dense/w: dtype {name} saved, "
                                               f"float32 given")


def test_only_and_exclude_keep_an_old_head_of_the_same_shape(tmp_path):
    body = serial(Dense(4), Relu())
    path, old, _ = saved(tmp_path, serial(body, Dense(2)), (2, 3))
    fresh, _ = random_init(serial(body, Dense(2)), (2, 3), 1)
    params, _, report = restore_matching(path, fresh)
    assert equal(params, old)                                   # shape alone loads the old head
    for options in [dict(exclude="1_dense"), dict(only="0_serial"), dict(only=["0_serial/0_dense"]),
                    dict(exclude=lambda layer: not layer.startswith("0_serial/")),
                    dict(only=["0_serial", "1_dense"], exclude=["1_dense"])]:
        params, _, report = restore_matching(path, fresh, **options)
        assert equal(params["0_serial"], old["0_serial"]), options
        assert equal(params["1_dense"], fresh["1_dense"]), options
        assert report.excluded == ["params/1_dense/b", "params/1_dense/w"], options
        assert report.layers["1_dense"].reason == "excluded by only=/exclude=", options


def test_only_and_exclude_must_name_layers(tmp_path):
    path, _, _ = saved(tmp_path, serial(Dense(4), Dense(2)), (2, 3))
    fresh, _ = random_init(serial(Dense(4), Dense(2)), (2, 3), 1)
    with pytest.raises(ValueError, match=r"restore_matching: exclude='1_dens' names no layer of "
                                         r"the trees given; their layers are 0_dense, 1_dense"):
        restore_matching(path, fresh, exclude="1_dens")
    with pytest.raises(TypeError, match="restore_matching: only= takes a layer path prefix"):
        restore_matching(path, fresh, only=1)
    with pytest.raises(TypeError, match="only= takes"):
        restore_matching(path, fresh, only=["0_dense", 2])
