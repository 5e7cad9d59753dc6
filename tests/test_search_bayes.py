"""Bayesian search: Optuna's ask-and-tell on a toy objective, the round trip through `search`
(each trial's told value is its row's metric, its state scores what its row says), pruning,
early stopping and refilled slots, reproducibility, one compiled program, clear errors."""

import sys

import jax
import numpy as np
import optax
import pytest

import jdnn
from jdnn.multi import bayes
from tests.blobs import blobs
from jdnn.multi.tuning import search
from tests.compiles import Compiles

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)

CE = jdnn.losses.softmax_cross_entropy


TRAIN, TEST = blobs(70, 0), blobs(40, 1)
SPACE = {"learning_rate": ("log_uniform", 1e-3, 3e-1), "momentum": ("uniform", 0.0, 0.9),
         "dropout": ("uniform", 0.0, 0.5)}
OPTIONS = dict(loss=CE, epochs=3, batch_size=16, validation_data=TEST, optimizer="sgd",
               progress=False)


def model_fn(width=8):
    return jdnn.serial(jdnn.Dense(width), jdnn.Relu(), jdnn.Dropout(0.0, rate_in_state=True),
                       jdnn.Dense(3))


# --- Optuna's side: the toy objective ---------------------------------------------------------

TOY = {"x": ("uniform", -5.0, 5.0), "y": ("uniform", -5.0, 5.0)}


def _trials_to_reach(sampler, seed, budget=40, batch=8, threshold=0.25):
    """Trials a sampler needs, asked `batch` at a time, until `(x-1)^2 + (y+2)^2 < threshold`
    (the optimum is 0 at (1, -2)); `budget + 1` if it never gets there."""
    asker = bayes.Asker(optuna, TOY, mode="min", sampler=sampler, pruner=None, epochs=1,
                        seed=seed, batch=batch)
    used, best = 0, np.inf
    while used < budget:
        for trial, config in [asker.ask() for _ in range(batch)]:
            used += 1
            value = (config["x"] - 1) ** 2 + (config["y"] + 2) ** 2
            asker.tell(trial, value)
            best = min(best, value)
            if best < threshold:
                return used
    return budget + 1


def test_tpe_reaches_a_known_optimum_in_fewer_trials_than_random():
    # What it showed (optuna 5.1, seeds 0-19, batches of 8, TPE random for its first 8): TPE
    # needed 29.0 trials on average, random search 37.6; 17 of 20 random runs and 3 of 20 TPE
    # runs did not get there within 40 trials (seeds 10-39: 25.3 against 36.4).
    tpe = [_trials_to_reach("tpe", seed) for seed in range(20)]
    rand = [_trials_to_reach("random", seed) for seed in range(20)]
    assert np.mean(tpe) < np.mean(rand), (tpe, rand)
    assert tpe == [_trials_to_reach("tpe", seed) for seed in range(20)]  # seeded: reproducible


def test_gp_reaches_the_optimum_before_random_search():
    pytest.importorskip("torch")
    # What it showed: 11 trials for the GP sampler (seed 0), 25 for random search.
    assert _trials_to_reach("gp", 0, budget=24) < _trials_to_reach("random", 0, budget=24)


def test_the_space_becomes_optuna_distributions():
    dists, fixed, decode = bayes.distributions(optuna, {
        "learning_rate": ("log_uniform", 1e-4, 1e-1), "width": ("int_uniform", 7.5, 64),
        "optimizer": [optax.adam, optax.sgd], "l2": [0.0, 1e-4], "batch_size": [32],
        "dropout": 0.1})
    assert dists["learning_rate"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert dists["width"] == optuna.distributions.IntDistribution(8, 64)
    assert dists["l2"].choices == (0.0, 1e-4)
    assert fixed == {"batch_size": 32, "dropout": 0.1}
    assert set(dists["optimizer"].choices) == {"adam", "sgd"}   # labels Optuna can store ...
    assert decode["optimizer"]["adam"] is optax.adam            # ... read back as the factory


# --- search(strategy="bayes") -----------------------------------------------------------------

def test_bayes_round_trip_refills_slots_in_one_program():
    with Compiles() as compiles:
        result = search(model_fn, TRAIN, SPACE, strategy="bayes", trials=7, batch=3, key=0,
                        **OPTIONS)
    # 7 trials in slots of 3: the one program compiled once, refilled slots included.
    assert sum("chunk" in name for name in compiles.names) == 1, compiles.names
    assert sum("_place" in name for name in compiles.names) <= 1, compiles.names  # refills
    assert [row["trial"] for row in sorted(result.rows, key=lambda r: r["trial"])] == \
        list(range(7))
    study = result.study
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 7
    for row in result.rows:
        frozen = study.trials[row["trial"]]
        assert frozen.value == pytest.approx(row["val_accuracy"])   # what was told
        assert frozen.params == result.configs[row["trial"]]       # what was asked
        # The state kept for the trial scores what its row says (its best epoch's).
        scores = jdnn.evaluate(result.model(row["trial"]), result.train_state(row["trial"]),
                               TEST, loss=CE)
        assert scores["accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-6)
        assert frozen.intermediate_values == {}                   # no pruner: no reports
    values = [r["val_accuracy"] for r in result.rows]
    assert values == sorted(values, reverse=True)


def test_same_key_same_trials_other_key_other_trials():
    def run(key):
        return search(model_fn, TRAIN, SPACE, strategy="bayes", trials=4, batch=2, key=key,
                      **OPTIONS)

    first, again, other = run(1), run(1), run(2)
    assert first.rows == again.rows and first.configs == again.configs
    assert first.configs != other.configs


def test_pruned_and_early_stopped_members_free_their_slots():
    pruner = optuna.pruners.ThresholdPruner(lower=2.0, n_warmup_steps=2)  # prunes all at epoch 2
    result = search(model_fn, TRAIN, SPACE, strategy="bayes", trials=5, batch=2, key=0,
                    pruner=pruner, **{**OPTIONS, "epochs": 4})
    assert [r["stopped"] for r in result.rows] == ["pruned"] * 5
    assert {r["epochs"] for r in result.rows} == {2}
    assert [t.state for t in result.study.trials] == [optuna.trial.TrialState.PRUNED] * 5
    assert all(len(t.intermediate_values) == 2 for t in result.study.trials)
    assert "pruned by ThresholdPruner at epoch 2" in result.history[0].stop_reason
    # Without refilling, rounds of 2 still try every trial.
    frozen = search(model_fn, TRAIN, SPACE, strategy="bayes", trials=5, batch=2, key=0,
                    pruner=pruner, refill=False, **{**OPTIONS, "epochs": 4})
    assert len(frozen.rows) == 5 and {r["stopped"] for r in frozen.rows} == {"pruned"}

    # A learning rate too small to change the validation accuracy: patience=1 stops each
    # trial after its second epoch, and the next trial takes the slot.
    stuck = search(model_fn, TRAIN, {"learning_rate": ("log_uniform", 1e-9, 1e-8)},
                   strategy="bayes", trials=3, batch=2, key=0, patience=1,
                   **{**OPTIONS, "epochs": 6})
    assert [r["stopped"] for r in stuck.rows] == ["early_stopping"] * 3
    assert {r["epochs"] for r in stuck.rows} == {2} and {r["epoch"] for r in stuck.rows} == {1}


def test_structures_train_as_their_own_programs():
    space = {**SPACE, "width": [4, 8]}
    result = search(model_fn, TRAIN, space, strategy="bayes", trials=6, batch=3, key=0,
                    **OPTIONS)
    assert len(result.rows) == 6
    for row in result.rows:
        kernel = result.train_state(row["trial"]).params["0_dense"]["w"]
        assert kernel.shape == (6, result.configs[row["trial"]]["width"])


def test_bayes_errors_are_clear(monkeypatch):
    options = dict(OPTIONS, key=0, strategy="bayes", trials=2)
    with pytest.raises(ValueError, match="sampler must be one of"):
        search(model_fn, TRAIN, SPACE, sampler="tpee", **options)
    with pytest.raises(ValueError, match="pruner must be None, one of"):
        search(model_fn, TRAIN, SPACE, pruner="medain", **options)
    with pytest.raises(ValueError, match="learning_rate must be a float > 0"):
        search(model_fn, TRAIN, {"learning_rate": ("uniform", -1.0, 1.0)}, **options)
    with pytest.raises(ValueError, match="batch is for strategy='bayes'"):
        search(model_fn, TRAIN, {"learning_rate": [0.1]}, batch=2, **{**OPTIONS, "key": 0})
    with pytest.raises(ValueError, match="needs trials="):
        search(model_fn, TRAIN, SPACE, **{**options, "trials": None})
    monkeypatch.setattr(bayes.importlib.util, "find_spec",
                        lambda name: None if name == "torch" else object())
    with pytest.raises(ImportError, match="sampler='gp' is Optuna's GPSampler, which needs "
                                          "torch"):
        search(model_fn, TRAIN, SPACE, sampler="gp", **options)
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r"needs Optuna, jdnn's optional extra \[search\]"):
        search(model_fn, TRAIN, SPACE, **options)


def test_grid_and_random_results_have_no_study():
    result = search(model_fn, TRAIN, {"learning_rate": [0.01, 0.1]}, key=0, **OPTIONS)
    assert result.study is None
    assert jax.tree.leaves(result.best_train_state)
