"""The NumPy backprop reference: jdnn's layers, losses, regularizers and optimizers written out
by hand, forward and backward side by side, the way textbooks derive them.

It imports nothing from jdnn's JAX code. It meets the JAX side only in `jdnn.gradcheck`, the
tests and the benchmarks, where it validates every gradient jdnn computes.
"""

from jdnn.reference import layers, losses, optimizers, regularizers
from jdnn.reference.network import Network, UnknownLayerError, build, numpy_masks

__all__ = ["Network", "UnknownLayerError", "build", "layers", "losses", "numpy_masks",
           "optimizers", "regularizers"]
