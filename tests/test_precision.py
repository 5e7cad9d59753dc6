"""Mixed precision (`jdnn.train.precision`): bfloat16 compute, float32 params, optimizer state,
batch-norm statistics and losses; the compiled step really computes its products in bfloat16;
a short digits fit lands where float32 does; one compilation per fit still."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdnn
from tests.compiles import Compiles
from jdnn.train.precision import Precision, cast_to_compute, resolve_precision
from jdnn.train.step import train_step_fn

LOSS = jdnn.losses.softmax_cross_entropy


def _mlp(hidden: int = 24):
    return jdnn.serial(jdnn.Dense(hidden), jdnn.BatchNorm(), jdnn.Relu(), jdnn.Dense(10))


def _cnn():
    return jdnn.serial(jdnn.Conv2D(4, (3, 3)), jdnn.BatchNorm(), jdnn.Relu(),
                       jdnn.MaxPool2D((2, 2)), jdnn.Flatten(), jdnn.LayerNorm(), jdnn.Dense(10))


def _dtypes(tree) -> set[str]:
    return {str(leaf.dtype) for leaf in jax.tree.leaves(tree) if hasattr(leaf, "dtype")}


# ---------------------------------------------------------------------------------------------
# The policy


def test_bfloat16_names_the_mixed_policy_and_float32_casts_nothing():
    assert resolve_precision("fit", "bfloat16") == Precision(compute="bfloat16")
    assert resolve_precision("fit", jnp.bfloat16) == Precision("bfloat16", "float32", "float32")
    assert resolve_precision("fit", "float32") == Precision() and not Precision().casts
    policy = Precision(compute="bfloat16", output=jnp.bfloat16)
    assert (policy.compute, policy.params, policy.output) == ("bfloat16", "float32", "bfloat16")
    assert policy == Precision("bfloat16", "float32", "bfloat16") and hash(policy)
    params, x, ids = cast_to_compute(policy, ({"w": jnp.ones(2)}, jnp.ones(3), jnp.arange(3)))
    assert (params["w"].dtype, x.dtype, ids.dtype) == (jnp.bfloat16, jnp.bfloat16, ids.dtype)


@pytest.mark.parametrize("precision, error, match", [
    ("bf16", ValueError, r"fit: precision must be one of \('float32', 'bfloat16'\).*got 'bf16'"),
    ("float16", ValueError, "precision must be one of"),
    (16, TypeError, "fit: precision must be a dtype name .* got int 16"),
])
def test_an_unknown_precision_is_an_error_naming_the_choices(precision, error, match):
    with pytest.raises(error, match=match):
        resolve_precision("fit", precision)


def test_a_policy_refuses_float16_compute_and_bfloat16_params_saying_why():
    with pytest.raises(ValueError, match="float16 would need loss scaling"):
        Precision(compute="float16")
    with pytest.raises(ValueError, match="params must be one of .*float32 master copy"):
        Precision(compute="bfloat16", params="bfloat16")
    with pytest.raises(ValueError, match="output must be one of"):
        Precision(output="int8")


# ---------------------------------------------------------------------------------------------
# Layers: normalization statistics in float32


def test_batchnorm_takes_float32_statistics_of_a_bfloat16_input():
    bn = jdnn.BatchNorm(momentum=0.5)
    apply = jax.jit(bn.apply, static_argnames="train")   # one program, not an op at a time
    _, params, state = bn.init(jax.random.key(0), (512, 6))
    # an offset far above the spread: a bfloat16 mean or variance would be visibly wrong
    x = (100.0 + jax.random.normal(jax.random.key(1), (512, 6))).astype(jnp.bfloat16)
    y, new_state = apply(params, state, x, train=True)
    want_y, want_state = apply(params, state, x.astype(jnp.float32), train=True)
    assert y.dtype == jnp.bfloat16 and _dtypes(new_state) == {"float32"}
    for name in ("mean", "var"):
        np.testing.assert_allclose(new_state[name], want_state[name], rtol=1e-5)
    np.testing.assert_array_equal(y, want_y.astype(jnp.bfloat16))
    y_eval, kept = apply(params, new_state, x, train=False)
    assert y_eval.dtype == jnp.bfloat16 and _dtypes(kept) == {"float32"}


def test_layernorm_normalizes_a_bfloat16_input_in_float32():
    ln = jdnn.LayerNorm()
    _, params, state = ln.init(jax.random.key(0), (4, 256))
    x = (50.0 + jax.random.normal(jax.random.key(1), (4, 256))).astype(jnp.bfloat16)
    apply = jax.jit(ln.apply)
    y, _ = apply(params, state, x)
    want, _ = apply(params, state, x.astype(jnp.float32))
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, want.astype(jnp.bfloat16))


# ---------------------------------------------------------------------------------------------
# The step: bfloat16 products in the compiled program, float32 everything that persists


def _lowered(model, precision, shape, *, step=None):
    optimizer = optax.adam(1e-3)
    train_state = jdnn.TrainState.create(model, optimizer, 0, shape)
    x, y = jnp.ones(shape), jnp.zeros((shape[0],), jnp.int32)
    step = step or train_step_fn(model, LOSS, optimizer, precision=precision)
    return jax.jit(step).lower(train_state, x, y).as_text()


def _products(text: str) -> list[str]:
    """The operand types of every dot and convolution in a lowered (StableHLO) program."""
    return re.findall(r"stablehlo\.(?:dot_general|convolution).*: \((tensor<[^)]*)\)", text)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_the_bfloat16_step_computes_every_product_in_bfloat16(name):
    model, shape = (_mlp(), (8, 64)) if name == "mlp" else (_cnn(), (8, 8, 8, 1))
    mixed, full = _lowered(model, "bfloat16", shape), _lowered(model, "float32", shape)
    products = _products(mixed)
    assert len(products) >= 5 and len(products) == len(_products(full))   # forward + backward
    assert all(re.fullmatch(r"tensor<[0-9x]*xbf16>, tensor<[0-9x]*xbf16>", p) for p in products)
    assert "bf16" not in full and all("xf32>" in p for p in _products(full))


def test_the_bfloat16_step_keeps_params_optimizer_state_statistics_and_loss_float32():
    model, optimizer = _mlp(), optax.adam(1e-3)
    train_state = jdnn.TrainState.create(model, optimizer, 0, (32, 64))
    step = jdnn.make_train_step(model, LOSS, optimizer, metrics=("accuracy",),
                                penalty=jdnn.regularizers.penalty(l2=1e-4), precision="bfloat16")
    x = jax.random.normal(jax.random.key(1), (32, 64))
    y = jax.random.randint(jax.random.key(2), (32,), 0, 10)
    before = jax.tree.map(np.asarray, train_state.params)
    for _ in range(2):
        train_state, report = step(train_state, x, y)
    assert _dtypes(train_state.params) == {"float32"}
    assert _dtypes(train_state.opt_state) == {"float32", "int32"}   # adam's count is int32
    assert _dtypes(train_state.state) == {"float32"}
    assert {k: str(v.dtype) for k, v in report.items()} == {
        "loss": "float32", "penalty": "float32", "accuracy": "float32"}
    # updates smaller than a bfloat16 step still land: the master copy is float32
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b), train_state.params, before)
    assert 0 < np.min(moved["0_dense"]["w"][moved["0_dense"]["w"] > 0]) < 1e-3


def test_the_eval_step_evaluate_and_predict_follow_the_policy():
    model, optimizer = _mlp(), optax.adam(1e-3)
    (x, y), _ = jdnn.data.digits()
    x, y = x[:200], y[:200]
    train_state = jdnn.TrainState.create(model, optimizer, 0, (200, 64))
    assert any("xbf16>" in p for p in _products(jax.jit(
        jdnn.make_eval_step(model, LOSS, precision="bfloat16")).lower(train_state, x, y).as_text()))
    full = jdnn.predict(model, train_state, x)
    mixed = jdnn.predict(model, train_state, x, precision="bfloat16")
    assert mixed.dtype == np.float32 and not np.array_equal(mixed, full)
    np.testing.assert_allclose(mixed, full, atol=0.1)
    narrow = jdnn.predict(model, train_state, x, precision=Precision("bfloat16", output="bfloat16"))
    assert narrow.dtype == jnp.bfloat16
    assert jdnn.predict(model, train_state, x[:0], precision=Precision(
        "bfloat16", output="bfloat16")).dtype == jnp.bfloat16
    report = jdnn.evaluate(model, train_state, (x, y), loss=LOSS, precision="bfloat16")
    assert abs(report["loss"] - jdnn.evaluate(model, train_state, (x, y), loss=LOSS)["loss"]) < 0.05


# ---------------------------------------------------------------------------------------------
# fit


def test_a_bfloat16_fit_of_digits_matches_float32_within_half_a_point_and_compiles_once():
    (x, y), test = jdnn.data.digits()
    model = _mlp(hidden=53)   # a width no other test uses: nothing cached hides a compilation

    def run(precision):
        return jdnn.fit(model, (x, y), loss=LOSS, optimizer=optax.adam(3e-3), epochs=6,
                        batch_size=64, key=0, validation_data=test, progress=False,
                        precision=precision)

    full_state, full = run("float32")
    with Compiles() as compiles:
        mixed_state, mixed = run("bfloat16")
    assert sorted(compiles.names) == ["jit(epoch)", "jit(run)"]   # create is shared with float32
    assert full.records[-1]["val_accuracy"] > 0.9
    accuracies = (full.records[-1]["val_accuracy"], mixed.records[-1]["val_accuracy"])
    print(f"digits test accuracy: float32 {accuracies[0]:.4f}, bfloat16 {accuracies[1]:.4f}")
    assert abs(accuracies[1] - accuracies[0]) <= 0.005
    assert mixed.records[-1]["loss"] != full.records[-1]["loss"]   # it did compute differently
    assert _dtypes((mixed_state.params, mixed_state.state)) == {"float32"}
    assert _dtypes(mixed_state.opt_state) == {"float32", "int32"}
    with Compiles() as compiles:   # a second fit under an equal policy object: nothing new
        run(Precision(compute="bfloat16"))
    assert compiles.names == []


def test_fit_refuses_a_precision_with_a_step_of_ones_own():
    (x, y), _ = jdnn.data.digits()
    model, optimizer = _mlp(), optax.sgd(0.1)
    with pytest.raises(ValueError, match="fit: precision='bfloat16' applies to fit's own step"):
        jdnn.fit(model, (x, y), loss=LOSS, optimizer=optimizer, epochs=1, batch_size=64, key=0,
                 step=train_step_fn(model, LOSS, optimizer), precision="bfloat16")
    with pytest.raises(ValueError, match="fit: precision must be one of"):
        jdnn.fit(model, (x, y), loss=LOSS, optimizer=optimizer, epochs=1, batch_size=64, key=0,
                 precision="half")
