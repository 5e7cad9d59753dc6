"""Training: the `TrainState` pytree and the compiled training and evaluation steps."""

from jdnn.train.state import TrainState
from jdnn.train.step import make_eval_step, make_train_step

__all__ = ["TrainState", "make_eval_step", "make_train_step"]
