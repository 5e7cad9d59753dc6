"""The Bayesian search row of the vmap section (`bayes_end_to_end`): both sides train through
the public API as documented, the target gets its verdict, and without Optuna the part is
skipped with the reason instead of failing the run. Never timing assertions."""

import sys

import numpy as np
import pytest

from benchmarks.suite import targets
from benchmarks.tests.helpers import spy_calls, tiny_context

def test_bayes_sides_train_with_the_public_api(monkeypatch):
    optuna = pytest.importorskip("optuna")
    import jax

    import jdnn
    from benchmarks.suite import fits

    calls = spy_calls(monkeypatch, search=(jdnn, "search"), fit=(jdnn, "fit"),
                      create_study=(optuna, "create_study"))
    (x, y), (tx, ty) = jdnn.data.digits()
    data = (x[:64], y[:64])
    vectorized, sequential = fits.bayes_sides(data, (tx[:32], ty[:32]),
                                              fits.Plan(epochs=1, rounds=1, fits=2))
    vectorized()
    sequential([0, 15])
    assert len(calls["search"]) == 1 and len(calls["fit"]) == 2   # each side: the public API

    # The vectorized side: 16 TPE trials asked in rounds of 8, every one trained and told.
    _, kwargs, result = calls["search"][0]
    assert (kwargs["strategy"], kwargs["trials"], kwargs["batch"], kwargs["sampler"]) == (
        "bayes", fits.MEMBERS, fits.BAYES_ROUND, "tpe")
    assert len(result.rows) == fits.MEMBERS
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in result.study.trials)
    for t in range(fits.MEMBERS):
        history = result.history[t]
        assert len(history) == 1 and np.isfinite(history.records[0]["val_loss"]), t
        assert 1e-4 <= result.configs[t]["learning_rate"] <= 1e-1
        assert 0.0 <= result.configs[t]["dropout"] <= 0.5

    # The sequential side: a study of as many trials as asked, with the search's TPE seed, so
    # its first (random start-up) trial is the search's trial 0, and fit trains it the same.
    *_, study = calls["create_study"][-1]
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert study.trials[0].params == pytest.approx(result.configs[0])
    _, _, (fitted, fit_history) = calls["fit"][0]
    assert int(fitted.step) == 2 and len(fit_history) == 1
    searched = result.train_state(0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 searched.params, fitted.params)
    assert fit_history.records[0]["val_loss"] == pytest.approx(
        result.history[0].records[0]["val_loss"], rel=1e-4)
    assert study.trials[0].value == max(fit_history["val_accuracy"])   # the best epoch's


def test_bayes_target_gets_a_verdict_from_the_ratio():
    from benchmarks.suite import vectorized

    def verdict(ratio=None, **why):
        results = {} if ratio is None else {"bayes_end_to_end": {"sequential_scale": 1, "sides": {
            "sequential": {"ratio": {"median": ratio, "q1": ratio, "q3": ratio}}}}}
        found = {t["key"]: t for t in vectorized.targets_for(results, **why)}
        return found["bayes_vs_sequential"]

    assert verdict(6.0)["status"] == targets.PASS
    assert verdict(vectorized.SPEEDUP - 0.5)["status"] == targets.MISS
    assert "Optuna" in verdict(6.0)["target"] and f">= {vectorized.SPEEDUP:g}x" in verdict(6.0)[
        "target"]
    skipped = verdict(skipped={"bayes_end_to_end": "optuna is not installed"})
    assert skipped["status"] == targets.SKIP
    assert skipped["note"] == "skipped: optuna is not installed"
    assert "boom" in verdict(failed={"bayes_end_to_end": "boom"})["note"]


def test_without_optuna_the_part_is_skipped_not_failed(monkeypatch, tmp_path):
    from benchmarks.suite import report, vectorized

    monkeypatch.setitem(sys.modules, "optuna", None)   # `import optuna` raises ImportError
    real = vectorized.parts
    monkeypatch.setattr(vectorized, "parts",
                        lambda ctx: {"bayes_end_to_end": real(ctx)["bayes_end_to_end"]})
    payload = vectorized.run(tiny_context())
    assert payload["failed"] == {} and payload["results"] == {}
    assert "optuna is not installed" in payload["skipped"]["bayes_end_to_end"]
    (target,) = [t for t in payload["targets"] if t["key"] == "bayes_vs_sequential"]
    assert target["status"] == targets.SKIP and "optuna is not installed" in target["note"]

    report.write_result(tmp_path, "vectorized", {"name": "vectorized", "mode": "quick",
                                                 "seconds": 1.0, "machine": {
                                                     "cpu_count": 2, "load_average": None},
                                                 **payload})
    md = report.write_report(tmp_path).read_text()
    assert "Bayesian search" in md and "optuna is not installed" in md
