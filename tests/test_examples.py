"""The examples run end to end, briefly, and print what they promise.

Each test runs one example as a subprocess (`python examples/X.py` with few epochs) and checks
its output. Most of each run is importing JAX and compiling, so the tests gain from running on
every core (`pytest -n auto`, the project's default).
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jdnn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT_S = 600


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    """Runs `examples/{script}` with `args` in the repository root; returns the finished run."""
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=EXAMPLES.parent,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def output_of(script: str, *args: str) -> str:
    """The stdout of a run that must succeed."""
    result = run(script, *args)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def fake_mnist(directory: Path) -> Path:
    """A tiny MNIST-shaped directory: 64 train and 32 test random 28x28 images, gzipped IDX."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 64), ("t10k", 32)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        jdnn.data.write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        jdnn.data.write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


def number(output: str, label: str) -> float:
    """The value printed on the line `label: value`, checked to be an accuracy."""
    match = re.search(rf"^{label}: ([0-9.]+)", output, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{output}"
    value = float(match.group(1))
    assert 0.0 <= value <= 1.0, f"{label} = {value}"
    return value


def test_xor():
    assert "accuracy 100%" in output_of("xor.py")


def test_quickstart():
    output = output_of("quickstart.py")
    assert re.search(r"^epoch 15: .*test accuracy [0-9.]+%$", output, re.MULTILINE), output
    assert "predicted:" in output


def test_gradcheck():
    # The correct model passes (the script asserts it); the buggy tanh is caught.
    assert "failing parameters: ['0_dense/b', '0_dense/w']" in output_of("gradcheck.py")


def test_custom_layer(tmp_path):
    output = output_of("custom_layer.py", "--epochs", "2", "--out", str(tmp_path))
    assert output.count("gradient check (float64): OK") == 2, output
    assert "broken twin caught: True, failing parameters: ['1_brokenswish/beta']" in output
    assert re.search(r"^1_swish +Swish +\(1, 32\) +32 +0 +128$", output, re.MULTILINE), output
    before, after = number(output, "accuracy before training"), number(output, "test accuracy")
    assert after > before + 0.3
    assert (tmp_path / "custom_layer.png").stat().st_size > 0
    assert "predictions equal after restore: True" in output
    assert "huber, finite differences only: ok True" in output

def test_digits_mlp():
    output = output_of("digits_mlp.py", "--epochs", "2", "--seed", "1")
    assert len(re.findall(r"^epoch +\d+: loss .* val_accuracy ", output, re.MULTILINE)) == 2
    number(output, "test accuracy")


def test_digits_cnn_augment():
    output = output_of("digits_cnn.py", "--epochs", "1", "--augment")
    assert len(re.findall(r"^epoch +\d+: ", output, re.MULTILINE)) == 1
    number(output, "test accuracy")


def test_regularization():
    output = output_of("regularization.py", "--epochs", "2", "--train-size", "100")
    for method in ("none", "L2", "dropout", "batch norm", "early stopping"):
        match = re.search(rf"^{method} +([0-9.]+) +([0-9.]+) +(-?[0-9.]+) +(\d+)$", output,
                          re.MULTILINE)
        assert match, f"no row for {method!r} in:\n{output}"
        train, test, gap, epochs = map(float, match.groups())
        assert 0 <= train <= 1 and 0 <= test <= 1
        assert gap == pytest.approx(train - test, abs=2e-3)
        assert 1 <= epochs <= 2


def test_transfer_learning():
    output = output_of("transfer_learning.py", "--epochs", "1", "--pretrain-epochs", "1",
                       "--per-class", "5")
    assert "body unchanged by fine-tuning: True" in output
    # The old head was left in the file: only the body was asked for.
    assert re.search(r"^unused from the checkpoint 2: .*params/1_dense/w", output, re.MULTILINE)
    number(output, "fine-tuned accuracy")
    number(output, "from-scratch accuracy")


def test_mnist(tmp_path):
    data = fake_mnist(tmp_path / "mnist")
    output = output_of("mnist.py", "--data-dir", str(data), "--epochs", "1", "--subset", "40")
    assert "train (36, 28, 28, 1), validation (4, 28, 28, 1), test (32, 28, 28, 1)" in output
    number(output, "test accuracy")


def test_mnist_without_data(tmp_path):
    result = run("mnist.py", "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "jdnn.data.download_mnist(" in result.stderr
    assert "test accuracy" not in result.stdout


# --- sequence examples -------------------------------------------------------------------------


def finite(output: str, pattern: str) -> list[float]:
    """The numbers the first line matching `pattern` (a regex with groups) captures, each
    checked to be finite."""
    match = re.search(pattern, output, re.MULTILINE)
    assert match, f"no line matching {pattern!r} in:\n{output}"
    values = [float(v) for v in match.groups()]
    assert all(np.isfinite(values)), f"{match.group(0)!r}"
    return values


def test_char_lm():
    output = output_of("char_lm.py", "--epochs", "1", "--chars", "20000", "--length", "32")
    (uniform,) = finite(output, r"^uniform bits per char: ([0-9.]+)$")
    (unigram,) = finite(output, r"^unigram bits per char: ([0-9.]+)$")
    assert 0 < unigram < uniform
    for name in ("gru", "transformer"):
        (bits,) = finite(output, rf"^{name} bits per char: ([0-9.]+)$")
        assert 0 < bits < uniform, f"{name}: {bits} bits, no better than uniform ({uniform})"
        sample = re.search(rf"^{name} sample .*:\n    def ", output, re.MULTILINE)
        assert sample, f"no {name} sample starting from the prompt in:\n{output}"


def test_long_range(tmp_path):
    """One length keeps it short: the per-length loop is the same code for every length."""
    output = output_of("long_range.py", "--lengths", "8", "--epochs", "1", "--n", "200",
                       "--out", str(tmp_path))
    mses = finite(output, r"^length 8: simple_rnn ([0-9.]+) gru ([0-9.]+) lstm ([0-9.]+)")
    assert all(0 <= m < 5 for m in mses), mses
    assert re.search(r"^at length 8 SimpleRNN stays near the baseline while GRU and LSTM learn: "
                     r"(yes|no, not at these settings)$", output, re.MULTILINE), output
    for name in ("simple_rnn", "gru", "lstm"):
        finite(output, rf"^{name}: gradient norm at step 1 / at step 8: ([0-9.e+-]+) at "
                       rf"initialization, ([0-9.e+-]+) after 1 epochs$")
    (mse,) = finite(output, r"^variable lengths gru: ([0-9.]+)$")
    assert 0 <= mse < 5
    assert (tmp_path / "long_range.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- after training ----------------------------------------------------------------------------


def test_distill_digits():
    output = output_of("distill_digits.py", "--epochs", "2")
    first, last = finite(output, r"^distillation loss: first epoch ([0-9.]+), last ([0-9.]+)$")
    assert last < first
    assert re.search(r"^teacher [0-9,]+ params, student [0-9,]+ params \([0-9]+x fewer\)$",
                     output, re.MULTILINE), output
    for who in ("teacher", "student \\(distilled\\)", "student \\(labels only\\)"):
        assert 0.1 < number(output, f"{who} accuracy") <= 1.0


def test_explain_digits(tmp_path):
    output = output_of("explain_digits.py", "--epochs", "3", "--out", str(tmp_path))
    assert number(output, "test accuracy") > 0.9
    # The image made to excite a class's logit is read as that class (all ten at 4 epochs; at
    # 3, on jax 0.10.2, the 8 reads as a 4).
    own = re.search(r"^maximized classes: .* \(([0-9]+) of 10 as their own class\)", output,
                    re.MULTILINE)
    assert own and int(own.group(1)) >= 8, output
    for name in ("attributions.png", "classes.png", "units.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- hyper-parameter search --------------------------------------------------------------------


def test_bayes_search(tmp_path):
    pytest.importorskip("optuna")
    output = output_of("bayes_search.py", "--seeds", "1", "--trials", "4", "--epochs", "1",
                       "--out", str(tmp_path))
    progress = re.findall(r"^ +(\d+) +([0-9.]+) +([0-9.]+) +([0-9.]+)$", output, re.MULTILINE)
    assert [int(row[0]) for row in progress] == [1, 2, 3, 4], output
    for strategy in ("grid", "random", "bayes"):
        assert number(output, f"best {strategy}") > 0.1   # better than chance after an epoch
    for column in list(zip(*progress))[1:]:
        values = [float(v) for v in column]
        assert values == sorted(values), f"the best so far decreased: {values}"
    (ratio,) = finite(output, r"^vectorized vs sequential: ([0-9.]+)x$")
    assert ratio > 0
    for side in ("vectorized", "sequential"):
        seconds, best = finite(output, rf"^{side} \(.*\): ([0-9.]+) s, best ([0-9.]+)$")
        assert seconds > 0 and 0 <= best <= 1
    for name in ("bayes_search.png", "importances.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
