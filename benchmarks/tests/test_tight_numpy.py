"""Tests of the tight NumPy baseline (`sides.tight_numpy`, side "numpy").

It must compute what the oracle (`jdnn.reference`, side "reference") and jdnn compute, in float32
only, with its parameters in one flat buffer, on batches up to its preallocated size.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from threadpoolctl import threadpool_info

import jdnn
from benchmarks.suite import compare, workloads
from benchmarks.suite.sides import SIDES
from benchmarks.suite.sides.tight_numpy import MaxPool, TightNet, blas_threads

# Every benchmark model, small, by the optimizers it is trained with.
MAKERS = {
    "digits": lambda opt: workloads.digits_mlp(8, opt),
    "xor": lambda opt: workloads.xor(4, 4),
    "mlp": lambda opt: workloads.mlp(4, opt, batches=4),
    "cnn": lambda opt: workloads.cnn(2, opt),
}
CASES = ["digits-sgd", "digits-adam", "xor-sgd", "mlp-sgd", "mlp-adam", "cnn-sgd", "cnn-adam"]
STEPS = 3
_PROBLEMS = {}


def _problem(case):
    """One initialization per model (jdnn's init compiles); the optimizer is swapped in."""
    model, optimizer = case.split("-")
    if model not in _PROBLEMS:
        _PROBLEMS[model] = workloads.make_problem(MAKERS[model]("sgd"))
    return dataclasses.replace(_PROBLEMS[model], workload=MAKERS[model](optimizer))


def _max_rel(a, b):
    out = 0.0
    for layer, leaves in b.items():
        assert set(a[layer]) == set(leaves)
        for leaf, value in leaves.items():
            scale = max(float(np.abs(value).max()), 1e-12)
            out = max(out, float(np.abs(a[layer][leaf] - value).max()) / scale)
    return out


def _net(problem, max_batch=None):
    w = problem.workload
    return TightNet(problem.ops, problem.params, w.optimizer, w.lr, max_batch or w.batch)


@pytest.mark.parametrize("name", [f"{model}-sgd" for model in MAKERS])
def test_loss_and_gradients_equal_the_oracles(name):
    problem = _problem(name)
    x, y = problem.batch(0)
    loss, grads = SIDES["numpy"].loss_and_grads(problem, problem.params, x, y)
    expected_loss, expected = SIDES["reference"].loss_and_grads(problem, problem.params, x, y)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert set(grads) == set(expected)
    assert _max_rel(grads, expected) < 1e-5


@pytest.mark.parametrize("name", CASES)
def test_steps_match_the_oracle_and_jdnn(name):
    problem = _problem(name)
    tight = SIDES["numpy"].build(problem)
    tight.run(STEPS)
    # Adam turns float32 rounding in near-zero gradients into +-lr steps: looser agreement.
    tolerance = 1e-3 if problem.workload.optimizer == "adam" else 1e-5
    for other in ("reference", "jdnn_step"):
        runner = SIDES[other].build(problem)
        runner.run(STEPS)
        assert _max_rel(tight.params(), runner.params()) < tolerance, other


def test_every_buffer_is_float32_and_stays_so():
    problem = _problem("cnn-adam")
    net = _net(problem)
    x, y = problem.batch(0)
    loss = net.step(x, y)
    assert np.asarray(loss).dtype == np.float32
    arrays = net.arrays()
    assert len(arrays) > 20
    for array in arrays:  # float32 data, bool masks, integer row indices
        assert array.dtype == np.float32 or array.dtype.kind in "bi", array.dtype
    for tree in (net.params(), net.loss_and_grads(x, y)[1]):
        assert all(v.dtype == np.float32 for leaves in tree.values() for v in leaves.values())
    assert net.predict(x).dtype == np.float32
    with pytest.raises(ValueError, match="float32 batches of at most 2 examples; got float64"):
        net.step(x.astype(np.float64), y)


@pytest.mark.parametrize("name", ["mlp-adam", "cnn-sgd"])
def test_parameters_and_gradients_are_views_into_one_flat_buffer(name):
    problem = _problem(name)
    net = _net(problem)
    sizes = 0
    for layer, (w, dw, b, db) in net.views.items():
        assert w.shape == problem.params[layer]["w"].shape
        assert w.base is net.theta and b.base is net.theta
        assert dw.base is net.grad and db.base is net.grad
        sizes += w.size + b.size
    assert sizes == net.theta.size == net.grad.size
    theta = net.theta.copy()
    net.step(*problem.batch(0))  # updates land in the same buffer, in place
    assert not np.array_equal(theta, net.theta)
    layer = next(iter(net.views))
    np.testing.assert_array_equal(net.params()[layer]["w"], net.views[layer][0])


def test_a_short_last_batch_uses_the_first_rows_of_the_buffers():
    problem = _problem("digits-adam")
    net = _net(problem, max_batch=8)
    oracle = jdnn.reference.build(problem.model.spec)
    opt = jdnn.reference.optimizers.adam(problem.workload.lr)
    params = jax.tree.map(np.array, problem.params)
    opt_state = opt.init(params)
    x, y = problem.x[:13], problem.y[:13]
    for batch in (slice(0, 8), slice(8, 13)):  # 8 then a short 5
        net.step(x[batch], y[batch])
        _, grads, _ = oracle.loss_and_grads(params, problem.state, x[batch], y[batch],
                                            loss=problem.workload.loss, dtype=np.float32)
        params, opt_state = opt.update(grads, opt_state, params)
    assert _max_rel(net.params(), params) < 1e-3
    logits = net.predict(problem.x[:20])  # more than max_batch: chunks of 8
    assert logits.shape == (20, 10)
    np.testing.assert_allclose(logits[16:], net.logits(problem.x[16:20]), rtol=1e-6)
    with pytest.raises(ValueError, match="at most 8 examples; got float32 x 9"):
        net.step(problem.x[:9], problem.y[:9])


def test_max_pool_routes_ties_to_the_first_maximum_like_jdnn():
    x = np.array([[1, 1, 2, 0], [1, 0, 2, 2], [0, 3, 5, 5], [3, 3, 5, 5]], np.float32)
    x = np.stack([x, -x + 5], axis=-1)[None]  # (1, 4, 4, 2): ties in every window
    pool = MaxPool((4, 4, 2), 1, need_dx=True)
    y = pool.forward(x)
    dy = np.arange(1, 9, dtype=np.float32).reshape(1, 2, 2, 2)
    dx = pool.backward(dy.copy())
    layer = jdnn.MaxPool2D(2)
    _, params, state = layer.init(jax.random.key(0), x.shape)

    def pooled(inputs):
        return layer.apply(params, state, inputs)[0]

    expected_y, vjp = jax.vjp(pooled, jnp.asarray(x))
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(dx, vjp(jnp.asarray(dy))[0])
    assert np.count_nonzero(dx) == dy.size  # one winner per window


def test_runner_reports_its_blas_threads_and_restores_them():
    problem = _problem("xor-sgd")
    before = [pool["num_threads"] for pool in threadpool_info()]
    settings = compare.Settings(rounds=1, chunk_s=0.0, pause_s=0.0, max_steps=1)
    result = compare.compare(problem, ["numpy", "reference"], baseline="reference",
                             settings=settings)
    assert result["sides"]["numpy"]["info"] == {"blas_threads": 1}
    assert result["sides"]["reference"]["info"] == {}
    assert [pool["num_threads"] for pool in threadpool_info()] == before
    assert blas_threads(workloads.digits_mlp()) == blas_threads(workloads.mlp(32)) == 1
