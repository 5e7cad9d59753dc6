"""Tests for jdnn.checkpoint: bit-exact round trips, the file format, atomicity, validation."""

import datetime
import fcntl
import functools
import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy

import jdnn
from jdnn.checkpoint import (
    Checkpoint,
    CheckpointError,
    disk,
    fileformat,
    restore,
    restore_matching,
    save,
)
from jdnn.layers import BatchNorm, Conv2D, Dense, Flatten, PRelu, Relu, serial
from jdnn.train.state import TrainState

INPUT_SHAPE = (4, 6, 6, 1)

OPTIMIZERS = {
    "adam": lambda: optax.adam(1e-3),
    "sgd_momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "clip_adamw": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)),
    "inject_adam": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
}


def conv_model(features=4, classes=10):
    return serial(Conv2D(features, (3, 3)), BatchNorm(), PRelu(), Flatten(), Dense(classes))


MODEL = conv_model()


def strong(tree):
    """`tree` without weak types (PRelu's init has one), so a jitted step compiles once."""
    return jax.tree.map(lambda a: a if fileformat.is_typed_key(a) else a.astype(a.dtype), tree)


@functools.cache
def setup(name):
    """`(optimizer, step)` for MODEL: a plain jitted step (softmax cross-entropy), built once per
    optimizer so tests share its compilation, and independent of jdnn.train.step."""
    optimizer = OPTIMIZERS[name]()

    @jax.jit
    def step(ts, x, y):
        def loss_fn(params):
            logits, new_state = MODEL.apply(params, ts.state, x, train=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, new_state

        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(ts.params)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        key, _ = jax.random.split(ts.key)
        params = optax.apply_updates(ts.params, updates)
        return TrainState(params, new_state, opt_state, key, ts.step + 1), loss

    return optimizer, step


def batch():
    x = jax.random.normal(jax.random.key(7), INPUT_SHAPE)
    return x, jnp.arange(INPUT_SHAPE[0]) % 10


@functools.cache
def model_init():
    """MODEL's (params, state), initialized once in one compiled call (eager is slower)."""
    init = jax.jit(lambda key: MODEL.init(key, INPUT_SHAPE)[1:])
    return strong(init(jax.random.key(0)))


def random_init(model, input_shape, seed):
    """Random numpy (params, state) for `model` without running its init (nothing compiles)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), input_shape)[1:])
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


@functools.cache
def trained_state(name):
    """MODEL trained for 2 steps with the optimizer `name`, so no optimizer leaf is trivial."""
    optimizer, step = setup(name)
    params, state = model_init()
    ts = TrainState(params, state, optimizer.init(params), jax.random.key(0),
                    jnp.zeros((), jnp.int32))
    for _ in range(2):
        ts, _ = step(ts, *batch())
    return ts


def raw(leaf):
    """A leaf's dtype, shape and exact bytes (for a typed key: its dtype and data)."""
    if fileformat.is_typed_key(leaf):
        return str(leaf.dtype), np.asarray(jax.random.key_data(leaf)).tobytes()
    array = np.asarray(leaf)
    return (array.dtype.name, array.shape), array.tobytes()


def assert_bitwise_equal(a, b):
    flat_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
    flat_b, tree_b = jax.tree_util.tree_flatten_with_path(b)
    assert tree_a == tree_b
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        assert raw(x) == raw(y), jax.tree_util.keystr(path)


@pytest.fixture
def trained(tmp_path):
    """The Adam-trained MODEL saved in a fresh directory: (model, optimizer, ts, path)."""
    ts = trained_state("adam")
    return MODEL, setup("adam")[0], ts, save(tmp_path / "ckpt.safetensors", ts, MODEL)


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_round_trip_then_training_is_bit_identical(tmp_path, name):
    optimizer, step = setup(name)
    ts = trained_state(name)
    path = save(tmp_path / "ckpt.safetensors", ts, MODEL)
    restored = restore(path, MODEL, like=ts.params).train_state(optimizer)
    assert_bitwise_equal(restored, ts)
    assert restored.step.dtype == jnp.int32 and restored.step.shape == () and restored.step == 2

    original, again = ts, restored
    for _ in range(3):
        original, loss_a = step(original, *batch())
        again, loss_b = step(again, *batch())
        assert raw(loss_a) == raw(loss_b)
    assert_bitwise_equal(again, original)
    assert raw(original.params["4_dense"]["w"]) != raw(ts.params["4_dense"]["w"])  # it trained
    assert step._cache_size() == 1  # the restored state compiles to the same step


def test_restored_trees_have_the_structure_init_returns(trained):
    model, _, ts, path = trained
    ckpt = restore(path)
    assert isinstance(ckpt, Checkpoint)
    assert list(ckpt.params) == list(ts.params)  # insertion order kept
    assert ckpt.params["3_flatten"] == {} and ckpt.state["0_conv2d"] == {}
    assert_bitwise_equal((ckpt.params, ckpt.state), (ts.params, ts.state))
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(ckpt.params))


@pytest.mark.parametrize("make_key", [
    lambda: jax.random.PRNGKey(0), lambda: jax.random.key(0),
    lambda: jax.random.key(0, impl="rbg"),
], ids=["old_style_uint32", "typed_threefry", "typed_rbg"])
def test_keys_round_trip(tmp_path, make_key):
    model, optimizer = serial(Dense(3)), optax.sgd(0.1)
    params, state = random_init(model, (2, 4), 0)
    ts = TrainState(params, state, optimizer.init(params), make_key(), np.int32(3))
    ckpt = restore(save(tmp_path / "k.safetensors", ts, model))
    restored = ckpt.train_state(optimizer)
    assert_bitwise_equal(restored, ts)
    assert ckpt.manifest["key"]["typed"] == fileformat.is_typed_key(ts.key)
    assert raw(jax.random.normal(restored.key, (5,))) == raw(jax.random.normal(ts.key, (5,)))


def test_a_key_inside_the_optimizer_state_round_trips(tmp_path):
    model, optimizer = serial(Dense(3)), optax.chain(optax.add_noise(0.1, 0.5, 0), optax.sgd(0.1))
    params, state = random_init(model, (2, 4), 0)
    ts = TrainState(params, state, optimizer.init(params), jax.random.key(1), np.int32(0))
    ckpt = restore(save(tmp_path / "noise.safetensors", ts, model))
    assert ckpt.manifest["tensors"]["opt_state/0/rng_key"]["key_impl"] == "threefry2x32"
    assert_bitwise_equal(ckpt.train_state(optimizer), ts)


def test_bfloat16_is_stored_natively(tmp_path):
    model = serial(Dense(3))
    params, state = random_init(model, (2, 4), 0)
    ts = TrainState(params, state, (), jax.random.key(0), np.int32(0))
    ts = ts._replace(params=jax.tree.map(lambda a: a.astype(jnp.bfloat16), ts.params),
                     opt_state=optax.sgd(0.1, momentum=0.9).init(ts.params))
    path = save(tmp_path / "bf16.safetensors", ts, model)
    data = path.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert header["params/0_dense/w"]["dtype"] == "BF16"
    ckpt = restore(path)
    assert ckpt.params["0_dense"]["w"].dtype == jnp.bfloat16
    assert_bitwise_equal(ckpt.params, ts.params)


def test_unsupported_dtype_is_refused_before_writing(tmp_path):
    model = serial(Dense(3))
    params, state = random_init(model, (2, 4), 0)
    ts = TrainState(params, state, (), jax.random.key(0), np.int32(0))
    ts = ts._replace(state={"odd": jnp.zeros((4,), jnp.int4)})
    with pytest.raises(CheckpointError, match="cannot store state/odd: dtype int4 has no"):
        save(tmp_path / "x.safetensors", ts, model)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("params, found", [
    ({"0_dense": {"w": np.ones(2), "b": None}}, "params/0_dense/b: .* found a NoneType"),
    ({"0_dense": (np.ones(2), np.ones(2))}, "params/0_dense: .* found a tuple"),
])
def test_params_must_be_nested_dicts_of_arrays(tmp_path, params, found):
    ts = TrainState(params, {}, (), jax.random.key(0), np.int32(0))
    with pytest.raises(CheckpointError, match=found):
        save(tmp_path / "x.safetensors", ts, serial(Dense(2)))


# --- the file ---------------------------------------------------------------------------------


def test_file_is_plain_safetensors_with_a_manifest(trained):
    model, _, ts, path = trained
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    for name in ["params/0_conv2d/w", "state/1_batchnorm/mean", "opt_state/0/count",
                 "opt_state/0/mu/0_conv2d/w", "opt_state/0/nu/4_dense/b", "key", "step"]:
        assert name in header, name
    loaded = safetensors.numpy.load(data)  # any safetensors reader can read it
    np.testing.assert_array_equal(loaded["params/4_dense/w"], ts.params["4_dense"]["w"])
    manifest = json.loads(header["__metadata__"]["jdnn"])
    assert manifest["format_version"] == fileformat.FORMAT_VERSION
    assert manifest["jdnn_version"] == jdnn.__version__
    assert manifest["spec"] == json.loads(json.dumps(model.spec.to_dict()))
    assert manifest["step"] == 2 and manifest["key"] == {"typed": True, "impl": "threefry2x32",
                                                         "shape": []}
    assert sorted(manifest["params"]["paths"]) == sorted(jdnn.regularizers.leaf_paths(ts.params))
    assert manifest["opt_state"]["num_leaves"] == len(jax.tree.leaves(ts.opt_state))
    assert manifest["tensors"]["params/0_conv2d/w"]["shape"] == [3, 3, 1, 4]
    assert set(manifest["tensors"]) == set(loaded)
    assert datetime.datetime.fromisoformat(manifest["created"]).tzinfo is not None


def test_module_never_uses_pickle():
    sources = Path(fileformat.__file__).parent.glob("*.py")
    for source in sources:
        text = source.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib)\b", text,
                             re.MULTILINE), source
        assert "allow_pickle" not in text and "np.load(" not in text, source


def test_metadata_round_trips(tmp_path, trained):
    model, _, ts, _ = trained
    metadata = {"epoch": 3, "val": {"acc": 0.5, "history": [1, 2.5, None]}, "name": "run",
                "best": True, "shape": (28, 28)}
    ckpt = restore(save(tmp_path / "m.safetensors", ts, model, metadata=metadata))
    assert ckpt.metadata == {**metadata, "shape": [28, 28]}  # JSON: tuples come back as lists


@pytest.mark.parametrize("metadata, message", [
    ({"lr": np.float32(1e-3)}, r"metadata\['lr'\] is a float32, not JSON-serializable"),
    ({"tags": {"a", "b"}}, r"metadata\['tags'\] is a set"),
    ({"run": {"log": [1, object()]}}, r"metadata\['run'\]\['log'\]\[1\] is a object"),
    ({1: "one"}, r"metadata: key 1 is not a string"),
    ([("epoch", 1)], r"metadata must be a dict, got a list"),
])
def test_non_json_metadata_is_rejected(tmp_path, trained, metadata, message):
    model, _, ts, _ = trained
    with pytest.raises(CheckpointError, match=message):
        save(tmp_path / "bad.safetensors", ts, model, metadata=metadata)
    assert not (tmp_path / "bad.safetensors").exists()


# --- atomic writes ----------------------------------------------------------------------------


def _half_write(monkeypatch):
    real = os.write

    def write(fd, data):
        real(fd, bytes(data[: len(data) // 2]))
        raise OSError("disk full")

    monkeypatch.setattr(disk.os, "write", write)


def _fail(name):
    def patch(monkeypatch):
        def boom(*args, **kwargs):
            raise OSError(f"simulated crash in {name}")
        monkeypatch.setattr(disk.os, name, boom)
    return patch


@pytest.mark.parametrize("crash", [_half_write, _fail("fsync"), _fail("replace")],
                         ids=["half_written", "fsync", "replace"])
def test_a_crash_mid_save_leaves_the_previous_checkpoint(tmp_path, trained, monkeypatch, crash):
    model, _, ts, _ = trained
    path = save(tmp_path / "run" / "last.safetensors", ts, model, metadata={"v": 1})
    newer = ts._replace(params=jax.tree.map(lambda a: a + 1, ts.params), step=ts.step + 1)
    crash(monkeypatch)
    with pytest.raises(OSError):
        save(path, newer, model, metadata={"v": 2})
    monkeypatch.undo()
    assert os.listdir(path.parent) == ["last.safetensors"]  # no temporary file left
    ckpt = restore(path)
    assert ckpt.metadata == {"v": 1} and ckpt.step == ts.step
    assert_bitwise_equal(ckpt.params, ts.params)


@pytest.mark.parametrize("umask, mode", [(0o077, 0o600), (0o002, 0o664), (0o022, 0o644)])
def test_files_get_the_mode_the_umask_gives(tmp_path, trained, umask, mode):
    model, _, ts, _ = trained
    old = os.umask(umask)
    try:
        path = save(tmp_path / "m.safetensors", ts, model)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def _orphan(directory, name, age):
    """A temporary file as a crashed `write_atomic` leaves it, last modified `age` s ago."""
    fd, tmp = disk._create_temp(directory / name)
    os.write(fd, b"half a checkpoint")
    os.close(fd)
    os.utime(tmp, (os.path.getmtime(tmp) - age,) * 2)
    return Path(tmp)


def test_the_next_save_removes_orphaned_temporary_files_only(tmp_path, trained):
    model, _, ts, _ = trained
    old = _orphan(tmp_path, "epoch-0003.safetensors", age=3600)    # a crash an hour ago
    other = _orphan(tmp_path, "last.ckpt", age=3600)               # any target in the folder
    recent = _orphan(tmp_path, "epoch-0004.safetensors", age=60)   # maybe a live, slow writer
    live = _orphan(tmp_path, "epoch-0005.safetensors", age=3600)   # a writer holding its lock
    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    foreign = [tmp_path / ".notes.txt.0123abcd.tmp", tmp_path / "x.jdnn.tmp",
               tmp_path / ".a.safetensors.0123abcd.tmp"]            # not jdnn's pattern
    for path in foreign:
        path.write_bytes(b"mine")
        os.utime(path, (0, 0))
    try:
        save(tmp_path / "new.safetensors", ts, model)
    finally:
        os.close(holder)
    assert not old.exists() and not other.exists()
    assert recent.exists() and live.exists() and all(path.exists() for path in foreign)
    assert restore(tmp_path / "new.safetensors").step == ts.step


def test_save_creates_directories_and_replaces(tmp_path, trained):
    model, _, ts, _ = trained
    path = tmp_path / "a" / "b" / "c.safetensors"
    assert save(str(path), ts, model) == path
    save(path, ts._replace(step=ts.step + 5), model)
    assert restore(path).step == 7 and os.listdir(path.parent) == ["c.safetensors"]


# --- damaged files ----------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="restore: no checkpoint at"):
        restore(tmp_path / "nothing.safetensors")


def test_a_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"restore: .* is a directory, not a checkpoint "
                                              r"file; .*ModelCheckpoint.latest"):
        restore(tmp_path)
    with pytest.raises(CheckpointError, match="restore_matching: .* is a directory"):
        restore_matching(tmp_path, {})


@pytest.mark.parametrize("cut", [lambda n, size: n // 2, lambda n, size: 8 + size,
                                 lambda n, size: n - 1, lambda n, size: 4, lambda n, size: 0],
                         ids=["half", "header_only", "last_byte", "four_bytes", "empty"])
def test_truncated_file_is_refused(trained, cut):
    *_, path = trained
    data = path.read_bytes()
    path.write_bytes(data[:cut(len(data), int.from_bytes(data[:8], "little"))])
    with pytest.raises(CheckpointError, match="truncated|too short|corrupted"):
        restore(path)


@pytest.mark.parametrize("where, message", [
    (lambda size: 8, "not a valid safetensors file"),               # the opening brace
    (lambda size: 3, "truncated or corrupted"),                     # the header length
    (lambda size: 8 + size + 5, "fails its checksum"),             # a tensor's bytes
    (lambda size: -1, "fails its checksum"),
])
def test_corrupted_file_is_refused(trained, where, message):
    *_, path = trained
    data = bytearray(path.read_bytes())
    data[where(int.from_bytes(data[:8], "little"))] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=message):
        restore(path)


def test_a_plain_safetensors_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.safetensors"
    path.write_bytes(safetensors.numpy.save({"w": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match="not a jdnn checkpoint"):
        restore(path)


def _rewrite(path, edit=lambda tensors: None, edit_manifest=lambda manifest: None):
    """Rewrites a checkpoint with `edit(tensors)` and `edit_manifest(manifest)` applied."""
    data = path.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    tensors = dict(safetensors.numpy.load(data))
    edit(tensors)
    manifest = json.loads(header["__metadata__"]["jdnn"])
    edit_manifest(manifest)
    metadata = {**header["__metadata__"], "jdnn": json.dumps(manifest)}
    path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))


def test_a_tensor_missing_from_the_file_is_never_a_partial_load(trained):
    *_, path = trained
    _rewrite(path, lambda tensors: tensors.pop("params/0_conv2d/b"))
    with pytest.raises(CheckpointError, match="params/0_conv2d/b listed in the manifest but"):
        restore(path)
    with pytest.raises(CheckpointError, match="params/0_conv2d/b listed"):
        restore_matching(path, {})


def test_an_unlisted_or_altered_tensor_is_refused(trained):
    *_, path = trained
    _rewrite(path, lambda tensors: tensors.update({"params/extra": np.ones(2, np.float32),
                                                   "step": np.array(9, np.int32)}))
    with pytest.raises(CheckpointError, match="params/extra present but not in the manifest; "
                                              "step fails its checksum"):
        restore(path)


def test_a_manifest_whose_trees_disagree_with_its_tensors_is_refused(trained):
    *_, path = trained

    def edit(manifest):
        del manifest["params"]["tree"]["0_conv2d"]["b"]
        manifest["state"]["tree"]["1_batchnorm"]["count"] = None
        manifest["opt_state"]["num_leaves"] = 3

    _rewrite(path, edit_manifest=edit)
    with pytest.raises(CheckpointError) as error:
        restore(path)
    message = str(error.value)
    assert "inconsistent manifest: state/1_batchnorm/count in the trees but not stored" in message
    assert "params/0_conv2d/b stored but in no tree" in message
    assert "3 optimizer leaves announced, 15 listed" in message


# --- validation against a model, a params tree, an optimizer ----------------------------------


def test_a_different_model_is_named_layer_by_layer(trained):
    *_, path = trained
    with pytest.raises(CheckpointError, match=re.escape(
            "layer 4_dense: Dense(features=10) saved, Dense(features=5) given")):
        restore(path, conv_model(classes=5))
    other = serial(Conv2D(4, (3, 3)), BatchNorm(), Relu(), Flatten(), Dense(10), Dense(2))
    with pytest.raises(CheckpointError) as error:
        restore(path, other)
    assert "layer 2_prelu: PRelu(alpha_init=0.25) saved, Relu() given" in str(error.value)
    assert "layer 5_dense: not in the checkpoint, Dense(features=2," in str(error.value)
    with pytest.raises(CheckpointError, match=r"layer 4_dense: Dense\(features=10, .*\) saved, "
                                              r"absent from the given model"):
        restore(path, serial(Conv2D(4, (3, 3)), BatchNorm(), PRelu(), Flatten()))


def test_like_lists_every_path_and_shape_difference(tmp_path):
    def shapes(model):
        return jax.eval_shape(lambda: model.init(jax.random.key(0), INPUT_SHAPE)[1:])

    model = conv_model(features=32)
    params, state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes(model))
    ts = TrainState(params, state, optax.sgd(0.1).init(params), jax.random.key(0),
                    np.zeros((), np.int32))
    path = save(tmp_path / "c.safetensors", ts, model)
    like, _ = shapes(conv_model(features=16))
    like = {**{k: v for k, v in like.items() if k != "4_dense"}, "9_dense": {"w": np.ones(2)}}
    with pytest.raises(CheckpointError) as error:
        restore(path, like=like)
    message = str(error.value)
    for part in ["missing 9_dense/w", "unexpected 4_dense/w", "unexpected 4_dense/b",
                 "shape mismatch 0_conv2d/w: (3, 3, 1, 32) saved vs (3, 3, 1, 16) expected",
                 "shape mismatch 2_prelu/alpha: (32,) saved vs (16,) expected"]:
        assert part in message, part
    assert restore(path, like=shapes(model)[0]).params["0_conv2d"]["w"].shape == (3, 3, 1, 32)
    f16 = jax.tree.map(lambda a: a.astype(np.float16), params)
    with pytest.raises(CheckpointError, match="dtype mismatch 0_conv2d/b: float32 saved vs "
                                              "float16 expected"):
        restore(path, like=f16)


def test_a_different_optimizer_is_a_readable_error(trained):
    *_, path = trained
    ckpt = restore(path)
    with pytest.raises(CheckpointError) as error:
        ckpt.train_state(optax.sgd(0.1, momentum=0.9))
    message = str(error.value)
    assert message.startswith("optimizer state mismatch (15 leaves saved, 7 from this optimizer)")
    assert "saved opt_state/0/count, opt_state/0/mu/0_conv2d/b" in message
    assert "not produced by this optimizer" in message
    assert "this optimizer has opt_state/0/trace/0_conv2d/b" in message
    new_rate = ckpt.train_state(optax.adam(1e-2))  # same structure, new learning rate: fine
    assert new_rate.opt_state[0].count == 2


# --- nesting ----------------------------------------------------------------------------------


def _nested(depth, leaf):
    """`{"a": {"a": ... leaf}}` with `depth` dicts, built without recursion."""
    for _ in range(depth):
        leaf = {"a": leaf}
    return leaf


def _with_params_tree(path, tree_json):
    """Rewrites the checkpoint at `path` with `tree_json` (raw JSON text) as its params tree."""
    data = path.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    manifest = json.loads(header["__metadata__"]["jdnn"])
    manifest["params"]["tree"] = "TREE"
    text = json.dumps(manifest).replace('"TREE"', tree_json)
    metadata = {**header["__metadata__"], "jdnn": text}
    path.write_bytes(safetensors.numpy.save(dict(safetensors.numpy.load(data)), metadata=metadata))


@pytest.mark.parametrize("depth, message", [
    (100_000, "the manifest nests too deeply to parse"),   # json itself would recurse
    (100, "the params tree nests more than 64 levels deep"),
])
def test_a_deeply_nested_manifest_is_refused(trained, depth, message):
    *_, path = trained
    _with_params_tree(path, '{"a":' * depth + "null" + "}" * depth)
    with pytest.raises(CheckpointError, match=message):
        restore(path)
    with pytest.raises(CheckpointError, match=message):
        restore_matching(path, {})


def test_save_refuses_what_restore_would_refuse_and_keeps_the_limit(tmp_path):
    model = serial(Dense(2))
    ts = TrainState(_nested(64, np.ones(2, np.float32)), {}, (), jax.random.key(0), np.int32(0))
    ckpt = restore(save(tmp_path / "deep.safetensors", ts, model))   # 64 levels: the limit
    assert_bitwise_equal(ckpt.params, ts.params)
    with pytest.raises(CheckpointError, match="save: the params tree nests more than 64"):
        save(tmp_path / "x.safetensors", ts._replace(params={"b": ts.params}), model)
    with pytest.raises(CheckpointError, match="save: the metadata nests more than 64"):
        save(tmp_path / "x.safetensors", ts, model, metadata=_nested(5000, 1))
    assert not (tmp_path / "x.safetensors").exists()
