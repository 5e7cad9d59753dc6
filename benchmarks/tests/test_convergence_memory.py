"""Harness tests of the end-to-end convergence runs and the memory benchmark: each entry point,
run in its own process on a tiny budget, returns a well-formed result, and the report renders
it. Never timing assertions."""

import pathlib

import pytest

from benchmarks.suite import convergence, memory, sections


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("convergence") / "inputs.npz")
    described = convergence.shared_inputs(path)
    assert described["train_examples"] == 1347 and described["test_examples"] == 450
    return path


@pytest.mark.parametrize("side", ["jdnn_cold", "numpy", "torch_fused"])
def test_a_side_runs_end_to_end_in_its_own_process(inputs, tmp_path, side):
    cache = str(tmp_path / "cache") if side.startswith("jdnn") else None
    result = convergence.launch(side, inputs, convergence.child_env(cache), max_epochs=1)
    if "skipped" in result:
        pytest.skip(result["skipped"])
    assert "error" not in result, result.get("error")
    assert result["side"] == side and result["epochs"] == 1
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["total_s"] > 0 and result["import_s"] >= 0
    assert 0 < result["first_step_s"] <= result["total_s"]
    if side == "jdnn_cold":
        assert result["programs"] >= 1 and result["compile_s"] > 0
        assert result["cache"] == str(tmp_path / "cache")


def test_the_convergence_section_renders_the_medians(inputs):
    runs = [convergence.launch("numpy", inputs, convergence.child_env(None), max_epochs=1)]
    payload = {"results": {"workload": "digits", "target_accuracy": 0.97, "max_epochs": 1,
                           "rounds": 1, "sides": {"numpy": convergence._summary(runs)},
                           "skipped": {"keras": "not installed"}, "errors": {}}}
    text = "\n".join(sections.render(pathlib.Path("."), "convergence", payload))
    assert "tight hand-written float32 NumPy" in text and "skipped: not installed" in text


@pytest.mark.parametrize("side", ["numpy", "jdnn_step"])
def test_the_memory_child_reports_positive_peaks(side):
    result = memory.launch(side, "mlp_b128", steps=1)
    assert "error" not in result, result.get("error")
    assert result["peak_over_imports_mib"] > 0 and result["after_imports_mib"] > 0
    assert result["training_peak_mib"] is None or result["training_peak_mib"] > 0
    if side == "jdnn_step":
        compiled = result["compiled"]
        assert compiled["argument_size_in_bytes"] > 0 and compiled["output_size_in_bytes"] > 0
        assert result["xla_memory_stats"] is None or isinstance(result["xla_memory_stats"], dict)
    payload = {"results": {"workloads": {"mlp_b128": {"description": "MLP",
                                                      "sides": {side: result}}}}}
    text = "\n".join(sections.render(pathlib.Path("."), "memory", payload))
    assert f"| {side} |" in text


def test_memory_is_registered_in_the_suite():
    from benchmarks.suite import run

    assert "memory" in run.NAMES and run._benchmarks()["memory"] is memory.run
