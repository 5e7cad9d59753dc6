"""The peers' best forms train jdnn's model the same way jdnn does: PyTorch fused and compiled,
Equinox with donation, raw JAX with the idiomatic `reduce_window` pool, Keras 3 on JAX.

Same loss and gradients from the same parameters (float32 tolerance), the same parameters
after a few steps, and each reason a side cannot run reported as `Skipped`.
"""

import sys
import types

import numpy as np
import pytest

from benchmarks.suite import workloads
from benchmarks.suite.sides import SIDES, Skipped, keras_side, torch_side


def _tiny_mlp():
    return workloads.Workload("tiny", "mlp", hidden=(8, 6), example_shape=(12,), classes=5,
                              batch=4, batches=2)


def _tiny_xor():
    return workloads.xor(batch=4, batches=2)


def _tiny_cnn():
    # SGD: Keras' Adam adds eps to the uncorrected sqrt(v) (see keras_side), which over an
    # 8-step epoch moves the CNN's weights with tiny gradients by up to ~3% of the largest
    # weight (0.3% with eps scaled to optax's). SGD's formula is the same on every side.
    return workloads.cnn(2, "sgd")


MAKERS = {"mlp": _tiny_mlp, "xor": _tiny_xor, "cnn": _tiny_cnn}
_PROBLEMS, _EXPECTED = {}, {}


def _problem(kind):
    if kind not in _PROBLEMS:
        _PROBLEMS[kind] = workloads.make_problem(MAKERS[kind]())
    return _PROBLEMS[kind]


def _expected(kind):
    """jdnn's loss and gradients on the first batch, computed once per workload."""
    if kind not in _EXPECTED:
        problem = _problem(kind)
        _EXPECTED[kind] = SIDES["jdnn_step"].loss_and_grads(problem, problem.params,
                                                            *problem.batch(0))
    return _EXPECTED[kind]


def _max_rel(a, b):
    out = 0.0
    for layer, leaves in b.items():
        for leaf, value in leaves.items():
            scale = max(float(np.abs(value).max()), 1e-12)
            out = max(out, float(np.abs(a[layer][leaf] - value).max()) / scale)
    return out


def _or_skip(fn, *args):
    try:
        return fn(*args)
    except Skipped as reason:
        pytest.skip(str(reason))


# The new sides with a way of differentiating of their own (torch_fused/torch_compile report
# eager PyTorch's gradients, equinox_donate Equinox's: their steps are checked below).
@pytest.mark.parametrize("kind,side", [("mlp", "keras"), ("xor", "keras"), ("cnn", "keras"),
                                       ("cnn", "raw_jax_reduce_window"),
                                       ("cnn", "raw_jax_lax_conv")])
def test_loss_and_gradients_equal_jdnns(kind, side):
    problem, (expected_loss, expected) = _problem(kind), _expected(kind)
    loss, grads = _or_skip(SIDES[side].loss_and_grads, problem, problem.params,
                           *problem.batch(0))
    assert set(grads) == set(expected)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert _max_rel(grads, expected) < 1e-4


def _steps_match(kind, side, steps=None):
    problem = _problem(kind)
    runner = _or_skip(SIDES[side].build, problem)
    steps = steps or runner.quantum * max(1, 3 // runner.quantum)
    reference = SIDES["jdnn_step"].build(problem)
    reference.run(steps)
    runner.run(steps)
    return _max_rel(runner.params(), reference.params())


@pytest.mark.parametrize("kind,side", [
    ("mlp", "torch_fused"), ("mlp", "torch_fused_1thread"), ("xor", "torch_fused"),
    ("mlp", "equinox_donate"), ("mlp", "keras"), ("xor", "keras"), ("cnn", "keras"),
    ("cnn", "raw_jax_reduce_window"), ("cnn", "raw_jax_lax_conv")])
def test_params_after_steps_equal_jdnn_steps(kind, side):
    # 3 steps over a 2-batch epoch: a side that donated its batches would fail on the third.
    assert _steps_match(kind, side) < 1e-2  # Adam, float32 (SGD for xor and cnn_sgd)


def test_torch_compile_takes_jdnns_steps():
    assert _steps_match("mlp", "torch_compile") < 1e-2


def test_torch_compile_that_cannot_compile_is_skipped_at_build(monkeypatch):
    _or_skip(torch_side.require, "torch")
    monkeypatch.setattr(torch_side, "compile_probe", lambda: "CppCompileError: no g++")
    problem = _problem("mlp")
    with pytest.raises(Skipped, match=r"torch.compile \(inductor CPU backend\) fails here: "
                                      r"CppCompileError: no g\+\+"):
        SIDES["torch_compile_1thread"].build(problem)


def test_reduce_window_side_skips_a_model_without_max_pool():
    problem = _problem("mlp")
    with pytest.raises(Skipped, match="has no max pool"):
        SIDES["raw_jax_reduce_window"].build(problem)
    with pytest.raises(Skipped, match="has no max pool"):
        SIDES["raw_jax_reduce_window"].loss_and_grads(problem, problem.params,
                                                      *problem.batch(0))


def test_lax_conv_side_skips_a_model_without_convolutions():
    problem = _problem("mlp")
    with pytest.raises(Skipped, match="has no convolution"):
        SIDES["raw_jax_lax_conv"].build(problem)


def test_missing_keras_is_skipped_naming_the_extra(monkeypatch):
    for name in list(sys.modules):
        if name == "keras" or name.startswith("keras."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "keras", None)  # `import keras` now raises ImportError
    problem = _problem("mlp")
    with pytest.raises(Skipped, match=r'keras is not installed .*pip install -e "\.\[keras\]"'):
        SIDES["keras"].build(problem)


def test_keras_on_another_backend_is_skipped(monkeypatch):
    fake = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: "torch"))
    monkeypatch.setitem(sys.modules, "keras", fake)
    with pytest.raises(Skipped, match="'torch' backend.*needs KERAS_BACKEND=jax"):
        keras_side.keras_module()
