"""A trained model as an ONNX file, through the `jax2onnx` converter, checked in onnxruntime.

    to_onnx(path, model, train_state, input_shape, *, batch="dynamic", dtype="float32")
                                                            -> path, one .onnx file

The optional extra `pip install jdnn[onnx]` (jax2onnx, onnxruntime) is imported here only when
called, never by `import jdnn`. The file is self-contained: params and state are initializers
(`jdnn.export.inference` says why), and `metadata_props` record the model's spec and versions.
A deployer runs it with onnxruntime alone:

    import numpy as np, onnxruntime as ort
    session = ort.InferenceSession("digits-mlp.onnx")
    logits = session.run(None, {"x": np.zeros((5, 64), np.float32)})[0]      # (5, 10)

How a model becomes the file:
1. jax2onnx converts the inference function's jaxpr. Conv2D states its convolution per platform
   (`lax.platform_dependent`: im2col + GEMM on CPU, XLA's convolution elsewhere); ONNX is not
   the CPU, so the `platform_index` that chooses is converted as XLA lowers it for a GPU, the
   constant index of the convolution branch (a plugin registered with jax2onnx here).
2. onnxruntime loads the converted model and saves it after its basic, provider-independent
   graph optimizations (constant folding, which removes the resolved branch), keeping only the
   opsets its nodes use: standard ONNX that any runtime reads.
3. onnxruntime runs it on a few random inputs against jax; a difference is an error.
A model the converter cannot express raises `UnsupportedLayerError` naming the layer kinds at
fault, found by converting each layer on its own (jax2onnx 0.17: MultiHeadAttention, the
reversed scans of `bidirectional` and `reverse=True` recurrences).

Padded sequences (`jdnn.Padded`) are not exported to ONNX: jax2onnx 0.17 types the masked scan
of a padded recurrence wrongly (onnxruntime refuses the file). Sequence models export for
full-length inputs; for variable lengths use `jdnn.export.save(..., padded=True)` (StableHLO).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from jdnn import io
from jdnn.checkpoint.diff import jsonable
from jdnn.core import Layer, Shape, UnknownKindError, join, rebuild
from jdnn.export.inference import (ExportError, check_model, inference_fn, input_specs,
                                   num_params)
from jdnn.train.state import TrainState

BATCH = "B"   # the batch axis's name in the ONNX graph


class UnsupportedLayerError(ExportError):
    """The converter cannot express some layers of the model.

    Attributes:
        layers: `[(path, layer, reason)]`, one per layer that fails to convert on its own
            (while its sublayers convert): its path, its spec (as text), the converter's word.
    """

    def __init__(self, message: str, layers: list[tuple[str, str, str]]):
        super().__init__(message)
        self.layers = layers


def _require() -> tuple[Any, Any, Any]:
    """`(jax2onnx, onnx, onnxruntime)`, or an ImportError saying how to install them."""
    try:
        import jax2onnx
        import onnx
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"jdnn.export.to_onnx needs the optional extra 'onnx' (jax2onnx and "
                          f"onnxruntime): pip install 'jdnn[onnx]' ({error})") from error
    _register_platform_index()
    return jax2onnx, onnx, onnxruntime


_REGISTERED = []


def _register_platform_index() -> None:
    """Teaches jax2onnx `platform_index` (see the module docstring, step 1), once."""
    if _REGISTERED:
        return
    from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

    @register_primitive(jaxpr_primitive="platform_index", context="jdnn.export",
                        component="platform_index", since="jdnn 0.1.0", testcases=[])
    class PlatformIndex(PrimitiveLeafPlugin):
        """The branch a GPU would take: the one listing "cuda", else the default one."""

        def lower(self, ctx, eqn):
            platforms = eqn.params["platforms"]
            index = next((i for i, names in enumerate(platforms) if names and "cuda" in names),
                         next((i for i, names in enumerate(platforms) if names is None), None))
            if index is None:
                raise NotImplementedError(f"platform_dependent with branches for {platforms} "
                                          f"only: none for a GPU, none default")
            ctx.bind_const_for_var(eqn.outvars[0], np.asarray(index, np.int32))

    _REGISTERED.append(PlatformIndex)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences the converter's warnings about value types it does not serialize."""
    logger = logging.getLogger("onnx_ir")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _convert(fn: Callable, specs: tuple[jax.ShapeDtypeStruct, ...]) -> Any:
    """`fn` as an ONNX `ModelProto`, converted and optimized (module docstring, steps 1-2)."""
    jax2onnx, onnx, ort = _require()
    with _quiet():
        proto = jax2onnx.to_onnx(fn, list(specs), model_name="jdnn",
                                 input_names=["x", "lengths"][:len(specs)])
    with tempfile.TemporaryDirectory() as folder:
        raw, optimized = os.path.join(folder, "raw.onnx"), os.path.join(folder, "opt.onnx")
        with open(raw, "wb") as f:
            f.write(proto.SerializeToString())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = optimized
        options.log_severity_level = 3
        ort.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
        model = onnx.load(optimized)
    used = {node.domain for node in _nodes(model.graph)} | {""}
    kept = [opset for opset in model.opset_import if opset.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def _nodes(graph: Any) -> Iterator[Any]:
    """Every node of an ONNX graph, those in subgraphs (If, Loop bodies) too."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _nodes(sub)


def _subtree(tree: Any, path: str) -> Any:
    for name in path.split("/") if path else ():
        tree = tree[name]
    return tree


def _layer_inputs(model: Layer, train_state: TrainState,
                  specs: tuple[jax.ShapeDtypeStruct, ...]) -> list[tuple[str, Layer, Any]]:
    """`[(path, layer, input spec)]` of every layer, recorded in an abstract run of the model
    rebuilt from its spec (children before their combinator)."""
    seen: list[tuple[str, Layer, Any]] = []

    def record(path: str, spec: Any, layer: Layer) -> Layer:
        def apply(params, state, x, *, key=None, train=False):
            seen.append((path, layer, jax.ShapeDtypeStruct((BATCH, *x.shape[1:]), x.dtype)))
            return layer.apply(params, state, x, key=key, train=train)

        return Layer(layer.init, apply, layer.spec)

    twin = rebuild(model.spec, record)
    concrete = [jax.ShapeDtypeStruct((2, *s.shape[1:]), s.dtype) for s in specs]
    jax.eval_shape(inference_fn(twin, train_state), *concrete)
    return seen


def _culprits(model: Layer, train_state: TrainState,
              specs: tuple[jax.ShapeDtypeStruct, ...]) -> list[tuple[str, str, str]]:
    """The layers that fail to convert on their own while all their sublayers convert:
    `[(path, repr(spec), the converter's first line)]`."""
    failed: dict[str, tuple[str, str]] = {}
    for path, layer, spec in _layer_inputs(model, train_state, specs):
        params = _subtree(train_state.params, path)
        state = _subtree(train_state.state, path)
        try:
            _convert(lambda x, layer=layer, p=params, s=state:
                     layer.apply(p, s, x, train=False)[0], (spec,))
        except Exception as error:   # noqa: BLE001 (any converter failure names the layer)
            failed[path] = (repr(layer.spec), f"{type(error).__name__}: "
                                              f"{str(error).strip().splitlines()[0][:200]}")
    return [(path, layer, reason) for path, (layer, reason) in failed.items()
            if not any(other != path and other.startswith(join(path, "")) for other in failed)]


def _unsupported(model: Layer, train_state: TrainState, specs: tuple[jax.ShapeDtypeStruct, ...],
                 error: Exception) -> UnsupportedLayerError:
    version = importlib.metadata.version("jax2onnx")
    first = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
    try:
        layers = _culprits(model, train_state, specs)
    except UnknownKindError:   # a kind no constructor is registered for: no layer-wise probe
        layers = []
    named = "; ".join(f"{layer} at {path or '<root>'} ({reason})"
                      for path, layer, reason in layers)
    what = (f"cannot express {len(layers)} layer(s) of the model: {named}" if layers
            else f"failed to convert {model.spec!r}: {first}")
    return UnsupportedLayerError(
        f"to_onnx: jax2onnx {version} {what}. Export this model with jdnn.export.save "
        f"(StableHLO runs every jdnn layer), or replace those layers", layers)


def _check(model_bytes: bytes, fn: Callable, specs: tuple[jax.ShapeDtypeStruct, ...]) -> None:
    """Step 3: onnxruntime against jax on three random examples."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((3, *s.shape[1:])).astype(s.dtype) if s.dtype.kind == "f"
              else np.zeros((3, *s.shape[1:]), s.dtype) for s in specs]
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: x for i, x in zip(session.get_inputs(), inputs)})
    want = [np.asarray(y) for y in jax.tree.leaves(jax.jit(fn)(*inputs))]
    for g, w in zip(got, want):
        scale = max(1.0, float(np.max(np.abs(w))) if w.size else 1.0)
        if g.shape != w.shape or not np.allclose(g, w, rtol=1e-4, atol=1e-4 * scale):
            worst = float(np.max(np.abs(g - w))) if g.shape == w.shape else None
            raise ExportError(f"to_onnx: the converted model disagrees with jax on random inputs "
                              f"(shapes {g.shape} vs {w.shape}, largest difference {worst}); "
                              f"this is a converter bug: export with jdnn.export.save instead")


def to_onnx(path: str | os.PathLike, model: Layer, train_state: TrainState, input_shape: Shape,
            *, batch: str | int = "dynamic", dtype: Any = "float32") -> pathlib.Path:
    """Exports the model's inference function (evaluation mode) as one ONNX file.

    Converted by jax2onnx, optimized and checked against jax by onnxruntime (see the module
    docstring). The graph's input is named `x` (`(B, ...)`, B any batch size when dynamic).

    Args:
        path: the file to write, e.g. `"digits.onnx"` (written atomically; folders created).
        model: the network.
        train_state: its trained state (`params` and `state` become initializers).
        input_shape: the input's shape with its batch axis, e.g. `(1, 8, 8, 1)`; the batch
            entry is replaced as `batch` says.
        batch: `"dynamic"` (a symbolic axis named `B`) or a fixed batch size.
        dtype: the input's dtype: `"float32"` for features, `"int32"` for token ids.

    Returns:
        The file written, as a `pathlib.Path`.

    Raises:
        ImportError: without the `onnx` extra (`pip install 'jdnn[onnx]'`).
        UnsupportedLayerError: for layers the converter cannot express; its message and
            `.layers` name each one's kind and path.
        ExportError: for a bad `input_shape`, `batch` or `dtype`, or a converted model that
            disagrees with jax.

    Examples:
        >>> jdnn.export.to_onnx("digits.onnx", model, train_state, (1, 64))
    """
    _require()
    check_model("to_onnx", model, train_state)
    specs = input_specs("to_onnx", input_shape, batch, dtype, False, BATCH)
    fn = inference_fn(model, train_state)
    try:
        converted = _convert(fn, specs)
    except Exception as error:   # noqa: BLE001 (never a raw converter traceback)
        raise _unsupported(model, train_state, specs, error) from None
    _annotate(converted, model, train_state, batch)
    data = converted.SerializeToString()
    _check(data, fn, specs)
    return io.write_bytes(path, data)


def _annotate(converted: Any, model: Layer, train_state: TrainState, batch: str | int) -> None:
    """Records the spec, the batch, the parameter count and versions in `metadata_props`."""
    from jdnn import __version__

    versions = {name: importlib.metadata.version(name)
                for name in ("jax", "jax2onnx", "onnx", "onnxruntime")}
    props = {"jdnn.model": repr(model.spec), "jdnn.spec": json.dumps(jsonable(
                 model.spec.to_dict())),
             "jdnn.batch": str(batch), "jdnn.num_params": str(num_params(train_state)),
             "jdnn.versions": json.dumps({"jdnn": __version__, **versions})}
    converted.producer_name, converted.producer_version = "jdnn (jax2onnx)", __version__
    for key, value in props.items():
        entry = converted.metadata_props.add()
        entry.key, entry.value = key, value

