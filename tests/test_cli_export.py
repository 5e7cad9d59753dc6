"""`jdnn export RUN_DIR`: a `jdnn train` run directory as a StableHLO artifact that gives the
run's own predictions, and the refusals a user meets (not a run, a bad option)."""

import json

import numpy as np
import pytest

import jdnn
from jdnn import export
from jdnn.cli import main
from jdnn.cli.export import load_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--dataset", "xor", "--epochs", "2", "--no-progress", "--out",
                 str(run)]) == 0
    return run


def test_export_writes_the_runs_final_state_as_stablehlo(run_dir, capsys):
    assert main(["export", str(run_dir), "--platforms", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "export/model (stablehlo" in out and "input (B, 2) float32" in out
    model, ts, shape, dtype = load_run(run_dir)
    assert shape == (1, 2) and int(ts.step) > 0   # trained, not freshly initialized
    x = np.random.default_rng(0).standard_normal((9, 2)).astype(dtype)
    artifact = export.load(run_dir / "export" / "model")
    np.testing.assert_allclose(np.asarray(artifact(x)), jdnn.predict(model, ts, x), rtol=1e-5,
                               atol=1e-6)
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
