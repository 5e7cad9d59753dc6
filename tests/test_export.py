"""jdnn.export's StableHLO artifacts: what `save` writes, that `load` and a process with jax
alone (no jdnn) get `jdnn.predict`'s outputs from it, and every refusal names what to fix."""

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdnn
from jdnn import export


def _state(model, shape):
    return jdnn.TrainState.create(model, optax.sgd(0.1), 0, shape)


@pytest.fixture(scope="module")
def cnn():
    """A small CNN with batch norm (state) and dropout: evaluation mode matters."""
    model = jdnn.serial(jdnn.Conv2D(4, 3), jdnn.BatchNorm(), jdnn.Relu(), jdnn.MaxPool2D(2),
                        jdnn.Flatten(), jdnn.Dropout(0.5), jdnn.Dense(3))
    ts = _state(model, (1, 6, 6, 2))
    # running statistics other than the initial ones, so eval mode is told apart from train
    ts = ts._replace(state={**ts.state, "1_batchnorm": {
        "mean": jnp.full((4,), 0.3), "var": jnp.full((4,), 2.0)}})
    x = np.random.default_rng(0).standard_normal((7, 6, 6, 2)).astype(np.float32)
    return model, ts, x


def test_a_saved_artifact_loads_and_gives_predicts_outputs_at_any_batch(tmp_path, cnn):
    model, ts, x = cnn
    folder = export.save(tmp_path / "cnn", model, ts, (1, 6, 6, 2))
    artifact = export.load(folder)
    for n in (1, 7):
        np.testing.assert_allclose(np.asarray(artifact(x[:n])), jdnn.predict(model, ts, x[:n]),
                                   rtol=1e-5, atol=1e-6)
    assert sorted(os.listdir(folder)) == ["model.json", "model.stablehlo"]   # no temp files
    meta = json.loads((folder / "model.json").read_text())
    assert meta["inputs"] == [{"name": "x", "shape": [None, 6, 6, 2], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "y", "shape": [None, 3], "dtype": "float32"}]
    assert meta["platforms"] == ["cpu", "cuda"]
    assert meta["spec"]["kind"] == "serial" and meta["spec"]["children"][1]["kind"] == "BatchNorm"
    assert meta["num_params"] == 2 * 9 * 4 + 4 + 8 + 3 * 3 * 4 * 3 + 3   # conv, norm, dense
    assert meta["versions"]["jax"] and meta["params"] == "embedded"


def test_the_artifact_runs_in_a_process_where_jdnn_cannot_be_imported(tmp_path, cnn):
    model, ts, x = cnn
    export.save(tmp_path / "cnn", model, ts, (1, 6, 6, 2), platforms=("cpu",))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", jdnn.predict(model, ts, x))
    script = textwrap.dedent("""
        import sys
        sys.modules["jdnn"] = None          # `import jdnn` now fails
        import jax, numpy as np
        try:
            import jdnn
        except ImportError:
            pass
        else:
            raise SystemExit("jdnn was importable")
        with open("cnn/model.stablehlo", "rb") as f:
            exported = jax.export.deserialize(bytearray(f.read()))
        y = np.asarray(exported.call(np.load("x.npy")))
        np.testing.assert_allclose(y, np.load("want.npy"), rtol=1e-5, atol=1e-6)
        print("ok", y.shape, [m for m, v in sys.modules.items() if m.startswith("jdnn") and v])
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ok", "(7,", "3)", "[]"]


def test_import_jdnn_and_jdnn_export_pull_in_no_onnx_package():
    script = ("import sys, jdnn, jdnn.export; "
              "print(sorted(m for m in ('jax2onnx', 'onnx', 'onnxruntime') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_matmul_precision_highest_is_stated_in_the_program_for_gpus(tmp_path):
    """On an H200, float32 products ran in TF32 without it (~4e-4 relative off the CPU's)."""
    model = jdnn.serial(jdnn.Dense(4), jdnn.Relu(), jdnn.Dense(2))
    ts = _state(model, (1, 3))
    plain = export.load(export.save(tmp_path / "a", model, ts, (1, 3)))
    exact = export.load(export.save(tmp_path / "b", model, ts, (1, 3),
                                    matmul_precision="highest"))
    assert "HIGHEST" not in plain.exported.mlir_module()
    assert exact.exported.mlir_module().count("HIGHEST") >= 2   # both Dense products
    assert exact.metadata["matmul_precision"] == "highest"
    with pytest.raises(export.ExportError, match="matmul_precision must be one of"):
        export.save(tmp_path / "c", model, ts, (1, 3), matmul_precision="fp32")


def test_a_fixed_batch_takes_that_batch_only_and_says_so(tmp_path):
    model = jdnn.serial(jdnn.Dense(4), jdnn.Tanh(), jdnn.Dense(2))
    ts = _state(model, (1, 3))
    artifact = export.load(export.save(tmp_path / "m", model, ts, (1, 3), batch=4))
    x = np.ones((4, 3), np.float64)   # float64: cast to the exported float32
    np.testing.assert_allclose(np.asarray(artifact(x)), jdnn.predict(model, ts, x), rtol=1e-6)
    with pytest.raises(ValueError, match=r"input x must have shape \(4, 3\).*got \(5, 3\)"):
        artifact(np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match="must be float32.*got int32"):
        artifact(np.ones((4, 3), np.int32))
    with pytest.raises(ValueError, match=r"takes 1 input\(s\) \(x\), got 2"):
        artifact(x, x)


def test_token_ids_export_with_an_integer_dtype(tmp_path):
    model = jdnn.serial(jdnn.Embedding(11, 4), jdnn.GRU(5, return_sequences=False),
                        jdnn.Dense(2))
    ts = _state(model, (1, 6))
    ids = np.random.default_rng(1).integers(0, 11, (3, 6)).astype(np.int32)
    artifact = export.load(export.save(tmp_path / "m", model, ts, (1, 6), dtype="int32"))
    np.testing.assert_allclose(np.asarray(artifact(ids)), jdnn.predict(model, ts, ids),
                               rtol=1e-5, atol=1e-6)


def test_a_padded_export_takes_values_and_lengths(tmp_path):
    model = jdnn.serial(jdnn.LSTM(5), jdnn.Dense(2))   # keeps the time axis: a Padded output
    ts = _state(model, (1, 6, 3))
    values = np.random.default_rng(2).standard_normal((4, 6, 3)).astype(np.float32)
    lengths = np.array([6, 3, 1, 0], np.int32)
    artifact = export.load(export.save(tmp_path / "m", model, ts, (1, 6, 3), padded=True))
    y_values, y_lengths = artifact(values, lengths)
    want = jdnn.predict(model, ts, jdnn.Padded(values, lengths))
    mask = np.arange(6)[None, :] < lengths[:, None]
    np.testing.assert_allclose(np.asarray(y_values)[mask], want.values[mask], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(y_lengths), lengths)
    assert [i["name"] for i in artifact.metadata["inputs"]] == ["x", "lengths"]


@pytest.mark.parametrize("kwargs, message", [
    ({"input_shape": (64,)}, None),   # a batch axis of 64 and no features: exports fine
    ({"input_shape": (1, 0)}, r"input_shape must be .* positive ints.*got \(1, 0\)"),
    ({"input_shape": "64"}, r"input_shape must be .*got '64'"),
    ({"batch": 0}, r"batch must be 'dynamic' .* or a fixed batch size, an int >= 1, got 0"),
    ({"dtype": "complex64"}, r"dtype must be the input's dtype.*got 'complex64'"),
    ({"platforms": ("gpu",)}, r"platforms must be .*'cuda' \(not 'gpu'\)"),
    ({"input_shape": (4,), "padded": True}, r"padded=True needs sequences, an input_shape"),
])
def test_save_refuses_bad_arguments_naming_them(tmp_path, kwargs, message):
    model = jdnn.serial(jdnn.Dense(2))
    ts = _state(model, (1, 3))
    arguments = {"input_shape": (1, 3), **kwargs}
    if message is None:
        with pytest.raises(export.ExportError, match=r"cannot export serial\(Dense"):
            export.save(tmp_path / "m", model, ts, **arguments)   # 64 is no (B, 3) input
        return
    with pytest.raises(export.ExportError, match=message):
        export.save(tmp_path / "m", model, ts, **arguments)
    assert not (tmp_path / "m").exists()


def test_save_refuses_what_is_not_a_model_or_a_state(tmp_path):
    model = jdnn.Dense(2)
    with pytest.raises(TypeError, match="model must be a jdnn Layer"):
        export.save(tmp_path / "m", model.apply, _state(model, (1, 3)), (1, 3))
    with pytest.raises(TypeError, match="train_state must be a jdnn.TrainState"):
        export.save(tmp_path / "m", model, {"params": {}}, (1, 3))


def test_load_refuses_a_missing_or_torn_artifact(tmp_path):
    model = jdnn.Dense(2)
    with pytest.raises(FileNotFoundError, match="no model.json in .*give the folder"):
        export.load(tmp_path)
    folder = export.save(tmp_path / "m", model, _state(model, (1, 3)), (1, 3))
    blob = bytearray((folder / "model.stablehlo").read_bytes())
    blob[-1] ^= 1
    (folder / "model.stablehlo").write_bytes(bytes(blob))
    with pytest.raises(export.ExportError, match="does not match model.json.*export again"):
        export.load(folder)


def test_to_onnx_without_the_extra_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)
    model = jdnn.Dense(2)
    with pytest.raises(ImportError, match=r"pip install 'jdnn\[onnx\]'"):
        export.to_onnx(tmp_path / "m.onnx", model, _state(model, (1, 3)), (1, 3))
