"""Search pictures: best-so-far curves per strategy and Optuna's importances."""

import math

import numpy as np
import pytest

import jdnn
from jdnn.multi.result import SearchResult
from jdnn.viz import plot_importances, plot_search_progress


def _result(values, configs, mode="max"):
    """A finished search's result as `jdnn.search` builds it, without training."""
    rows = [{"trial": t, **c, "val_accuracy": v} for t, (c, v) in enumerate(zip(configs, values))]
    return SearchResult(rows, "val_accuracy", mode, configs, [jdnn.History() for _ in rows])


CONFIGS = [{"learning_rate": lr, "dropout": d} for lr, d in
           [(1e-4, 0.1), (1e-3, 0.4), (1e-2, 0.2), (1e-1, 0.3), (3e-3, 0.0), (3e-2, 0.5)]]


def test_best_so_far_follows_the_mode_and_skips_non_finite_values():
    values = [math.nan, 0.5, 0.4, 0.9, 0.7, 0.95]
    np.testing.assert_array_equal(_result(values, CONFIGS).best_so_far(),
                                  [np.nan, 0.5, 0.5, 0.9, 0.9, 0.95])
    np.testing.assert_array_equal(_result(values, CONFIGS, mode="min").best_so_far(),
                                  [np.nan, 0.5, 0.4, 0.4, 0.4, 0.4])


def test_search_progress_draws_the_mean_of_each_strategy(tmp_path):
    a = _result([0.1, 0.5, 0.4, 0.6, 0.6, 0.6], CONFIGS)
    b = _result([0.3, 0.3, 0.7, 0.7, 0.8, 0.9], CONFIGS)
    fig = plot_search_progress({"random": [a, b], "bayes": b}, path=tmp_path / "p.png")
    np.testing.assert_allclose(fig.jdnn_data["random"], [0.2, 0.4, 0.6, 0.65, 0.7, 0.75])
    np.testing.assert_allclose(fig.jdnn_data["bayes"], b.best_so_far())
    assert (tmp_path / "p.png").stat().st_size > 0
    with pytest.raises(ValueError, match="results is empty"):
        plot_search_progress({})
    with pytest.raises(TypeError, match="each strategy maps to a SearchResult"):
        plot_search_progress({"grid": [0.5]})


def test_importances_of_a_random_search_name_what_drove_the_metric():
    pytest.importorskip("optuna")
    rng = np.random.default_rng(0)
    configs = [{"learning_rate": float(10 ** rng.uniform(-4, -1)),
                "dropout": float(rng.uniform(0, 0.5))} for _ in range(30)]
    values = [-abs(np.log10(c["learning_rate"]) + 2.5) + 0.01 * c["dropout"] for c in configs]
    fig = plot_importances(_result(values, configs))
    importances = fig.jdnn_data["importances"]
    assert set(importances) == {"learning_rate", "dropout"}
    assert importances["learning_rate"] > 0.8 > importances["dropout"]
    with pytest.raises(ValueError, match="importances need at least two completed trials"):
        plot_importances(_result([0.5], CONFIGS[:1]))
