"""The `jdnn` command line as a user runs it: signals during `jdnn train` keep the progress and
`--resume` continues it; `jdnn gradcheck` refuses bad options before running anything."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jdnn import checkpoint
from jdnn.cli import main
from jdnn.checkpoint import ModelCheckpoint

STEPS_PER_EPOCH = 4   # xor: 64 examples in batches of 16


def _start_training(tmp_path, run):
    """`python -m jdnn.cli train` on XOR for (practically) ever, in a child process."""
    env = dict(os.environ, JDNN_CACHE_DIR="off", PYTHONUNBUFFERED="1")
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "jdnn.cli", "train", "--dataset", "xor", "--batch-size",
             "16", "--epochs", "100000", "--no-progress", "--out", str(run)],
            stdout=out, stderr=err, env=env, cwd=tmp_path)


def _wait_for_a_checkpoint(process, folder, timeout=180):
    deadline = time.monotonic() + timeout
    while not list(folder.glob("epoch-*.safetensors")):
        assert process.poll() is None, "jdnn train ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_the_last_epoch_and_resume_continues_it(tmp_path, capsys, signum,
                                                                status):
    run = tmp_path / "run"
    process = _start_training(tmp_path, run)
    try:
        _wait_for_a_checkpoint(process, run / "checkpoints")
        process.send_signal(signum)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"jdnn train ignored {signal.Signals(signum).name}: "
                        f"{(tmp_path / 'err.txt').read_text()[-3000:]}")
    finally:
        if process.poll() is None:
            process.kill()
    err = (tmp_path / "err.txt").read_text()
    assert process.returncode == status, err
    name = signal.Signals(signum).name
    assert f"jdnn train: {name}: interrupted" in err
    assert f"Resume with: jdnn train --resume {run}" in err
    history = json.loads((run / "history.json").read_text())
    n = len(history["records"])
    assert history["stopped_by"] == "interrupted" and n >= 1
    assert [r["epoch"] for r in history["records"]] == list(range(1, n + 1))
    latest = ModelCheckpoint.latest(run / "checkpoints")
    assert f"the checkpoint is {latest}" in err
    saved = checkpoint.restore(latest)
    assert int(saved.step) == n * STEPS_PER_EPOCH    # the last recorded epoch: nothing lost
    assert not (run / "final.safetensors").exists()  # an interrupted run is not final
    summary = json.loads((run / "summary.json").read_text())
    assert summary["signal"] == name and summary["checkpoint"] == str(latest)
    if signum == signal.SIGTERM:
        return   # resuming does not depend on the signal: once is enough

    assert main(["train", "--resume", str(run), "--epochs", str(n + 2), "--no-progress"]) == 0
    assert f"resumed from {latest} at epoch {n}" in capsys.readouterr().out
    records = json.loads((run / "history.json").read_text())["records"]
    assert [r["epoch"] for r in records] == list(range(1, n + 3))
    assert int(checkpoint.restore(run / "final.safetensors").step) == (n + 2) * STEPS_PER_EPOCH


@pytest.mark.parametrize("args,message", [
    (["--batch", "0"], "argument --batch: must be an int >= 1, got '0'"),
    (["--batch", "-2"], "argument --batch: must be an int >= 1, got '-2'"),
    (["--seed", "-1"], "argument --seed: must be an int >= 0"),
    (["--json", "."], "argument --json: '.' is a directory; give a file path"),
])
def test_gradcheck_refuses_bad_options_before_running(capsys, args, message):
    with pytest.raises(SystemExit) as exited:
        main(["gradcheck", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "FAILED" not in err


def test_gradcheck_json_path_gets_its_folder_created(tmp_path, capsys):
    target = tmp_path / "new" / "deeper" / "report.json"
    code = main(["gradcheck", "--model", "xor_sigmoid", "--loss", "mse", "--mode", "eval",
                 "--json", str(target)])
    assert code == 0 and json.loads(target.read_text())
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        main(["gradcheck", "--json", str(tmp_path / "file" / "report.json")])
    assert "argument --json: cannot create the folder" in capsys.readouterr().err


def test_gradcheck_on_a_model_that_cannot_run_as_asked_says_why_not_failed(capsys):
    """The mlp has BatchNorm: at batch 1 in training mode it is refused, not a wrong gradient."""
    code = main(["gradcheck", "--model", "mlp", "--loss", "mse", "--mode", "train",
                 "--batch", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "at least 2 examples" in err and "FAILED" not in err
