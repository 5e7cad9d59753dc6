"""Compression after (or during) training: magnitude pruning and int8 quantization.

    prune(params, sparsity)                      -> (pruned, masks)      one shot
    gradual(optimizer, target_sparsity, ...)     -> optax transformation  pruning while training
    sparsity(params)                             -> {path: fraction of zeros}
    quantize(model, params, state, calibration)  -> (qmodel, qparams)    int8 inference

Distillation is a loss: `jdnn.losses.distillation`. Quantization computes with qwix, an
optional extra (`pip install 'jdnn[quant]'`), imported only when `quantize` runs: importing this
package needs nothing beyond jdnn's own dependencies.
"""

from jdnn.compress.prune import (GradualPruningState, apply_masks, gradual, magnitude_masks,
                                 polynomial_sparsity, prune, sparsity)
from jdnn.compress.quantize import Int8Ops, input_absmax, quantize, quantize_kernel

__all__ = ["apply_masks", "gradual", "GradualPruningState", "input_absmax", "Int8Ops",
           "magnitude_masks", "polynomial_sparsity", "prune", "quantize", "quantize_kernel",
           "sparsity"]
