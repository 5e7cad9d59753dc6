"""The NumPy backprop reference: jdnn's layers, losses, regularizers and optimizers written out
by hand, forward and backward side by side, the way textbooks derive them.

It imports nothing from jdnn's JAX code. It meets the JAX side only in `jdnn.gradcheck`, the
tests and the benchmarks, where it validates every gradient jdnn computes. A user's layer,
combinator or loss gets a twin the way jdnn's own do: `register_layer(kind, forward,
backward)`, `register_combinator(kind, build)`, `register_loss(loss_fn, numpy_fn)` (see
`jdnn.reference.registry`).
"""

from jdnn.reference import layers, losses, optimizers, regularizers
from jdnn.reference.network import Network, Node, UnknownLayerError, build, numpy_masks
from jdnn.reference.registry import (loss_twin, register_combinator, register_layer,
                                     register_loss)

__all__ = ["Network", "Node", "UnknownLayerError", "build", "layers", "loss_twin", "losses",
           "numpy_masks", "optimizers", "register_combinator", "register_layer", "register_loss",
           "regularizers"]
