"""`jdnn gradcheck`: every zoo model, with every loss, checked by `check_gradients`.

Together the zoo models use every layer kind jdnn has, so a clean run says each layer's
gradient, as jax computes it, agrees with the hand-written NumPy backprop and with finite
differences, in training and in evaluation mode.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from jdnn import losses, regularizers
from jdnn.cli import zoo
from jdnn.core import LayerError, whole_number
from jdnn.gradcheck import TOLERANCES, GradReport, check_gradients

# Each loss with the outputs and targets it needs: (loss function, outputs, target kind).
LOSSES = {
    "mse": (losses.mse, 3, "regression"),
    "binary_cross_entropy": (losses.binary_cross_entropy, 1, "binary"),
    "softmax_cross_entropy": (losses.softmax_cross_entropy, 4, "classes"),
    "softmax_cross_entropy_smoothed": (
        functools.partial(losses.softmax_cross_entropy, label_smoothing=0.1), 4, "classes"),
}
MODES = {"train": (True,), "eval": (False,), "both": (True, False)}


class Row(NamedTuple):
    """One check: which model, loss and mode, its report and how long it took."""

    model: str
    loss: str
    train: bool
    report: GradReport
    seconds: float


def _check_options(models, loss_names, mode, dtype, seed, batch, l1, l2) -> None:
    where = "jdnn gradcheck"
    for what, given, known in (("model", models, zoo.MODELS), ("loss", loss_names, LOSSES)):
        unknown = [name for name in given if name not in known]
        if unknown or not given:
            raise ValueError(f"{where}: unknown {what} {unknown or given!r}; choose from "
                             f"{sorted(known)}")
    for what, value, known in (("mode", mode, MODES), ("dtype", dtype, TOLERANCES)):
        if value not in known:
            raise ValueError(f"{where}: {what} must be one of {sorted(known)}, got {value!r}")
    whole_number(where, "batch", batch, 1)
    whole_number(where, "seed", seed, 0)
    for name, value in (("l1", l1), ("l2", l2)):
        ok = (isinstance(value, (int, float, np.integer, np.floating))
              and not isinstance(value, (bool, np.bool_)) and math.isfinite(value) and value >= 0)
        if not ok:
            raise ValueError(f"{where}: {name} must be a finite number >= 0, got {value!r}")


def run(models: list[str], loss_names: list[str], *, mode: str = "both", dtype: str = "float64",
        seed: int = 0, batch: int = 4, l1: float = 1e-3, l2: float = 1e-2) -> list[Row]:
    """Checks each model with each loss (and an L1 + L2 penalty) in the given modes.

    Args:
        models: names from `jdnn.cli.zoo.MODELS`.
        loss_names: names from `LOSSES`.
        mode: `"train"`, `"eval"` or `"both"`.
        dtype: `"float64"` or `"float32"`.
        seed: seeds the parameters, the data, the dropout masks and the sampled coordinates.
        batch: the batch size.
        l1, l2: the penalty strengths (weights only), so regularizers are checked too.

    Returns:
        One `Row` per (model, loss, mode).

    Raises:
        ValueError: for an unknown model, loss, mode or dtype, a `batch` < 1, a `seed` < 0
            or a penalty strength that is not a finite number >= 0, before any check runs;
            and for a model that cannot run at this batch in a mode (BatchNorm on a batch of
            one vector in training). The message names `jdnn gradcheck` and the option.
    """
    _check_options(models, loss_names, mode, dtype, seed, batch, l1, l2)
    rows = []
    for name in models:
        for loss_name in loss_names:
            loss, outputs, targets = LOSSES[loss_name]
            model = zoo.MODELS[name].build(outputs)
            x, y = zoo.example_batch(name, batch, outputs, targets, seed=seed)
            _, params, state = model.init(jax.random.key(seed), x.shape)
            for train in MODES[mode]:
                start = time.perf_counter()
                try:
                    report = check_gradients(
                        model, params, state, x, y, loss, key=jax.random.key(seed + 1),
                        train=train, penalty=regularizers.penalty(l1=l1, l2=l2), dtype=dtype,
                        seed=seed)
                except LayerError as error:  # e.g. BatchNorm on one example in training
                    raise ValueError(
                        f"jdnn gradcheck: {name} / {loss_name} in "
                        f"{'training' if train else 'evaluation'} mode at batch {batch} cannot "
                        f"run: {error}. Pick another --batch or --mode") from None
                rows.append(Row(name, loss_name, train, report, time.perf_counter() - start))
    return rows


def table(rows: list[Row]) -> str:
    """One line per check: the worst relative errors against the reference and finite
    differences, the forward-pass difference, and the verdict."""
    header = (f"{'model':<12} {'loss':<31} {'mode':<6} {'vs reference':>12} {'vs finite diff':>14} "
              f"{'forward':>9} {'seconds':>8}  ok")
    lines = [header, "-" * len(header)]
    for row in rows:
        r = row.report
        ref = max((p.reference_rel for p in r.params), default=0.0)
        fd = max((p.fd_rel for p in r.params if p.fd_rel is not None), default=0.0)
        lines.append(f"{row.model:<12} {row.loss:<31} {'train' if row.train else 'eval':<6} "
                     f"{ref:>12.2e} {fd:>14.2e} {r.forward_error:>9.1e} {row.seconds:>8.1f}  "
                     f"{'yes' if r.ok else 'NO'}")
    failed = [row for row in rows if not row.report.ok]
    lines.append(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return "\n".join(lines)


def to_json(rows: list[Row]) -> list[dict[str, Any]]:
    """The rows with their full reports, JSON-ready."""
    return [{"model": row.model, "loss": row.loss, "mode": "train" if row.train else "eval",
             "seconds": row.seconds, **row.report.to_dict()} for row in rows]
