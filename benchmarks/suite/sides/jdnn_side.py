"""jdnn itself: the compiled step dispatched per batch, and the scan-fused epoch `fit` runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jdnn import losses
from benchmarks.suite.sides.base import Runner, Side, batches, host
from benchmarks.suite.workloads import Problem, Workload
from jdnn.train import TrainState, make_epoch, make_train_step
from jdnn.data.batching import epoch_order
from jdnn.train.fit import host_key_and_step
from jdnn.losses import masked_mean
from jdnn.train.step import train_step_fn


def optimizer(w: Workload) -> optax.GradientTransformation:
    """The workload's optimizer in optax (jdnn's and the Flax/Equinox sides')."""
    return {"sgd": optax.sgd, "adam": optax.adam}[w.optimizer](w.lr)


def loss_fn(w: Workload):
    """The workload's per-example jdnn loss."""
    return getattr(losses, w.loss)


def train_state(problem: Problem) -> TrainState:
    """A fresh TrainState at the problem's initial parameters (its own device buffers)."""
    params = jax.tree.map(jnp.array, problem.params)
    state = jax.tree.map(jnp.array, problem.state)
    opt_state = optimizer(problem.workload).init(params)
    return TrainState(params, state, opt_state, jax.random.key(problem.workload.seed),
                      jnp.zeros((), jnp.int32))


def build_step(problem: Problem) -> Runner:
    """`jdnn.make_train_step`, one dispatch per batch, state donated."""
    w = problem.workload
    return step_runner(problem, make_train_step(problem.model, loss_fn(w), optimizer(w)))


def step_runner(problem: Problem, step) -> Runner:
    """`n` calls of a compiled `step(train_state, x, y)` on the problem's batches, from its
    initial parameters; blocks at the end."""
    cursor = batches(problem, lambda x, y: (jnp.asarray(x), jnp.asarray(y)))
    box = [train_state(problem)]

    def run(n: int) -> None:
        ts = box[0]
        for _ in range(n):
            ts, _ = step(ts, *cursor.next())
        box[0] = jax.block_until_ready(ts)

    return Runner(run, lambda: host(box[0].params))


def build_epoch(problem: Problem) -> Runner:
    """`jdnn.train.make_epoch`: one compiled `lax.scan` per epoch, as `fit` runs it (the epoch's
    order drawn on the host from the state's key and step, batches gathered on the device)."""
    w = problem.workload
    step = train_step_fn(problem.model, loss_fn(w), optimizer(w))
    epoch = make_epoch(step, w.batch)
    x, y = jnp.asarray(problem.x), jnp.asarray(problem.y)
    box = [train_state(problem)]
    key_data, step = host_key_and_step(box[0])   # read once and counted, as fit does
    count = [int(step)]

    def run(n: int) -> None:
        ts = box[0]
        for _ in range(n // w.batches):
            ts, _ = epoch(ts, x, y, epoch_order(key_data, count[0], w.examples))
            count[0] += w.batches
        box[0] = jax.block_until_ready(ts)

    return Runner(run, lambda: host(box[0].params), quantum=w.batches)


def loss_and_grads(problem: Problem, params: dict, x, y) -> tuple[float, dict]:
    """jax.value_and_grad of jdnn's training objective (the masked mean loss)."""
    model, loss = problem.model, loss_fn(problem.workload)

    def objective(p):
        out, _ = model.apply(p, problem.state, x, train=True)
        return masked_mean(loss(out, y), None)

    value, grads = jax.jit(jax.value_and_grad(objective))(jax.tree.map(jnp.asarray, params))
    return float(value), host(grads)


STEP = Side("jdnn_step", "jdnn make_train_step (jit + donation), one call per batch",
            build_step, loss_and_grads)
EPOCH = Side("jdnn_epoch", "jdnn make_epoch (scan-fused epoch, host-drawn order), as fit",
             build_epoch, loss_and_grads)
