"""The pictures `jdnn train` leaves in its run directory."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from jdnn.core import Layer
from jdnn.train.history import History
from jdnn.viz.boundary import plot_decision_boundary
from jdnn.viz.curves import plot_history


def save_run_plots(run_dir, history: History, *, model: Layer | None = None,
                   train_state: Any = None, data: Any = None) -> list[pathlib.Path]:
    """Writes `curves.png` (from the history) into `run_dir` and, when the inputs are 2-D
    points, `boundary.png` (the decision regions of the trained model on `data`).

    Args:
        run_dir: the run directory (created if missing).
        history: the run's `History`.
        model: the trained model (for the boundary).
        train_state: its `TrainState` (its `params` and `state` are used).
        data: an `(x, y)` pair to draw under the decision regions, e.g. the test set.

    Returns:
        The paths written.

    Examples:
        >>> train_state, history = jdnn.fit(model, (x, y), ...)
        >>> save_run_plots("runs/mlp-moons", history, model=model, train_state=train_state,
        ...                data=(x_test, y_test))
    """
    run_dir = pathlib.Path(run_dir)
    written = []
    if len(history):
        written.append(run_dir / "curves.png")
        plot_history(history, path=written[-1])
    if model is not None and train_state is not None and data is not None:
        x, y = data
        if np.ndim(x) == 2 and np.shape(x)[1] == 2:
            written.append(run_dir / "boundary.png")
            plot_decision_boundary(model, train_state.params, train_state.state, x, y,
                                   path=written[-1])
    return written
