"""Pictures of hyper-parameter searches: how fast strategies find good configurations under
the same budget of trials, and which hyper-parameters mattered (Optuna's importances)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jdnn.multi import bayes
from jdnn.multi.result import SearchResult
from jdnn.viz.common import finish, new_figure

COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2", "#937860")


def _results(where: str, value: Any) -> list[SearchResult]:
    runs = [value] if isinstance(value, SearchResult) else list(value)
    if not runs or not all(isinstance(r, SearchResult) for r in runs):
        raise TypeError(f"{where}: each strategy maps to a SearchResult or a list of them (one "
                        f"per seed), got {value!r:.80}")
    return runs


def plot_search_progress(results: Mapping[str, SearchResult | Sequence[SearchResult]], *,
                         title: str | None = None, path=None) -> Figure:
    """The best metric so far against the number of trials used, one line per strategy.

    Given several results per strategy (one per seed), the line is their mean and the band
    spans the lowest to the highest; runs of different lengths are cut to the shortest.

    Args:
        results: strategy name -> a `SearchResult` (`jdnn.search`'s), or a list of them; all
            ranked by the same metric.
        title: the figure's title.
        path: save the figure there (`.png`, `.svg`, `.pdf`).

    Returns:
        The figure; `fig.jdnn_data` maps each strategy to its mean best-so-far `(trials,)`.

    Raises:
        ValueError: for no results, or results ranked by different metrics.

    Examples:
        >>> plot_search_progress({"random": [r0, r1], "bayes": [b0, b1]}, path="progress.png")
    """
    if not results:
        raise ValueError("plot_search_progress: results is empty; give {strategy name: "
                         "SearchResult or [SearchResult, ...]}")
    runs = {name: _results("plot_search_progress", value) for name, value in results.items()}
    metrics = {r.metric for rs in runs.values() for r in rs}
    if len(metrics) != 1:
        raise ValueError(f"plot_search_progress: the results rank by different metrics "
                         f"{sorted(metrics)}; compare searches of one metric")
    metric = metrics.pop()
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    means = {}
    for i, (name, rs) in enumerate(runs.items()):
        length = min(len(r.rows) for r in rs)
        curves = np.stack([r.best_so_far()[:length] for r in rs])
        trials = np.arange(1, length + 1)
        color = COLORS[i % len(COLORS)]
        means[name] = curves.mean(axis=0)
        label = name if len(rs) == 1 else f"{name} (mean of {len(rs)})"
        ax.plot(trials, means[name], color=color, label=label, drawstyle="steps-post")
        if len(rs) > 1:
            ax.fill_between(trials, curves.min(axis=0), curves.max(axis=0), color=color,
                            alpha=0.15, step="post", linewidth=0)
    ax.set_xlabel("trials used")
    ax.set_ylabel(f"best {metric} so far")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"best {metric} against trials")
    return finish(fig, path, **means)


def plot_importances(result: SearchResult | Any, *, evaluator: Any = None,
                     title: str | None = None, path=None) -> Figure:
    """How much each hyper-parameter mattered, from Optuna's importance evaluators.

    Needs Optuna (the optional extra `jdnn[search]`). A grid or random search's result works
    too: its trials are put in a study first (`jdnn.multi.bayes.study_of`).

    Args:
        result: a `SearchResult`, or an `optuna.Study`.
        evaluator: an `optuna.importance` evaluator; Optuna's default (fANOVA) if None.
        title: the figure's title.
        path: save the figure there (`.png`, `.svg`, `.pdf`).

    Returns:
        The figure; `fig.jdnn_data["importances"]` maps names to importances (they sum to 1).

    Raises:
        ImportError: without Optuna, naming the extra.
        ValueError: for a search with fewer than two completed trials, or one in which no
            hyper-parameter varied.

    Examples:
        >>> plot_importances(jdnn.search(..., strategy="bayes", trials=32), path="imp.png")
    """
    optuna = bayes.require_optuna("plot_importances")
    study = bayes.study_of(optuna, result) if isinstance(result, SearchResult) else result
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2 or not any(t.distributions for t in complete):
        raise ValueError(f"plot_importances: the search has {len(complete)} completed trials "
                         f"and {'some' if any(t.distributions for t in complete) else 'no'} "
                         f"hyper-parameter that varied; importances need at least two "
                         f"completed trials over a varying hyper-parameter")
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    names = list(importances)[::-1]  # the most important on top
    fig = new_figure(6.0, 0.5 + 0.45 * max(len(names), 2))
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color=COLORS[0])
    ax.set_xlabel("importance (share of the metric's variance)")
    ax.set_xlim(0, 1)
    ax.set_title(title or f"hyper-parameter importances ({len(complete)} trials)")
    return finish(fig, path, importances=dict(importances))
