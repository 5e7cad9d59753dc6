"""`jdnn export RUN_DIR`: a `jdnn train` run directory as a StableHLO artifact that gives the
run's own predictions, and the refusals a user meets (not a run, a bad option)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import jdnn
from jdnn import checkpoint, export, io
from jdnn.cli import main, run
from jdnn.cli.export import load_run


def make_run(folder):
    """A run directory as `jdnn train --dataset xor` writes it (config.json, final.safetensors),
    without the training: its params are a fresh init's, doubled, so that a prediction from
    them differs from any fresh init's."""
    config = run.Config(dataset="xor")
    model = run.build(config, 2)
    ts = jdnn.TrainState.create(model, run.make_optimizer(config), 0, (1, 2))
    ts = ts._replace(params=jax.tree.map(lambda p: 2 * p, ts.params))
    io.write_text(folder / "config.json", json.dumps(dataclasses.asdict(config)))
    checkpoint.save(folder / "final.safetensors", ts, model)
    return folder, model, ts


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "run")[0]


def test_export_writes_the_runs_final_state_as_stablehlo(run_dir, capsys):
    assert main(["export", str(run_dir), "--platforms", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "export/model (stablehlo" in out and "input (B, 2) float32" in out
    model, ts, shape, dtype = load_run(run_dir)
    assert shape == (1, 2) and dtype == np.float32
    x = np.random.default_rng(0).standard_normal((9, 2)).astype(dtype)
    y = np.asarray(export.load(run_dir / "export" / "model")(x))
    np.testing.assert_allclose(y, jdnn.predict(model, ts, x), rtol=1e-5, atol=1e-6)
    fresh = jdnn.TrainState.create(model, run.make_optimizer(run.Config()), 0, (1, 2))
    assert not np.allclose(y, jdnn.predict(model, fresh, x))   # the checkpoint's params
    assert json.loads((run_dir / "export" / "model" / "model.json").read_text())[
        "platforms"] == ["cpu"]


def test_export_with_a_fixed_batch_and_an_out_path(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--batch", "3", "--out", str(tmp_path / "b3"),
                 "--matmul-precision", "highest"]) == 0
    meta = export.load(tmp_path / "b3").metadata
    assert meta["inputs"][0]["shape"] == [3, 2] and meta["batch"] == 3
    assert meta["matmul_precision"] == "highest"


def test_export_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "is not a jdnn train run directory (no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "must be 'dynamic' or an int >= 1, got '0'"),
    (["--platforms", "gpu"], "must be comma-separated names of"),
    (["--format", "tflite"], "invalid choice: 'tflite'"),
])
def test_export_refuses_bad_options_as_usage_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exited:
        main(["export", str(tmp_path), *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
