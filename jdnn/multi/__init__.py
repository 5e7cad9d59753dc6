"""Many models at once: K members stacked and trained in one vmapped program (`members`), the
ensembles (`ensemble`) and hyper-parameter search (`tuning`, over the spaces of `space`: grid,
random, and Bayesian with Optuna in `bayes` and `rounds`) built on that engine."""

from jdnn.multi import space
from jdnn.multi.ensemble import evaluate_ensemble, fit_ensemble, predict_ensemble
from jdnn.multi.tuning import SearchResult, search

__all__ = ["evaluate_ensemble", "fit_ensemble", "predict_ensemble", "search", "SearchResult",
           "space"]
