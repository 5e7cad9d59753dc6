"""What a gradient check reports, and how it is worked out: a `ParamCheck` per parameter, the
`Worst` entry, the `GradReport` (with the table `print(report)` shows), and `_report`, which
compares `jax.grad`'s gradients with each oracle that ran.

Errors are relative, `|a - b| / max(|a|, |b|, floor)`, with a floor per parameter (a small
fraction of its largest gradient) so that entries at rounding-noise level do not dominate.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jdnn.core import path_of

# Relative errors are floored at FLOOR times a parameter's largest gradient, and at GLOBAL_FLOOR
# times the largest gradient of the whole model: a gradient that is exactly zero in theory (a
# bias right before batch norm) comes out as rounding noise on both sides.
FLOOR = 1e-4
GLOBAL_FLOOR = {"float64": 1e-4, "float32": 1e-3}
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
