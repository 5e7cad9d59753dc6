"""GradientFlow: its gradient norms are jax.grad's, its activation statistics are the hand-computed
ones, it records during fit, and plot_gradient_flow draws a real picture."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import jdnn
from jdnn.viz import GradientFlow, plot_gradient_flow

CE = jdnn.losses.softmax_cross_entropy


def _params(model, input_shape, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    params, state = jax.eval_shape(lambda k: model.init(k, input_shape)[1:], jax.random.key(0))
    params = jax.tree.map(lambda a: (scale * rng.normal(size=a.shape)).astype(a.dtype), params)
    state = jax.tree.map(lambda a: (np.abs(rng.normal(size=a.shape)) + 0.5).astype(a.dtype),
                         state)
    return params, state


def _data(n=16, d=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, classes, n).astype(np.int32)


def test_grad_norms_are_jax_grads():
    model = jdnn.serial(jdnn.Dense(8), jdnn.BatchNorm(), jdnn.Relu(), jdnn.Dropout(0.3),
                        jdnn.residual(jdnn.serial(jdnn.Dense(8), jdnn.Tanh())), jdnn.Dense(3),
                        jdnn.PRelu())
    params, state = _params(model, (16, 4))
    x, y = _data()
    key = jax.random.key(3)
    record = GradientFlow(x, y, CE, key=key).measure(model, params, state, epoch=5)

    def loss(p):  # the masked mean of the per-example loss, no mask: the mean; training mode
        return jnp.mean(CE(model.apply(p, state, x, key=key, train=True)[0], y))

    grads = jax.jit(jax.grad(loss))(params)
    want = {
        "0_dense": grads["0_dense"], "1_batchnorm": grads["1_batchnorm"],
        "4_residual/0_serial/0_dense": grads["4_residual"]["0_serial"]["0_dense"],
        "5_dense": grads["5_dense"], "6_prelu": grads["6_prelu"],
    }
    assert list(record["grad_norms"]) == list(want)  # data-flow order, layers with params only
    for path, tree in want.items():
        norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(tree)))
        np.testing.assert_allclose(record["grad_norms"][path], norm, rtol=2e-5)
    assert record["epoch"] == 5
    assert record["loss"] == pytest.approx(float(jax.jit(loss)(params)), rel=1e-6)


def test_activation_statistics_by_hand():
    model = jdnn.serial(jdnn.Dense(8), jdnn.Relu(), jdnn.Dense(6), jdnn.Sigmoid(), jdnn.Dense(5),
                        jdnn.Tanh(), jdnn.Dense(3))
    params, state = _params(model, (16, 4), scale=3.0)
    params["0_dense"]["b"][:3] = -100.0  # three ReLU units dead for every input
    x, y = _data()
    record = GradientFlow(x, y, CE).measure(model, params, state)

    def dense(name, h):
        return h @ params[name]["w"] + params[name]["b"]

    h1 = np.maximum(dense("0_dense", x), 0)
    h2 = 1 / (1 + np.exp(-dense("2_dense", h1)))
    h3 = np.tanh(dense("4_dense", h2))
    dead = np.mean(np.all(h1 <= 0, axis=0))
    assert dead >= 3 / 8
    assert record["dead_relu"] == {"1_relu": pytest.approx(dead)}
    sat_sigmoid = np.mean((h2 < 0.05) | (h2 > 0.95))
    sat_tanh = np.mean(np.abs(h3) > 0.95)
    assert 0 < sat_sigmoid < 1 and 0 < sat_tanh < 1
    assert record["saturated"] == {"3_sigmoid": pytest.approx(sat_sigmoid, abs=1e-6),
                                   "5_tanh": pytest.approx(sat_tanh, abs=1e-6)}


def test_layers_stay_in_data_flow_order_past_ten():
    model = jdnn.serial(*[jdnn.Dense(2) for _ in range(12)])
    params, state = _params(model, (4, 2))
    record = GradientFlow(*_data(4, 2, 2), CE).measure(model, params, state)
    assert list(record["grad_norms"]) == [f"{i}_dense" for i in range(12)]


def test_records_during_fit_and_plots(tmp_path):
    x, y = _data(48)
    model = jdnn.serial(jdnn.Dense(8), jdnn.Relu(), jdnn.Dense(8), jdnn.Sigmoid(), jdnn.Dense(3))
    params, state = _params(model, (16, 4), scale=0.5)
    optimizer = optax.sgd(0.1)
    start = jdnn.TrainState(params, state, optimizer.init(params), jax.random.key(0),
                            jnp.zeros((), jnp.int32))  # NumPy-drawn params: no init to compile
    flow = GradientFlow(x[:16], y[:16], CE, every=2)
    train_state, _ = jdnn.fit(model, (x, y), loss=CE, optimizer=optimizer, epochs=3,
                              batch_size=16, key=0, callbacks=[flow], progress=False,
                              train_state=start, metrics=())
    assert [r["epoch"] for r in flow.records] == [0, 2]  # before training, then every 2nd epoch
    assert set(flow.records[0]) == {"epoch", "loss", "grad_norms", "dead_relu", "saturated"}
    again = flow.measure(model, train_state.params, train_state.state, epoch=3)
    assert again is flow.records[-1] and again["loss"] <= flow.records[0]["loss"]

    fig = plot_gradient_flow(flow, path=tmp_path / "g.png", dpi=50)
    assert fig.jdnn_data["runs"] == {"": flow.records} and len(fig.axes) == 3
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(tmp_path / "g.png") as image:
        assert image.width >= 300
        assert np.asarray(image.convert("L"), np.float32).std() > 10.0
    pair = plot_gradient_flow({"run a": flow, "run b": flow.records[:2]})  # one row per run
    assert list(pair.jdnn_data["runs"]) == ["run a", "run b"] and len(pair.axes) == 6


def test_errors():
    with pytest.raises(ValueError, match="every"):
        GradientFlow(np.zeros((2, 2)), np.zeros(2), CE, every=0)
    with pytest.raises(ValueError, match="no records"):
        plot_gradient_flow([])
