"""Tests for jdnn.checkpoint with several processes (jdnn.checkpoint.multiprocess).

Two processes (`test_distributed.launch`) train data-parallel, then write with every engine:
the replicated state and an FSDP state sharded ACROSS the processes into one safetensors file
each (gathered, written by process 0 only), and, where orbax-checkpoint is installed, the
sharded state with orbax. This process (one process, one device) restores them all.
"""

import importlib.util
import os

import jax
import numpy as np
import pytest

from test_distributed import launch, train

HAS_ORBAX = importlib.util.find_spec("orbax") is not None


def write_checkpoints(train_state, mesh, out: str) -> dict:
    """Run in each worker: writes the checkpoints, counting this process's file writes."""
    import jdnn
    from jdnn import sharding
    from jdnn.checkpoint import api, multiprocess

    writes = []
    write_atomic = api.write_atomic
    api.write_atomic = lambda path, data: (writes.append(str(path)), write_atomic(path, data))
    (_, model, _) = __import__("test_distributed").problem()
    jdnn.checkpoint.save(os.path.join(out, "replicated.safetensors"), train_state, model)
    sharded = sharding.shard_state(train_state, mesh, min_size=64)
    spans = not sharded.params["0_dense"]["w"].is_fully_addressable
    jdnn.checkpoint.save(os.path.join(out, "sharded.safetensors"), sharded, model)
    result = {"writes": writes, "spans_processes": spans, "files_after_save": sorted(
        f for f in os.listdir(out) if f.endswith(".safetensors"))}
    if HAS_ORBAX:
        multiprocess.save_sharded(os.path.join(out, "orbax"), sharded, model)
        back = multiprocess.restore_sharded(os.path.join(out, "orbax"), sharded,
                                            sharding.fsdp_shardings(sharded, mesh, min_size=64))
        same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                            jdnn.distributed.to_host(back.params),
                            jdnn.distributed.to_host(sharded.params))
        result["orbax_roundtrip"] = all(jax.tree.leaves(same))
        result["orbax_spec"] = list(back.params["0_dense"]["w"].sharding.spec)
    return result


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("checkpoints")
    return out, launch(str(out))


def test_written_once_by_process_0(written):
    _, results = written
    assert len(results[0]["writes"]) == 2 and results[1]["writes"] == []
    assert results[0]["spans_processes"] and results[1]["spans_processes"]
    for r in results:   # every process returns after the file is whole: it sees both
        assert r["files_after_save"] == ["replicated.safetensors", "sharded.safetensors"]


@pytest.mark.parametrize("name", ["replicated", "sharded"])
def test_restores_in_one_process_as_trained_in_one(written, name):
    import jdnn

    out, _ = written
    expected, _ = train()
    _, model, optimizer = __import__("test_distributed").problem()
    restored = jdnn.checkpoint.restore(out / f"{name}.safetensors", model).train_state(optimizer)
    assert int(restored.step) == int(expected.step)
    for a, b in zip(jax.tree.leaves((expected.params, expected.opt_state)),
                    jax.tree.leaves((restored.params, restored.opt_state))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    # and it trains on: the restored state is an ordinary one-process state
    (x, y), _, _ = __import__("test_distributed").problem()
    jdnn.fit(model, (x, y), loss=jdnn.losses.softmax_cross_entropy, optimizer=optimizer,
             epochs=1, batch_size=16, train_state=restored, progress=False)


@pytest.mark.skipif(not HAS_ORBAX, reason="orbax-checkpoint is not installed (jdnn[orbax])")
def test_orbax_sharded_engine(written):
    from jdnn.checkpoint import multiprocess

    out, results = written
    for r in results:
        assert r["orbax_roundtrip"] and r["orbax_spec"] == [None, "data"]
    expected, _ = train()
    like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), expected)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restored = multiprocess.restore_sharded(out / "orbax", like, jax.tree.map(lambda _: one, like))
    for a, b in zip(jax.tree.leaves(expected.params), jax.tree.leaves(restored.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_restore_sharded_refuses_a_directory_it_did_not_write(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    from jdnn.checkpoint import CheckpointError, multiprocess

    with pytest.raises(CheckpointError, match="not a checkpoint written by save_sharded"):
        multiprocess.restore_sharded(tmp_path, like=None)
