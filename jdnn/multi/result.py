"""What `jdnn.search` returns: the ranked table of trials, their histories and trained states.

Every strategy (grid, random, Bayesian) ends here: one row per trial (`trial_row`), ranked by
the chosen metric (`ranked`), and a `SearchResult` that holds them with each trial's history,
its trained state and, for the Bayesian strategy, the Optuna study that chose the trials.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax
import numpy as np

from jdnn import io
from jdnn.core import Layer
from jdnn.train.history import History
from jdnn.train.state import TrainState


def _plain(value: Any) -> Any:
    """`value` with what JSON cannot hold made plain: NumPy scalars as numbers, a function
    (e.g. `optax.adam` as the space's optimizer) as its qualified name, anything else unknown
    as its `repr`."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', None) or ''}.{value.__qualname__}".lstrip(".")
    return repr(value)


@dataclasses.dataclass
class SearchResult:
    """The outcome of `search`.

    Attributes:
        rows: one dict per trial, best first: `rank`, `trial` (its index in the enumeration),
            its hyper-parameters, its metrics at the chosen epoch (the best one with
            `restore_best`, else the last), `epoch` (that epoch), `epochs` (epochs run) and
            `stopped` (`History.stopped_by`: "early_stopping", "non_finite", "pruned" (Bayesian
            search with a pruner) or ""; the history says more).
        metric, mode: what the rows are sorted by.
        configs: every trial's hyper-parameters, indexed by trial.
        history: one `History` per trial, indexed by trial.
        best_config, best_train_state, best_model: the best trial's hyper-parameters, trained
            `TrainState` (un-stacked) and model (`model_fn(**structural)`).
        study: the `optuna.Study` that chose the trials (`strategy="bayes"`; its trial numbers
            are the rows' `trial`), for Optuna's own tools (`optuna.visualization`,
            `optuna.importance`); None for grid and random search.
    """

    rows: list[dict[str, Any]]
    metric: str
    mode: str
    configs: list[dict[str, Any]]
    history: list[History]
    members: dict[int, tuple] = dataclasses.field(repr=False, default_factory=dict)
    study: Any = dataclasses.field(repr=False, default=None)

    @property
    def best_config(self) -> dict[str, Any]:
        return dict(self.configs[self.rows[0]["trial"]])

    @property
    def best_train_state(self) -> TrainState:
        return self.train_state(self.rows[0]["trial"])

    @property
    def best_model(self) -> Layer:
        return self.model(self.rows[0]["trial"])

    def best_so_far(self) -> np.ndarray:
        """The best `metric` among the first t trials, for t = 1..N, in trial order (NaN
        until a trial gives a finite value): `(N,)`. Search strategies compared under the
        same budget of trials plot this (`jdnn.viz.plot_search_progress`)."""
        values = np.array([row.get(self.metric, math.nan)
                           for row in sorted(self.rows, key=lambda r: r["trial"])], float)
        values[~np.isfinite(values)] = np.nan
        pick = np.fmax if self.mode == "max" else np.fmin
        return pick.accumulate(values) if values.size else values

    def _member(self, where: str, trial: int) -> tuple:
        if isinstance(trial, (bool, np.bool_)) or trial not in self.members:
            raise ValueError(f"SearchResult.{where}: trial must be a trial's index, an int in "
                             f"[0, {len(self.configs)}), got {trial!r}")
        return self.members[trial]

    def train_state(self, trial: int) -> TrainState:
        """Trial `trial`'s trained state (its best epoch's with `restore_best`), un-stacked."""
        _, stacked, j = self._member("train_state", trial)
        return jax.tree.map(lambda leaf: leaf[j], stacked)

    def model(self, trial: int) -> Layer:
        """The model trial `trial` trained."""
        return self._member("model", trial)[0]

    def __str__(self) -> str:
        columns = list(self.rows[0]) if self.rows else []

        def cell(v):
            return f"{v:.4g}" if isinstance(v, float) else str(v) if v != "" else "-"

        table = [columns] + [[cell(row[c]) for c in columns] for row in self.rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
        lines = ["  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return (f"search: {len(self.rows)} trials by {self.metric} ({self.mode})\n"
                + "\n".join(lines) + f"\nbest: {self.best_config}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the metric, the best config, the rows and each trial's history.
        Values JSON cannot hold (an optimizer factory in the space) appear by name."""
        return {"metric": self.metric, "mode": self.mode,
                "best_config": _plain(self.best_config), "rows": _plain(self.rows),
                "configs": _plain(self.configs), "history": [h.to_dict() for h in self.history]}

    def to_json(self, path) -> None:
        """Writes `to_dict()` as JSON, atomically."""
        io.write_text(path, json.dumps(self.to_dict(), indent=2))


def trial_row(trial: int, config: dict[str, Any], history: History, chosen: int
              ) -> dict[str, Any]:
    """One trial's row: its hyper-parameters, its metrics at epoch `chosen` (1-based; 0 for a
    trial that ran no epoch), that epoch, the epochs it ran and why it stopped."""
    record = history.records[chosen - 1] if chosen else {}
    return {"trial": trial, **config,
            **{k: v for k, v in record.items() if k not in ("epoch", "seconds")},
            "epoch": chosen, "epochs": len(history), "stopped": history.stopped_by or ""}


def ranked(rows: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """The rows best first by `metric` (`mode` "max" or "min"), non-finite values last, ties by
    trial index; each gains its `rank`, from 1."""
    sign = -1.0 if mode == "max" else 1.0

    def order(row):
        value = row.get(metric, math.nan)
        return (not math.isfinite(value), sign * value if math.isfinite(value) else 0.0,
                row["trial"])

    return [{"rank": r + 1, **row} for r, row in enumerate(sorted(rows, key=order))]
