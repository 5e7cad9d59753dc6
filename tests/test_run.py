"""`jdnn train`, the main job: defaults, options, run directory, resume, errors."""

import json
import re
import signal

import jax
import numpy as np
import optax
import pytest

import jdnn
from jdnn import checkpoint, data
from jdnn.cli import run
from jdnn.cli import main


def _train(capsys, *args):
    code = main(["train", "--no-progress", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_default_run_reaches_97_percent_and_writes_a_run_directory(tmp_path, capsys):
    code, out, _ = _train(capsys, "--out", str(tmp_path))
    assert code == 0
    assert "mlp on digits" in out
    assert len(re.findall(r"^epoch +\d+ ", out, re.M)) == 30  # per-epoch progress
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", out.splitlines()[-1]).group(1))
    assert accuracy >= 0.97
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["records"]) == 30
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["optimizer"] == "adam" and config["dataset"] == "digits"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    restored = checkpoint.restore(tmp_path / "final.safetensors")
    assert int(restored.step) == 30 * 43  # 1,347 examples in batches of 32
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == [f"epoch-00{e}.safetensors" for e in (28, 29, 30)]  # every epoch, keep 3
    assert summary["stopped_by"] is None and config["checkpoint_every"] == 1


def test_resume_continues_a_run_to_its_total_epochs(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert _train(capsys, "--dataset", "xor", "--batch-size", "16", "--epochs", "2",
                  "--out", str(first))[0] == 0
    # A checkpoint file, into a new directory: --epochs is the total, so 2 more epochs run.
    code, out, _ = _train(capsys, "--epochs", "4", "--out", str(second), "--resume",
                          str(first / "final.safetensors"))
    assert code == 0 and "resumed from" in out and "training epochs 3 to 4" in out
    records = json.loads((second / "history.json").read_text())["records"]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]      # the whole run's history
    config = json.loads((second / "config.json").read_text())
    assert (config["dataset"], config["batch_size"]) == ("xor", 16)  # taken from the run
    assert int(checkpoint.restore(second / "final.safetensors").step) == 4 * 4
    # A run directory, without --out: continued in place, from its newest checkpoint.
    code, out, _ = _train(capsys, "--resume", str(second), "--epochs", "5")
    assert code == 0 and "epoch-0004.safetensors at epoch 4" in out
    records = json.loads((second / "history.json").read_text())["records"]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert int(checkpoint.restore(second / "final.safetensors").step) == 5 * 4
    assert json.loads((second / "summary.json").read_text())["continued"] is True
    # Nothing left to do is an error, not a silent no-op.
    code, _, err = _train(capsys, "--resume", str(second), "--epochs", "5")
    assert code == 2 and "has trained 5 epochs and --epochs 5 is the run's total" in err
    code, _, err = _train(capsys, "--resume", str(tmp_path / "nowhere"))
    assert code == 2 and "no such file or directory" in err


def test_out_never_overwrites_a_file_or_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = _train(capsys, "--out", str(tmp_path / "notes.txt"))
    assert code == 2 and "is an existing file, not a directory" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    taken = tmp_path / "run"
    taken.mkdir()
    (taken / "config.json").write_text("{}")
    code, _, err = _train(capsys, "--out", str(taken))
    assert code == 2 and "already holds a run (config.json)" in err
    assert f"jdnn train --resume {taken}" in err and (taken / "config.json").read_text() == "{}"


def test_a_diverging_run_exits_3_and_keeps_the_last_finite_state(tmp_path, capsys):
    with pytest.warns(RuntimeWarning) as warned:
        code, _, err = _train(capsys, "--dataset", "xor", "--optimizer", "sgd", "--lr", "1e30",
                              "--epochs", "3", "--out", str(tmp_path))
    assert any("non-finite training loss" in str(w.message) for w in warned)
    assert code == 3 and "training diverged: non-finite training loss (nan) in epoch 1" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by"] == "non_finite"
    assert int(checkpoint.restore(tmp_path / "final.safetensors").step) == 0  # epoch 0's


@pytest.mark.parametrize("option,value,message", [
    ("--lr", "nan", "must be a finite number > 0, got 'nan'"),
    ("--lr", "0", "must be a finite number > 0"),
    ("--lr", "-1", "must be a finite number > 0"),
    ("--lr", "inf", "must be a finite number > 0"),
    ("--l1", "-0.1", "must be a finite number >= 0"),
    ("--l2", "nan", "must be a finite number >= 0"),
    ("--dropout", "1", r"must be a rate in \[0, 1\)"),
    ("--dropout", "-0.5", r"must be a rate in \[0, 1\)"),
    ("--epochs", "0", "must be an int >= 1"),
    ("--epochs", "2.5", "must be an int >= 1, got '2.5'"),
    ("--batch-size", "0", "must be an int >= 1"),
    ("--early-stopping", "-1", "must be an int >= 0"),
    ("--checkpoint-every", "0", "must be an int >= 1"),
    ("--keep-checkpoints", "0", "must be an int >= 1"),
    ("--seed", "-3", "must be an int >= 0"),
])
def test_invalid_numeric_options_are_usage_errors(capsys, option, value, message):
    with pytest.raises(SystemExit) as exited:
        main(["train", option, value])
    assert exited.value.code == 2
    assert re.search(f"argument {option}: {message}", capsys.readouterr().err)


def test_config_checks_its_numbers_too():
    with pytest.raises(ValueError, match=r"Config: lr must be a finite number > 0, got nan"):
        run.Config(lr=float("nan"))
    with pytest.raises(ValueError, match=r"Config: epochs must be an int >= 1, got 2.0"):
        run.Config(epochs=2.0)


def test_options_reach_the_model_and_the_config(tmp_path, capsys):
    code, out, _ = _train(capsys, "--optimizer", "momentum", "--lr", "0.05", "--l2", "1e-4",
                          "--dropout", "0.2", "--batch-norm", "--early-stopping", "2",
                          "--epochs", "3", "--batch-size", "64", "--seed", "3",
                          "--out", str(tmp_path))
    assert code == 0
    assert "BatchNorm" in out and "Dropout(rate=0.2)" in out
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["optimizer"], config["lr"], config["l2"], config["batch_size"]) == (
        "momentum", 0.05, 1e-4, 64)
    assert config["early_stopping"] == 2 and config["batch_norm"] is True


@pytest.mark.parametrize("model,dataset", [("cnn", "digits"), ("mlp", "moons"), ("mlp", "xor")])
def test_other_models_and_datasets_run(tmp_path, capsys, model, dataset):
    code, out, _ = _train(capsys, "--model", model, "--dataset", dataset, "--epochs", "2",
                          "--out", str(tmp_path))
    assert code == 0 and f"{model} on {dataset}" in out
    assert (tmp_path / "final.safetensors").exists()
    assert (tmp_path / "boundary.png").exists() == (dataset in ("moons", "xor"))


def test_mnist_reads_idx_files_from_data_dir(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, n in (("train", 64), ("t10k", 32)):
        data.write_idx(folder / f"{prefix}-images-idx3-ubyte.gz",
                       rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        data.write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz",
                       rng.integers(0, 10, n, dtype=np.uint8))
    code, out, _ = _train(capsys, "--dataset", "mnist", "--data-dir", str(folder), "--model",
                          "cnn", "--epochs", "1", "--out", str(tmp_path / "run"))
    assert code == 0 and "64 train, 32 test" in out


def test_bad_combinations_exit_2_with_a_message(tmp_path, capsys):
    code, _, err = _train(capsys, "--dataset", "mnist", "--out", str(tmp_path))
    assert code == 2 and "--data-dir" in err and "download_mnist" in err
    code, _, err = _train(capsys, "--model", "cnn", "--dataset", "moons", "--out", str(tmp_path))
    assert code == 2 and "needs images" in err
    code, _, err = _train(capsys, "--dataset", "mnist", "--data-dir", str(tmp_path / "none"),
                          "--out", str(tmp_path))
    assert code == 2 and "download_mnist" in err


def test_the_cli_turns_on_the_persistent_compilation_cache(tmp_path, monkeypatch):
    from jdnn.cli import enable_compilation_cache

    monkeypatch.setenv("JDNN_CACHE_DIR", str(tmp_path / "cache"))
    previous = jax.config.jax_compilation_cache_dir
    try:
        assert enable_compilation_cache() == str(tmp_path / "cache")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        monkeypatch.setenv("JDNN_CACHE_DIR", "off")
        assert enable_compilation_cache() is None
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)


def test_summary_prints_the_builtin_models(capsys):
    assert main(["summary", "--model", "digits-mlp"]) == 0
    out = capsys.readouterr().out
    assert "1_dense" in out and "Parameters (trainable)" in out
    assert main(["summary", "--json"]) == 0
    tables = json.loads(capsys.readouterr().out)
    assert {"digits-mlp", "digits-cnn", "xor_sigmoid", "mlp", "cnn", "residual"} <= set(tables)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_whose_interrupt_python_swallowed_still_ends_the_run():
    class Lost:   # Python ignores an exception raised in __del__: the interrupt would be lost
        def __del__(self):
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)

    class SignalInAFinalizer(jdnn.Callback):
        def on_epoch_end(self, r):
            if r.epoch == 2:
                Lost()

    (x, y), _ = data.xor(repeat=4)
    with run.graceful_signals() as received:
        _, history = jdnn.fit(jdnn.serial(jdnn.Dense(4), jdnn.Relu(), jdnn.Dense(2)),
                              (x, y.astype(np.int32)), loss=jdnn.losses.softmax_cross_entropy,
                              optimizer=optax.adam(1e-2), epochs=5, batch_size=8, key=0,
                              progress=False,
                              callbacks=[SignalInAFinalizer(), run.StopOnSignal(received)])
    assert received == {"signal": "SIGINT"}
    assert history.stopped_by == "interrupted" and len(history) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # put back


# --- the sequence models and datasets ----------------------------------------------------------


@pytest.mark.parametrize("model,dataset", [("gru", "chars"), ("transformer", "chars"),
                                           ("gru", "adding"), ("transformer", "adding")])
def test_sequence_models_train_on_sequence_datasets(tmp_path, capsys, model, dataset):
    code, out, _ = _train(capsys, "--model", model, "--dataset", dataset, "--epochs", "1",
                          "--out", str(tmp_path))
    assert code == 0 and f"{model} on {dataset}" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert np.isfinite(summary["test_loss"])
    if dataset == "chars":   # next-character prediction: per-step cross-entropy and accuracy
        assert f"examples of shape ({run.CHAR_WINDOW},), " in out
        assert 0 < summary["test_accuracy"] < 1
        assert 0 < summary["test_loss"] < np.log(128)   # below the uniform guess over ASCII
        assert re.search(r"^test accuracy [0-9.]+ \(test loss [0-9.]+\)", out.splitlines()[-1])
    else:                    # the adding problem: a regression, scored by its mse alone
        assert "1 output (regression)" in out
        assert summary["test_accuracy"] is None
        assert 0 < summary["test_loss"] < 1
        assert re.search(r"^test loss [0-9.]+ \(mse\)", out.splitlines()[-1])
    restored = checkpoint.restore(tmp_path / "final.safetensors")
    assert int(restored.step) > 0
    assert (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("model,dataset,message", [
    ("cnn", "chars", r"--model cnn needs images \(digits, mnist, fashion-mnist\); for --dataset "
                     r"chars use --model gru or transformer"),
    ("mlp", "adding", r"--model mlp needs vectors or images .*; for --dataset adding use --model "
                      r"gru or transformer"),
    ("gru", "digits", r"--model gru needs sequences \(chars, adding\); for --dataset digits use "
                      r"--model mlp or cnn"),
    ("transformer", "moons", r"--model transformer needs sequences .*; for --dataset moons use "
                             r"--model mlp$"),
], ids=["cnn-chars", "mlp-adding", "gru-digits", "transformer-moons"])
def test_models_that_cannot_read_a_dataset_are_refused(tmp_path, capsys, model, dataset,
                                                       message):
    code, out, err = _train(capsys, "--model", model, "--dataset", dataset,
                            "--out", str(tmp_path / "run"))
    assert code == 2 and re.search(message, err.strip()), err
    assert not (tmp_path / "run").exists()   # refused before anything is written
    with pytest.raises(ValueError, match=message):
        run.check_fits(model, dataset)


def test_batch_norm_is_refused_for_the_sequence_models(tmp_path, capsys):
    code, _, err = _train(capsys, "--model", "gru", "--dataset", "adding", "--batch-norm",
                          "--out", str(tmp_path / "run"))
    assert code == 2 and "--batch-norm applies to --model mlp and cnn" in err


def test_step_accuracy_counts_steps_within_examples_and_masks_examples():
    logits = jax.nn.one_hot(np.array([[1, 2, 0, 0], [3, 3, 3, 3]]), 4)   # (2, 4 steps, 4)
    labels = np.array([[1, 2, 3, 3], [0, 0, 0, 3]])
    assert float(run.step_accuracy(logits, labels)) == pytest.approx((0.5 + 0.25) / 2)
    assert float(run.step_accuracy(logits, labels, np.array([True, False]))) == 0.5


def test_without_a_model_a_sequence_dataset_gets_one_that_reads_it():
    from jdnn.cli.run import resolve_config

    assert resolve_config({"dataset": "chars"}).model == "gru"
    assert resolve_config({"dataset": "adding"}).model == "gru"
    assert resolve_config({"dataset": "digits"}).model == "mlp"
    assert resolve_config({"dataset": "chars", "model": "transformer"}).model == "transformer"
