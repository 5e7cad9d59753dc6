"""The headline benchmark's arithmetic (no timing assertions) and the GPU check off a GPU."""

from __future__ import annotations

import pytest

from benchmarks.suite import gpu, headline, workloads
from benchmarks.suite.run import main
from benchmarks.suite.targets import MISS, PASS, SKIP


def _process(numpy_scale: float, torch: dict[str, float]) -> dict:
    """One fake process: 3 rounds on digits (epoch/NumPy) and the MLP at 1024 (step/PyTorch)."""
    epoch = [1.0, 1.0, 1.0]
    raw_small = {"jdnn_epoch": epoch, "numpy": [numpy_scale * t for t in epoch],
                 "reference": [10.0, 10.0, 10.0]}
    raw_mlp = {"jdnn_step": [2.0, 2.0, 2.0],
               **{name: [value] * 3 for name, value in torch.items()}}
    return {"digits_mlp_b32_adam": {"description": "digits", "raw_seconds": raw_small,
                                    "skipped": {}, "info": {"numpy": {"blas_threads": 1}}},
            "mlp_b1024_adam": {"description": "mlp", "raw_seconds": raw_mlp,
                               "skipped": {"torch_compile": "no compiler"}}}


def test_each_workload_gets_the_sides_its_ratios_need():
    assert headline._sides(workloads.digits_mlp()) == ("jdnn_epoch", "numpy", "reference")
    assert headline._sides(workloads.mlp(32))[0] == "jdnn_step"
    both = headline._sides(workloads.cnn(64))
    assert both[0] == "jdnn_epoch" and "torch_fused" in both and "numpy" in both


def test_pytorch_at_its_best_is_the_fastest_variant_of_each_round():
    raw = {"jdnn_step": [1.0, 1.0], "torch_fused": [3.0, 1.5], "torch_fused_1thread": [2.0, 4.0]}
    ratios = headline.per_round(raw)
    assert ratios["vs_torch_best"]["values"] == [2.0, 1.5]
    assert ratios["vs_torch_best"]["winners"] == ["torch_fused_1thread", "torch_fused"]
    assert ratios["vs_torch_fused"]["values"] == [3.0, 1.5]
    assert "vs_numpy" not in ratios  # no epoch in these rounds


def test_median_of_process_medians_with_the_spread():
    processes = [_process(s, {"torch_fused": 2.2, "torch_fused_1thread": 2.4})
                 for s in (2.0, 4.0, 3.5)]
    results = headline.combine(processes)
    cell = results["digits_mlp_b32_adam"]["ratios"]["vs_numpy"]
    assert cell["median"] == pytest.approx(3.5) and cell["processes"] == 3
    assert (cell["low"], cell["high"]) == (2.0, 4.0)
    best = results["mlp_b1024_adam"]["ratios"]["vs_torch_best"]
    assert best["median"] == pytest.approx(1.1) and best["best_variant"] == "torch_fused"


def test_targets_are_checked_on_the_median_of_medians_and_skip_what_did_not_run():
    results = headline.combine([_process(s, {"torch_fused": 2.2}) for s in (2.0, 4.0, 3.5)])
    found = {t["key"]: t for t in headline.targets(results)}
    digits = found["headline_vs_numpy/digits_mlp_b32_adam"]
    assert digits["status"] == PASS and digits["within_noise"]  # spread 2-4 straddles 3
    assert found["headline_vs_torch_best/mlp_b1024_adam"]["status"] == PASS  # 1.1 >= 1/1.15
    assert found["headline_vs_numpy/xor"]["status"] == SKIP
    slow = headline.combine([_process(2.0, {"torch_fused": 1.0})] * 3)
    assert {t["key"]: t for t in headline.targets(slow)}[
        "headline_vs_torch_best/mlp_b1024_adam"]["status"] == MISS


def test_the_gpu_check_says_there_is_no_gpu_and_exits_0(tmp_path, capsys):
    if gpu.on_gpu():
        pytest.skip("this machine has a GPU: the check would measure")
    assert main(["--gpu-check", "--out", str(tmp_path)]) == 0
    assert "not a GPU" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
