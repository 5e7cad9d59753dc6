"""Gradient validation: `jax.grad` against the hand-written NumPy reference and against central
finite differences, on the same data, parameters and dropout masks.

    report = jdnn.check_gradients(model, params, state, x, y, jdnn.losses.mse)
    assert report.ok, report

`jax.grad` of d(objective)/d(params), where objective = masked mean of the per-example loss +
penalty (exactly what `make_train_step` differentiates) in the requested dtype, is held against
the oracles chosen (`oracles=`, both by default):
  - `"reference"`: the NumPy twin built from the model's spec (`jdnn.reference`), in float64.
    Every layer kind and the loss need a twin: jdnn's own have one, a user's are registered
    with `jdnn.reference.register_layer` / `register_loss`;
  - `"finite_differences"`: central differences of jdnn's objective in float64, on a sample of
    coordinates per parameter, skipping coordinates where the objective has a kink within the
    step (a ReLU unit at 0, a max-pool tie): there the left and right slopes disagree. Works for
    any model and any per-example loss.

Errors are relative, `|a - b| / max(|a|, |b|, floor)`, with a floor per parameter (a small
fraction of its largest gradient) so that entries at rounding-noise level do not dominate.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdnn import losses as losses_lib
from jdnn import reference
from jdnn.core import Layer, trait, walk, whole_number
from jdnn.data.validate import check_data
from jdnn.core import path_of
from jdnn.losses import masked_mean, per_example_values
from jdnn.padded import Padded, unpad
from jdnn.regularizers import Penalty

ORACLES = ("reference", "finite_differences")
# Tolerances per dtype: jax vs reference, jax vs finite differences, forward outputs.
TOLERANCES = {
    "float64": {"reference": 1e-10, "finite_differences": 1e-6, "forward": 1e-10},
    "float32": {"reference": 2e-3, "finite_differences": 2e-3, "forward": 1e-3},
}
# Relative errors are floored at FLOOR times a parameter's largest gradient, and at GLOBAL_FLOOR
# times the largest gradient of the whole model: a gradient that is exactly zero in theory (a
# bias right before batch norm) comes out as rounding noise on both sides.
FLOOR = 1e-4
GLOBAL_FLOOR = {"float64": 1e-4, "float32": 1e-3}
FD_STEP = 1e-5  # central-difference step, relative to max(1, |p|), in float64
KINK = 1e-2  # left and right slopes differing by more than this fraction mark a kink
FD_NOISE = 1e-3  # finite differences resolve gradients down to about this times max(1, |f|)


@dataclasses.dataclass(frozen=True)
class ParamCheck:
    """The comparison for one parameter leaf (errors are maxima over its entries)."""

    path: str
    shape: tuple[int, ...]
    reference_abs: float | None
    reference_rel: float | None
    fd_abs: float | None
    fd_rel: float | None
    fd_points: int
    ok: bool


@dataclasses.dataclass(frozen=True)
class Worst:
    """The single worst entry: which comparison, where, and the two values."""

    comparison: str
    path: str
    index: tuple[int, ...]
    jax: float
    other: float
    rel: float


@dataclasses.dataclass(frozen=True)
class GradReport:
    """The outcome of `check_gradients`.

    Attributes:
        ok: every comparison within its tolerance.
        dtype: the dtype jax computed in.
        oracles: the oracles `jax.grad` was held against, e.g. `("reference",
            "finite_differences")`.
        params: one `ParamCheck` per parameter path, in tree order (the reference columns are
            None without the reference, the finite-difference ones without finite differences).
        objective: the objective's value (jax); objective_error: relative difference to the
            reference's (None without the reference).
        forward_error: the largest relative difference of the model outputs, jax vs reference;
            state_error: the same for the new layer state (batch-norm running statistics); both
            None without the reference.
        tolerances: the tolerances used.
        worst: the worst entry over all comparisons (None if there are no parameters).
        kinks_skipped: finite-difference coordinates skipped because a kink lay within the step.
    """

    ok: bool
    dtype: str
    oracles: tuple[str, ...]
    params: tuple[ParamCheck, ...]
    objective: float
    objective_error: float | None
    forward_error: float | None
    state_error: float | None
    tolerances: dict[str, float]
    worst: Worst | None
    kinks_skipped: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole report."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        tol = self.tolerances
        ran = ", ".join(name.replace("_", " ") for name in self.oracles)
        limits = [f"{name.replace('_', ' ')} {tol[name]:.0e}" for name in self.oracles]
        if "reference" in self.oracles:
            limits.append(f"forward {tol['forward']:.0e}")
        lines = [f"gradient check ({self.dtype}): {'OK' if self.ok else 'FAILED'}   "
                 f"jax.grad vs {ran}   tolerances: {', '.join(limits)}"]
        header = f"{'parameter':<28} {'shape':<16} {'vs reference':>13} {'vs finite diff':>15}  "
        lines += [header + "ok", "-" * (len(header) + 2)]
        for p in self.params:
            ref = "-" if p.reference_rel is None else f"{p.reference_rel:.2e}"
            fd = "-" if p.fd_rel is None else f"{p.fd_rel:.2e} ({p.fd_points})"
            lines.append(f"{p.path:<28} {str(p.shape):<16} {ref:>13} {fd:>15}  "
                         f"{'yes' if p.ok else 'NO'}")
        closing = f"objective {self.objective:.6g}"
        if self.forward_error is not None:
            closing = (f"forward outputs {self.forward_error:.2e}, new state "
                       f"{self.state_error:.2e}, {closing} ({self.objective_error:.2e})")
        lines.append(closing + (f", {self.kinks_skipped} kinks skipped"
                                if self.kinks_skipped else ""))
        if self.worst is not None:
            w = self.worst
            lines.append(f"worst: {w.path}{list(w.index)} vs {w.comparison}: jax {w.jax:.10g}, "
                         f"{w.comparison} {w.other:.10g} (rel {w.rel:.2e})")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# What the reference needs to know about the jax-side loss, penalty and dropout.


# jdnn.losses' own losses and their twins; a user's are registered the same way.
reference.register_loss(losses_lib.mse, reference.network.BUILTIN_LOSSES["mse"])
reference.register_loss(losses_lib.binary_cross_entropy,
                        reference.network.BUILTIN_LOSSES["binary_cross_entropy"])
reference.register_loss(losses_lib.softmax_cross_entropy,
                        reference.network.BUILTIN_LOSSES["softmax_cross_entropy"])

_WAYS_OUT = ("check it against finite differences alone with "
             "check_gradients(..., oracles=('finite_differences',))")


def _reference_loss(loss: Callable) -> tuple[Callable, dict[str, Any]]:
    """`(numpy twin, its keyword arguments)` for the loss, or a clear error with both ways out."""
    found = reference.loss_twin(loss)
    if found is None:
        raise ValueError(f"check_gradients: the NumPy reference has no twin for the loss "
                         f"{getattr(loss, '__name__', loss)!r}; register one with "
                         f"jdnn.reference.register_loss(loss, numpy_fn), numpy_fn(outputs, y) -> "
                         f"(per-example loss, its gradient), or {_WAYS_OUT}")
    twin, kwargs = found
    try:
        inspect.signature(twin).bind(None, None, **kwargs)
    except TypeError as error:
        raise ValueError(f"check_gradients: the loss's reference twin "
                         f"{getattr(twin, '__name__', twin)!r} cannot take the keyword arguments "
                         f"{kwargs} of the functools.partial ({error}); register a twin for this "
                         f"loss, or {_WAYS_OUT}") from None
    return found


def _reference_net(model: Layer) -> Any:
    """The model's NumPy twin, or a clear error naming the missing kind and both ways out."""
    try:
        return reference.build(model.spec)
    except reference.UnknownLayerError as error:
        raise reference.UnknownLayerError(f"check_gradients: {error}; or {_WAYS_OUT}") from None


def _check_oracles(oracles: Any, finite_differences: bool) -> tuple[str, ...]:
    names = (oracles,) if isinstance(oracles, str) else tuple(oracles)
    unknown = [name for name in names if name not in ORACLES]
    if unknown or not names:
        raise ValueError(f"check_gradients: oracles must be a non-empty selection of {ORACLES}, "
                         f"got {oracles!r}")
    if not finite_differences:
        names = tuple(name for name in names if name != "finite_differences")
        if not names:
            raise ValueError("check_gradients: finite_differences=False leaves no oracle; use "
                             "oracles=('reference',)")
    return tuple(name for name in ORACLES if name in names)


def _reference_penalty(penalty: Any) -> dict[str, Any]:
    if penalty is None:
        return {"l1": 0.0, "l2": 0.0}
    if isinstance(penalty, Penalty):
        return {"l1": penalty.l1, "l2": penalty.l2, "where": penalty.where}
    raise ValueError(f"check_gradients needs penalty=jdnn.regularizers.penalty(l1=..., l2=...) "
                     f"so the reference can twin it, got {penalty!r}; or {_WAYS_OUT}")


def _mask_replay(spec, key) -> Callable[[str, tuple, float], np.ndarray]:
    """`masks(path, shape, rate)` for the reference: the very keep mask each stochastic layer
    (a kind declaring `stochastic`, e.g. Dropout) draws, from the key the combinators hand it."""
    draws = {node.path: (trait(node.spec, "stochastic"), node.key) for node in walk(spec, key)
             if trait(node.spec, "stochastic") is not None}

    def masks(path, shape, rate):
        draw, layer_key = draws[path]
        return np.asarray(draw(layer_key, rate, shape))

    return masks


# ---------------------------------------------------------------------------------------------


def _cast(tree: Any, dtype: Any) -> Any:
    """Floating leaves cast to `dtype`; integer leaves (labels) kept."""
    def cast(a):
        a = jnp.asarray(a)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(cast, tree)


def _host_input(x: Any) -> Any:
    """The input batch as NumPy: an array, or a `Padded` of NumPy values and lengths."""
    values, lengths = unpad(x)
    return np.asarray(values) if lengths is None else Padded(np.asarray(values),
                                                             np.asarray(lengths))


def _numpy64(tree: Any) -> Any:
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _rel(a: np.ndarray, b: np.ndarray, floor: float) -> np.ndarray:
    return np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)


def _max_rel(a: Any, b: Any, floor_fraction: float) -> float:
    """Largest relative difference between two trees, floored at `floor_fraction` times each
    leaf's largest magnitude."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.size:
            floor = max(floor_fraction * float(np.max(np.abs(y))), 1e-300)
            worst = max(worst, float(np.max(_rel(x, y, floor))))
    return worst


def _tolerances(dtype: str, overrides: Mapping[str, float] | None) -> dict[str, float]:
    """The dtype's `TOLERANCES`, with `overrides` (finite and > 0, known names) in place."""
    tol = dict(TOLERANCES[dtype])
    if overrides is None:
        return tol
    if not isinstance(overrides, Mapping):
        raise TypeError(f"check_gradients: tolerances must be a dict such as "
                        f"{{'finite_differences': 1e-5}}, got {type(overrides).__name__}")
    unknown = sorted(set(overrides) - set(tol), key=str)
    if unknown:
        raise ValueError(f"check_gradients: unknown tolerance name(s) {unknown}; the names are "
                         f"{sorted(tol)}")
    for name, value in overrides.items():
        ok = (isinstance(value, (int, float, np.integer, np.floating))
              and not isinstance(value, (bool, np.bool_)) and np.isfinite(value) and value > 0)
        if not ok:
            raise ValueError(f"check_gradients: tolerances[{name!r}] must be a finite number "
                             f"> 0, got {value!r}")
        tol[name] = float(value)
    return tol


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"check_gradients: {name} must be True or False, got {value!r}")
    return bool(value)


def _check_batch(model: Layer, loss: Callable, x: np.ndarray, y: np.ndarray, mask: Any,
                 params: Any, state: Any) -> Any:
    """Raises a clear error for inputs that would make a report fail (or pass) for a reason
    other than the gradient: no examples, labels the loss cannot take (`check_data`'s checks,
    as `jdnn.fit` runs them), a mask of the wrong shape or that keeps nothing, non-finite
    numbers. Returns the mask as a NumPy array (or None)."""
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"check_gradients: x and y must have the same number of examples on "
                         f"the batch axis, got x of shape {x.shape} and y of shape {y.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"check_gradients: x and y have no examples (shapes {x.shape} and "
                         f"{y.shape}); give a batch of at least one")
    check_data(x, y, model=model, loss=loss, name="check_gradients")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (x.shape[0],):
            raise ValueError(f"check_gradients: mask must have shape ({x.shape[0]},), one "
                             f"entry per example, got shape {mask.shape}")
        if not mask.any():
            raise ValueError("check_gradients: mask keeps no example, so the objective and "
                             "every gradient are 0 and nothing would be checked; keep at least "
                             "one")
    for name, tree in (("params", params), ("state", state)):
        for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if not jnp.issubdtype(getattr(leaf, "dtype", np.float64), jnp.floating):
                continue
            bad = int(np.sum(~np.isfinite(np.asarray(leaf))))
            if bad:
                raise ValueError(f"check_gradients: {name} at {path_of(keypath)} holds {bad} "
                                 f"non-finite value(s) (NaN or inf); the comparison would fail "
                                 f"for them, not for a wrong gradient")
    return mask


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


def _finite_differences(objective, params, state, x, y, grads, samples, seed):
    """Central differences in float64 at `samples` random coordinates per leaf, skipping kinks."""
    p64 = _cast(params, jnp.float64)
    s64, x64 = _cast(state, jnp.float64), _cast(x, jnp.float64)
    y64 = _cast(y, jnp.float64) if jnp.issubdtype(y.dtype, jnp.floating) else y
    f = jax.jit(lambda p: objective(p, s64, x64, y64)[0])
    f0 = float(f(p64))
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(p64)
    results, kinks = {}, 0
    for i, (keypath, leaf) in enumerate(leaves):
        flat = np.asarray(leaf).ravel()
        order = rng.permutation(flat.size)
        points = []
        for j in order:
            if len(points) == samples:
                break
            h = FD_STEP * max(1.0, abs(float(flat[j])))
            values = []
            for sign in (1.0, -1.0):
                bumped = [lf for _, lf in leaves]
                bumped[i] = leaf.reshape(-1).at[j].add(sign * h).reshape(leaf.shape)
                values.append(float(f(jax.tree_util.tree_unflatten(treedef, bumped))))
            right, left = (values[0] - f0) / h, (f0 - values[1]) / h
            if abs(right - left) > KINK * max(abs(right), abs(left), 1e-8):
                kinks += 1
                continue
            points.append((np.unravel_index(j, leaf.shape), (values[0] - values[1]) / (2 * h)))
        results[path_of(keypath)] = points
    return results, kinks, f0


def _worse(current: Worst | None, candidate: Worst, tol: dict[str, float]) -> Worst:
    """Keeps whichever entry is further past (or closer to) its comparison's tolerance."""
    def badness(w: Worst) -> float:
        return w.rel / tol["reference" if w.comparison == "reference" else "finite_differences"]

    return candidate if current is None or badness(candidate) > badness(current) else current


def _report(dtype, oracles, tol, grads, fd, value, outputs, new_state, ref) -> GradReport:
    """The report: per parameter, jax against each oracle that ran (`ref` is the reference's
    `(grads, objective, outputs, new state)`, or None; `fd` the finite differences or None)."""
    fd_points, kinks, f0 = fd if fd is not None else ({}, 0, value)
    global_scale = max((float(np.max(np.abs(np.asarray(g, np.float64)), initial=0.0))
                        for g in jax.tree.leaves(grads)), default=0.0)
    model_floor = max(GLOBAL_FLOOR[dtype] * global_scale, 1e-300)
    fd_floor = max(FD_NOISE * max(1.0, abs(f0)), model_floor)
    references = {} if ref is None else {
        path_of(k): np.asarray(v, np.float64)
        for k, v in jax.tree_util.tree_flatten_with_path(ref[0])[0]}
    checks, worst = [], None
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
        path = path_of(keypath)
        a = np.asarray(leaf, np.float64)
        scale = float(np.max(np.abs(a), initial=0.0))
        ref_abs = ref_rel = None
        if ref is not None:
            b = references[path]
            scale = max(scale, float(np.max(np.abs(b), initial=0.0)))
            rel = _rel(a, b, max(FLOOR * scale, model_floor))
            i = np.unravel_index(int(np.argmax(rel)), a.shape) if a.size else ()
            worst = _worse(worst, Worst("reference", path, tuple(int(j) for j in i),
                                        float(a[i]), float(b[i]), float(rel[i])), tol)
            ref_abs = float(np.max(np.abs(a - b), initial=0.0))
            ref_rel = float(np.max(rel, initial=0.0))
        fd_abs = fd_rel = None
        points = fd_points.get(path, [])
        if points:
            errors = [(float(_rel(a[j], d, max(FLOOR * scale, fd_floor))), abs(a[j] - d), j, d)
                      for j, d in points]
            fd_rel, fd_abs, j, d = max(errors, key=lambda e: e[0])
            worst = _worse(worst, Worst("finite differences", path, tuple(int(k) for k in j),
                                        float(a[j]), float(d), fd_rel), tol)
        ok = (ref_rel is None or ref_rel <= tol["reference"]) and (
            fd_rel is None or fd_rel <= tol["finite_differences"])
        checks.append(ParamCheck(path, tuple(a.shape), ref_abs, ref_rel, fd_abs, fd_rel,
                                 len(points), ok))
    forward_error = state_error = objective_error = None
    ok = all(c.ok for c in checks)
    if ref is not None:
        _, ref_value, ref_out, ref_state = ref
        forward_error = _max_rel(outputs, ref_out, GLOBAL_FLOOR[dtype])
        state_error = _max_rel(new_state, ref_state, GLOBAL_FLOOR[dtype])
        objective_error = abs(value - ref_value) / max(abs(ref_value), 1e-300)
        ok = ok and max(forward_error, state_error, objective_error) <= tol["forward"]
    return GradReport(ok, dtype, tuple(oracles), tuple(checks), value, objective_error,
                      forward_error, state_error, dict(tol), worst, kinks)
