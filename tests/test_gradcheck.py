"""check_gradients: agreement on every zoo model and loss, and real bugs caught and named."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
from jdnn import layers, reference
from jdnn.cli import gradcheck_zoo, zoo
from jdnn.cli import main
from jdnn.core import Layer, make_spec
from jdnn.gradcheck import check_gradients


def _kinds(spec):
    yield spec.kind
    for child in spec.children:
        yield from _kinds(child)


def _init(model, x, seed=0):
    _, params, state = model.init(jax.random.key(seed), x.shape)
    return params, state


# The sequence models' checks take ~10 s each (a scan per recurrent layer, finite differences
# through all of it); the classic models already cover every loss, so these take one.
SLOW_MODELS = {"recurrent", "transformer"}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_every_zoo_model_passes_with_every_loss_and_a_penalty(name, mode):
    losses = ["softmax_cross_entropy"] if name in SLOW_MODELS else list(gradcheck_zoo.LOSSES)
    rows = gradcheck_zoo.run([name], losses, mode=mode, batch=4, seed=1)
    for row in rows:
        assert row.report.ok, f"{row.model}/{row.loss}\n{row.report}"
        assert all(p.fd_points > 0 for p in row.report.params)


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_batch_of_one_passes_in_both_modes_or_is_refused_clearly(name):
    entry = zoo.MODELS[name]
    if "BatchNorm" in set(_kinds(entry.build(2).spec)) and len(entry.example_shape) == 1:
        # One vector holds one value per feature: batch statistics cannot train on it.
        with pytest.raises(ValueError, match=rf"jdnn gradcheck: {name} / softmax_cross_entropy "
                                             rf"in training mode at batch 1 cannot run: .*"
                                             rf"at least 2 examples"):
            gradcheck_zoo.run([name], ["softmax_cross_entropy"], mode="train", batch=1)
        modes = "eval"
    else:
        modes = "both"
    rows = gradcheck_zoo.run([name], ["softmax_cross_entropy"], mode=modes, batch=1)
    assert all(row.report.ok for row in rows), "\n".join(str(r.report) for r in rows)


def test_float32_is_supported_with_looser_tolerances():
    rows = gradcheck_zoo.run([name for name in zoo.MODELS if name not in SLOW_MODELS], ["mse"],
                             mode="train", dtype="float32")
    for row in rows:
        assert row.report.ok, row.report
        assert row.report.tolerances["reference"] > 1e-10


def test_the_zoo_covers_every_layer_kind_jdnn_exports():
    covered = set()
    for entry in zoo.MODELS.values():
        covered |= set(_kinds(entry.build(2).spec))
    exported = {getattr(layers, name) for name in layers.__all__}
    kinds = {spec.kind for spec in _all_layer_specs()}
    assert len(kinds) == len(exported)
    assert kinds <= covered, f"zoo misses {kinds - covered}"


def _all_layer_specs():
    """One instance of every layer constructor jdnn.layers exports. A new constructor must be
    added here (the KeyError says so), which then demands a reference twin below."""
    arguments = {"Dense": (3,), "Conv2D": (2, 3), "MaxPool2D": (2,), "AvgPool2D": (2,),
                 "Dropout": (0.5,), "serial": (layers.Relu(),), "residual": (layers.Relu(),),
                 "branches": (layers.Relu(),), "Embedding": (10, 4),
                 "PositionalEmbedding": (8,), "Conv1D": (2, 3), "MaxPool1D": (2,),
                 "AvgPool1D": (2,), "MultiHeadAttention": (2, 3), "SimpleRNN": (3,),
                 "GRU": (3,), "LSTM": (3,), "bidirectional": (layers.GRU(3),)}
    return [getattr(layers, name)(*arguments.get(name, ())).spec for name in layers.__all__]


def test_every_layer_kind_has_a_reference_twin():
    for spec in _all_layer_specs():
        twins = reference.registry.COMBINATORS if spec.children else reference.layers.KINDS
        assert spec.kind in twins, (f"jdnn layer kind {spec.kind} has no NumPy reference twin "
                                    f"(jdnn.reference.register_layer / register_combinator)")


# ---------------------------------------------------------------------------------------------
# Real bugs must make .ok False and name the offending parameter path.


def _wrong_weight_grad_dense(features):
    """A Dense whose custom VJP returns 1.01 x the true weight gradient; the rest is right."""
    dense = layers.Dense(features)

    @jax.custom_vjp
    def matmul(x, w):
        return x @ w

    def fwd(x, w):
        return x @ w, (x, w)

    def bwd(res, g):
        x, w = res
        return g @ w.T, 1.01 * (x.T @ g)

    matmul.defvjp(fwd, bwd)

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        return matmul(x, params["w"]) + params["b"], state

    return Layer(dense.init, apply, dense.spec)


def test_a_wrong_jax_gradient_is_caught_and_named():
    model = layers.serial(layers.Dense(4), layers.Tanh(), _wrong_weight_grad_dense(3))
    x, y = zoo.example_batch("mlp", 6, 3, "classes")
    params, state = _init(model, x)
    report = check_gradients(model, params, state, x, y, jdnn.losses.softmax_cross_entropy)
    assert not report.ok
    bad = {p.path for p in report.params if not p.ok}
    assert bad == {"2_dense/w"}
    assert report.worst.path == "2_dense/w"
    assert "2_dense/w" in str(report) and "NO" in str(report)


def test_a_wrong_activation_gradient_is_caught_upstream_of_it():
    @jax.custom_vjp
    def bad_tanh(x):
        return jnp.tanh(x)

    bad_tanh.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g * (1 - jnp.tanh(x) ** 2) * 1.1,))
    tanh = layers.Tanh()
    buggy = Layer(tanh.init, lambda p, s, x, *, key=None, train=False: (bad_tanh(x), s), tanh.spec)
    model = layers.serial(layers.Dense(4), buggy, layers.Dense(2))
    x, y = zoo.example_batch("mlp", 5, 2, "regression")
    params, state = _init(model, x)
    report = check_gradients(model, params, state, x, y, jdnn.losses.mse)
    assert not report.ok
    assert {p.path for p in report.params if not p.ok} == {"0_dense/w", "0_dense/b"}


def test_a_wrong_reference_backward_is_caught_and_named(monkeypatch):
    true_dense = reference.layers.KINDS["Dense"]

    class WrongBias:
        forward = staticmethod(true_dense.forward)

        @staticmethod
        def backward(params, cache, dy):
            dx, dparams = true_dense.backward(params, cache, dy)
            return dx, {**dparams, "b": 0.5 * dparams["b"]}

    monkeypatch.setitem(reference.layers.KINDS, "Dense", WrongBias)
    model = zoo.xor_sigmoid(1)
    x, y = zoo.example_batch("xor_sigmoid", 4, 1, "binary")
    params, state = _init(model, x)
    report = check_gradients(model, params, state, x, y, jdnn.losses.binary_cross_entropy)
    assert not report.ok
    # Only db is wrong (dx is right), so exactly the bias leaves fail, each named.
    assert {p.path for p in report.params if not p.ok} == {"0_dense/b", "2_dense/b", "4_dense/b"}
    assert all(p.fd_rel is None or p.fd_rel < 1e-6 for p in report.params)  # jax is right


def test_dropout_uses_the_same_mask_on_every_side():
    model = layers.serial(layers.Dense(16), layers.Dropout(0.5), layers.Dense(2))
    x, y = zoo.example_batch("mlp", 8, 2, "classes")
    params, state = _init(model, x)
    for seed in range(3):
        report = check_gradients(model, params, state, x, y, jdnn.losses.softmax_cross_entropy,
                                 key=jax.random.key(seed), train=True)
        assert report.ok, report
        assert report.forward_error < 1e-12


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rate_in_state_dropout_reads_its_state_on_every_side(dtype):
    inner = layers.serial(layers.Dense(16), layers.Dropout(0.3, rate_in_state=True))
    model = layers.serial(layers.Dense(16), layers.Relu(), layers.Dropout(0.3, rate_in_state=True),
                          layers.residual(inner), layers.Dense(2))
    x, y = zoo.example_batch("mlp", 8, 2, "classes")
    params, state = _init(model, x)
    for rate in (0.3, 0.6):  # the initial rate, then one set in the state after init
        state = {**state, "2_dropout": {"rate": jnp.float32(rate)}}
        report = check_gradients(model, params, state, x, y, jdnn.losses.softmax_cross_entropy,
                                 key=jax.random.key(1), train=True, dtype=dtype)
        assert report.ok, report
        assert report.state_error == 0.0
        if dtype == "float64":
            assert report.forward_error < 1e-12


def test_kinks_are_skipped_by_finite_differences():
    model = layers.serial(layers.Dense(3, b_init="zeros"), layers.Relu(), layers.Dense(1))
    x = np.zeros((4, 2), np.float32)  # every ReLU input is exactly 0: a kink at each bias
    y = np.ones(4, np.float32)
    params, state = _init(model, x)
    report = check_gradients(model, params, state, x, y, jdnn.losses.mse)
    assert report.kinks_skipped > 0
    assert report.ok, report


def test_penalties_are_twinned():
    model = zoo.mlp(3)
    x, y = zoo.example_batch("mlp", 6, 3, "regression")
    params, state = _init(model, x)
    penalty = jdnn.regularizers.penalty(l1=0.1, l2=0.2, where=r"dense/w$")
    report = check_gradients(model, params, state, x, y, jdnn.losses.mse, penalty=penalty)
    assert report.ok, report
    plain = check_gradients(model, params, state, x, y, jdnn.losses.mse)
    assert report.objective > plain.objective


def test_report_is_json_and_readable():
    model = zoo.xor_sigmoid(1)
    x, y = zoo.example_batch("xor_sigmoid", 4, 1, "binary")
    params, state = _init(model, x)
    report = check_gradients(model, params, state, x, y, jdnn.losses.binary_cross_entropy)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True
    assert [p["path"] for p in data["params"]] == [p.path for p in report.params]
    assert {"reference", "finite_differences", "forward"} <= set(data["tolerances"])
    text = str(report)
    assert "OK" in text and "0_dense/w" in text and "worst:" in text


def test_finite_differences_can_be_turned_off():
    model = zoo.xor_sigmoid(1)
    x, y = zoo.example_batch("xor_sigmoid", 4, 1, "binary")
    params, state = _init(model, x)
    report = check_gradients(model, params, state, x, y, jdnn.losses.binary_cross_entropy,
                             finite_differences=False)
    assert report.ok and all(p.fd_rel is None and p.fd_points == 0 for p in report.params)


# ---------------------------------------------------------------------------------------------
# Bad input.


def test_a_layer_the_reference_does_not_know_is_named():
    relu = layers.Relu()
    swish = Layer(relu.init, lambda p, s, x, *, key=None, train=False: (x * jax.nn.sigmoid(x), s),
                  make_spec("Swish"))
    model = layers.serial(layers.Dense(4), swish, layers.Dense(1))
    x, y = zoo.example_batch("mlp", 4, 1, "regression")
    params, state = _init(model, x)
    with pytest.raises(reference.UnknownLayerError, match=r"'Swish' at 1_swish"):
        check_gradients(model, params, state, x, y, jdnn.losses.mse)


def test_mismatched_x_and_y_are_rejected():
    model = zoo.xor_sigmoid(1)
    x, y = zoo.example_batch("xor_sigmoid", 4, 1, "binary")
    params, state = _init(model, x)
    with pytest.raises(ValueError, match=r"same number of examples.*\(4, 2\).*\(3,\)"):
        check_gradients(model, params, state, x, y[:3], jdnn.losses.mse)


def test_unsupported_loss_penalty_and_dtype_are_rejected():
    model = zoo.xor_sigmoid(1)
    x, y = zoo.example_batch("xor_sigmoid", 4, 1, "binary")
    params, state = _init(model, x)
    both_ways = r"oracles=\('finite_differences',\)"
    with pytest.raises(ValueError, match=r"no twin for the loss '<lambda>'; register one with "
                                         r"jdnn.reference.register_loss.*" + both_ways):
        check_gradients(model, params, state, x, y, lambda o, t: jnp.sum(o, -1))
    with pytest.raises(ValueError, match=r"twin 'mse' cannot take the keyword arguments "
                                         r"\{'reduction': 'sum'\}.*" + both_ways):
        check_gradients(model, params, state, x, y,
                        functools.partial(jdnn.losses.mse, reduction="sum"))
    with pytest.raises(ValueError, match=r"penalty=jdnn.regularizers.penalty.*" + both_ways):
        check_gradients(model, params, state, x, y, jdnn.losses.mse, penalty=lambda p: 0.0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        check_gradients(model, params, state, x, y, jdnn.losses.mse, dtype="float16")


# ---------------------------------------------------------------------------------------------
# The command line.


def test_cli_gradcheck_prints_a_table_writes_json_and_exits_zero(tmp_path, capsys):
    path = tmp_path / "out" / "gradcheck.json"
    code = main(["gradcheck", "--model", "xor_sigmoid", "--loss", "mse", "--mode", "train",
                 "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "xor_sigmoid" in out and "1 passed, 0 failed" in out
    data = json.loads(path.read_text())
    assert data[0]["model"] == "xor_sigmoid" and data[0]["ok"] is True


def test_cli_gradcheck_exits_nonzero_on_a_failure(monkeypatch, capsys):
    true_sigmoid = reference.layers.KINDS["Sigmoid"]

    class WrongSigmoid:
        forward = staticmethod(true_sigmoid.forward)

        @staticmethod
        def backward(params, cache, dy):
            dx, dparams = true_sigmoid.backward(params, cache, dy)
            return 2 * dx, dparams

    monkeypatch.setitem(reference.layers.KINDS, "Sigmoid", WrongSigmoid)
    code = main(["gradcheck", "--model", "xor_sigmoid", "--loss", "mse", "--mode", "eval"])
    captured = capsys.readouterr()
    assert code == 1
    assert "0 passed, 1 failed" in captured.out
    assert "FAILED xor_sigmoid / mse" in captured.err


# ---------------------------------------------------------------------------------------------
# A bug only finite differences can see: jax and the reference agree on a wrong gradient.

SCALE = 1.0001  # the planted error, a relative 1e-4: past 1e-6, within a loosened 1e-3


def _scaled_weight_grad_dense(features):
    """A user layer, kind "ScaledDense": a Dense whose custom VJP returns SCALE x the true
    weight gradient (dx and db are right)."""
    dense = layers.Dense(features)

    @jax.custom_vjp
    def matmul(x, w):
        return x @ w

    matmul.defvjp(lambda x, w: (x @ w, (x, w)),
                  lambda res, g: (g @ res[1].T, SCALE * (res[0].T @ g)))

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        return matmul(x, params["w"]) + params["b"], state

    return Layer(dense.init, apply, make_spec("ScaledDense", features=features))


class _ScaledDenseTwin:
    """Its NumPy twin, registered under its kind, with the very same error in dw."""

    forward = staticmethod(reference.layers.dense.forward)

    @staticmethod
    def backward(params, cache, dy):
        dx, dparams = reference.layers.dense.backward(params, cache, dy)
        return dx, {**dparams, "w": SCALE * dparams["w"]}


def test_a_gradient_the_reference_agrees_with_is_still_caught_by_finite_differences(
        monkeypatch):
    monkeypatch.setitem(reference.layers.KINDS, "ScaledDense", _ScaledDenseTwin)
    model = layers.serial(layers.Dense(4), layers.Tanh(), _scaled_weight_grad_dense(3))
    x, y = zoo.example_batch("mlp", 6, 3, "classes")
    params, state = _init(model, x)
    report = check_gradients(model, params, state, x, y, jdnn.losses.softmax_cross_entropy)
    assert not report.ok, report
    bad = [p for p in report.params if not p.ok]
    assert [p.path for p in bad] == ["2_scaleddense/w"]
    (p,) = bad
    assert p.reference_rel < 1e-12  # jax and its twin agree...
    assert 1e-6 < p.fd_rel < 1e-3   # ...finite differences do not, by about 1e-4
    assert p.fd_rel == pytest.approx(SCALE - 1, rel=0.05)
    assert report.worst.comparison == "finite differences"
    assert report.worst.path == "2_scaleddense/w"
    assert "NO" in str(report)
    # The tolerance is the one that decides: loosened to 1e-3 the same error passes.
    loose = check_gradients(model, params, state, x, y, jdnn.losses.softmax_cross_entropy,
                            tolerances={"finite_differences": 1e-3})
    assert loose.ok and loose.tolerances["finite_differences"] == 1e-3


def test_check_gradients_rejects_bad_numeric_arguments_and_batches():
    model = zoo.xor_sigmoid(1)
    x, y = zoo.example_batch("xor_sigmoid", 4, 1, "binary")
    params, state = _init(model, x)

    def check(**kwargs):
        args = {"x": x, "y": y, "params": params, "state": state, **kwargs}
        return check_gradients(model, args.pop("params"), args.pop("state"), args.pop("x"),
                               args.pop("y"), jdnn.losses.binary_cross_entropy, **args)

    for samples in (-1, 0, 2.0, True):
        with pytest.raises(ValueError, match=r"check_gradients: samples must be a positive "
                                             r"int, got"):
            check(samples=samples)
    with pytest.raises(ValueError, match=r"check_gradients: seed must be an int >= 0, got -1"):
        check(seed=-1)
    for value in (0.0, -1e-6, float("nan"), float("inf"), "1e-6"):
        with pytest.raises(ValueError, match=r"tolerances\['finite_differences'\] must be a "
                                             r"finite number > 0"):
            check(tolerances={"finite_differences": value})
    with pytest.raises(ValueError, match=r"unknown tolerance name\(s\) \['fd'\]; the names are "
                                         r"\['finite_differences', 'forward', 'reference'\]"):
        check(tolerances={"fd": 1e-6})
    with pytest.raises(TypeError, match="tolerances must be a dict"):
        check(tolerances=1e-6)
    with pytest.raises(TypeError, match="check_gradients: train must be True or False"):
        check(train="yes")
    with pytest.raises(ValueError, match=r"check_gradients: x and y have no examples"):
        check(x=x[:0], y=y[:0])
    with pytest.raises(ValueError, match=r"mask must have shape \(4,\), one entry per example, "
                                         r"got shape \(3,\)"):
        check(mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="mask keeps no example"):
        check(mask=np.zeros(4, bool))
    with pytest.raises(ValueError, match=r"check_gradients: x has 1 non-finite value"):
        check(x=np.where(np.arange(8).reshape(4, 2) == 3, np.nan, x))
    with pytest.raises(ValueError, match=r"check_gradients: y has 1 value\(s\) outside \[0, 1\]"):
        check(y=np.where(np.arange(4) == 2, 2.0, y))
    nan_params = {**params, "2_dense": {**params["2_dense"], "b": params["2_dense"]["b"] * np.nan}}
    with pytest.raises(ValueError, match=r"params at 2_dense/b holds 2 non-finite value"):
        check(params=nan_params)
    # NumPy ints are counts like any other
    report = check(samples=np.int64(2), seed=np.int64(1))
    assert report.ok and all(p.fd_points <= 2 for p in report.params)


def test_check_gradients_refuses_class_labels_out_of_range():
    model = layers.serial(layers.Dense(4), layers.Tanh(), layers.Dense(3))
    x, y = zoo.example_batch("mlp", 6, 3, "classes")
    params, state = _init(model, x)
    for label, match in ((-1, "negative class label"), (3, "outputs 3 classes")):
        bad = np.asarray(y).copy()
        bad[2] = label
        with pytest.raises(ValueError, match=f"check_gradients: y has .*{match}"):
            check_gradients(model, params, state, x, bad, jdnn.losses.softmax_cross_entropy)


def test_gradcheck_zoo_rejects_bad_options_before_checking():
    with pytest.raises(ValueError, match=r"jdnn gradcheck: batch must be a positive int, got 0"):
        gradcheck_zoo.run(["mlp"], ["mse"], batch=0)
    with pytest.raises(ValueError, match=r"jdnn gradcheck: batch must be a positive int, got -2"):
        gradcheck_zoo.run(["mlp"], ["mse"], batch=-2)
    with pytest.raises(ValueError, match=r"jdnn gradcheck: seed must be an int >= 0"):
        gradcheck_zoo.run(["mlp"], ["mse"], seed=-1)
    with pytest.raises(ValueError, match=r"unknown model \['mpl'\]; choose from"):
        gradcheck_zoo.run(["mpl"], ["mse"])
    with pytest.raises(ValueError, match=r"unknown loss \['hinge'\]; choose from"):
        gradcheck_zoo.run(["mlp"], ["hinge"])
    with pytest.raises(ValueError, match=r"mode must be one of \['both', 'eval', 'train'\]"):
        gradcheck_zoo.run(["mlp"], ["mse"], mode="test")
    with pytest.raises(ValueError, match=r"l1 must be a finite number >= 0, got nan"):
        gradcheck_zoo.run(["mlp"], ["mse"], l1=float("nan"))
