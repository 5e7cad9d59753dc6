"""SGD, momentum, Adam and RMSProp by hand: plain NumPy optimizers with optax's exact formulas.

Like optax, an optimizer is a pair of pure functions and its state lives outside:

    init(params) -> opt_state
    update(grads, opt_state, params) -> (new_params, new_opt_state)

Unlike optax, `update` returns the new params directly (it applies the step) rather than the
updates to add. Params and grads are nested dicts of arrays (see `jdnn.reference.tree`); nothing
is changed in place, every call returns new arrays. Below, `g` is a gradient leaf, `p` its
parameter and `lr` the learning rate; each line acts entry by entry on every leaf.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .tree import Tree, tree_map


class Optimizer(NamedTuple):
    """The two pure functions of an optimizer (cf. `optax.GradientTransformation`)."""

    init: Callable[[Tree], Any]
    update: Callable[[Tree, Any, Tree], tuple[Tree, Any]]


def _check(owner: str, name: str, value: float, low: float, high: float = math.inf,
           high_open: bool = False) -> float:
    """`value` as a float in `[low, high]` (or `[low, high)`), else a ValueError naming it."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    inside = low <= number < high if high_open else low <= number <= high
    if isinstance(value, bool) or not math.isfinite(number) or not inside:
        if high == math.inf:
            within = "" if low == -math.inf else f" >= {low}"
        else:
            within = f" in [{low}, {high})" if high_open else f" in [{low}, {high}]"
        raise ValueError(f"{owner}: {name} must be a finite float{within}, got {value!r}")
    return number


def _step(p: np.ndarray, lr: float, direction: np.ndarray) -> np.ndarray:
    """`p - lr * direction`, in the parameter's dtype (as `optax.apply_updates`)."""
    p = np.asarray(p)
    return (p - lr * direction).astype(p.dtype)


# --- SGD, with optional (Nesterov) momentum --------------------------------------------------


class SgdState(NamedTuple):
    """The momentum trace `t`, a tree like params (cf. `optax.TraceState`)."""

    trace: Tree


def sgd(learning_rate: float, momentum: float = 0.0, nesterov: bool = False) -> Optimizer:
    """Stochastic gradient descent with momentum, as `optax.sgd(lr, momentum, nesterov)`.

    Formula:   `t = g + momentum * t`                      (the trace, starting at 0)
               `p = p - lr * t`                             (heavy ball), or
               `p = p - lr * (g + momentum * t)`            (Nesterov, with the new `t`).
               With `momentum = 0` the trace is just `g`: plain `p = p - lr * g`.

    Args:
        learning_rate: `lr`, a float.
        momentum: the trace decay, in `[0, 1]`.
        nesterov: use Nesterov's look-ahead form.

    Returns:
        An `Optimizer` whose state is an `SgdState`.

    Raises:
        ValueError: if `learning_rate` is not finite or `momentum` is outside `[0, 1]`.

    Examples:
        >>> opt = sgd(0.1, momentum=0.9); state = opt.init(params)
        >>> params, state = opt.update(grads, state, params)
    """
    lr = _check("sgd", "learning_rate", learning_rate, -math.inf)
    momentum = _check("sgd", "momentum", momentum, 0.0, 1.0)

    def init(params: Tree) -> SgdState:
        return SgdState(trace=tree_map(np.zeros_like, params))

    def update(grads: Tree, state: SgdState, params: Tree) -> tuple[Tree, SgdState]:
        trace = tree_map(lambda g, t: g + momentum * t, grads, state.trace)
        if nesterov:
            direction = tree_map(lambda g, t: g + momentum * t, grads, trace)
        else:
            direction = trace
        new_params = tree_map(lambda p, d: _step(p, lr, d), params, direction)
        return new_params, SgdState(trace=trace)

    return Optimizer(init, update)


# --- Adam ------------------------------------------------------------------------------------


class AdamState(NamedTuple):
    """The step count and the two moment estimates (cf. `optax.ScaleByAdamState`)."""

    count: int  # steps taken so far
    mu: Tree  # first moment, the mean of g
    nu: Tree  # second moment, the mean of g^2


def adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8) -> Optimizer:
    """Adam, as `optax.adam(lr, b1, b2, eps)` (with `eps_root = 0`).

    Formula:   `k = k + 1`                                   (the step count, from 0)
               `mu = b1 * mu + (1 - b1) * g`                 (moments, starting at 0)
               `nu = b2 * nu + (1 - b2) * g^2`
               `mu_hat = mu / (1 - b1^k)`,  `nu_hat = nu / (1 - b2^k)`   (bias correction)
               `p = p - lr * mu_hat / (sqrt(nu_hat) + eps)`

    Args:
        learning_rate: `lr`, a float.
        b1: the first moment's decay, in `[0, 1)`.
        b2: the second moment's decay, in `[0, 1)`.
        eps: added to the root of the second moment, `>= 0`.

    Returns:
        An `Optimizer` whose state is an `AdamState`.

    Raises:
        ValueError: if a hyper-parameter is out of its range or not finite.

    Examples:
        >>> opt = adam(1e-3); state = opt.init(params)
        >>> params, state = opt.update(grads, state, params)
    """
    lr = _check("adam", "learning_rate", learning_rate, -math.inf)
    b1 = _check("adam", "b1", b1, 0.0, 1.0, high_open=True)
    b2 = _check("adam", "b2", b2, 0.0, 1.0, high_open=True)
    eps = _check("adam", "eps", eps, 0.0)

    def init(params: Tree) -> AdamState:
        zeros = tree_map(np.zeros_like, params)
        return AdamState(count=0, mu=zeros, nu=zeros)

    def update(grads: Tree, state: AdamState, params: Tree) -> tuple[Tree, AdamState]:
        count = int(state.count) + 1  # a Python int: b1**count stays a weak Python float
        mu = tree_map(lambda g, m: (1 - b1) * g + b1 * m, grads, state.mu)
        nu = tree_map(lambda g, v: (1 - b2) * g**2 + b2 * v, grads, state.nu)

        def direction(m: np.ndarray, v: np.ndarray) -> np.ndarray:
            m_hat = m / (1 - b1**count)
            v_hat = v / (1 - b2**count)
            return m_hat / (np.sqrt(v_hat) + eps)

        new_params = tree_map(lambda p, m, v: _step(p, lr, direction(m, v)), params, mu, nu)
        return new_params, AdamState(count=count, mu=mu, nu=nu)

    return Optimizer(init, update)


# --- RMSProp ---------------------------------------------------------------------------------


class RmsPropState(NamedTuple):
    """The running mean of g^2 (cf. `optax.ScaleByRmsState`)."""

    nu: Tree


def rmsprop(learning_rate: float, decay: float = 0.9, eps: float = 1e-8, *,
            eps_in_sqrt: bool = True) -> Optimizer:
    """RMSProp, as `optax.rmsprop(lr, decay, eps, eps_in_sqrt=...)` (no centering, no momentum,
    initial scale 0, no bias correction: optax's defaults).

    Formula:   `nu = decay * nu + (1 - decay) * g^2`          (starting at 0)
               `p = p - lr * g / sqrt(nu + eps)`              (`eps_in_sqrt=True`, optax's
                                                               default), or
               `p = p - lr * g / (sqrt(nu) + eps)`            (`eps_in_sqrt=False`, PyTorch's)

    Args:
        learning_rate: `lr`, a float.
        decay: the decay of the running mean, in `[0, 1)`.
        eps: the small constant in the denominator, `>= 0`.
        eps_in_sqrt: where `eps` goes, as in optax.

    Returns:
        An `Optimizer` whose state is an `RmsPropState`.

    Raises:
        ValueError: if a hyper-parameter is out of its range or not finite.

    Examples:
        >>> opt = rmsprop(1e-3); state = opt.init(params)
        >>> params, state = opt.update(grads, state, params)
    """
    lr = _check("rmsprop", "learning_rate", learning_rate, -math.inf)
    decay = _check("rmsprop", "decay", decay, 0.0, 1.0, high_open=True)
    eps = _check("rmsprop", "eps", eps, 0.0)

    def init(params: Tree) -> RmsPropState:
        return RmsPropState(nu=tree_map(np.zeros_like, params))

    def update(grads: Tree, state: RmsPropState, params: Tree) -> tuple[Tree, RmsPropState]:
        nu = tree_map(lambda g, v: (1 - decay) * g**2 + decay * v, grads, state.nu)

        def direction(g: np.ndarray, v: np.ndarray) -> np.ndarray:
            return g / np.sqrt(v + eps) if eps_in_sqrt else g / (np.sqrt(v) + eps)

        new_params = tree_map(lambda p, g, v: _step(p, lr, direction(g, v)), params, grads, nu)
        return new_params, RmsPropState(nu=nu)

    return Optimizer(init, update)
