"""Training: the `TrainState` pytree, the compiled steps, `fit` with its callbacks and history,
evaluation/prediction over whole datasets, and the persistent compilation cache `fit` turns on
(`enable_compilation_cache`)."""

from jdnn.train.callbacks import (Callback, CSVLogger, EarlyStopping, JSONLogger, PrintLogger,
                                  ReduceLROnPlateau, Run, TerminateOnNaN)
from jdnn.train.compilation_cache import enable_compilation_cache
from jdnn.train.epoch import epoch_fn, make_epoch
from jdnn.train.evaluate import evaluate, make_evaluator, predict
from jdnn.train.fit import fit
from jdnn.train.history import History
from jdnn.train.precision import Precision
from jdnn.train.state import TrainState
from jdnn.train.step import make_eval_step, make_train_step

__all__ = [
    "Callback", "CSVLogger", "EarlyStopping", "enable_compilation_cache", "epoch_fn",
    "evaluate", "fit", "History",
    "JSONLogger", "make_epoch", "make_eval_step", "make_evaluator", "make_train_step",
    "Precision", "predict", "PrintLogger", "ReduceLROnPlateau", "Run", "TerminateOnNaN",
    "TrainState",
]


def __getattr__(name: str):
    """`jdnn.train.ModelCheckpoint`, the old home of `jdnn.checkpoint.ModelCheckpoint` (imported
    on first use: jdnn.checkpoint builds on jdnn.train, not the other way)."""
    if name == "ModelCheckpoint":
        from jdnn.checkpoint import ModelCheckpoint
        return ModelCheckpoint
    raise AttributeError(f"module 'jdnn.train' has no attribute {name!r}")
