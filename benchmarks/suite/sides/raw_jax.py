"""A minimal hand-written raw-JAX step: no jdnn, no optax, no pytree library: the floor for a
library's overhead. Parameters are a list of `(w, b)` pairs; SGD and Adam are written out with
optax's formulas; the step is one `jax.jit` with the parameters and moments donated.

Two ops are taken from jdnn, because the floor must compute what jdnn computes: max pooling
(jdnn's `MaxPool2D` pools non-overlapping windows with a reshape and a max whose derivative
sends each window's tangent to its first maximum, `jdnn.layers.pooling`) and the 2-D
convolution (jdnn's `conv2d`: im2col + one GEMM per pass on CPU, `jdnn.layers.conv`). The
idiomatic versions are separate sides, each differing from `raw_jax` in that one op:
`raw_jax_reduce_window` (`lax.reduce_window` pooling, whose gradient XLA:CPU lowers to a slow
select-and-scatter) and `raw_jax_lax_conv` (`lax.conv_general_dilated` with jax's own
gradients, several times slower on XLA:CPU). Both are findings about XLA:CPU, not floors.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks.suite.sides.base import Runner, Side, Skipped, batches
from benchmarks.suite.workloads import Op, Problem, Workload, dense_ops
from jdnn.layers.conv import conv2d  # jdnn's own convolution and 2x2 pool: the ops the floor
from jdnn.layers.pooling import _tiled_max  # must match

_NHWC = ("NHWC", "HWIO", "NHWC")


def to_raw(problem: Problem, params: dict) -> list:
    """jdnn's `{name: {"w", "b"}}` -> `[(w, b), ...]` as device arrays (fresh buffers)."""
    return [(jnp.array(params[op.name]["w"]), jnp.array(params[op.name]["b"]))
            for op in dense_ops(problem.ops)]


def from_raw(problem: Problem, raw: list) -> dict:
    """`[(w, b), ...]` -> jdnn's params tree, NumPy, with `{}` for parameter-free layers."""
    tree = {op.name: {} for op in problem.ops}
    for op, (w, b) in zip(dense_ops(problem.ops), raw):
        tree[op.name] = {"w": jax.device_get(w), "b": jax.device_get(b)}
    return tree


def _dense(x: jax.Array, wb: tuple) -> jax.Array:
    w, b = wb
    return x @ w + b


def _conv(x: jax.Array, wb: tuple) -> jax.Array:
    w, b = wb   # 3x3, stride 1, SAME: one pixel of padding on each side
    return conv2d(x, w, (1, 1), ((1, 1), (1, 1))) + b


def _lax_conv(x: jax.Array, wb: tuple) -> jax.Array:
    w, b = wb
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_NHWC) + b


# `Op` kind -> `f(x, (w, b) or None) -> y`, one batch through that layer.
_FORWARD = {
    "dense": _dense,
    "conv": _conv,
    "relu": lambda x, _: jnp.maximum(x, 0.0),
    "sigmoid": lambda x, _: 1.0 / (1.0 + jnp.exp(-x)),
    "maxpool": lambda x, _: _tiled_max(x, (2, 2)),
    "flatten": lambda x, _: x.reshape(x.shape[0], -1),
}

# The same layers with the idiomatic `lax.reduce_window` max pool (2x2, stride 2, VALID), and
# with the idiomatic `lax.conv_general_dilated` convolution.
_REDUCE_WINDOW = {**_FORWARD, "maxpool": lambda x, _: lax.reduce_window(
    x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")}
_LAX_CONV = {**_FORWARD, "conv": _lax_conv}


def forward(ops: list[Op], params: list, x: jax.Array, layers: dict = _FORWARD) -> jax.Array:
    layer = iter(params)
    for op in ops:
        x = layers[op.kind](x, next(layer) if op.has_params else None)
    return x


def objective(w: Workload, ops: list[Op], params: list, x, y,
              layers: dict = _FORWARD) -> jax.Array:
    logits = forward(ops, params, x, layers)
    if w.classes == 1:  # binary cross-entropy on logits: softplus(z) - y z
        z = logits[:, 0]
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z)
    picked = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)


def opt_init(w: Workload, params: list):
    if w.optimizer == "sgd":
        return ()
    zeros = jax.tree.map(jnp.zeros_like, params)
    return (jnp.zeros((), jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params))


def opt_update(w: Workload, params, grads, state, b1=0.9, b2=0.999, eps=1e-8):
    if w.optimizer == "sgd":
        return jax.tree.map(lambda p, g: p - w.lr * g, params, grads), state
    count, mu, nu = state
    count = count + 1
    mu = jax.tree.map(lambda m, g: (1 - b1) * g + b1 * m, mu, grads)
    nu = jax.tree.map(lambda v, g: (1 - b2) * g * g + b2 * v, nu, grads)
    c1 = 1 - b1 ** count.astype(jnp.float32)
    c2 = 1 - b2 ** count.astype(jnp.float32)
    params = jax.tree.map(lambda p, m, v: p - w.lr * (m / c1) / (jnp.sqrt(v / c2) + eps),
                          params, mu, nu)
    return params, (count, mu, nu)


def make_step(problem: Problem, layers: dict = _FORWARD):
    w, ops = problem.workload, problem.ops

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(functools.partial(objective, w, ops, layers=layers))(
            params, x, y)
        params, opt_state = opt_update(w, params, grads, opt_state)
        return params, opt_state, loss

    return step


def build_step(problem: Problem, layers: dict = _FORWARD) -> Runner:
    step = jax.jit(make_step(problem, layers), donate_argnums=(0, 1))
    cursor = batches(problem, lambda x, y: (jnp.asarray(x), jnp.asarray(y)))
    params = to_raw(problem, problem.params)
    box = [params, opt_init(problem.workload, params)]

    def run(n: int) -> None:
        params, opt_state = box
        for _ in range(n):
            params, opt_state, _ = step(params, opt_state, *cursor.next())
        box[:] = jax.block_until_ready([params, opt_state])

    return Runner(run, lambda: from_raw(problem, box[0]))


def build_scan(problem: Problem) -> Runner:
    """The same step inside one `lax.scan` over the epoch's batches, in order (no shuffle): the
    floor for a fused epoch."""
    w, body = problem.workload, make_step(problem)
    shape = (w.batches, w.batch)
    xs = jnp.asarray(problem.x.reshape(*shape, *problem.x.shape[1:]))
    ys = jnp.asarray(problem.y.reshape(*shape, *problem.y.shape[1:]))

    def epoch(params, opt_state, xs, ys):
        def scan_body(carry, batch):
            params, opt_state, loss = body(*carry, *batch)
            return (params, opt_state), loss

        (params, opt_state), losses = lax.scan(scan_body, (params, opt_state), (xs, ys))
        return params, opt_state, jnp.mean(losses)

    epoch = jax.jit(epoch, donate_argnums=(0, 1))
    params = to_raw(problem, problem.params)
    box = [params, opt_init(w, params)]

    def run(n: int) -> None:
        params, opt_state = box
        for _ in range(n // w.batches):
            params, opt_state, _ = epoch(params, opt_state, xs, ys)
        box[:] = jax.block_until_ready([params, opt_state])

    return Runner(run, lambda: from_raw(problem, box[0]), quantum=w.batches)


def loss_and_grads(problem: Problem, params: dict, x, y,
                   layers: dict = _FORWARD) -> tuple[float, dict]:
    fn = jax.jit(jax.value_and_grad(functools.partial(objective, problem.workload, problem.ops,
                                                      layers=layers)))
    value, grads = fn(to_raw(problem, params), jnp.asarray(x), jnp.asarray(y))
    return float(value), from_raw(problem, grads)


def _variant(name: str, layers: dict, kind: str, what: str, description: str) -> Side:
    """A side that differs from `raw_jax` only in the op of `kind` (its `layers` table);
    `Skipped` on a model without that op, where it would measure nothing of its own."""
    def needs(problem: Problem) -> None:
        if not any(op.kind == kind for op in problem.ops):
            raise Skipped(f"{problem.workload.name} has no {what}; {name} differs from raw_jax "
                          f"only in its {what}")

    def build(problem: Problem) -> Runner:
        needs(problem)
        return build_step(problem, layers)

    def grads(problem: Problem, params: dict, x, y) -> tuple[float, dict]:
        needs(problem)
        return loss_and_grads(problem, params, x, y, layers)

    return Side(name, description, build, grads)


STEP = Side("raw_jax", "hand-written raw JAX: jax.jit + donation, no library (max pool and "
            "convolution: jdnn's ops)", build_step, loss_and_grads)
SCAN = Side("raw_jax_scan", "hand-written raw JAX epoch in one lax.scan, batches in order (max "
            "pool and convolution: jdnn's ops)", build_scan, loss_and_grads)
LAX_CONV = _variant(
    "raw_jax_lax_conv", _LAX_CONV, "conv", "convolution",
    "raw_jax with the idiomatic lax.conv_general_dilated convolution (CNN only): a finding "
    "about XLA:CPU's convolution gradients, not a floor")
REDUCE_WINDOW = _variant(
    "raw_jax_reduce_window", _REDUCE_WINDOW, "maxpool", "max pool",
    "raw_jax with the idiomatic lax.reduce_window max pool (CNN only): a finding about "
    "XLA:CPU's pooling gradient (select-and-scatter), not a floor")
