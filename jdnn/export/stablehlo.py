"""A trained model as a `jax.export` artifact (StableHLO), which runs with jax alone.

    save(path, model, train_state, input_shape, *, batch="dynamic", platforms=("cpu", "cuda"),
         dtype="float32", padded=False)                    -> path, a folder holding:
        model.stablehlo    `jax.export.Exported.serialize()`: the inference program, params
                           and state embedded as constants (`jdnn.export.inference` says why)
        model.json         what it takes and gives (shapes, dtypes), the model's spec, the
                           platforms, versions, and the SHA-256 of model.stablehlo
    load(path)                                              -> Artifact, called as artifact(x)

A deployer needs no jdnn, only jax (of a version at least as new as the one that saved it):

    import jax, numpy as np
    with open("digits-mlp/model.stablehlo", "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    logits = exported.call(np.zeros((5, 64), np.float32))      # (5, 10)

Each file is written atomically (a temporary file, then `os.replace`), model.json last; `load`
checks the artifact's hash against it, so a folder caught between two saves is refused, never
half loaded.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jaxlib
import numpy as np
from jax import export

from jdnn import io
from jdnn.checkpoint.diff import jsonable
from jdnn.core import Layer, Shape
from jdnn.export.inference import (ExportError, check_model, inference_fn, input_specs,
                                   num_params)
from jdnn.train.state import TrainState

ARTIFACT, METADATA = "model.stablehlo", "model.json"
FORMAT, FORMAT_VERSION = "jdnn.export.stablehlo", 1
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")   # what jax.export lowers for, on any machine
BATCH = "batch"                              # the symbolic batch dimension's name
PRECISIONS = (None, "default", "high", "highest", "bfloat16", "tensorfloat32", "float32")


def _check_platforms(platforms: Any) -> tuple[str, ...]:
    chosen = (platforms,) if isinstance(platforms, str) else tuple(platforms or ())
    unknown = [p for p in chosen if p not in PLATFORMS]
    if not chosen or unknown:
        raise ExportError(f"save: platforms must be a non-empty sequence of {PLATFORMS}, got "
                          f"{platforms!r}; 'cuda' (not 'gpu') for NVIDIA GPUs")
    return tuple(dict.fromkeys(chosen))


def _dims(shape: Sequence[Any]) -> list[int | None]:
    """A shape for JSON: ints, and None for the symbolic batch."""
    return [int(n) if isinstance(n, (int, np.integer)) else None for n in shape]


def _describe(avals: Sequence[Any], names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"name": name, "shape": _dims(a.shape), "dtype": str(a.dtype)}
            for name, a in zip(names, avals)]


def _metadata(model: Layer, train_state: TrainState, exported: export.Exported, blob: bytes,
              batch: str | int, padded: bool) -> dict[str, Any]:
    from jdnn import __version__   # as in jdnn.checkpoint: defined after this module imports

    outputs = ["y_values", "y_lengths"] if len(exported.out_avals) == 2 and padded else \
        [f"y{i}" if len(exported.out_avals) > 1 else "y" for i in range(len(exported.out_avals))]
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "artifact": ARTIFACT, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
        "inputs": _describe(exported.in_avals, ["x", "lengths"] if padded else ["x"]),
        "outputs": _describe(exported.out_avals, outputs),
        "batch": batch, "padded": padded, "platforms": list(exported.platforms),
        "params": "embedded", "num_params": num_params(train_state),
        "step": int(np.asarray(getattr(train_state, "step", -1)).reshape(-1)[0]),
        "spec": jsonable(model.spec.to_dict()), "model": repr(model.spec),
        "versions": {"jdnn": __version__, "jax": jax.__version__,
                     "jaxlib": jaxlib.__version__,
                     "calling_convention": exported.calling_convention_version},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loader": f"jax.export.deserialize(bytearray(open('{ARTIFACT}', 'rb').read()))"
                  f".call(x)",
    }


def save(path: str | os.PathLike, model: Layer, train_state: TrainState, input_shape: Shape, *,
         batch: str | int = "dynamic", platforms: Sequence[str] = ("cpu", "cuda"),
         dtype: Any = "float32", padded: bool = False,
         matmul_precision: str | None = None) -> pathlib.Path:
    """Exports the model's inference function (evaluation mode) with `jax.export`.

    The folder `path` gets `model.stablehlo` (the serialized StableHLO program, params and
    state embedded) and `model.json` (inputs, outputs, spec, platforms, versions, hash). It runs
    without jdnn: `jax.export.deserialize(...).call(x)`, or `jdnn.export.load(path)(x)`.

    Args:
        path: the folder to write (created; the two files in it are replaced atomically).
        model: the network.
        train_state: its trained state (`params` and `state` are embedded).
        input_shape: the input's shape with its batch axis, e.g. `(1, 64)`; the batch entry
            is replaced as `batch` says.
        batch: `"dynamic"`: one symbolic batch axis, any size at run time (>= 1). An int: that
            batch size only (for a runtime that needs static shapes).
        platforms: where the program may run: any of `"cpu"`, `"cuda"`, `"rocm"`, `"tpu"`.
            Lowering needs no such device here; each added platform adds its program's
            branch (Conv2D lowers to different code on CPU and elsewhere).
        dtype: the input's dtype: `"float32"` for features, `"int32"` for token ids.
        padded: True: the program takes `(values (B, T, ...), lengths (B,) int32)`, the two
            arrays of a `jdnn.Padded` batch of sequences of different lengths, and returns
            `(y_values, y_lengths)` where the output keeps its time axis, else `y`.
        matmul_precision: None: jax's default for each platform, as `jdnn.predict` gets in
            process (on NVIDIA GPUs float32 products then run in TF32: on an H200, logits
            differed from the CPU's by ~4e-4 relative). `"highest"`: full float32 products
            everywhere (the same H200 run matched the CPU to 3e-7), or any other value of
            `jax.default_matmul_precision`. Recorded in model.json.

    Returns:
        The folder, as a `pathlib.Path`.

    Raises:
        ExportError: for a bad `input_shape`, `batch`, `dtype` or `platforms`, or a model
            that cannot be exported so (e.g. one that needs a fixed batch size).
        TypeError: for a `model` that is not a `Layer`.

    Examples:
        >>> jdnn.export.save("export/digits", model, train_state, (1, 64))
        >>> jdnn.export.load("export/digits")(x_test).argmax(-1)
    """
    check_model("save", model, train_state)
    chosen = _check_platforms(platforms)
    if matmul_precision not in PRECISIONS:
        raise ExportError(f"save: matmul_precision must be one of {PRECISIONS}, got "
                          f"{matmul_precision!r}")
    specs = input_specs("save", input_shape, batch, dtype, padded,
                        export.symbolic_shape(BATCH)[0] if batch == "dynamic" else None)
    try:
        with jax.default_matmul_precision(matmul_precision):
            exported = export.export(jax.jit(inference_fn(model, train_state, padded)),
                                     platforms=chosen)(*specs)
    except (ValueError, TypeError, jax.errors.JAXTypeError) as error:  # shapes, symbolic dims
        hint = (" With batch='dynamic' the batch size is symbolic; a model that needs it as a "
                "number exports with a fixed batch, e.g. batch=1." if batch == "dynamic" else "")
        raise ExportError(f"save: cannot export {model.spec!r} for inputs "
                          f"{[(s.shape, str(s.dtype)) for s in specs]}: "
                          f"{str(error).splitlines()[0]}.{hint}") from error
    blob = bytes(exported.serialize())
    folder = pathlib.Path(path)
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"save: {folder} is a file; give a folder for the artifact, e.g. "
                          f"{folder.with_suffix('')}")
    io.write_bytes(folder / ARTIFACT, blob)
    metadata = {**_metadata(model, train_state, exported, blob, batch, padded),
                "matmul_precision": matmul_precision}
    io.write_text(folder / METADATA, json.dumps(metadata, indent=2))
    return folder


class Artifact:
    """A loaded StableHLO artifact: call it like `jdnn.predict` without the model.

    Attributes:
        exported: the `jax.export.Exported` (its `.call` is what a deployer without jdnn uses).
        metadata: model.json's contents: inputs, outputs, spec, platforms, versions.
    """

    def __init__(self, exported: export.Exported, metadata: dict[str, Any]):
        self.exported = exported
        self.metadata = metadata
        self._inputs = [(e["name"], tuple(e["shape"]), np.dtype(e["dtype"]))
                        for e in metadata["inputs"]]
        self._call = jax.jit(exported.call)

    def __call__(self, *inputs: Any) -> Any:
        """The model's outputs for `inputs` (`x`, or `values, lengths` for a padded export).

        Args:
            *inputs: arrays as model.json's `inputs` describe them (None: any batch size).
                Floats of another precision are cast to the exported dtype.

        Returns:
            `y` `(B, ...)` as a jax Array, or `(y_values, y_lengths)` for a padded output.

        Raises:
            ValueError: for inputs of the wrong number, shape or kind of dtype.
        """
        if len(inputs) != len(self._inputs):
            raise ValueError(f"the artifact takes {len(self._inputs)} input(s) "
                             f"({', '.join(name for name, _, _ in self._inputs)}), got "
                             f"{len(inputs)}")
        return self._call(*(_check_input(x, *e) for x, e in zip(inputs, self._inputs)))

    def __repr__(self) -> str:
        shapes = ", ".join(f"{e['name']}{tuple(e['shape'])}:{e['dtype']}"
                           for e in self.metadata["inputs"])
        return f"Artifact({self.metadata.get('model', '?')}, inputs {shapes}, platforms " \
               f"{self.metadata.get('platforms')})"


def _check_input(x: Any, name: str, want: tuple, dtype: np.dtype) -> Any:
    """`x` as the program takes it (floats cast to its float dtype), or a ValueError."""
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        x = np.asarray(x)
    fits = len(x.shape) == len(want) and all(w is None or n == w for n, w in zip(x.shape, want))
    shown = "(" + ", ".join("B" if w is None else str(w) for w in want) + ")"
    if not fits:
        raise ValueError(f"input {name} must have shape {shown} (B: any batch size), got "
                         f"{tuple(x.shape)}")
    if x.dtype == dtype:
        return x
    if np.dtype(x.dtype).kind == dtype.kind == "f":
        return x.astype(dtype)
    raise ValueError(f"input {name} must be {dtype} (shape {shown}), got {x.dtype}; cast it, "
                     f"e.g. x.astype('{dtype}')")


def load(path: str | os.PathLike) -> Artifact:
    """Loads a folder written by `save`; returns a callable `Artifact`.

    Args:
        path: the folder holding model.stablehlo and model.json.

    Returns:
        An `Artifact`: `artifact(x)` gives the model's outputs (a jax Array).

    Raises:
        FileNotFoundError: if the folder or either file is missing.
        ExportError: for a model.json of another format, or a model.stablehlo whose hash is
            not the one model.json records (a torn or corrupted copy).

    Examples:
        >>> predict = jdnn.export.load("export/digits")
        >>> labels = np.asarray(predict(x_test)).argmax(-1)
    """
    folder = pathlib.Path(path)
    for name in (METADATA, ARTIFACT):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"load: no {name} in {folder}; give the folder "
                                    f"jdnn.export.save wrote")
    metadata = json.loads((folder / METADATA).read_text())
    if metadata.get("format") != FORMAT or metadata.get("format_version", 0) > FORMAT_VERSION:
        raise ExportError(f"load: {folder / METADATA} is not a {FORMAT} (version <= "
                          f"{FORMAT_VERSION}) artifact's metadata: format "
                          f"{metadata.get('format')!r} version {metadata.get('format_version')}")
    blob = (folder / ARTIFACT).read_bytes()
    if hashlib.sha256(blob).hexdigest() != metadata.get("sha256"):
        raise ExportError(f"load: {folder / ARTIFACT} does not match {METADATA} (SHA-256 "
                          f"differs): the folder is corrupted or holds files of two different "
                          f"saves; export again")
    return Artifact(export.deserialize(bytearray(blob)), metadata)
