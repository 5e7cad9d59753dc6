"""jdnn.export.to_onnx: the MLP, the CNN and the recurrent layers in onnxruntime against
jdnn.predict, and the layers jax2onnx cannot express named in the error. Needs the `onnx` extra
(skipped without it, as in the oldest-versions CI pass)."""

import json

import numpy as np
import optax
import pytest

import jdnn
from jdnn import export

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")
onnx = pytest.importorskip("onnx")   # comes with jax2onnx


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _model_and_state(model, shape):
    return model, jdnn.TrainState.create(model, optax.sgd(0.1), 0, shape)


MODELS = {
    "mlp": (lambda: jdnn.serial(jdnn.Flatten(), jdnn.Dense(16), jdnn.Relu(), jdnn.Dense(3)),
            (1, 8), "float32"),
    "cnn": (lambda: jdnn.serial(jdnn.Conv2D(4, 3), jdnn.BatchNorm(), jdnn.Relu(),
                                jdnn.MaxPool2D(2), jdnn.Conv2D(4, 3, strides=2, padding="VALID"),
                                jdnn.Flatten(), jdnn.Dropout(0.5), jdnn.Dense(3)),
            (1, 8, 8, 2), "float32"),
    "gru": (lambda: jdnn.serial(jdnn.Embedding(11, 4), jdnn.GRU(5, return_sequences=False),
                                jdnn.Dense(3)), (1, 6), "int32"),
    "lstm": (lambda: jdnn.serial(jdnn.LSTM(5), jdnn.SimpleRNN(4), jdnn.Dense(3)),
             (1, 6, 2), "float32"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_gives_predicts_outputs(tmp_path, name):
    build, shape, dtype = MODELS[name]
    model, ts = _model_and_state(build(), shape)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, *shape[1:])).astype(dtype) if dtype == "float32"
         else rng.integers(0, 11, (5, *shape[1:])).astype(dtype))
    path = export.to_onnx(tmp_path / f"{name}.onnx", model, ts, shape, dtype=dtype)
    np.testing.assert_allclose(_run(path, x), jdnn.predict(model, ts, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(path, x[:1]), jdnn.predict(model, ts, x[:1]), rtol=1e-5,
                               atol=1e-5)   # the batch axis is dynamic
    graph = onnx.load(path)
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props["jdnn.spec"])["kind"] == "serial"
    assert json.loads(props["jdnn.versions"])["jax2onnx"]
    if name == "cnn":   # Conv2D's platform branch is resolved to ONNX's Conv, no If left
        ops = {node.op_type for node in graph.graph.node}
        assert "Conv" in ops and "If" not in ops
        assert [o.domain for o in graph.opset_import] == [""]


def test_layers_the_converter_cannot_express_are_named_with_their_paths(tmp_path):
    model, ts = _model_and_state(
        jdnn.serial(jdnn.MultiHeadAttention(2, 4), jdnn.bidirectional(jdnn.GRU(4))), (1, 6, 2))
    with pytest.raises(export.UnsupportedLayerError) as caught:
        export.to_onnx(tmp_path / "m.onnx", model, ts, (1, 6, 2))
    message = str(caught.value)
    assert "MultiHeadAttention(num_heads=2" in message and "at 0_multiheadattention" in message
    assert "reverse=True" in message and "at 1_bidirectional/1_gru" in message
    assert [path for path, _, _ in caught.value.layers] == ["0_multiheadattention",
                                                            "1_bidirectional/1_gru"]
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert not (tmp_path / "m.onnx").exists()


def test_jdnn_export_writes_a_run_directory_as_onnx(tmp_path, capsys):
    from jdnn.cli import main
    from test_cli_export import make_run

    run, model, ts = make_run(tmp_path / "run")
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert "export/model.onnx (onnx" in capsys.readouterr().out
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    np.testing.assert_allclose(_run(run / "export" / "model.onnx", x),
                               jdnn.predict(model, ts, x), rtol=1e-5, atol=1e-5)
