"""Tests for jdnn.parallel: data-parallel epochs on a jax.sharding Mesh.

The multi-device checks run `tests/parallel_worker.py` in a subprocess with 8 simulated CPU
devices (the device count must be fixed before JAX starts, and this process has started it);
the worker prints JSON that the tests below assert on. The rest runs here, on a one-device mesh.
Several hosts cannot be tested on one machine (see the `jdnn.parallel` docstring).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jdnn
from jdnn import parallel
from jdnn.train.fit import epoch_orders, make_epoch
from jdnn.train.step import train_step_fn

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("parallel_worker.py")


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, str(WORKER)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- on 8 simulated devices (subprocess) -----------------------------------------------------


def test_worker_sees_eight_devices(results):
    assert results["devices"] == 8


def _assert_parity(run, tolerance):
    assert run["steps"] == [24, 24]          # 3 epochs of 8 batches (the last one padded)
    assert run["keys_equal"]
    np.testing.assert_allclose(run["losses"]["parallel"], run["losses"]["single"],
                               rtol=tolerance, atol=tolerance)
    worst = max(run["diffs"], key=run["diffs"].get)
    assert run["diffs"][worst] <= tolerance, (worst, run["diffs"][worst])


def test_float32_training_matches_one_device(results):
    # Losses, accuracy, params, batch-norm statistics and Adam moments after 3 epochs with
    # BatchNorm and Dropout: the same up to the order of float32 additions.
    run = results["float32"]
    assert run["dtype"] == "float32" and run["partitionable"]
    _assert_parity(run, 1e-5)


def test_float64_training_matches_one_device_with_unpartitionable_rng(results):
    # float64 makes the bound tight; the older threefry bit stream (drawn whole, then sliced)
    # gives the single-device dropout masks too.
    run = results["float64"]
    assert run["dtype"] == "float64" and not run["partitionable"]
    _assert_parity(run, 1e-10)


def test_each_device_gets_a_slice_of_the_batch(results):
    seen = results["float32"]["batch_shardings"]
    assert seen["x"] == {"shard_shape": [64 // 8, 64], "devices": 8}
    assert seen["y"] == {"shard_shape": [64 // 8], "devices": 8}
    assert seen["mask"] == {"shard_shape": [64 // 8], "devices": 8}


def test_train_state_stays_replicated(results):
    assert results["float32"]["state_replicated"]


def test_compiled_epoch_all_reduces_and_gathers_locally(results):
    hlo = results["float32"]["hlo"]
    assert hlo["all_reduce"] > 0        # gradients, batch-norm statistics, loss
    assert hlo["all_gather"] == 0       # each device gathers its own rows of the replicated data
    assert hlo["local_batch"]           # the per-device program sees (64 / 8, 64) batches


def test_batch_norm_uses_global_batch_statistics(results):
    bn = results["bn"]
    assert bn["input_devices"] == 8
    assert bn["mean_error"] < 1e-5 and bn["var_error"] < 1e-5 and bn["output_error"] < 1e-5
    assert bn["local_mean_gap"] > 1.0   # per-device statistics would have been far off


def test_batch_size_not_divisible_by_devices_is_a_clear_error(results):
    assert results["bad_batch"]["60"] == (
        "batch_size (=60) must be divisible by the number of devices on mesh axis 'data' (=8), "
        "so that each device gets an equal slice of every batch: pick a multiple of 8, e.g. 56 "
        "or 64")
    assert results["bad_batch"]["3"].endswith("pick a multiple of 8, e.g. 8")


# --- on one device (this process) ------------------------------------------------------------


def _setup(n=50, batch_size=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = jdnn.serial(jdnn.Dense(8), jdnn.BatchNorm(), jdnn.Relu(), jdnn.Dropout(0.2),
                        jdnn.Dense(2))
    optimizer = optax.sgd(0.1)
    step = train_step_fn(model, jdnn.losses.softmax_cross_entropy, optimizer)

    def create():
        return jdnn.TrainState.create(model, optimizer, jax.random.key(0), (batch_size, 5))

    return x, y, step, create


def _mesh():
    return parallel.data_mesh(jax.devices()[:1])


def test_data_mesh_is_one_auto_axis_over_the_devices():
    mesh = parallel.data_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.shape["data"] == len(jax.devices())
    assert mesh.axis_types == (AxisType.Auto,)
    assert parallel.data_mesh(axis="batch").axis_names == ("batch",)
    with pytest.raises(ValueError, match="at least one device"):
        parallel.data_mesh([])


def test_replicate_and_put_data_place_full_copies():
    mesh = _mesh()
    x, y, _, create = _setup()
    for leaf in jax.tree.leaves((parallel.replicate(create(), mesh),
                                 parallel.put_data((x, y), mesh))):
        assert leaf.sharding == NamedSharding(mesh, P())


def test_one_device_mesh_equals_make_epoch_and_compiles_once():
    x, y, step, create = _setup()
    traces = []

    def counted(*args):
        traces.append(1)
        return step(*args)

    mesh = _mesh()
    run = parallel.make_parallel_epoch(counted, 16, mesh)
    single = make_epoch(step, 16)
    many, one = parallel.replicate(create(), mesh), create()
    xp, yp = parallel.put_data((x, y), mesh)
    for _ in range(2):
        order = epoch_orders(one, len(x))
        many, means_many = run(many, xp, yp, order)
        one, means_one = single(one, jnp.asarray(x), jnp.asarray(y), order)
        np.testing.assert_allclose(means_many["loss"], means_one["loss"], rtol=1e-6)
    assert len(traces) == 1
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 (many.params, many.state), (one.params, one.state))
    assert means_many["loss"].sharding == NamedSharding(mesh, P())


def test_explicit_mesh_from_make_mesh_is_accepted():
    x, y, step, create = _setup()
    mesh = jax.make_mesh((1,), ("data",), (AxisType.Explicit,), devices=jax.devices()[:1])
    assert mesh.axis_types == (AxisType.Explicit,)
    run = parallel.make_parallel_epoch(step, 16, mesh, drop_remainder=True)
    train_state, means = run(parallel.replicate(create(), mesh), *parallel.put_data((x, y), mesh),
                             np.arange(len(x), dtype=np.int32))
    assert int(train_state.step) == 3 and np.isfinite(float(means["loss"]))


def test_unknown_axis_and_non_mesh_are_errors():
    _, _, step, _ = _setup()
    with pytest.raises(ValueError, match=r"no axis 'batch'; its axes are \('data',\)"):
        parallel.make_parallel_epoch(step, 16, _mesh(), axis="batch")
    with pytest.raises(TypeError, match="must be a jax.sharding.Mesh"):
        parallel.make_parallel_epoch(step, 16, jax.devices())


def test_fit_with_a_mesh_matches_fit_without():
    """fit(..., mesh=...) on a one-device mesh: the data-parallel path, same result."""
    import optax

    import jdnn
    from jdnn.parallel import data_mesh

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = rng.integers(0, 3, 40).astype(np.int32)
    model = jdnn.serial(jdnn.Dense(8), jdnn.Relu(), jdnn.Dense(3))
    options = dict(loss=jdnn.losses.softmax_cross_entropy, optimizer=optax.adam(1e-2), epochs=2,
                   batch_size=8, key=jax.random.key(0), progress=False)
    plain, plain_history = jdnn.fit(model, (x, y), **options)
    meshed, meshed_history = jdnn.fit(model, (x, y), mesh=data_mesh(), **options)
    np.testing.assert_allclose(meshed_history["loss"], plain_history["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(meshed.params), jax.tree.leaves(plain.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mode='scan' only"):
        jdnn.fit(model, (x, y), mesh=data_mesh(), mode="step", **options)
