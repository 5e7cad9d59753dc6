"""Tests for jdnn.sharding: fully sharded data parallel (FSDP) on 8 simulated devices.

The 8-device run is this file run as a script in a subprocess (the device count must be fixed
before JAX starts, and pytest's process has started it); it prints one JSON line that the tests
below assert on. The rest runs here, on a one-device mesh.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 8


def run_worker() -> dict:
    """FSDP on 8 devices vs fit's own epoch on one, the same orders, 3 epochs."""
    import optax

    import jdnn
    from jdnn import parallel, sharding
    from jdnn.train.fit import epoch_orders, make_epoch
    from jdnn.train.state import TrainState
    from jdnn.train.step import train_step_fn

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 16)).astype(np.float32)   # 100: the last batch padded, masked
    y = rng.integers(0, 4, 100).astype(np.int32)
    # no bias before BatchNorm: its true gradient is 0, and Adam would turn the rounding noise
    # in it (~1e-9, different with 8 devices) into steps of size lr
    model = jdnn.serial(jdnn.Dense(64, use_bias=False), jdnn.BatchNorm(), jdnn.Relu(),
                        jdnn.Dense(48), jdnn.Relu(), jdnn.Dense(4))
    optimizer = optax.adam(1e-2)
    step = train_step_fn(model, jdnn.losses.softmax_cross_entropy, optimizer)
    start = TrainState.create(model, optimizer, jax.random.key(0), (32, 16))
    copy = lambda tree: jax.tree.map(lambda a: a.copy(), tree)  # noqa: E731 (donated inputs)
    mesh = parallel.data_mesh()
    one = make_epoch(step, 32)
    fsdp = sharding.make_fsdp_epoch(step, 32, mesh, start)
    single, sharded = copy(start), sharding.shard_state(copy(start), mesh)
    xs, ys = parallel.put_data((x, y), mesh)
    losses = []
    for _ in range(3):
        order = epoch_orders(single, len(x))
        single, means_one = one(single, x, y, order)
        sharded, means_fsdp = fsdp(sharded, xs, ys, order)
        losses.append([float(means_one["loss"]), float(means_fsdp["loss"])])
    diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
             zip(jax.tree.leaves((single.params, single.state, single.opt_state)),
                 jax.tree.leaves((sharded.params, sharded.state, sharded.opt_state)))]
    memory = fsdp.lower(sharded, xs, ys, order).compile().memory_analysis()
    replicated = parallel.replicate(copy(start), mesh)
    return {
        "devices": len(jax.devices()),
        "losses": losses, "max_diff": max(diffs),
        "specs": {"w0": list(sharded.params["0_dense"]["w"].sharding.spec),
                  "w3": list(sharded.params["3_dense"]["w"].sharding.spec),
                  "mu_w3": list(sharded.opt_state[0].mu["3_dense"]["w"].sharding.spec),
                  "b0": list(sharded.params["3_dense"]["b"].sharding.spec)},
        "fsdp_bytes": sorted(sharding.device_bytes(sharded).values()),
        "replicated_bytes": sorted(sharding.device_bytes(replicated).values()),
        "argument_bytes": None if memory is None else memory.argument_size_in_bytes,
        "temp_bytes": None if memory is None else memory.temp_size_in_bytes,
    }


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fsdp_on_8_devices_equals_one_device(results):
    assert results["devices"] == DEVICES
    for single, sharded in results["losses"]:
        assert sharded == pytest.approx(single, rel=1e-5)
    assert results["max_diff"] < 1e-5   # params, batch-norm statistics, Adam's moments


def test_large_arrays_are_sliced_small_ones_replicated(results):
    specs = results["specs"]
    assert specs["w0"] == [None, "data"]     # (16, 64): 64 is the larger
    assert specs["w3"] == ["data", None]     # (64, 48): 64 is the larger
    assert specs["mu_w3"] == specs["w3"]                    # Adam's moments follow the params
    assert specs["b0"] == []                 # 64 elements: below MIN_SIZE


def test_each_device_holds_a_fraction_of_the_state(results):
    fsdp, replicated = results["fsdp_bytes"], results["replicated_bytes"]
    print(f"per-device bytes: FSDP {fsdp[-1]}, replicated {replicated[-1]}; compiled epoch "
          f"arguments {results['argument_bytes']}, temporaries {results['temp_bytes']}")
    assert len(set(fsdp)) == 1 and len(set(replicated)) == 1      # balanced
    assert fsdp[0] < replicated[0] / 3   # 1/8 of the big arrays + the small replicated ones
    if results["argument_bytes"] is not None:      # per device: its slices, not the whole state
        assert results["argument_bytes"] < replicated[0] + 100 * 16 * 4 + 100 * 4 + 1000


def test_fsdp_shardings_rules_on_one_device():
    from jax.sharding import PartitionSpec as P

    from jdnn import parallel, sharding

    mesh = parallel.data_mesh(jax.devices()[:1])
    tree = {"w": jax.ShapeDtypeStruct((8, 300), np.float32),
            "small": jax.ShapeDtypeStruct((10,), np.float32),
            "key": jax.eval_shape(lambda: jax.random.key(0))}
    shardings = sharding.fsdp_shardings(tree, mesh)
    assert shardings["w"].spec == P(None, "data")
    assert shardings["small"].spec == P()
    assert shardings["key"].spec == P()
    with pytest.raises(ValueError, match="no axis 'model'"):
        sharding.fsdp_shardings(tree, mesh, axis="model")


if __name__ == "__main__":
    os.environ.setdefault("JDNN_CACHE_DIR", "off")
    print(json.dumps(run_worker()))
