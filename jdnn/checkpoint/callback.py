"""ModelCheckpoint: checkpoints during `fit` that never cost the user a file.

A callback (`jdnn.train.callbacks`) built on `save`: it lives here, with the checkpoints, so that
imports run one way, `jdnn.checkpoint` -> `jdnn.train`, and `jdnn.train` needs nothing from here.

Three rules keep a checkpoint directory safe:

- Rotation deletes only what this run wrote. Each file carries a stamp in its metadata (a
  lineage id shared by a run and its resumptions, a session id, the write time in ns, the
  step); the callback lists the files it wrote, and deletes one only if its header still
  carries the same stamp. A resumed run adopts its predecessors' files, and may rotate them,
  only when a manifest proves the lineage: a file of the starting step whose params checksums
  equal the starting params. Anything else in the directory is never touched, and a name
  already taken by another run's file is written as `epoch-0003-<session>.safetensors`.
- A non-finite state is never saved (loss, params, layer state or optimizer state), so it can
  never replace or rotate away the last finite checkpoint, whatever the callback order.
- The final state is always saved in `on_train_end` (unless it is already on disk, was never
  trained, or is not finite): `every=2` over 5 epochs still keeps epoch 5, and a run that
  `fit` ends early (stopped, interrupted) keeps its progress.

Training on a stream (`jdnn.train.stream`), each file also records where the source stood after
the saved step, `metadata["data_position"]` (`{"step", "state"}`, the source iterator's
`get_state()`), and a run resuming from a file this callback proves (see above) hands that
position to `fit`, which continues from the next example: mid-epoch, bit for bit.

`latest(directory)` ranks files by the write time they record, not by name, so a new run into
an old directory wins over the old run's higher epoch numbers.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import numbers
import pathlib
import time
import uuid
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdnn.checkpoint import disk, fileformat
from jdnn.checkpoint.api import save
from jdnn.checkpoint.fileformat import CheckpointError
from jdnn.core import whole_number
from jdnn.core import path_of
from jdnn.train.callbacks import Callback, Run
from jdnn.train.state import TrainState

PATTERN = "epoch-*.safetensors"
STAMP = "model_checkpoint"  # the metadata key of a file's stamp
POSITION = "data_position"  # the metadata key of a stream's position (`jdnn.train.stream`)


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def is_finite(train_state: TrainState) -> bool:
    """Whether every float in the params, layer state and optimizer state is finite."""
    leaves = [leaf for leaf in jax.tree.leaves((train_state.params, train_state.state,
                                                train_state.opt_state))
              if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return not leaves or bool(_all_finite(leaves))


def _step(train_state: TrainState) -> Any:
    """The step as JSON holds it: an int (a list for a stacked ensemble state)."""
    return np.asarray(jax.device_get(train_state.step)).tolist()


def _header(path: pathlib.Path) -> dict[str, Any] | None:
    """A checkpoint's manifest, or None for a file that is not a readable jdnn checkpoint."""
    try:
        return fileformat.read_manifest(path)
    except (OSError, CheckpointError):
        return None


def _stamp(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    metadata = (manifest or {}).get("metadata")
    stamp = metadata.get(STAMP) if isinstance(metadata, dict) else None
    return stamp if isinstance(stamp, dict) else None


@dataclasses.dataclass(frozen=True)
class _Written:
    """A file rotation may delete: its path and the stamp it must still carry."""

    path: pathlib.Path
    session: str
    saved_ns: int
    step: Any

    @classmethod
    def of(cls, path: pathlib.Path, stamp: dict[str, Any]) -> _Written:
        return cls(path, stamp.get("session"), stamp.get("saved_ns"), stamp.get("step"))

    def still_ours(self) -> bool:
        stamp = _stamp(_header(self.path))
        return (stamp is not None and stamp.get("session") == self.session
                and stamp.get("saved_ns") == self.saved_ns)


def _proves(manifest: dict[str, Any], params: Any) -> bool:
    """Whether `manifest`'s params are exactly `params` (the same paths and checksums)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    values = jax.device_get([leaf for _, leaf in flat])
    mine = {f"params/{path_of(k)}": fileformat.digest(np.asarray(leaf, order="C"))
            for (k, _), leaf in zip(flat, values)}
    saved = {name: entry.get("sha256") for name, entry in manifest["tensors"].items()
             if name.startswith("params/")}
    return mine == saved


def _position_of(manifest: dict[str, Any], step: int) -> dict | None:
    """The data position a checkpoint recorded for its step, or None."""
    metadata = manifest.get("metadata")
    position = metadata.get(POSITION) if isinstance(metadata, dict) else None
    return position if isinstance(position, dict) and position.get("step") == step else None


def _saved_ns(stamp: dict[str, Any]) -> int:
    value = stamp.get("saved_ns")
    return value if isinstance(value, int) else 0


def _last_step(manifest: dict[str, Any]) -> int:
    """A manifest's step as one int (the largest of an ensemble's); 0 if it holds none."""
    step = manifest.get("step")
    steps = step if isinstance(step, list) else [step]
    return max((s for s in steps if isinstance(s, int)), default=0)


def _written_at(manifest: dict[str, Any], path: pathlib.Path) -> int:
    """When a file was written, in ns: its stamp, else its manifest's `created`, else mtime."""
    stamp = _stamp(manifest)
    if stamp is not None and _saved_ns(stamp):
        return _saved_ns(stamp)
    try:
        return int(datetime.datetime.fromisoformat(manifest["created"]).timestamp() * 1e9)
    except (KeyError, TypeError, ValueError):
        return path.stat().st_mtime_ns


class ModelCheckpoint(Callback):
    """Saves a checkpoint every `every` epochs into `directory`, keeping this run's newest `keep`.

    Files are `epoch-0003.safetensors` (see `jdnn.checkpoint`), written atomically; each holds
    `{"epoch", "record", "model_checkpoint": stamp}` as metadata (the epoch's history record and
    the stamp that says which run wrote it), and, training on a stream whose source can save its
    position, `"data_position"`, which a run resumed from the file continues from. The
    directory is created and proven writable in `on_train_begin`, before any training. What
    is kept (see `jdnn.checkpoint.callback`):

    - rotation deletes only files this run wrote (or, resuming, the older checkpoints of the
      run it continues, proven by checksums); another run's files and the user's are never
      deleted or overwritten;
    - an epoch whose loss or state is non-finite is not saved (a `RuntimeWarning` says so), so
      the last finite checkpoint is never replaced or rotated away by a diverged one;
    - the final state is saved in `on_train_end` unless already on disk; put this callback after
      one that replaces the final state (`EarlyStopping(restore_best=True)`) to save that one.

    Args:
        directory: where the checkpoints go; created if absent.
        every: save after every `every`-th epoch (and the final one).
        keep: how many of this run's checkpoints to keep, the newest; `None` keeps all.

    Raises:
        ValueError: for `every` or `keep` not a positive int.
        CheckpointError: in `on_train_begin`, if `directory` cannot be created or written.

    Examples:
        >>> jdnn.fit(..., callbacks=[jdnn.ModelCheckpoint("runs/mlp/checkpoints", keep=3)])
        >>> ts = jdnn.checkpoint.restore(jdnn.ModelCheckpoint.latest("runs/mlp/checkpoints"),
        ...                              model).train_state(optimizer)
    """

    def __init__(self, directory, every: int = 1, keep: int | None = 3):
        self.every = whole_number("ModelCheckpoint", "every", every, minimum=1)
        self.keep = None if keep is None else whole_number("ModelCheckpoint", "keep", keep,
                                                           minimum=1)
        self.directory = pathlib.Path(directory)
        self._session: str | None = None

    def on_train_begin(self, run: Run) -> None:
        disk.check_writable(self.directory, "ModelCheckpoint")
        self._session = uuid.uuid4().hex
        self._start = _step(run.train_state)
        self._epochs: dict[Any, tuple[int, dict]] = {}  # step -> (epoch, record), first seen
        self._warned = self._warned_position = False
        self._position = None   # the data position of the checkpoint resumed from, if any
        self._lineage, self._written = self._adopt(run.train_state)
        if self._position is not None and hasattr(run, "data_position"):
            run.data_position = self._position   # a stream resumes there (jdnn.train.stream)
        adopted = {w.path for w in self._written}
        foreign = sorted(p.name for p in self.directory.glob(PATTERN) if p not in adopted)
        if foreign:
            warnings.warn(
                f"ModelCheckpoint: {self.directory} already holds {len(foreign)} checkpoint "
                f"file(s) this run did not write ({', '.join(foreign[:4])}"
                f"{', ...' if len(foreign) > 4 else ''}); they are kept and never rotated, and "
                f"a name they take gets this run's id as a suffix. Use a fresh directory for "
                f"each run to keep exactly `keep` files", UserWarning, stacklevel=2)

    def _adopt(self, train_state: TrainState) -> tuple[str, list[_Written]]:
        """`(lineage, files)`: when a file in the directory proves that `train_state` is a
        checkpoint of an earlier run, that run's lineage and its files up to this step, oldest
        first; otherwise a new lineage and no files."""
        if not isinstance(self._start, int) or self._start == 0:
            return uuid.uuid4().hex, []
        headers = [(path, _header(path)) for path in sorted(self.directory.glob(PATTERN))]
        stamped = [(path, m, _stamp(m)) for path, m in headers if _stamp(m) is not None]
        for _, manifest, stamp in stamped:
            if manifest.get("step") == self._start and _proves(manifest, train_state.params):
                self._position = _position_of(manifest, self._start)
                older = [(path, s) for path, m, s in stamped
                         if s.get("lineage") == stamp.get("lineage")
                         and _last_step(m) <= self._start]
                older.sort(key=lambda item: _saved_ns(item[1]))
                return stamp.get("lineage"), [_Written.of(path, s) for path, s in older]
        return uuid.uuid4().hex, []

    def on_epoch_end(self, run: Run) -> None:
        if self._session is None:
            return
        record = run.history.records[-1]
        step = _step(run.train_state)
        self._epochs.setdefault(str(step), (run.epoch, dict(record)))
        if run.epoch % self.every:
            return
        self._save_if_finite(run, run.epoch, record, step)

    def on_train_end(self, run: Run) -> None:
        if self._session is None:
            return
        step = _step(run.train_state)
        on_disk = any(w.step == step and w.still_ours() for w in self._written)
        if step == self._start or on_disk:
            return
        last = run.history.records[-1] if run.history.records else {}
        epoch, record = self._epochs.get(str(step), (run.epoch, last))
        self._save_if_finite(run, epoch, record, step)

    def _save_if_finite(self, run: Run, epoch: int, record: dict, step: Any) -> None:
        loss = record.get("loss")
        if isinstance(loss, numbers.Real) and not math.isfinite(loss):
            self._skip(epoch, f"its loss is {loss}")
        elif not is_finite(run.train_state):
            self._skip(epoch, "its state holds a non-finite value")
        else:
            self._save(run, epoch, record, step)

    def _skip(self, epoch: int, why: str) -> None:
        if not self._warned:
            kept = self._written[-1].path.name if self._written else "none yet"
            warnings.warn(f"ModelCheckpoint: epoch {epoch} not saved: {why}; the last finite "
                          f"checkpoint stays ({kept}). Non-finite epochs are never saved",
                          RuntimeWarning, stacklevel=3)
            self._warned = True

    def _target(self, epoch: int) -> pathlib.Path:
        path = self.directory / f"epoch-{epoch:04d}.safetensors"
        if path.exists() and path not in {w.path for w in self._written}:
            return self.directory / f"epoch-{epoch:04d}-{self._session[:8]}.safetensors"
        return path

    def _save(self, run: Run, epoch: int, record: dict, step: Any) -> None:
        path = self._target(epoch)
        written = _Written(path, self._session, time.time_ns(), step)
        stamp = {"lineage": self._lineage, "session": self._session,
                 "saved_ns": written.saved_ns, "step": step}
        # Accounted for before the save: an interrupt between the rename and this line would
        # otherwise leave a file of this run that rotation never deletes. Until the file carries
        # this stamp, `still_ours` is False and rotation leaves whatever is there alone.
        self._written = [w for w in self._written if w.path != path] + [written]
        metadata = {"epoch": epoch, "record": record, STAMP: stamp}
        position = self._data_position(run, step)
        if position is not None:
            metadata[POSITION] = position
        save(path, run.train_state, run.model, metadata=metadata)
        while self.keep is not None and len(self._written) > self.keep:
            old = self._written.pop(0)
            if old.still_ours():
                old.path.unlink(missing_ok=True)

    def _data_position(self, run: Run, step: Any) -> dict | None:
        """The run's data position (a stream's, `jdnn.train.stream`) if it belongs to `step`
        and JSON can hold it; a source state JSON cannot hold is left out, with a warning."""
        position = getattr(run, "data_position", None)
        if not (isinstance(position, dict) and position.get("step") == step):
            return None
        try:
            json.dumps(position)
        except (TypeError, ValueError) as error:
            if not self._warned_position:
                warnings.warn(f"ModelCheckpoint: the data source's position cannot be saved "
                              f"({error}); get_state() must return JSON values or bytes. The "
                              f"checkpoint resumes at an epoch's start only", RuntimeWarning,
                              stacklevel=3)
                self._warned_position = True
            return None
        return position

    @staticmethod
    def latest(directory) -> pathlib.Path | None:
        """The newest checkpoint in `directory` by the write time its metadata records, or None.

        Files `ModelCheckpoint` wrote (stamped) rank above any other `epoch-*.safetensors`
        (an older jdnn's, or a user's `epoch-best.safetensors`), which rank by the time in their
        manifest; ties go to the higher step. Files that are not readable jdnn checkpoints are
        ignored. The newest written is the state a run ended with: after a second run into the
        same directory, that run's last checkpoint, whatever its epoch number.
        """
        ranked = []
        for path in pathlib.Path(directory).glob(PATTERN):
            manifest = _header(path)
            if manifest is None:
                continue
            rank = (_stamp(manifest) is not None, _written_at(manifest, path),
                    _last_step(manifest))
            ranked.append((rank, path))
        return max(ranked)[1] if ranked else None
