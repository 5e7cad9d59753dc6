"""The extension API: a user's layer kind, combinator and loss get what built-in ones get
(rebuild, walk, summary, per-example gradients, the NumPy reference, check_gradients)."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
import jdnn.viz
from jdnn.core import UnknownKindError, per_output, rebuild, trait, walk
from jdnn.reference.registry import COMBINATORS, KINDS, LOSSES

REGISTRIES = (KINDS, COMBINATORS, LOSSES)


@jdnn.register_layer(family="activation", flops=per_output(4))
def TestExtScale(init_scale: float = 2.0) -> jdnn.Layer:
    """y = a * x with a learned `a` per feature."""
    def init(key, input_shape):
        del key
        return input_shape, {"a": jnp.full((input_shape[-1],), init_scale)}, {}

    def apply(params, state, x, *, key=None, train=False):
        return params["a"] * x, state

    return jdnn.Layer(init, apply, jdnn.make_spec("TestExtScale", init_scale=float(init_scale)))


def _scale_forward(params, x):
    return params["a"] * x, x


def _scale_backward(params, cache, dy):
    rows = cache.reshape(-1, cache.shape[-1]) * dy.reshape(-1, dy.shape[-1])
    return params["a"] * dy, {"a": rows.sum(0)}


@pytest.fixture(autouse=True)
def scale_twin():
    """The twin of TestExtScale, registered for each test; the reference's registries are put
    back afterwards, so tests elsewhere in this process see jdnn's own kinds only."""
    saved = [dict(table) for table in REGISTRIES]
    jdnn.reference.register_layer("TestExtScale", _scale_forward, _scale_backward)
    yield
    for table, before in zip(REGISTRIES, saved):
        table.clear()
        table.update(before)


def _model():
    return jdnn.serial(jdnn.Dense(5), TestExtScale(), jdnn.Tanh(),
                       jdnn.branches(jdnn.Dense(3), jdnn.serial(jdnn.Dropout(0.3), jdnn.Dense(2))),
                       jdnn.Dense(2))


def _setup(model, n=6, features=4):
    x = np.random.default_rng(0).normal(size=(n, features)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(n, 2)).astype(np.float32)
    _, params, state = model.init(jax.random.key(0), x.shape)
    return params, state, x, y


def test_a_registered_kind_is_rebuilt_walked_and_summarized():
    model = _model()
    params, state, x, _ = _setup(model)
    twin = rebuild(model.spec)
    assert twin.spec == model.spec
    key = jax.random.key(3)
    np.testing.assert_array_equal(twin.apply(params, state, x, key=key, train=True)[0],
                                  model.apply(params, state, x, key=key, train=True)[0])
    paths = [node.path for node in walk(model.spec)]
    assert paths[:3] == ["", "0_dense", "1_testextscale"]
    assert "3_branches/1_serial/0_dropout" in paths
    table = jdnn.summary(model, (1, 4))
    row = next(r for r in table.rows if r.path == "1_testextscale")
    assert (row.output_shape, row.params, row.flops) == ((1, 5), 5, 20)
    assert next(r for r in table.rows if r.path == "3_branches").output_shape == (1, 5)
    assert table.flops is not None


def test_walk_hands_each_layer_the_key_it_draws_with():
    model = _model()
    params, state, x, _ = _setup(model)
    key = jax.random.key(5)
    [dropout] = [n for n in walk(model.spec, key) if trait(n.spec, "stochastic") is not None]
    y, _ = model.apply(params, state, x, key=key, train=True)
    # replay the branch by hand with the key walk gave the Dropout
    h = jnp.tanh((x @ params["0_dense"]["w"] + params["0_dense"]["b"])
                 * params["1_testextscale"]["a"])
    keep = jdnn.layers.dropout.keep_mask(dropout.key, 0.3, h.shape)
    dense = params["3_branches"]["1_serial"]["1_dense"]
    out = jdnn.viz.layer_outputs(model, params, state, x, key=key, train=True)
    np.testing.assert_allclose(out["3_branches"][:, 3:],
                               jnp.where(keep, h / 0.7, 0.0) @ dense["w"] + dense["b"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[""], y)


def test_check_gradients_uses_the_registered_twins_and_states_its_oracles():
    model = _model()
    params, state, x, y = _setup(model)
    report = jdnn.check_gradients(model, params, state, x, y, jdnn.losses.mse)
    assert report.ok, report
    assert report.oracles == ("reference", "finite_differences")
    assert "jax.grad vs reference, finite differences" in str(report)
    assert report.params[2].path == "1_testextscale/a" and report.params[2].reference_rel < 1e-10


def test_a_wrong_twin_of_a_users_kind_is_caught():
    @jdnn.register_layer
    def TestExtBrokenScale() -> jdnn.Layer:
        layer = TestExtScale()
        return jdnn.Layer(layer.init, layer.apply, jdnn.make_spec("TestExtBrokenScale"))

    def backward(params, cache, dy):
        dx, grads = _scale_backward(params, cache, dy)
        return dx, {"a": grads["a"] * 1.001}

    jdnn.reference.register_layer("TestExtBrokenScale", _scale_forward, backward)
    model = jdnn.serial(jdnn.Dense(3), TestExtBrokenScale(), jdnn.Dense(2))
    params, state, x, y = _setup(model)
    report = jdnn.check_gradients(model, params, state, x, y, jdnn.losses.mse)
    assert not report.ok
    assert [p.path for p in report.params if not p.ok] == ["1_testextbrokenscale/a"]


def test_a_kind_without_a_twin_is_a_clear_error_with_both_ways_out():
    @jdnn.register_layer
    def TestExtNoTwin() -> jdnn.Layer:
        layer = jdnn.Tanh()
        return jdnn.Layer(layer.init, layer.apply, jdnn.make_spec("TestExtNoTwin"))

    model = jdnn.serial(jdnn.Dense(3), TestExtNoTwin(), jdnn.Dense(2))
    params, state, x, y = _setup(model)
    with pytest.raises(jdnn.reference.UnknownLayerError,
                       match=r"no twin for layer kind 'TestExtNoTwin' at 1_testextnotwin.*"
                             r"register_layer\('TestExtNoTwin', forward, backward\).*"
                             r"oracles=\('finite_differences',\)"):
        jdnn.check_gradients(model, params, state, x, y, jdnn.losses.mse)
    report = jdnn.check_gradients(model, params, state, x, y, jdnn.losses.mse,
                                  oracles=("finite_differences",))
    assert report.ok and report.oracles == ("finite_differences",)
    assert all(p.reference_rel is None and p.fd_points > 0 for p in report.params)
    assert report.forward_error is None and "jax.grad vs finite differences" in str(report)
    with pytest.raises(ValueError, match="oracles must be a non-empty selection"):
        jdnn.check_gradients(model, params, state, x, y, jdnn.losses.mse, oracles=("magic",))


def huber(outputs, y):
    r = outputs - y
    a = jnp.abs(r)
    return jnp.mean(jnp.where(a <= 1.0, 0.5 * r ** 2, a - 0.5), axis=-1)


def huber_twin(outputs, y):
    r = outputs - y
    a = np.abs(r)
    values = np.where(a <= 1.0, 0.5 * r ** 2, a - 0.5).mean(-1)
    return values, np.where(a <= 1.0, r, np.sign(r)) / r.shape[-1]


def test_a_users_loss_is_checked_by_finite_differences_then_by_its_registered_twin():
    model = jdnn.serial(jdnn.Dense(4), TestExtScale(), jdnn.Dense(2))
    params, state, x, y = _setup(model)
    y = y * 3.0  # some residuals past the Huber knee
    with pytest.raises(ValueError, match=r"no twin for the loss 'local_huber'"):
        def local_huber(o, t):
            return huber(o, t)
        jdnn.check_gradients(model, params, state, x, y, local_huber)
    assert jdnn.check_gradients(model, params, state, x, y, huber,
                                oracles=("finite_differences",)).ok
    jdnn.reference.register_loss(huber, huber_twin)
    report = jdnn.check_gradients(model, params, state, x, y, huber)
    assert report.ok and report.objective_error < 1e-12, report

    def wrong_twin(outputs, y):
        values, grads = huber_twin(outputs, y)
        return values, grads * 1.01

    jdnn.reference.register_loss(huber, wrong_twin)
    assert not jdnn.check_gradients(model, params, state, x, y, huber).ok


def test_per_example_gradients_reach_a_users_kind():
    model = jdnn.serial(jdnn.Dense(3), TestExtScale(), jdnn.Dense(2))
    params, state, x, y = _setup(model)
    grads = jdnn.per_example_grads(model, jdnn.losses.mse, params, state, x, y)
    one = jax.grad(lambda p: jdnn.losses.mse(model.apply(p, state, x[2:3])[0], y[2:3])[0])(params)
    np.testing.assert_allclose(grads["1_testextscale"]["a"][2], one["1_testextscale"]["a"],
                               rtol=1e-5)


def test_branches_merge_and_refuse_disagreeing_shapes():
    x = np.ones((2, 4), np.float32)
    block = jdnn.branches(jdnn.Dense(3), jdnn.Dense(3), merge="sum")
    _, params, state = block.init(jax.random.key(0), x.shape)
    y, _ = block.apply(params, state, x)
    np.testing.assert_allclose(y, x @ params["0_dense"]["w"] + x @ params["1_dense"]["w"],
                               rtol=1e-6)
    with pytest.raises(jdnn.LayerError, match=r"merge='sum' needs the branches' outputs to have "
                                              r"one shape, got \[\(2, 3\), \(2, 2\)\]"):
        jdnn.branches(jdnn.Dense(3), jdnn.Dense(2), merge="sum").init(jax.random.key(0), x.shape)
    with pytest.raises(ValueError, match=r"branches: merge must be one of \('concat', 'sum'\)"):
        jdnn.branches(jdnn.Dense(3), merge="max")


def test_an_unregistered_kind_cannot_be_rebuilt_and_says_how_to_fix_it():
    layer = jdnn.Tanh()
    model = jdnn.serial(jdnn.Dense(2), jdnn.Layer(layer.init, layer.apply,
                                                  jdnn.make_spec("TestExtUnregistered")))
    with pytest.raises(UnknownKindError, match=r"'TestExtUnregistered' at 1_testextunregistered "
                                               r".*@jdnn.register_layer"):
        rebuild(model.spec)
    assert jdnn.summary(model, (1, 3)).output_shape == (1, 2)  # the model's own init still knows


def test_a_constructor_building_another_kind_is_refused():
    @jdnn.register_layer(kind="TestExtDeclared")
    def build() -> jdnn.Layer:
        return jdnn.Tanh()

    with pytest.raises(TypeError, match=r"registered as kind 'TestExtDeclared' but built a layer "
                                        r"whose spec has kind 'Tanh'"):
        build()


def test_no_module_outside_a_layers_own_file_tests_a_layer_kind_string():
    root = pathlib.Path(jdnn.__file__).parent
    pattern = re.compile(r"spec\.kind\s*(==|!=)\s*[\"']|spec\.kind\s+in\s*[(\[]")
    found = [f"{path.relative_to(root)}:{n}" for path in root.rglob("*.py")
             if "layers" not in path.parts for n, line in
             enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == [], found


def test_every_name_the_readme_uses_is_reachable_after_import_jdnn_and_none_is_a_module():
    readme = (pathlib.Path(jdnn.__file__).parents[1] / "README.md").read_text()
    before_changes = readme.split("## Changes")[0]
    names = sorted(set(re.findall(r"\bjdnn\.([A-Za-z_]\w*)", before_changes)))
    assert [name for name in names if not hasattr(jdnn, name)] == []
    assert callable(jdnn.summary) and callable(jdnn.search)  # functions, not their modules
    assert jdnn.summary(jdnn.Dense(3), (1, 2)).output_shape == (1, 3)


def test_a_model_mixing_a_users_kind_a_flax_module_and_built_ins_passes_the_oracles_that_apply():
    nn = pytest.importorskip("flax.linen")
    from jdnn.interop import from_linen

    model = jdnn.serial(jdnn.Dense(5), TestExtScale(), from_linen(nn.Dense(4)), jdnn.Tanh(),
                        jdnn.branches(jdnn.Dense(2), jdnn.Dense(2), merge="sum"))
    params, state, x, y = _setup(model)
    with pytest.raises(jdnn.reference.UnknownLayerError, match=r"no twin for layer kind 'Linen' "
                                                               r"at 2_linen"):
        jdnn.check_gradients(model, params, state, x, y, jdnn.losses.mse)
    report = jdnn.check_gradients(model, params, state, x, y, jdnn.losses.mse,
                                  oracles=("finite_differences",))
    assert report.ok, report
    checked = {p.path: p.fd_points for p in report.params}
    assert checked["1_testextscale/a"] > 0 and checked["2_linen/kernel"] > 0
    assert jdnn.summary(model, (1, 4)).flops is None  # the wrapped module states no FLOPs
