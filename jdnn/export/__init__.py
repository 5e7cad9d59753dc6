"""Export a trained model for deployment: artifacts that run without jdnn.

    save(path, model, train_state, input_shape, *, batch="dynamic", platforms=("cpu", "cuda"),
         dtype="float32", padded=False)            -> a folder: model.stablehlo + model.json
    load(path)                                      -> Artifact, called as artifact(x)
    to_onnx(path, model, train_state, input_shape, *, batch="dynamic", dtype="float32")
                                                    -> one .onnx file (extra: jdnn[onnx])

Both run the model in evaluation mode, as `jdnn.predict` does, with the trained params and state
embedded (`jdnn.export.inference` says why). A StableHLO artifact needs only jax to run:

    import jax, numpy as np
    with open("digits-mlp/model.stablehlo", "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    logits = exported.call(np.zeros((5, 64), np.float32))      # (5, 10)

and an ONNX file only onnxruntime (`jdnn.export.onnx`). From a `jdnn train` run directory:
`jdnn export RUN_DIR --format stablehlo|onnx`.
"""

from jdnn.export.inference import ExportError
from jdnn.export.onnx import UnsupportedLayerError, to_onnx
from jdnn.export.stablehlo import Artifact, load, save

__all__ = ["Artifact", "ExportError", "UnsupportedLayerError", "load", "save", "to_onnx"]
