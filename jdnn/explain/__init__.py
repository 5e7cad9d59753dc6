"""Explaining what a trained network learned: which inputs a class's score depends on
(attributions) and which input a class or a unit responds to most (activation maximization).

    attr = jdnn.explain.integrated_gradients(model, ts.params, ts.state, x, target)  # (B, ...)
    images = jdnn.explain.activation_maximization(model, ts.params, ts.state, range(10),
                                                  shape=(8, 8, 1), key=0)           # (10, ...)

Everything here runs the model in inference mode and is compiled once per model, options and
input shape. The pictures are in `jdnn.viz` (`plot_attributions`, `plot_maximized_inputs`).
"""

from jdnn.explain.attributions import integrated_gradients, saliency, smoothgrad
from jdnn.explain.maximization import activation_maximization
from jdnn.explain.perturbation import occlusion

__all__ = ["activation_maximization", "integrated_gradients", "occlusion", "saliency",
           "smoothgrad"]
