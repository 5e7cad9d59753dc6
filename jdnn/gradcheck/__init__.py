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

The package, in the order a check runs: `arguments` (the arguments checked, `ORACLES`,
`TOLERANCES`), `twins` (what the NumPy reference needs: the loss's and penalty's twins, the
dropout masks), `finite_differences` (that oracle), `check` (`check_gradients`, which runs them)
and `report` (`GradReport` and the comparisons it holds).
"""

from jdnn.gradcheck.arguments import ORACLES, TOLERANCES
from jdnn.gradcheck.check import check_gradients
from jdnn.gradcheck.finite_differences import FD_STEP, KINK
from jdnn.gradcheck.report import FD_NOISE, FLOOR, GLOBAL_FLOOR, GradReport, ParamCheck, Worst

__all__ = [
    "check_gradients", "FD_NOISE", "FD_STEP", "FLOOR", "GLOBAL_FLOOR", "GradReport", "KINK",
    "ORACLES", "ParamCheck", "TOLERANCES", "Worst",
]
