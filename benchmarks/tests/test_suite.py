"""Tests of the benchmark harness itself (benchmarks.suite): never timing assertions.

The interleaving order, the statistics, ratios within rounds, the FLOP counts, that every peer
trains the same model (same loss and gradients from the same parameters), that a missing peer
is reported as skipped, and that the report writer produces valid JSON and markdown.
"""

import json
import math
import sys

import numpy as np
import pytest

import jdnn
from benchmarks.suite import compare, report, roofline, targets, timing, workloads
from benchmarks.suite.sides import SIDES, Skipped, require
from benchmarks.suite.sides.equinox_side import from_channel_first, to_channel_first
from benchmarks.tests.helpers import spy_calls, tiny_context

# --- timing -----------------------------------------------------------------------------------


class FakeClock:
    """A clock that each variant advances by a known amount, so timings are exact."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _variants(log, clock, costs, steps=1):
    def make(name):
        def run():
            log.append(name)
            clock.now += costs[name][len([n for n in log if n == name]) - 1]

        return timing.Variant(name, run, warm=lambda: log.append(f"warm {name}"), steps=steps)

    return [make(name) for name in costs]


def test_interleave_runs_variants_in_rounds_a_b_c_a_b_c():
    log, clock = [], FakeClock()
    costs = {name: [1.0] * 2 for name in "ABC"}
    timing.interleave(_variants(log, clock, costs), 2, pause_s=0, warm=False, shuffle=False,
                      clock=clock)
    assert log == ["A", "B", "C", "A", "B", "C"]


def test_interleave_shuffles_each_round_so_no_variant_always_follows_the_same_one():
    log, clock = [], FakeClock()
    costs = {name: [1.0] * 12 for name in "ABCD"}
    timing.interleave(_variants(log, clock, costs), 12, pause_s=0, warm=False, clock=clock)
    rounds = [log[i:i + 4] for i in range(0, len(log), 4)]
    assert all(sorted(r) == list("ABCD") for r in rounds)     # each variant once per round
    before = {name: {r[r.index(name) - 1] for r in rounds if r.index(name) > 0} for name in "ABCD"}
    assert all(len(seen) >= 2 for seen in before.values())    # predecessors vary
    assert timing.schedule(4, 12) == timing.schedule(4, 12)   # seeded: reproducible


def test_interleave_pauses_and_warms_before_every_timed_chunk():
    log, clock, pauses = [], FakeClock(), []
    costs = {name: [1.0] for name in "AB"}
    timing.interleave(_variants(log, clock, costs), 1, pause_s=0.5, clock=clock,
                      sleep=pauses.append, shuffle=False)
    assert log == ["warm A", "A", "warm B", "B"]
    assert pauses == [0.5, 0.5]


def test_interleave_records_seconds_per_step_in_round_order():
    log, clock = [], FakeClock()
    costs = {"A": [4.0, 8.0], "B": [2.0, 6.0]}
    times = timing.interleave(_variants(log, clock, costs, steps=2), 2, pause_s=0, warm=False,
                              clock=clock)
    assert times == {"A": [2.0, 4.0], "B": [1.0, 3.0]}


def test_interleave_rejects_duplicate_names():
    variant = timing.Variant("A", lambda: None)
    with pytest.raises(ValueError, match="unique"):
        timing.interleave([variant, variant], 1, pause_s=0)


def test_summarize_median_and_interquartile_range():
    s = timing.summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s.median, s.q1, s.q3, s.iqr, s.min, s.max, s.n) == (3.0, 2.0, 4.0, 2.0, 1.0, 100.0, 5)
    even = timing.summarize([1.0, 2.0, 3.0, 4.0])  # linear interpolation between order stats
    assert (even.median, even.q1, even.q3) == (2.5, 1.75, 3.25)
    with pytest.raises(ValueError):
        timing.summarize([])


def test_ratios_are_taken_within_each_round():
    # A slow round (load) hits both sides: per-round ratios stay at 2, while the ratio of the
    # medians would mix rounds.
    times = {"jdnn": [1.0, 10.0, 1.2], "peer": [2.0, 20.0, 2.4]}
    assert timing.ratios(times, "jdnn")["peer"] == pytest.approx([2.0, 2.0, 2.0])
    table = timing.table(times, "jdnn")
    assert table["peer"]["ratio"]["median"] == pytest.approx(2.0)
    assert table["peer"]["ratio"]["iqr"] == pytest.approx(0.0)
    assert table["jdnn"]["seconds"]["median"] == pytest.approx(1.2)


def test_compile_time_and_calibration():
    assert timing.compile_seconds(1.5, 0.25) == 1.25
    assert timing.compile_seconds(0.1, 0.25) == 0.0
    assert timing.calibrate(0.01, 0.05) == 5
    assert timing.calibrate(0.01, 0.05, quantum=4) == 20  # whole epochs of 4 steps
    assert timing.calibrate(1.0, 0.05, quantum=4) == 4  # at least one quantum
    assert timing.calibrate(1e-9, 10.0, most=100) == 100


# --- FLOPs by hand ----------------------------------------------------------------------------


def test_mlp_flops_counted_by_hand():
    b = 32
    first, second, third = 784 * 512, 512 * 512, 512 * 10
    # forward 2*b*m per layer, weight gradient 2*b*m, input gradient 2*b*m except layer 1.
    expected = 2 * b * first * 2 + 2 * b * (second + third) * 3
    assert roofline.step_flops(workloads.mlp(b)) == expected == 102_694_912


def test_cnn_flops_counted_by_hand():
    b = 64
    conv1 = 28 * 28 * 3 * 3 * 1 * 32  # multiply-adds per example
    conv2 = 14 * 14 * 3 * 3 * 32 * 64
    dense1, dense2 = 7 * 7 * 64 * 128, 128 * 10
    expected = 2 * b * conv1 * 2 + 2 * b * (conv2 + dense1 + dense2) * 3
    assert roofline.step_flops(workloads.cnn(b)) == expected


def test_roofline_fractions():
    w = workloads.mlp(1024)
    flops = roofline.step_flops(w)
    got = roofline.achieved(w, flops / 50e9, gemm_gflops=100.0, bandwidth_gbs=10.0)
    assert got["gflops"] == pytest.approx(50.0)
    assert got["fraction_of_gemm_peak"] == pytest.approx(0.5)
    assert got["bound"] == "compute"  # ~75 FLOP/byte against a ridge of 10
    assert roofline.parameter_count(workloads.plan(w)) == 785 * 512 + 513 * 512 + 513 * 10


# --- every side trains the same model ---------------------------------------------------------


def _tiny_mlp():
    return workloads.Workload("tiny", "mlp", hidden=(8, 6), example_shape=(12,), classes=5,
                              batch=4, batches=2)


def _tiny_xor():
    return workloads.xor(batch=4, batches=2)


def _tiny_cnn():
    return workloads.cnn(2)


_EXPECTED = {}


def _problem(make):
    """One problem per workload maker, with jdnn's loss and gradients computed once."""
    if make not in _EXPECTED:
        problem = workloads.make_problem(make())
        _EXPECTED[make] = problem, _loss_and_grads("jdnn_step", problem)
    return _EXPECTED[make]


def _loss_and_grads(side, problem):
    x, y = problem.batch(0)
    try:
        return SIDES[side].loss_and_grads(problem, problem.params, x, y)
    except Skipped as reason:
        pytest.skip(str(reason))


def _max_rel(a, b):
    out = 0.0
    for layer, leaves in b.items():
        for leaf, value in leaves.items():
            scale = max(float(np.abs(value).max()), 1e-12)
            out = max(out, float(np.abs(a[layer][leaf] - value).max()) / scale)
    return out


# One per distinct way of differentiating (jdnn_epoch, raw_jax_scan and nnx_split share theirs):
# "numpy" is the tight hand-written NumPy baseline, "reference" the oracle (jdnn.reference).
GRADIENT_SIDES = ("numpy", "reference", "raw_jax", "nnx_jit", "linen", "equinox", "torch")


@pytest.mark.parametrize("make", [_tiny_mlp, _tiny_xor], ids=["mlp", "xor"])
@pytest.mark.parametrize("side", GRADIENT_SIDES)
def test_every_side_has_jdnns_loss_and_gradients(side, make):
    problem, (expected_loss, expected) = _problem(make)
    loss, grads = _loss_and_grads(side, problem)
    assert set(grads) == set(expected)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert _max_rel(grads, expected) < 1e-4


@pytest.mark.parametrize("side", ["numpy", "torch", "linen", "raw_jax"])
def test_peers_match_on_the_cnn(side):
    problem, (expected_loss, expected) = _problem(_tiny_cnn)
    loss, grads = _loss_and_grads(side, problem)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert _max_rel(grads, expected) < 1e-4


def test_plan_names_the_layers_the_peers_cannot_rebuild(monkeypatch):
    ops = workloads.plan(workloads.cnn(2))
    assert [op.kind for op in ops] == ["conv", "relu", "maxpool", "conv", "relu", "maxpool",
                                       "flatten", "dense", "relu", "dense"]
    assert [op.name for op in workloads.dense_ops(ops)] == ["0_conv2d", "3_conv2d", "7_dense",
                                                            "9_dense"]
    for layer in (jdnn.Conv2D(4, 5), jdnn.MaxPool2D(3), jdnn.Tanh()):
        monkeypatch.setattr(workloads, "build_model",
                            lambda w, layer=layer: jdnn.serial(layer, jdnn.Flatten()))
        with pytest.raises(ValueError, match=r"the benchmark's peers rebuild only .* got \w+\("):
            workloads.plan(workloads.cnn(2))


def test_channel_first_conversion_round_trips():
    problem, _ = _problem(_tiny_cnn)
    back = from_channel_first(problem, to_channel_first(problem, problem.params))
    for layer, leaves in problem.params.items():
        for leaf, value in leaves.items():
            np.testing.assert_array_equal(back[layer][leaf], value)


@pytest.mark.parametrize("side", ["numpy", "reference", "torch"])
def test_sides_take_the_same_steps(side):
    problem, _ = _problem(_tiny_mlp)
    reference = SIDES["jdnn_step"].build(problem)
    try:
        runner = SIDES[side].build(problem)
    except Skipped as reason:
        pytest.skip(str(reason))
    reference.run(2)
    runner.run(2)
    assert _max_rel(runner.params(), reference.params()) < 1e-2  # Adam, float32


# --- a missing peer is skipped, not an error ---------------------------------------------------


@pytest.mark.parametrize("module,side", [("torch", "torch"), ("flax", "nnx_jit"),
                                         ("flax", "linen"), ("equinox", "equinox")])
def test_missing_peer_is_reported_as_skipped(monkeypatch, module, side):
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(Skipped, match="not installed"):
        require(module)
    problem, _ = _problem(_tiny_mlp)
    settings = compare.Settings(rounds=1, chunk_s=0.0, pause_s=0.0, max_steps=1)
    result = compare.compare(problem, ["numpy", side], baseline="numpy", settings=settings)
    assert "not installed" in result["skipped"][side]
    assert side not in result["sides"] and "numpy" in result["sides"]


# --- targets and the report -------------------------------------------------------------------


def test_target_verdicts():
    assert targets.check("k", "t", 1.02, 1.05, "<=")["status"] == targets.PASS
    assert targets.check("k", "t", 1.10, 1.05, "<=")["status"] == targets.MISS
    assert targets.check("k", "t", 0.9, 1.0, ">=")["status"] == targets.MISS
    assert targets.check("k", "t", None, 1.0, ">=")["status"] == targets.SKIP
    noisy = targets.check("k", "t", 1.01, 1.0, ">=", q1=0.95, q3=1.1)
    assert noisy["status"] == targets.PASS and noisy["within_noise"]
    with pytest.raises(ValueError):
        targets.check("k", "t", 1.0, 1.0, "<")


def _fake_training_payload():
    seconds = {"median": 0.002, "q1": 0.0019, "q3": 0.0021, "iqr": 0.0002, "min": 0.0018,
               "max": 0.003, "n": 3}
    ratio = {**seconds, "median": 1.0, "q1": 1.0, "q3": 1.0}
    result = {"description": "MLP", "baseline": "jdnn_step", "rounds": 3,
              "steps_per_chunk": {"jdnn_step": 8}, "sides": {
                  "jdnn_step": {"seconds": seconds, "ratio": ratio}},
              "compile": {"jdnn_step": {"compile_s": 0.5}}, "skipped": {"torch": "not installed"},
              "roofline": {"jdnn_step": {"gflops": 50.0, "fraction_of_gemm_peak": 0.5}}}
    return {"name": "mlp", "mode": "quick", "seconds": 1.0,
            "machine": {"cpu_count": 2, "load_average": [0.5, 0.5, 0.5]},
            "results": {"mlp_b32_adam": result, "bad": {"nan": math.nan}},
            "targets": [targets.check("step_vs_raw/x", "jdnn step <= 1.05x raw", 1.2, 1.05, "<=",
                                      q1=1.1, q3=1.3),
                        targets.check("fixed_overhead/xor", "overhead", 7.0, 30.0, "<=",
                                      unit="us")]}


def test_report_writes_valid_json_and_markdown(tmp_path):
    payload = _fake_training_payload()
    payload["results"].pop("bad")
    path = report.write_result(tmp_path, "mlp", payload)
    assert json.loads(path.read_text())["targets"][0]["status"] == "MISS"
    md = report.write_report(tmp_path).read_text()
    assert md.startswith("# jdnn benchmark report")
    assert "| jdnn step <= 1.05x raw | 1.2x [1.1-1.3] | <= 1.05x | **MISS** |" in md
    assert "**PASS**" in md and "7 us" in md
    assert "| torch | skipped: not installed |" in md
    assert (tmp_path / "mlp.png").stat().st_size > 0
    for line in md.splitlines():  # every table row has its header's column count
        assert not line.startswith("|") or line.count("|") >= 3


def test_report_json_has_no_nan(tmp_path):
    path = report.write_result(tmp_path, "x", {"value": math.nan, "nested": [math.inf, 1.0]})
    assert json.loads(path.read_text()) == {"value": None, "nested": [None, 1.0]}


def test_run_lists_the_benchmarks(capsys):
    from benchmarks.suite.run import NAMES, main

    assert main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list(NAMES)


# --- the vmap section: per-example gradients, DP-SGD, ensembles, search ------------------------

def _tiny_digits():
    return workloads.Workload("tiny_digits", "mlp", hidden=(8,), example_shape=(64,), batch=8,
                              batches=3, data="digits")


def test_ghost_clipping_matches_naive_clipping_in_the_check():
    from benchmarks.suite import dp_sgd

    check = dp_sgd.ghost_vs_naive(_tiny_mlp())
    assert check["ok"] and check["grads_max_relative_difference"] < dp_sgd.TOLERANCE
    assert check["norms_max_relative_difference"] < dp_sgd.TOLERANCE
    assert 0.0 < check["clipped_fraction"] < 1.0  # the clip norm binds for some examples only


def test_max_relative_difference_is_leafwise():
    from benchmarks.suite.dp_sgd import max_relative_difference

    a = {"w": np.array([1.0, 2.0]), "b": np.array([10.0])}
    b = {"w": np.array([1.0, 2.2]), "b": np.array([10.0])}
    assert max_relative_difference(b, a) == pytest.approx(0.1)
    assert max_relative_difference(a, a) == 0.0


def test_spread_picks_sequential_fits_across_the_grid():
    from benchmarks.suite.fits import spread

    assert spread(1) == [0] and spread(2) == [0, 15] and spread(16) == list(range(16))
    assert spread(4) == [0, 5, 10, 15]
    with pytest.raises(ValueError, match="count"):
        spread(0)


def test_end_to_end_scales_the_sampled_sequential_fits():
    from benchmarks.suite import fits

    calls = []
    result = fits.end_to_end(lambda: calls.append("v"), lambda idx: calls.append(list(idx)),
                             fits.Plan(epochs=1, rounds=3, fits=2), pause_s=0.0)
    assert calls.count("v") == 4 and calls.count([0, 15]) == 3  # warm-ups: one each
    assert [0] in calls
    assert result["sequential_scale"] == 8 and result["sequential_fits_timed"] == [0, 15]
    assert set(result["sides"]) == {"vectorized", "sequential"}
    assert len(result["raw_seconds"]["sequential"]) == 3
    assert set(result["compile"]["sequential"]) == {"compile_s", "trace_s", "lower_s"}


def test_search_sides_train_with_the_public_api(monkeypatch):
    import jax
    import jax.numpy as jnp
    import optax

    import jdnn
    from benchmarks.suite import fits

    calls = spy_calls(monkeypatch, search=(jdnn, "search"), fit=(jdnn, "fit"))
    (x, y), (tx, ty) = jdnn.data.digits()
    data = (x[:64], y[:64])
    vectorized, sequential = fits.search_sides(data, (tx[:32], ty[:32]),
                                               fits.Plan(epochs=1, rounds=1, fits=1))
    vectorized()
    sequential([15])
    assert len(calls["search"]) == 1 and len(calls["fit"]) == 1   # each side: the public API

    # Every trial of seed 0 starts from the same parameters: fit's, from the trial's key.
    result = calls["search"][0][2]
    trial_key = jax.random.fold_in(jax.random.key(0), 0)
    start = jdnn.TrainState.create(result.model(0), optax.adam(1e-3), trial_key,
                                   (fits.BATCH, x.shape[1]))
    assert len(result.rows) == len(result.configs) == fits.MEMBERS
    assert sorted(result.configs[15].items()) == [("dropout", 0.2), ("l2", 1e-4),
                                                  ("learning_rate", 1e-2)]
    for t in range(fits.MEMBERS):
        history, ts = result.history[t], result.train_state(t)
        assert len(history) == 1 and {"loss", "val_loss", "val_accuracy"} <= set(history.keys())
        assert all(np.isfinite(v) for v in history.records[0].values()), t
        assert int(ts.step) == 2, t   # 64 examples in batches of 32, one epoch
        for before, after in zip(jax.tree.leaves(start.params), jax.tree.leaves(ts.params),
                                 strict=True):
            assert not np.allclose(before, after, rtol=0, atol=1e-6), t

    # The sequential side fits trial 15 as the search documents it: the same training.
    (model, _), _, (fitted, fit_history) = calls["fit"][0]
    assert int(fitted.step) == 2 and len(fit_history) == 1
    searched = result.train_state(15)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 searched.params, fitted.params)
    assert fit_history.records[0]["val_loss"] == pytest.approx(
        result.history[15].records[0]["val_loss"], rel=1e-4)

    # Training lowered the loss on the training data (eagerly: no extra compile).
    def train_loss(net, ts):
        logits, _ = net.apply(ts.params, ts.state, jnp.asarray(data[0]))
        return float(jnp.mean(fits.LOSS(logits, jnp.asarray(data[1]))))

    untrained = train_loss(result.model(15), start)   # 2.40 -> 1.94 for both sides
    assert train_loss(model, fitted) < untrained - 0.1
    assert train_loss(result.model(15), searched) < untrained - 0.1


def _vmap_targets(**values):
    from benchmarks.suite import vectorized

    def timed(side, ratio):
        return {"sides": {side: {"ratio": {"median": ratio, "q1": ratio, "q3": ratio}}},
                "sequential_scale": 1}

    results = {"dp_sgd_b128": timed("dp_ghost", values["dp"]),
               "ghost_vs_naive_b128": {"grads_max_relative_difference": values["ghost"],
                                       "batch": 128, "clipped_fraction": 0.5},
               "ensemble_end_to_end": timed("sequential", values["ensemble"])}
    return {t["key"]: t for t in vectorized.targets_for(results, {"search_end_to_end": "boom"})}


def test_vmap_targets_get_verdicts_from_given_numbers():
    good = _vmap_targets(dp=2.0, ghost=3e-7, ensemble=12.0)
    assert [good[k]["status"] for k in ("dp_sgd/b128", "ghost_equals_naive/b128",
                                        "ensemble_vs_sequential")] == [targets.PASS] * 3
    assert good["search_vs_sequential"]["status"] == targets.SKIP
    assert "boom" in good["search_vs_sequential"]["note"]
    bad = _vmap_targets(dp=3.5, ghost=1e-3, ensemble=4.0)
    assert [bad[k]["status"] for k in ("dp_sgd/b128", "ghost_equals_naive/b128",
                                       "ensemble_vs_sequential")] == [targets.MISS] * 3


def test_vmap_section_runs_at_tiny_size_and_reports(tmp_path, monkeypatch):
    from benchmarks.suite import dp_sgd, fits, vectorized

    def broken():
        raise RuntimeError("an API changed")

    def tiny_parts(ctx):
        return {
            "per_example_b4": lambda: vectorized.per_example(ctx, _tiny_mlp()),
            "dp_sgd_b128": lambda: dp_sgd.steps(ctx, _tiny_mlp()),
            "ghost_vs_naive_b128": lambda: dp_sgd.ghost_vs_naive(_tiny_mlp()),
            "ensemble": lambda: vectorized.ensemble(ctx, _tiny_digits()),
            "ensemble_end_to_end": lambda: {
                "description": "fake", "labels": {"vectorized": "v", "sequential": "s"},
                **fits.end_to_end(lambda: None, lambda idx: None, fits.Plan(1, 2, 4),
                                  pause_s=0.0)},
            "search_end_to_end": broken}

    monkeypatch.setattr(vectorized, "parts", tiny_parts)
    payload = vectorized.run(tiny_context())
    results = payload["results"]
    assert set(results["dp_sgd_b128"]["sides"]) == {"plain", "dp_ghost", "dp_ghost_no_noise",
                                                    "dp_vmap"}
    assert set(results["per_example_b4"]["sides"]) == {"batched_grad", "vmap_grad",
                                                       "jdnn_per_example_grads"}
    assert set(results["ensemble"]["sides"]) == {"sequential_16_epochs", "vmap_epoch_fn_16"}
    assert all("compile_s" in c for c in results["dp_sgd_b128"]["compile"].values())
    assert "RuntimeError: an API changed" in payload["failed"]["search_end_to_end"]
    verdicts = {t["key"]: t["status"] for t in payload["targets"]}
    assert verdicts["ghost_equals_naive/b128"] == targets.PASS
    assert verdicts["search_vs_sequential"] == targets.SKIP

    report.write_result(tmp_path, "vectorized", {"name": "vectorized", "mode": "quick",
                                                 "seconds": 1.0, "machine": {
                                                     "cpu_count": 2, "load_average": None},
                                                 **payload})
    md = report.write_report(tmp_path).read_text()
    assert "| plain |" in md and "| dp_vmap |" in md and "| vectorized | v |" in md
    assert "ghost-clipped gradient = naive vmap(grad) clipping" in md
    assert "search_end_to_end: FAILED" in md
    for line in md.splitlines():
        assert not line.startswith("|") or line.count("|") >= 3


def test_run_marks_a_benchmark_with_failed_parts(tmp_path, monkeypatch):
    from benchmarks.suite import machine, run

    monkeypatch.setattr(machine, "limits", lambda **kw: {"gemm_peak_gflops": 1.0,
                                                         "bandwidth_gbs": {"median": 1.0}})
    monkeypatch.setattr(run, "_benchmarks", lambda: {"vectorized": lambda ctx: {
        "results": {}, "targets": [], "failed": {"search_end_to_end": "boom"}}})
    assert run.main(["--quick", "--only", "vectorized", "--out", str(tmp_path)]) == 1
    assert json.loads((tmp_path / "vectorized.json").read_text())["failed"]
