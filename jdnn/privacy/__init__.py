"""Privacy: what looks at each example's gradient on its own. Per-example gradients
(`per_example`), ghost clipping (`ghost`: each example's gradient norm without forming the
gradient) and the DP-SGD training step built on them (`dp`)."""

from jdnn.privacy.dp import make_dp_train_step
from jdnn.privacy.ghost import ghost_clipped_grad
from jdnn.privacy.per_example import PerExampleAux, clip_and_aggregate, per_example_grads

__all__ = ["clip_and_aggregate", "ghost_clipped_grad", "make_dp_train_step", "PerExampleAux",
           "per_example_grads"]
