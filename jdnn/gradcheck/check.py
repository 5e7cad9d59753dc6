"""`check_gradients`, the runner: it checks its arguments, takes `jax.grad` of jdnn's objective
(the masked mean of the per-example loss + penalty, exactly what `make_train_step`
differentiates) in the requested dtype, runs each oracle chosen on the same data, parameters and
dropout masks, and hands everything to the report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdnn import reference
from jdnn.core import Layer, whole_number
from jdnn.gradcheck.arguments import (ORACLES, TOLERANCES, _cast, _check_batch, _check_flag,
                                      _check_oracles, _host_input, _numpy64, _tolerances)
from jdnn.gradcheck.finite_differences import _finite_differences
from jdnn.gradcheck.report import GradReport, _report
from jdnn.gradcheck.twins import _mask_replay, _reference_loss, _reference_net, _reference_penalty
from jdnn.losses import masked_mean, per_example_values
from jdnn.padded import unpad


def check_gradients(model: Layer, params: Any, state: Any, x: Any, y: Any, loss: Callable, *,
                    key: jax.Array | None = None, train: bool = True, penalty: Any = None,
                    mask: Any = None, dtype: str = "float64",
                    oracles: Sequence[str] = ORACLES, samples: int = 6, seed: int = 0,
                    tolerances: Mapping[str, float] | None = None,
                    finite_differences: bool = True) -> GradReport:
    """Checks `jax.grad` of a model's objective against the NumPy reference and finite differences.

    Args:
        model: the jdnn model: any layers, jdnn's or a user's.
        params: its parameters (from `init`; cast to `dtype`).
        state: its layer state (from `init`; cast to `dtype`).
        x: an input batch `(B, ...)`: floats, integer token ids (kept as integers), or a
            `jdnn.Padded(values, lengths)` of sequences; y: its targets `(B, ...)` (`(B, T,
            ...)` for a model whose outputs are padded per-step outputs: only real steps count).
        loss: a per-example loss `loss(outputs, y) -> (B,)`: one of `jdnn.losses` (a
            `functools.partial` for label smoothing) or a user's.
        key: the dropout key (default `jax.random.key(0)`); both sides use the same masks.
        train: training mode (batch statistics, dropout) or evaluation mode.
        penalty: `jdnn.regularizers.penalty(l1=..., l2=...)` or None; with finite differences
            alone, any `penalty(params) -> scalar`.
        mask: `(B,)`, which examples count.
        dtype: `"float64"` (tight tolerances) or `"float32"` (looser, see `TOLERANCES`).
        oracles: what `jax.grad` is held against: `"reference"` (the NumPy twins: every kind
            in the model and the loss need one, see `jdnn.reference.register_layer` and
            `register_loss`) and/or `"finite_differences"` (any model, any loss). The report's
            header states which ran.
        samples: coordinates per parameter for the finite differences, an int >= 1; fewer
            where a leaf has fewer entries.
        seed: picks those coordinates, an int >= 0.
        tolerances: overrides of the dtype's `TOLERANCES`, by name (`"reference"`,
            `"finite_differences"`, `"forward"`), each a finite number > 0; e.g. a user layer
            with a noisy backward may need `{"reference": 1e-8}`.
        finite_differences: `False` drops `"finite_differences"` from `oracles` (the older
            spelling of `oracles=("reference",)`).

    Returns:
        A `GradReport`; `print(report)` shows the table, `report.ok` the verdict.

    Raises:
        ValueError: for a bad argument (`samples` < 1, a tolerance that is not finite and
            > 0, an unknown dtype or oracle), a batch with no examples, x and y of different
            lengths, a mask of the wrong shape or that keeps no example, non-finite inputs,
            params or state; with the reference among the oracles, a loss or penalty it has no
            twin for, or a layer kind it lacks (`jdnn.reference.UnknownLayerError`), each
            naming it and both ways out.
        TypeError: for `train` or `finite_differences` that are not bools, or tolerances
            that are not a dict.

    Examples:
        >>> report = jdnn.check_gradients(model, params, state, x, y, jdnn.losses.mse)
        >>> print(report)
        >>> jdnn.check_gradients(model, params, state, x, y, my_loss,
        ...                      oracles=("finite_differences",))
    """
    if dtype not in TOLERANCES:
        raise ValueError(f"check_gradients: dtype must be one of {sorted(TOLERANCES)}, got "
                         f"{dtype!r}")
    tol = _tolerances(dtype, tolerances)
    samples = whole_number("check_gradients", "samples", samples, 1)
    seed = whole_number("check_gradients", "seed", seed, 0)
    train = _check_flag("train", train)
    oracles = _check_oracles(oracles, _check_flag("finite_differences", finite_differences))
    if penalty is not None and not callable(penalty):
        raise TypeError(f"check_gradients: penalty must be jdnn.regularizers.penalty(...) or a "
                        f"function of the params, got {penalty!r}")
    if "reference" in oracles:
        loss_twin, loss_kwargs = _reference_loss(loss)
        reg = _reference_penalty(penalty)
        net = _reference_net(model)  # fails early, naming any layer the reference lacks
    x_np, y_np = _host_input(x), np.asarray(y)
    mask = _check_batch(model, loss, unpad(x_np)[0], y_np, mask, params, state)
    key = jax.random.key(0) if key is None else key

    with jax.enable_x64(True):
        jdtype = jnp.dtype(dtype)
        j_params, j_state, j_x = _cast(params, jdtype), _cast(state, jdtype), _cast(x_np, jdtype)
        j_y = _cast(y_np, jdtype) if y_np.dtype.kind == "f" else jnp.asarray(y_np)
        j_mask = None if mask is None else jnp.asarray(mask)

        def objective(p, s, xx, yy):
            out, new_state = model.apply(p, s, xx, key=key, train=train)
            value = masked_mean(per_example_values(loss, out, yy), j_mask)
            return value + (penalty(p) if penalty is not None else 0.0), (out, new_state)

        (value, (outputs, new_state)), grads = jax.jit(
            jax.value_and_grad(objective, has_aux=True))(j_params, j_state, j_x, j_y)
        ref = None
        if "reference" in oracles:
            masks = _mask_replay(model.spec, key)
            ref_value, ref_grads, ref_state = net.loss_and_grads(
                j_params, j_state, x_np, y_np, loss=loss_twin, loss_kwargs=loss_kwargs,
                mask=mask, train=train, masks=masks, **reg)
            ref_out, _, _ = net.forward(_numpy64(j_params), _numpy64(j_state),
                                        reference.network.as_input(x_np, np.float64),
                                        train=train, masks=masks)
            ref = (ref_grads, ref_value, ref_out, ref_state)
        fd = _finite_differences(objective, j_params, j_state, j_x, j_y, grads, samples, seed) \
            if "finite_differences" in oracles else None

    return _report(dtype, oracles, tol, grads, fd, float(value), outputs, new_state, ref)
