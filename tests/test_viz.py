"""jdnn.viz pictures: each file is a real, non-blank PNG/SVG/GIF of sensible size, and the numbers
behind each picture are the model's own (node colors <-> activations from `apply`, grid
predictions <-> model outputs, feature maps <-> layer outputs, curves <-> the history)."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

import jdnn
from jdnn import viz
from jdnn.cli import zoo
from jdnn.viz.boundary import predicted_class
from jdnn.viz.network import describe
from jdnn.viz.trace import layer_outputs

PNG_MAGIC, GIF_MAGIC = b"\x89PNG\r\n\x1a\n", (b"GIF87a", b"GIF89a")


def check_image(path, *, min_width=300, kind="png"):
    """A valid image of `kind`, at least `min_width` px wide, and not blank."""
    head = path.read_bytes()[:8]
    assert head == PNG_MAGIC if kind == "png" else head[:6] in GIF_MAGIC, head
    with Image.open(path) as image:
        assert image.format == kind.upper()
        assert image.width >= min_width and image.height >= 100, image.size
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10.0, "blank image"
    return pixels


def random_params(model, input_shape, seed=0):
    """Params and state of `model` drawn with NumPy (no compiled initializers: fast tests)."""
    rng = np.random.default_rng(seed)
    params, state = jax.eval_shape(lambda k: model.init(k, input_shape)[1:], jax.random.key(0))
    params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), params)
    state = jax.tree.map(lambda a: (np.abs(rng.normal(size=a.shape)) + 0.5).astype(a.dtype),
                         state)
    return params, state


@pytest.fixture(scope="module")
def xor_net():
    model = zoo.xor_sigmoid()
    rng = np.random.default_rng(0)
    params = {name: ({"w": rng.normal(size=(a, b)).astype(np.float32) * 2,
                      "b": rng.normal(size=(b,)).astype(np.float32)} if "dense" in name else {})
              for name, (a, b) in zip(["0_dense", "1_sigmoid", "2_dense", "3_sigmoid", "4_dense"],
                                      [(2, 3), (0, 0), (3, 2), (0, 0), (2, 1)])}
    return model, params, {name: {} for name in params}


# --- network diagram -------------------------------------------------------------------------


def test_node_colors_are_the_activations_apply_computes(xor_net, tmp_path):
    model, params, state = xor_net
    x = np.array([1.0, 0.0], np.float32)
    fig = viz.draw_network(model, params, state, x, path=tmp_path / "net.png", dpi=60)
    check_image(tmp_path / "net.png")
    acts = fig.jdnn_data["activations"]
    assert [a.shape for a in acts] == [(2,), (3,), (2,), (1,)]
    h1 = jax.nn.sigmoid(x @ params["0_dense"]["w"] + params["0_dense"]["b"])
    h2 = jax.nn.sigmoid(h1 @ params["2_dense"]["w"] + params["2_dense"]["b"])
    np.testing.assert_allclose(acts[1], h1, rtol=1e-6)
    np.testing.assert_allclose(acts[2], h2, rtol=1e-6)
    np.testing.assert_allclose(acts[3], model.apply(params, state, x[None])[0][0], rtol=1e-6)
    for got, want in zip(acts, viz.node_activations(model, params, state, x)):
        np.testing.assert_array_equal(got, want)
    # the drawn circles' colors are the colormap at the activations
    norm, cmap = Normalize(*fig.jdnn_data["value_range"]), colormaps[fig.jdnn_data["cmap"]]
    drawn = [c.get_facecolors() for c in fig.axes[0].collections if isinstance(c, PatchCollection)]
    assert len(drawn) == 4
    for faces, values in zip(drawn, acts):
        np.testing.assert_allclose(faces, cmap(norm(values)), atol=1e-6)


def test_edges_follow_the_weights(xor_net):
    model, params, state = xor_net
    fig = viz.draw_network(model, params, state)  # no input: white nodes, edges only
    lines = fig.axes[0].collections[0]
    weights = np.concatenate([params[k]["w"].ravel() for k in ("0_dense", "2_dense", "4_dense")])
    assert len(lines.get_segments()) == weights.size == 6 + 6 + 2
    widths = lines.get_linewidths()
    assert widths[np.argmax(np.abs(weights))] == max(widths)
    blue = lines.get_colors()[:, 2] > lines.get_colors()[:, 0]
    np.testing.assert_array_equal(blue, weights >= 0)
    assert all(np.allclose(f, 1.0) for f in fig.jdnn_data["node_colors"])


def test_block_diagram_for_a_cnn_as_svg(tmp_path):
    model = zoo.cnn(10)
    fig = viz.draw_network(model, input_shape=(1, 8, 8, 2), path=tmp_path / "cnn.svg")
    assert fig.jdnn_data["mode"] == "blocks"
    assert fig.jdnn_data["summary"] == jdnn.summary(model, (1, 8, 8, 2)).to_dict()
    text = (tmp_path / "cnn.svg").read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    with pytest.raises(ValueError, match="input_shape"):
        viz.draw_network(model)


def test_wide_dense_nets_get_blocks(tmp_path):
    model = jdnn.serial(jdnn.Dense(32), jdnn.Relu(), jdnn.Dense(2))
    fig = viz.draw_network(model, input_shape=(1, 4), path=tmp_path / "wide.png", dpi=60)
    assert fig.jdnn_data["mode"] == "blocks"
    check_image(tmp_path / "wide.png")


def test_save_rejects_unknown_formats(xor_net, tmp_path):
    with pytest.raises(ValueError, match="extension"):
        viz.draw_network(*xor_net, path=tmp_path / "net.jpeg")


# --- decision boundary -----------------------------------------------------------------------


def test_grid_predictions_are_the_model_outputs(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 2)).astype(np.float32), rng.integers(0, 3, 60)
    model = jdnn.serial(jdnn.Dense(8), jdnn.Tanh(), jdnn.Dense(3))
    params, state = random_params(model, x.shape)
    fig = viz.plot_decision_boundary(model, params, state, x, y, resolution=40,
                                     path=tmp_path / "b.png", dpi=70)
    check_image(tmp_path / "b.png")
    data = fig.jdnn_data
    points = np.column_stack([data["xx"].ravel(), data["yy"].ravel()])
    outputs = model.apply(params, state, jnp.asarray(points))[0]
    np.testing.assert_allclose(data["outputs"], outputs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(data["classes"].ravel(), np.argmax(outputs, axis=1))
    assert data["xx"].shape == (40, 40) and data["xx"].min() < x[:, 0].min()
    predicted = np.argmax(model.apply(params, state, jnp.asarray(x))[0], axis=1)
    assert data["accuracy"] == pytest.approx(np.mean(predicted == y))


def test_single_output_thresholds(xor_net):
    model, params, state = xor_net
    (x, y), _ = jdnn.data.xor()
    grid = viz.decision_grid(model, params, state, x, resolution=12)
    assert grid.threshold == 0.0  # logits
    np.testing.assert_array_equal(grid.classes.ravel(), grid.outputs[:, 0] > 0)
    probabilities = jdnn.serial(jdnn.Dense(1), jdnn.Sigmoid())
    p = {"0_dense": params["4_dense"], "1_sigmoid": {}}
    assert viz.decision_grid(probabilities, p, None, np.ones((3, 2)) * [[0], [1], [2]],
                             resolution=5).threshold == 0.5
    np.testing.assert_array_equal(predicted_class(np.array([[0.4], [0.6]]), 0.5), [0, 1])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        viz.decision_grid(model, params, state, np.zeros((4, 3)))


# --- filters and feature maps ----------------------------------------------------------------


def test_filters_grid(tmp_path):
    w = np.random.default_rng(0).normal(size=(3, 3, 1, 8)).astype(np.float32)
    fig = viz.plot_filters(w, path=tmp_path / "f.png", dpi=80)
    check_image(tmp_path / "f.png")
    assert len(fig.jdnn_data["tiles"]) == 8
    np.testing.assert_array_equal(fig.jdnn_data["tiles"][5], w[:, :, 0, 5])
    rgb = viz.plot_filters({"w": np.random.default_rng(1).normal(size=(5, 5, 3, 4))})
    assert fig.jdnn_data["vmax"] == pytest.approx(np.abs(w).max())
    assert rgb.jdnn_data["tiles"][0].shape == (5, 5, 3)
    assert 0.0 <= rgb.jdnn_data["tiles"][0].min() <= rgb.jdnn_data["tiles"][0].max() <= 1.0
    with pytest.raises(ValueError, match="HWIO|kh, kw"):
        viz.plot_filters(np.zeros((3, 3)))


def test_feature_maps_are_the_layer_outputs(tmp_path):
    model = jdnn.serial(jdnn.Conv2D(6, 3), jdnn.Relu(), jdnn.MaxPool2D(2), jdnn.Flatten())
    params, state = random_params(model, (1, 8, 8, 1))
    image = np.random.default_rng(0).uniform(size=(8, 8, 1)).astype(np.float32)
    fig = viz.plot_feature_maps(model, params, state, image, layer="1_relu",
                                path=tmp_path / "m.png", dpi=80)
    check_image(tmp_path / "m.png")
    conv = jdnn.Conv2D(6, 3).apply(params["0_conv2d"], {}, image[None])[0]
    np.testing.assert_allclose(fig.jdnn_data["maps"], jax.nn.relu(conv)[0], rtol=1e-5)
    flat = viz.plot_feature_maps(model, params, state, image[None], layer="3_flatten")
    np.testing.assert_allclose(flat.jdnn_data["maps"], model.apply(params, state,
                                                                   image[None])[0][0], rtol=1e-6)
    with pytest.raises(KeyError, match="1_relu"):
        viz.plot_feature_maps(model, params, state, image, layer="9_relu")


# --- the replayed forward pass ---------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True])
def test_layer_outputs_end_with_the_models_output(train):
    model = jdnn.serial(jdnn.Dense(6), jdnn.BatchNorm(), jdnn.Relu(), jdnn.Dropout(0.5),
                        jdnn.residual(jdnn.serial(jdnn.Dense(6), jdnn.Tanh())), jdnn.Dense(2))
    params, state = random_params(model, (5, 3))
    x = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    drop_key = jax.random.key(7)
    outputs = layer_outputs(model, params, state, x, key=drop_key, train=train)
    want = model.apply(params, state, x, key=drop_key, train=train)[0]
    np.testing.assert_array_equal(outputs[""], want)
    assert list(outputs)[:6] == ["0_dense", "1_batchnorm", "2_relu", "3_dropout", "4_residual",
                                 "4_residual/0_serial"]


def test_rate_in_state_dropout_is_labeled_and_replayed_with_its_rate(tmp_path):
    model = jdnn.serial(jdnn.Dense(6), jdnn.Relu(), jdnn.Dropout(0.25, rate_in_state=True),
                        jdnn.Dense(2))
    assert describe(model.spec.children[2]) == "Dropout(0.25, in state)"
    assert describe(jdnn.Dropout(0.25).spec) == "Dropout(0.25)"
    params, state = random_params(model, (5, 3))
    state["2_dropout"]["rate"] = np.float32(0.5)  # set after init: the replay must honor it
    x = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    drop_key = jax.random.key(7)
    outputs = layer_outputs(model, params, state, x, key=drop_key, train=True)
    np.testing.assert_array_equal(outputs[""], model.apply(params, state, x, key=drop_key,
                                                           train=True)[0])
    with pytest.raises(ValueError, match="this model's Dropout at 2_dropout keeps its drop rate "
                                         "in its state: pass the model's state"):
        layer_outputs(model, params, None, x)
    fig = viz.draw_network(model, params, state, x[0], path=tmp_path / "net.png", dpi=60)
    assert fig.jdnn_data["mode"] == "neurons"
    np.testing.assert_allclose(fig.jdnn_data["activations"][-1],
                               model.apply(params, state, x[:1])[0][0], rtol=1e-6)


# --- training curves -------------------------------------------------------------------------


def _history():
    losses = [1.0, 0.6, 0.4, 0.45, 0.5]
    records = [{"epoch": e + 1, "loss": 1.2 - 0.2 * e, "accuracy": 0.5 + 0.1 * e,
                "val_loss": v, "val_accuracy": 0.5 + 0.05 * e, "lr": 0.1 / (1 + (e > 2)),
                "seconds": 0.1} for e, v in enumerate(losses)]
    return jdnn.History(records, "early stopping: val_loss did not improve for 2 epochs")


def test_curves_mark_the_best_epoch_and_the_stop(tmp_path):
    history = _history()
    fig = viz.plot_history(history, path=tmp_path / "c.png", dpi=60)
    check_image(tmp_path / "c.png")
    data = fig.jdnn_data
    assert data["best"] == (3, "val_loss", 0.4)
    assert data["stop_epoch"] == 5 and data["stop_reason"].startswith("early stopping")
    assert data["series"]["val_loss"] == ([1, 2, 3, 4, 5], history["val_loss"])
    assert set(data["series"]) == {"loss", "val_loss", "accuracy", "val_accuracy", "lr"}
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 3  # loss, accuracy, lr
    assert viz.best_epoch(history.records, "val_accuracy") == (5, "val_accuracy", 0.7)
    # a to_dict round trip and a bare list of records draw the same series
    again = viz.plot_history(json.loads(json.dumps(history.to_dict())))
    assert again.jdnn_data["series"] == data["series"]
    assert viz.plot_history(history.records).jdnn_data["stop_epoch"] is None
    with pytest.raises(ValueError, match="no records"):
        viz.plot_history(jdnn.History())


def test_save_run_plots(tmp_path, xor_net):
    model, params, state = xor_net
    train_state = jdnn.TrainState(params, state, None, None, None)
    (x, y), _ = jdnn.data.xor()
    written = viz.save_run_plots(tmp_path / "run", _history(), model=model,
                                 train_state=train_state, data=(x, y))
    assert [p.name for p in written] == ["curves.png", "boundary.png"]
    for path in written:
        check_image(path)
    images = viz.save_run_plots(tmp_path / "run2", _history(), model=model,
                                train_state=train_state, data=(np.zeros((2, 8, 8, 1)), y[:2]))
    assert [p.name for p in images] == ["curves.png"]


# --- animation -------------------------------------------------------------------------------


def test_xor_animation(tmp_path):
    result = viz.animate_training(None, steps=300, every=100)
    assert [f.step for f in result.frames] == [0, 100, 200, 300]
    assert result.frames[-1].accuracy == 1.0 and result.frames[-1].loss < result.frames[0].loss
    (x, y), _ = jdnn.data.xor()
    path = viz.render_gif(result.model, result.frames[::3], x, y, tmp_path / "xor.gif",
                          resolution=20, dpi=50, hold=1)
    check_image(path, kind="gif")
    assert path.stat().st_size < 1_000_000
    with Image.open(path) as gif:
        assert gif.n_frames >= 2
    with pytest.raises(ValueError, match=".gif"):
        viz.render_gif(result.model, result.frames, x, y, tmp_path / "xor.png")


def test_figures_are_pyplot_free():
    import inspect
    import pkgutil

    assert isinstance(viz.plot_history(_history()), Figure)
    for module in pkgutil.iter_modules(viz.__path__):
        source = inspect.getsource(__import__(f"jdnn.viz.{module.name}", fromlist=["_"]))
        assert not re.search(r"import\s.*pyplot|pyplot\s+import|\bplt\.", source), module.name
