"""jdnn.interop: flax linen modules as jdnn layers (`from_linen`) and back (`to_linen`)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdnn
from jdnn.core import MissingKeyError, UnknownKindError, make_spec, rebuild
from jdnn.interop import from_linen, to_linen

pytest.importorskip("flax")
import flax.linen as nn  # noqa: E402

X = jax.random.normal(jax.random.key(7), (6, 4))


def init(layer, key, shape=X.shape):
    """`layer.init`, compiled: run eagerly, flax's init dispatches op by op, slowly."""
    return jax.jit(layer.init, static_argnums=1)(key, shape)


def dense_params_from(linen_params):
    """A linen Dense's `kernel`/`bias` as jdnn Dense's `w`/`b`."""
    return {"w": linen_params["kernel"], "b": linen_params["bias"]}


# ---------------------------------------------------------------------------------------------
# from_linen


def test_wrapped_dense_equals_jdnn_dense(key):
    wrapped = from_linen(nn.Dense(8))
    out_shape, params, state = init(wrapped, key)
    y, new_state = wrapped.apply(params, state, X)
    expected, _ = jdnn.Dense(8).apply(dense_params_from(params), {}, X)
    assert out_shape == (6, 8) and state == {} and new_state == {}
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_wrapped_dense_inside_serial_equals_jdnn_model(key):
    model = jdnn.serial(from_linen(nn.Dense(8)), jdnn.Relu(), from_linen(nn.Dense(2)))
    native = jdnn.serial(jdnn.Dense(8), jdnn.Relu(), jdnn.Dense(2))
    out_shape, params, state = init(model, key)
    native_params = {"0_dense": dense_params_from(params["0_linen"]), "1_relu": {},
                     "2_dense": dense_params_from(params["2_linen"])}
    y, _ = model.apply(params, state, X)
    expected, _ = native.apply(native_params, {"0_dense": {}, "1_relu": {}, "2_dense": {}}, X)
    assert out_shape == (6, 2)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_wrapped_batchnorm_updates_statistics_in_training_and_uses_them_after(key):
    bn = from_linen(nn.BatchNorm(momentum=0.9), train_kwargs="use_running_average")
    _, params, state = init(bn, key)
    assert set(state) == {"batch_stats"}
    _, trained = bn.apply(params, state, X, train=True)
    stats = trained["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * X.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * X.var(axis=0), rtol=1e-5)

    y, after = bn.apply(params, trained, X, train=False)
    expected = (X - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert after is trained  # evaluation leaves the state as it came


def test_wrapped_batchnorm_trains_in_fit(key):
    model = jdnn.serial(from_linen(nn.Dense(4)),
                        from_linen(nn.BatchNorm(), train_kwargs="use_running_average"),
                        jdnn.Dense(1))
    x = jax.random.normal(jax.random.key(1), (32, 3))
    y = x @ jnp.array([[1.0], [-2.0], [0.5]])
    _, _, initial = init(model, key, x.shape)
    train_state, history = jdnn.fit(model, (x, y), loss=jdnn.losses.mse,
                                    optimizer=optax.sgd(0.05), epochs=2, batch_size=8, key=key,
                                    metrics=(), progress=False)
    moved = train_state.state["1_linen"]["batch_stats"]["mean"]
    assert not np.allclose(moved, initial["1_linen"]["batch_stats"]["mean"])
    assert np.isfinite(history["loss"]).all()
    assert history["loss"][-1] < history["loss"][0]


def test_wrapped_dropout_draws_with_the_key(key):
    drop = from_linen(nn.Dropout(0.5), train_kwargs="deterministic")
    _, params, state = init(drop, key)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    y1, _ = drop.apply(params, state, X, key=k1, train=True)
    again, _ = drop.apply(params, state, X, key=k1, train=True)
    y2, _ = drop.apply(params, state, X, key=k2, train=True)
    flax_y = nn.Dropout(0.5).apply({}, X, deterministic=False, rngs={"dropout": k1})
    np.testing.assert_array_equal(y1, again)
    np.testing.assert_array_equal(y1, flax_y)
    assert not np.array_equal(y1, y2)
    assert (y1 == 0).any() and (y1 != 0).any()
    np.testing.assert_array_equal(drop.apply(params, state, X, key=k1, train=False)[0], X)


def test_train_kwargs_function_equals_argument_name(key):
    by_name = from_linen(nn.Dropout(0.5), train_kwargs="deterministic")
    by_function = from_linen(nn.Dropout(0.5),
                             train_kwargs=lambda train: {"deterministic": not train})
    k = jax.random.key(3)
    np.testing.assert_array_equal(by_name.apply({}, {}, X, key=k, train=True)[0],
                                  by_function.apply({}, {}, X, key=k, train=True)[0])
    assert by_function.spec["train_kwargs"] == "<lambda>"


def test_wrapped_dropout_without_key_is_a_missing_key_error(key):
    model = jdnn.serial(jdnn.Dense(4), from_linen(nn.Dropout(0.5), train_kwargs="deterministic"))
    _, params, state = init(model, key)
    with pytest.raises(MissingKeyError, match=r"at 1_linen: .*needs a key"):
        model.apply(params, state, X, train=True)


def test_check_gradients_against_finite_differences(key):
    # the NumPy reference has no twin for a flax module: finite differences are the oracle
    model = jdnn.serial(from_linen(nn.Dense(3)), jdnn.Tanh(),
                        from_linen(nn.BatchNorm(), train_kwargs="use_running_average"),
                        from_linen(nn.Dense(1)))
    x = jax.random.normal(jax.random.key(1), (5, 4))
    y = jax.random.normal(jax.random.key(2), (5, 1))
    _, params, state = init(model, key, x.shape)
    report = jdnn.check_gradients(model, params, state, x, y, jdnn.losses.mse,
                                  oracles=("finite_differences",), samples=2)
    assert report.ok, report
    assert len(report.params) == 6 and all(p.fd_points >= 1 for p in report.params), report


def test_rebuild_from_spec_applies_like_the_original(key):
    model = jdnn.serial(from_linen(nn.Dense(8)), jdnn.Relu(),
                        from_linen(nn.BatchNorm(), train_kwargs="use_running_average"))
    _, params, state = init(model, key)
    twin = rebuild(model.spec)
    for train in (False, True):
        y, new_state = model.apply(params, state, X, train=train)
        y_twin, twin_state = twin.apply(params, state, X, train=train)
        np.testing.assert_array_equal(y, y_twin)
        jax.tree.map(np.testing.assert_array_equal, new_state, twin_state)
    assert twin.spec == model.spec


def test_summary_shows_the_wrapped_output_shape():
    model = jdnn.serial(from_linen(nn.Dense(8)), jdnn.Relu(), from_linen(nn.Dense(3)))
    table = jdnn.summary(model, (1, 4))
    shapes = [row.output_shape for row in table.rows]
    assert shapes == [(1, 8), (1, 8), (1, 3)]
    assert table.output_shape == (1, 3) and "0_linen  Linen  (1, 8)" in str(table)


def test_equal_modules_share_a_spec_and_different_ones_do_not():
    def build(stddev):
        return from_linen(nn.Dense(8, kernel_init=nn.initializers.normal(stddev)))

    assert build(0.1).spec == build(0.1).spec  # a fresh, equal initializer each time
    assert build(0.1).spec != build(0.3).spec  # described alike, told apart by `instance`
    assert build(0.1).spec["module"] == "Dense(features=8, kernel_init=init)"


def test_a_state_trait_names_the_collections_once_initialized(key):
    bn = from_linen(nn.BatchNorm(), train_kwargs="use_running_average")
    bn.init(key, X.shape)
    assert jdnn.core.trait(bn.spec, "state")(bn.spec) == "the flax collection(s) batch_stats"


# ---------------------------------------------------------------------------------------------
# to_linen


def test_to_linen_equals_the_jdnn_model(key):
    model = jdnn.serial(jdnn.Dense(4), jdnn.Relu(), jdnn.Dense(2))
    module = to_linen(model)
    variables = module.init(key, X)
    _, params, state = init(model, key)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape,
                                                              {"params": params, "state": state})
    y = module.apply(variables, X)
    expected, _ = model.apply(variables["params"], state, X)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert y.shape == (6, 2)


def test_to_linen_inside_a_linen_model(key):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(to_linen(jdnn.serial(jdnn.Dense(5), jdnn.Tanh()))(x))

    variables = Net().init(key, X)
    inner = variables["params"]["JdnnLayer_0"]
    assert inner["0_dense"]["w"].shape == (4, 5)
    hidden = jnp.tanh(X @ inner["0_dense"]["w"] + inner["0_dense"]["b"])
    outer = variables["params"]["Dense_0"]
    np.testing.assert_allclose(Net().apply(variables, X),
                               hidden @ outer["kernel"] + outer["bias"], rtol=1e-5, atol=1e-6)


def test_to_linen_dropout_draws_from_the_dropout_rng(key):
    model = jdnn.serial(jdnn.Dense(16), jdnn.Dropout(0.5))
    module = to_linen(model)
    variables = module.init(key, X)

    def run(seed):
        return module.apply(variables, X, train=True, rngs={"dropout": jax.random.key(seed)})

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))
    assert (run(1) == 0).any()
    evaluation, _ = model.apply(variables["params"], variables.get("state", {}), X)
    np.testing.assert_array_equal(module.apply(variables, X), evaluation)
    with pytest.raises(MissingKeyError, match=r'rngs=\{"dropout": key\}'):
        module.apply(variables, X, train=True)


def test_to_linen_batchnorm_writes_its_state_back(key):
    model = jdnn.serial(jdnn.Dense(3), jdnn.BatchNorm())
    module = to_linen(model)
    variables = module.init(key, X)
    y, updates = module.apply(variables, X, train=True, mutable=["state"])
    expected, new_state = model.apply(variables["params"], variables["state"], X, train=True)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, updates["state"], new_state)
    assert not np.allclose(new_state["1_batchnorm"]["mean"], 0.0)


# ---------------------------------------------------------------------------------------------
# Mistakes


def test_from_linen_refuses_what_is_not_a_module_instance():
    with pytest.raises(TypeError, match=r"expected a flax.linen.Module instance .*got str"):
        from_linen("Dense")
    with pytest.raises(TypeError, match=r"got the class Dense; construct it first"):
        from_linen(nn.Dense)


def test_from_linen_refuses_bad_arguments():
    with pytest.raises(TypeError, match=r"train_kwargs must be None, an argument name"):
        from_linen(nn.Dropout(0.5), train_kwargs=True)
    with pytest.raises(ValueError, match=r"train_kwargs must name a keyword argument"):
        from_linen(nn.Dropout(0.5), train_kwargs="not deterministic")
    with pytest.raises(TypeError, match=r"rngs must name at least one rng stream"):
        from_linen(nn.Dropout(0.5), rngs=())
    with pytest.raises(ValueError, match=r"'Dense' is already a registered jdnn layer kind"):
        from_linen(nn.Dense(3), kind="Dense")


def test_train_kwargs_function_must_return_a_dict(key):
    layer = from_linen(nn.Dense(3), train_kwargs=lambda train: not train)
    with pytest.raises(TypeError, match=r"train_kwargs\(train=False\) must return a dict"):
        layer.init(key, X.shape)


def test_to_linen_refuses_what_is_not_a_jdnn_layer():
    with pytest.raises(TypeError, match=r"to_linen: expected a jdnn Layer .*got Dense"):
        to_linen(nn.Dense(3))


def test_missing_flax_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flax.linen", None)
    with pytest.raises(ImportError, match=r'pip install "jdnn\[flax\]"'):
        from_linen(object())


def test_a_spec_from_elsewhere_cannot_be_rebuilt_until_wrapped():
    from_linen(nn.Dense(3))  # registers the kind
    stranger = make_spec("Linen", module="Conv(features=9)", train_kwargs=None, rngs=("dropout",))
    with pytest.raises(UnknownKindError, match=r"call jdnn.interop.from_linen with the same"):
        rebuild(stranger)


def test_importing_jdnn_does_not_import_flax():
    code = "import sys, jdnn, jdnn.interop; assert 'flax' not in sys.modules, 'flax imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
