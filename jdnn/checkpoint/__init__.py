"""Checkpoints: a `TrainState` in one safetensors file with a JSON manifest; no pickle.

    save(path, train_state, model, *, metadata=None)        -> pathlib.Path
    restore(path, model=None, *, like=None)                 -> Checkpoint
    Checkpoint.train_state(optimizer)                       -> TrainState
    restore_matching(path, params, *, state=None, only=None, exclude=None)
                                                            -> (params, state, MatchReport)

The file is plain safetensors, readable by any safetensors reader. Tensors are named by path:
`params/0_dense/w`, `state/1_batchnorm/mean`, `opt_state/0/mu/0_dense/w` (the optax state's key
path: tuple indices and NamedTuple fields), `key` (a typed key's `jax.random.key_data`, or the
raw uint32 key), `step`. The header's `__metadata__["jdnn"]` holds the manifest, JSON:

    format_version, jdnn_version, jax_version, created (UTC, ISO 8601),
    spec                 the model's `Spec.to_dict()`
    tensors              {name: {shape, dtype, sha256, key_impl (typed keys only)}}
    params, state        {tree: the nested dicts with null leaves, paths: [...]}
    opt_state            {paths: [...], num_leaves, treedef (for messages)}
    step, key            the step as an int; {typed, impl, shape} of the key
    metadata             the user's JSON metadata

Writes are atomic (temporary file, fsync, rename), create files as a plain `open` would (mode
0o666 less the umask), and delete the temporary files crashed writes left behind (jdnn's own,
untouched for 10 minutes, not locked by a live writer); reads check every tensor's presence,
shape, dtype, byte size and checksum against the manifest before anything is returned, and
refuse a directory or a manifest nested more than 64 levels deep (256 for the whole JSON).
Dtypes are stored natively (bfloat16 as BF16, float8 kinds too); ones safetensors has no code
for (complex128, int4) are refused at save time with a `CheckpointError`.

`restore_matching` restores layer by layer, each whole or not at all, and reports why.
`ModelCheckpoint` (also `jdnn.ModelCheckpoint`) is the callback that saves during `fit` and
rotates only the files its own run wrote.

Imports run one way: this package builds on `jdnn.train` (the `TrainState`, the `Callback`
base) and `jdnn.train` imports nothing from it.
"""

from jdnn.checkpoint.api import Checkpoint, restore, save
from jdnn.checkpoint.callback import ModelCheckpoint
from jdnn.checkpoint.fileformat import FORMAT_VERSION, CheckpointError
from jdnn.checkpoint.transfer import LayerMatch, MatchReport, restore_matching

__all__ = [
    "FORMAT_VERSION", "Checkpoint", "CheckpointError", "LayerMatch", "MatchReport",
    "ModelCheckpoint", "restore", "restore_matching", "save",
]
