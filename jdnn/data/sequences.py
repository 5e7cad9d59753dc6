"""Classic synthetic sequence tasks with a length knob: they test what a recurrent network can
remember over time, and need no download.

- `adding_problem` (Hochreiter & Schmidhuber 1997): two marked numbers somewhere in a long
  sequence; the target is their sum. A plain RNN's gradient vanishes over long gaps, so it
  stays at the trivial answer (predicting 1, mean squared error ~0.167) where GRU and LSTM
  learn it.
- `copy_task`: a string of symbols, a delay, a delimiter; the network must reproduce the string
  after the delimiter.
"""

from __future__ import annotations

import numpy as np

from jdnn.data.datasets import Split, _check_fraction, _check_int
from jdnn.padded import Padded


def _split(fn, x, y, test_fraction):
    n_test = max(1, int(round(len(y) * test_fraction)))
    if n_test >= len(y):
        raise ValueError(f"{fn}: n is too small to hold out a test set; use a larger n")
    train, test = slice(n_test, None), slice(0, n_test)
    return (x[train], y[train]), (x[test], y[test])   # a Padded slices both of its arrays


def adding_problem(n: int = 2000, length: int = 50, *, variable: bool = False,
                   test_fraction: float = 0.2, seed: int = 0) -> Split:
    """The adding problem: sum the two marked numbers of a sequence.

    Each example is `length` steps of two features: a number drawn uniformly from `[0, 1)` and
    a marker, 1 at exactly two steps (one in the first half of the sequence, one in the second)
    and 0 elsewhere. The target is the sum of the two marked numbers. Predicting 1 always gives
    a mean squared error of ~0.167: that is the bar a model must beat.

    With `variable=True` each example gets its own length, drawn from `[length // 2, length]`,
    and `x` is a `jdnn.Padded` batch padded to `length` (markers only at real steps; the padding
    holds noise, which a model that respects the lengths never reads).

    Args:
        n: examples in all, >= 2 (train and test together).
        length: steps per sequence (the longest one with `variable`), >= 2.
        variable: give the sequences different lengths (a `Padded` x).
        test_fraction: the share held out for testing, in `(0, 1)`.
        seed: the NumPy seed; the same seed gives the same data.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: x float32 `(N, length, 2)` (or a `Padded`
        of those with int32 lengths), y float32 `(N, 1)`.

    Examples:
        >>> (x, y), (x_test, y_test) = jdnn.data.adding_problem(n=1000, length=100)
    """
    n = _check_int("adding_problem", "n", n, 2)
    length = _check_int("adding_problem", "length", length, 2)
    test_fraction = _check_fraction("adding_problem", test_fraction)
    rng = np.random.default_rng(seed)
    lengths = (rng.integers(length // 2, length + 1, size=n) if variable
               else np.full(n, length)).astype(np.int32)
    lengths = np.maximum(lengths, 2)
    numbers = rng.random((n, length)).astype(np.float32)
    first = (rng.random(n) * (lengths // 2)).astype(int)
    second = lengths // 2 + (rng.random(n) * (lengths - lengths // 2)).astype(int)
    markers = np.zeros((n, length), np.float32)
    rows = np.arange(n)
    markers[rows, first] = markers[rows, second] = 1.0
    x = np.stack([numbers, markers], axis=-1)
    y = (numbers[rows, first] + numbers[rows, second])[:, None].astype(np.float32)
    return _split("adding_problem", Padded(x, lengths) if variable else x, y, test_fraction)


def copy_task(n: int = 2000, length: int = 10, *, delay: int = 10, symbols: int = 8,
              test_fraction: float = 0.2, seed: int = 0) -> Split:
    """The copy task: remember a string of symbols over a delay, then write it out.

    Ids: `0` is blank, `1 .. symbols` are the symbols, `symbols + 1` the delimiter. An input is
    `length` random symbols, `delay` blanks, the delimiter, then `length - 1` blanks; its target
    is blank everywhere except the last `length` steps, which hold the symbols in order. A model
    that ignores the past scores at most the blanks (a per-step accuracy of `1 - length / T`).

    Args:
        n: examples in all, >= 2.
        length: symbols to copy, >= 1.
        delay: blank steps between the symbols and the delimiter, >= 0.
        symbols: the alphabet's size, >= 1.
        test_fraction: the share held out for testing, in `(0, 1)`.
        seed: the NumPy seed.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: x and y int32 `(N, T)`,
        `T = 2 * length + delay`; the vocabulary has `symbols + 2` ids.

    Examples:
        >>> (x, y), _ = jdnn.data.copy_task(n=1000, length=5, delay=20)   # x, y (800, 30)
    """
    n = _check_int("copy_task", "n", n, 2)
    length = _check_int("copy_task", "length", length, 1)
    delay = _check_int("copy_task", "delay", delay, 0)
    symbols = _check_int("copy_task", "symbols", symbols, 1)
    test_fraction = _check_fraction("copy_task", test_fraction)
    rng = np.random.default_rng(seed)
    steps = 2 * length + delay
    string = rng.integers(1, symbols + 1, size=(n, length)).astype(np.int32)
    x = np.zeros((n, steps), np.int32)
    y = np.zeros((n, steps), np.int32)
    x[:, :length] = string
    x[:, length + delay] = symbols + 1
    y[:, steps - length:] = string
    return _split("copy_task", x, y, test_fraction)
