"""The NumPy twin network built from a spec: structure, agreement, reference-only training."""

import json

import jax
import numpy as np
import optax
import pytest

import jdnn
from jdnn import reference
from jdnn.cli import zoo
from jdnn.core import make_spec
from jdnn.layers.combinators import child_keys
from jdnn.layers.dropout import keep_mask


def _float64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_grads_have_the_params_tree_structure(name):
    model = zoo.MODELS[name].build(3)
    x, y = zoo.example_batch(name, 4, 3, "classes")
    _, params, state = model.init(jax.random.key(0), x.shape)
    net = reference.build(model.spec)
    loss, grads, new_state = net.loss_and_grads(_float64(params), _float64(state), x, y,
                                                masks=reference.numpy_masks(
                                                    np.random.default_rng(0)))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params)):
        assert g.shape == p.shape and g.dtype == np.float64
    assert np.isfinite(loss)


def test_builds_from_the_json_form_of_a_spec():
    model = zoo.cnn(2)
    spec = json.loads(json.dumps(model.spec.to_dict()))
    x, y = zoo.example_batch("cnn", 3, 2, "regression")
    _, params, state = model.init(jax.random.key(0), x.shape)
    from_spec = reference.build(model.spec).loss_and_grads(params, state, x, y, loss="mse")
    from_json = reference.build(spec).loss_and_grads(params, state, x, y, loss="mse")
    assert from_spec[0] == from_json[0]
    jax.tree.map(np.testing.assert_array_equal, from_spec[1], from_json[1])


@pytest.mark.parametrize("make_optimizers", [
    lambda: (optax.sgd(0.1, momentum=0.9), reference.optimizers.sgd(0.1, momentum=0.9)),
    lambda: (optax.adam(1e-2), reference.optimizers.adam(1e-2)),
], ids=["momentum", "adam"])
def test_training_on_the_reference_alone_follows_jdnn_step_for_step(make_optimizers):
    """Same model, data and updates: the NumPy run and jdnn's compiled step stay together."""
    jax_optimizer, np_optimizer = make_optimizers()
    model = jdnn.serial(jdnn.Dense(8), jdnn.BatchNorm(), jdnn.Tanh(), jdnn.Dense(3))
    x, y = zoo.example_batch("mlp", 16, 3, "classes")
    with jax.enable_x64(True):
        ts = jdnn.TrainState.create(model, jax_optimizer, jax.random.key(0), x.shape)
        ts = ts._replace(params=jax.tree.map(lambda a: a.astype(np.float64), ts.params),
                         state=jax.tree.map(lambda a: a.astype(np.float64), ts.state))
        ts = ts._replace(opt_state=jax_optimizer.init(ts.params))
        params, state = _float64(ts.params), _float64(ts.state)
        opt_state = np_optimizer.init(params)
        step = jdnn.make_train_step(model, jdnn.losses.softmax_cross_entropy, jax_optimizer)
        net = reference.build(model.spec)
        for _ in range(5):
            ts, metrics = step(ts, x.astype(np.float64), y)
            loss, grads, state = net.loss_and_grads(params, state, x, y)
            params, opt_state = np_optimizer.update(grads, opt_state, params)
            assert loss == pytest.approx(float(metrics["loss"]), rel=1e-12)
        # The bias before batch norm has a zero gradient in theory; Adam turns the rounding
        # noise into ~1e-11 moves, hence the absolute tolerance (parameters are of order 1).
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-9),
                     _float64(ts.params), params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-9),
                     _float64(ts.state), state)


def test_reference_training_reduces_the_loss_with_dropout():
    model = zoo.mlp(4)
    x, y = zoo.example_batch("mlp", 32, 4, "classes")
    _, params, state = model.init(jax.random.key(0), x.shape)
    params, state = _float64(params), _float64(state)
    net = reference.build(model.spec)
    optimizer = reference.optimizers.adam(1e-2)
    opt_state = optimizer.init(params)
    masks = reference.numpy_masks(np.random.default_rng(0))
    first = None
    for _ in range(60):
        loss, grads, state = net.loss_and_grads(params, state, x, y, masks=masks, l2=1e-4)
        params, opt_state = optimizer.update(grads, opt_state, params)
        first = loss if first is None else first
    assert loss < 0.5 * first


def test_numpy_masks_drop_at_the_rate():
    mask = reference.numpy_masks(np.random.default_rng(0))("0_dropout", (200, 100), 0.3)
    assert mask.dtype == bool and abs(1 - mask.mean() - 0.3) < 0.01


def test_masks_are_required_for_dropout_in_training():
    model = jdnn.serial(jdnn.Dense(4), jdnn.Dropout(0.5))
    _, params, state = model.init(jax.random.key(0), (2, 3))
    net = reference.build(model.spec)
    with pytest.raises(ValueError, match=r"Dropout at 1_dropout in training mode needs keep masks"):
        net.forward(_float64(params), state, np.ones((2, 3)), train=True)
    y, _, _ = net.forward(_float64(params), state, np.ones((2, 3)), train=False)
    assert y.shape == (2, 4)


def test_unknown_kinds_are_named_with_their_path():
    spec = make_spec("serial", make_spec("Dense", features=2), make_spec("serial",
                                                                        make_spec("Mystery")))
    with pytest.raises(reference.UnknownLayerError, match=r"'Mystery' at 1_serial/0_mystery"):
        reference.build(spec)


def test_mismatched_x_and_y_are_rejected():
    model = zoo.xor_sigmoid(1)
    _, params, state = model.init(jax.random.key(0), (4, 2))
    with pytest.raises(ValueError, match="x has 4 examples but y has 3"):
        reference.build(model.spec).loss_and_grads(params, state, np.ones((4, 2)), np.ones(3),
                                                   loss="mse")


def test_masked_examples_do_not_count():
    model = zoo.xor_sigmoid(1)
    x, y = zoo.example_batch("xor_sigmoid", 6, 1, "binary")
    _, params, state = model.init(jax.random.key(0), x.shape)
    net = reference.build(model.spec)
    mask = np.array([1, 1, 1, 1, 0, 0])
    masked = net.loss_and_grads(params, state, x, y, loss="binary_cross_entropy", mask=mask)
    first4 = net.loss_and_grads(params, state, x[:4], y[:4], loss="binary_cross_entropy")
    assert masked[0] == pytest.approx(first4[0], rel=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), masked[1], first4[1])


def _rate_in_state_model():
    inner = jdnn.serial(jdnn.Dense(6), jdnn.Dropout(0.1, rate_in_state=True))
    return jdnn.serial(jdnn.Dense(6), jdnn.Dropout(0.3, rate_in_state=True),
                       jdnn.residual(inner), jdnn.Dense(2))


def test_rate_in_state_dropout_twin_reads_the_state_and_draws_jdnns_masks():
    model = _rate_in_state_model()
    net = reference.build(json.loads(json.dumps(model.spec.to_dict())))  # the JSON form
    x = np.random.default_rng(0).normal(size=(5, 4))
    key = jax.random.key(3)
    with jax.enable_x64(True):
        _, params, state = model.init(jax.random.key(0), x.shape)
        state["1_dropout"]["rate"] = np.float64(0.45)  # no longer the initial rates
        state["2_residual"]["0_serial"]["1_dropout"]["rate"] = np.float64(0.2)
        y_jax, new_state_jax = model.apply(params, state, x, key=key, train=True)
        # the keys the combinators hand each Dropout, as jdnn.gradcheck derives them
        top = child_keys(model.spec, key)
        inner = child_keys(model.spec.children[2].children[0], top[2])
        keys = {"1_dropout": top[1], "2_residual/0_serial/1_dropout": inner[1]}

        def masks(path, shape, rate):
            return np.asarray(keep_mask(keys[path], rate, shape))

        y, _, new_state = net.forward(_float64(params), _float64(state), x, train=True,
                                      masks=masks)
    np.testing.assert_allclose(y, np.asarray(y_jax), rtol=1e-12, atol=1e-12)
    jax.tree.map(np.testing.assert_array_equal, new_state, _float64(new_state_jax))
    # the rate really is the state's: at rate 0 both sides keep every unit
    state["1_dropout"]["rate"] = state["2_residual"]["0_serial"]["1_dropout"]["rate"] = 0.0
    y0, _, _ = net.forward(_float64(params), _float64(state), x, train=True, masks=masks)
    np.testing.assert_allclose(y0, net.forward(_float64(params), _float64(state), x)[0])


def test_rate_in_state_dropout_without_its_rate_is_an_error():
    model = _rate_in_state_model()
    _, params, state = model.init(jax.random.key(0), (2, 4))
    state["1_dropout"] = {}
    with pytest.raises(ValueError, match=r"Dropout at 1_dropout has rate_in_state=True and reads "
                                         r"its rate from state\['rate'\], but the state has the "
                                         r"keys \[\]"):
        reference.build(model.spec).forward(_float64(params), state, np.ones((2, 4)))
