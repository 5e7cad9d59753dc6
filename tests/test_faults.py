"""Standing fault injection: the adversarial cases of issue 11, kept so regressions fail CI.

Each case is something a user (or a crash) can do; each asserts that nothing is lost and
nothing is silent: a clean error naming what is wrong, or a result equal to the undamaged one.
Module tests hold the detail; this file holds the cases end to end. The property-based sweep of
bad training data is `tests/test_faults_properties.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import optax
import pytest

import jdnn
from jdnn.checkpoint import CheckpointError, restore, save

MODEL = jdnn.serial(jdnn.Dense(8), jdnn.BatchNorm(), jdnn.Relu(), jdnn.Dense(3))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """`(path, bytes, checkpoint)`: a small trained-shape state saved once."""
    ts = jdnn.TrainState.create(MODEL, optax.adam(1e-3), jax.random.key(0), (4, 5))
    path = save(tmp_path_factory.mktemp("ckpt") / "a.safetensors", ts, MODEL,
                metadata={"epoch": 1})
    return path, path.read_bytes(), restore(path, MODEL)


def _same(a, b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y, equal_nan=True)
        for x, y in zip(leaves_a, leaves_b))


# --- damaged checkpoints ----------------------------------------------------------------------


def test_single_byte_flips_fail_cleanly_or_change_nothing(saved, tmp_path):
    """Flip every 11th byte (and every byte of the length prefix): each damaged file either
    raises `CheckpointError` or restores exactly the saved state, never anything else."""
    _, data, good = saved
    target = tmp_path / "flipped.safetensors"
    positions = sorted({*range(8), *range(0, len(data), 11), len(data) - 1})
    outcomes = {"refused": 0, "unchanged": 0}
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= 0x5A
        target.write_bytes(bytes(damaged))
        try:
            ckpt = restore(target, MODEL)
        except CheckpointError:
            outcomes["refused"] += 1
            continue
        assert _same((ckpt.params, ckpt.state, ckpt.opt_state_leaves, ckpt.step),
                     (good.params, good.state, good.opt_state_leaves, good.step)), position
        assert np.array_equal(jax.random.key_data(ckpt.key), jax.random.key_data(good.key))
        outcomes["unchanged"] += 1
    assert outcomes["refused"] > len(positions) // 2, outcomes


def test_every_truncation_is_refused(saved, tmp_path):
    _, data, _ = saved
    target = tmp_path / "cut.safetensors"
    for size in sorted({*range(0, 16), *range(16, len(data), 97), len(data) - 1}):
        target.write_bytes(data[:size])
        with pytest.raises(CheckpointError):
            restore(target)


_WRITER = textwrap.dedent("""
    import sys, jax, jax.numpy as jnp, optax, jdnn
    from jdnn.checkpoint import save
    model = jdnn.serial(jdnn.Dense(1024), jdnn.Relu(), jdnn.Dense(1024))
    ts = jdnn.TrainState.create(model, optax.sgd(0.1), jax.random.key(0), (1, 1024))
    step = 0
    while True:
        ts = ts._replace(step=jnp.asarray(step, ts.step.dtype))
        save(sys.argv[1], ts, model, metadata={"step": step})
        step += 1
        print(step, flush=True)
""")


def test_kill_9_during_saves_never_breaks_the_last_checkpoint(tmp_path):
    """A process saving ~8 MB checkpoints in a loop is SIGKILLed at an arbitrary moment; the
    file it was replacing is whole and readable."""
    path = tmp_path / "live.safetensors"
    rng = np.random.default_rng()
    for _ in range(1):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)],
                                  stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "JAX_PLATFORMS": "cpu"})
        try:
            for _ in range(2):                  # at least two saves completed
                assert writer.stdout.readline(), "the writer died before saving"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        ckpt = restore(path)
        assert ckpt.metadata["step"] == int(ckpt.step)
