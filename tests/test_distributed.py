"""Tests for jdnn.distributed: two processes on this machine train as one JAX program.

`launch` starts this file as a script twice (process 0 and 1, each with 2 simulated CPU
devices, joined by `jax.distributed.initialize` on a free 127.0.0.1 port; CPU collectives are
gloo, JAX's default); each trains data-parallel over the 4 devices of both, and prints one JSON
line. The tests compare that with one process training on the same global batches.
`tests/test_checkpoint_multiprocess.py` launches the same workers with checkpoints to write.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PROCESSES, LOCAL_DEVICES = 2, 2
EPOCHS, BATCH = 2, 16


def problem():
    """The data, model and optimizer every process (and the single-process reference) uses."""
    import optax

    import jdnn

    rng = np.random.default_rng(0)
    x = rng.normal(size=(72, 8)).astype(np.float32)   # 72: the last batch padded and masked
    y = rng.integers(0, 3, 72).astype(np.int32)
    model = jdnn.serial(jdnn.Dense(32), jdnn.Relu(), jdnn.Dense(3))
    return (x, y), model, optax.adam(1e-2)


def train(mesh=None):
    import jdnn

    (x, y), model, optimizer = problem()
    return jdnn.fit(model, (x, y), loss=jdnn.losses.softmax_cross_entropy, optimizer=optimizer,
                    epochs=EPOCHS, batch_size=BATCH, key=0, mesh=mesh, progress=False,
                    validation_data=(x[:20], y[:20]))


def worker(process_id: int, port: int, out: str | None) -> dict:
    import jax

    from jdnn import distributed, parallel

    index, count = distributed.initialize(f"127.0.0.1:{port}", num_processes=PROCESSES,
                                          process_id=process_id)
    mesh = parallel.data_mesh()
    train_state, history = train(mesh)
    params = distributed.to_host(train_state.params)
    result = {"process": index, "processes": count, "devices": len(jax.devices()),
              "local_devices": len(jax.local_devices()), "history": history.records,
              "params": jax.tree.map(lambda a: np.asarray(a).tolist(), params)}
    if out is not None:
        import test_checkpoint_multiprocess

        result.update(test_checkpoint_multiprocess.write_checkpoints(train_state, mesh, out))
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: str | None = None, timeout: float = 120) -> list[dict]:
    """Runs the PROCESSES workers to the end; their results by process index."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p))
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
    env["JDNN_CACHE_DIR"] = "off"
    port = free_port()
    args = [[sys.executable, __file__, str(i), str(port), *([out] if out else [])]
            for i in range(PROCESSES)]
    workers = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=ROOT) for a in args]
    try:
        done = [w.communicate(timeout=timeout) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for w, (_, stderr) in zip(workers, done):
        assert w.returncode == 0, stderr[-3000:]
    return [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in done]


@pytest.fixture(scope="module")
def results():
    return launch()


def test_two_processes_form_one_mesh(results):
    assert [r["process"] for r in results] == [0, 1]
    for r in results:
        assert r["processes"] == PROCESSES
        assert r["devices"] == PROCESSES * LOCAL_DEVICES
        assert r["local_devices"] == LOCAL_DEVICES


def test_two_processes_train_like_one(results):
    import jax

    train_state, history = train()
    expected = jax.tree.map(np.asarray, jax.device_get(train_state.params))
    for r in results:
        got = jax.tree.map(np.asarray, r["params"], is_leaf=lambda v: isinstance(v, list))
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        for mine, theirs in zip(history.records, r["history"]):
            assert theirs["loss"] == pytest.approx(mine["loss"], rel=1e-5)
            assert theirs["val_accuracy"] == pytest.approx(mine["val_accuracy"])


if __name__ == "__main__":
    process, port, *rest = sys.argv[1:]
    print(json.dumps(worker(int(process), int(port), rest[0] if rest else None)))
