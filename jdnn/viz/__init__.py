"""Pictures of networks and training, drawn with matplotlib on pyplot-free `Figure`s.

Every function returns the `Figure` (with the numbers it shows in `fig.jdnn_data`) and saves
it when given `path=` (PNG, SVG or PDF by extension). Nothing here changes matplotlib's
backend or touches `pyplot`.
"""

from jdnn.viz.animation import animate_training, render_gif, xor_frames
from jdnn.viz.attributions import plot_attributions, plot_maximized_inputs
from jdnn.viz.boundary import decision_grid, plot_decision_boundary
from jdnn.viz.common import save
from jdnn.viz.curves import best_epoch, plot_histories, plot_history
from jdnn.viz.filters import plot_feature_maps, plot_filters
from jdnn.viz.gradients import GradientFlow, plot_gradient_flow
from jdnn.viz.network import draw_network, node_activations
from jdnn.viz.run_plots import save_run_plots
from jdnn.viz.search import plot_importances, plot_search_progress
from jdnn.viz.trace import layer_outputs

__all__ = [
    "animate_training", "best_epoch", "decision_grid", "draw_network", "GradientFlow",
    "layer_outputs", "node_activations", "plot_attributions", "plot_decision_boundary",
    "plot_feature_maps", "plot_filters", "plot_gradient_flow", "plot_histories", "plot_history",
    "plot_importances", "plot_maximized_inputs", "plot_search_progress", "render_gif", "save",
    "save_run_plots", "xor_frames",
]
