"""Runs jdnn.parallel on 8 simulated CPU devices and prints the results as JSON (last line).

`tests/test_parallel.py` starts this script in a subprocess, because the device count must be
set before JAX initializes its backend. Run it alone with `python tests/parallel_worker.py`.
"""

import json
import os
import sys

DEVICES = 8
os.environ["JAX_PLATFORMS"] = "cpu"   # simulated CPU devices, even where a GPU is present
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={DEVICES}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jdnn  # noqa: E402
from jdnn import parallel  # noqa: E402
from jdnn.train.fit import epoch_orders, make_epoch  # noqa: E402
from jdnn.train.step import train_step_fn  # noqa: E402

N, BATCH, EPOCHS, FEATURES = 500, 64, 3, 64   # 500 = 7 * 64 + 52: the last batch is padded


def max_diffs(a, b) -> dict:
    """Per-path max |a - b| over two pytrees of arrays."""
    flat_a = jax.tree_util.tree_leaves_with_path(a)
    flat_b = jax.tree_util.tree_leaves(b)
    return {jax.tree_util.keystr(path): float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
            for (path, u), v in zip(flat_a, flat_b)}


def dataset(dtype) -> tuple[np.ndarray, np.ndarray]:
    """`N` random inputs and the labels a random linear teacher gives them (no sklearn import)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES))
    y = np.argmax(x @ rng.normal(size=(FEATURES, 10)), axis=1).astype(np.int32)
    return x.astype(dtype), y


def initial_values(model) -> tuple:
    """Initial params and state, drawn with NumPy from the shapes `model.init` would give (no
    compilation), and a key. Fresh buffers on every call: the epochs donate them."""
    _, params, state = jax.eval_shape(lambda key: model.init(key, (BATCH, FEATURES)),
                                      jax.random.key(0))
    rng = np.random.default_rng(1)

    def value(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        if name == "['w']":
            return rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0])
        return np.full(leaf.shape, 1.0 if name in ("['scale']", "['var']") else 0.0)

    values = jax.tree_util.tree_map_with_path(value, (params, state))
    return (*values, jax.random.key(1))


def train_parity(results: dict, label: str, *, dtype=np.float32, partitionable: bool = True,
                 inspect: bool = False) -> None:
    """Trains the same model from the same key on one device and on 8; records both."""
    jax.config.update("jax_threefry_partitionable", partitionable)
    x, y = dataset(dtype)
    model = jdnn.serial(jdnn.Dense(32, use_bias=False), jdnn.BatchNorm(), jdnn.Relu(),
                        jdnn.Dropout(0.3), jdnn.Dense(10))
    optimizer = optax.adam(1e-2)
    step = train_step_fn(model, jdnn.losses.softmax_cross_entropy, optimizer,
                         metrics=("accuracy",))
    seen = {}

    def inspected_step(train_state, xb, yb, mask):
        # Called at compile time with the sharding XLA chose for the batch inside the epoch.
        for name, value in (("x", xb), ("y", yb), ("mask", mask)):
            jax.debug.inspect_array_sharding(
                value, callback=lambda s, name=name, shape=value.shape: seen.update(
                    {name: {"shard_shape": list(s.shard_shape(shape)),
                            "devices": len(s.device_set)}}))
        return step(train_state, xb, yb, mask)

    def create():
        params, state, key = initial_values(model)
        params, state = jax.tree.map(lambda a: jnp.asarray(a, dtype), (params, state))
        return jdnn.TrainState(params, state, optimizer.init(params), key, jnp.zeros((), jnp.int32))

    single = make_epoch(step, BATCH)
    one = create()
    xs, ys = jnp.asarray(x), jnp.asarray(y)
    mesh = parallel.data_mesh()
    run = parallel.make_parallel_epoch(inspected_step if inspect else step, BATCH, mesh)
    many = parallel.replicate(create(), mesh)
    xp, yp = parallel.put_data((x, y), mesh)

    losses = {"single": [], "parallel": []}
    for _ in range(EPOCHS):
        order = epoch_orders(one, N)
        one, means_one = single(one, xs, ys, order)
        many, means_many = run(many, xp, yp, order)
        losses["single"].append([float(means_one["loss"]), float(means_one["accuracy"])])
        losses["parallel"].append([float(means_many["loss"]), float(means_many["accuracy"])])
    out = {"dtype": str(many.params["0_dense"]["w"].dtype), "losses": losses,
           "partitionable": bool(jax.config.jax_threefry_partitionable),
           "diffs": max_diffs((one.params, one.state, one.opt_state),
                              (many.params, many.state, many.opt_state)),
           "steps": [int(one.step), int(many.step)],
           "keys_equal": bool(np.array_equal(jax.random.key_data(one.key),
                                             jax.random.key_data(many.key)))}
    if inspect:
        out["batch_shardings"] = seen
        out["state_replicated"] = all(
            leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == DEVICES
            for leaf in jax.tree.leaves(many))
        hlo = run.lower(many, xp, yp, order).compile().as_text()
        out["hlo"] = {"all_reduce": hlo.count("all-reduce("),
                      "all_gather": hlo.count("all-gather("),
                      "local_batch": f"f32[{BATCH // DEVICES},{FEATURES}]" in hlo}
    results[label] = out


def batch_norm_global(results: dict) -> None:
    """BatchNorm on a batch sharded over 8 devices uses the statistics of the whole batch."""
    bn = jdnn.BatchNorm(momentum=0.0)
    _, params, state = bn.init(None, (BATCH, 3))
    rng = np.random.default_rng(0)
    # Each device's slice has its own offset, so per-device statistics would differ.
    x = (rng.normal(size=(BATCH, 3)) + np.repeat(np.arange(DEVICES), BATCH // DEVICES)[:, None]
         ).astype(np.float32)
    mesh = parallel.data_mesh()
    sharded = jax.device_put(x, parallel.batch_sharding(mesh))
    apply = jax.jit(lambda p, s, xb: bn.apply(p, s, xb, train=True))
    y, new_state = apply(parallel.replicate(params, mesh), parallel.replicate(state, mesh),
                         sharded)
    local_mean = x.reshape(DEVICES, -1, 3).mean(axis=1)
    results["bn"] = {
        "input_devices": len(sharded.sharding.device_set),
        "mean_error": float(np.max(np.abs(np.asarray(new_state["mean"]) - x.mean(axis=0)))),
        "var_error": float(np.max(np.abs(np.asarray(new_state["var"]) - x.var(axis=0)))),
        "local_mean_gap": float(np.max(np.abs(local_mean - x.mean(axis=0)))),
        "output_error": float(np.max(np.abs(np.asarray(y) - (x - x.mean(0)) / np.sqrt(
            x.var(0) + 1e-5)))),
    }


def errors(results: dict) -> None:
    mesh = parallel.data_mesh()
    step = train_step_fn(jdnn.serial(jdnn.Dense(2)), jdnn.losses.mse, optax.sgd(0.1))
    results["bad_batch"] = {}
    for batch_size in (60, 3):
        try:
            parallel.make_parallel_epoch(step, batch_size, mesh)
            results["bad_batch"][batch_size] = None
        except ValueError as error:
            results["bad_batch"][batch_size] = str(error)
    results["devices"] = len(jax.devices())


def main(names: list[str]) -> dict:
    checks = {
        "float32": lambda r: train_parity(r, "float32", inspect=True),
        # float64 for a tight bound; with the older, non-partitionable random bits (masks drawn
        # whole, then sliced), which must give the same dropout masks as one device too.
        "float64": lambda r: train_parity(r, "float64", dtype=np.float64, partitionable=False),
        "bn": batch_norm_global,
        "errors": errors,
    }
    results = {}
    for name in names or checks:
        if name == "float64":
            with jax.enable_x64(True):
                checks[name](results)
        else:
            checks[name](results)
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
