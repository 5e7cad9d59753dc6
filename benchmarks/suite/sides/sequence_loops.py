"""The loop every side of the sequence benchmarks runs in (`Trainer`, `runner`), and the steps
the sides share: jdnn's, Flax linen's and PyTorch's, around a model that `rnn_peers` or
`lm_peers` builds and fills with jdnn's parameters.

Every step minimizes the mean softmax cross-entropy over every label of the batch (one per
sequence for the RNNs, one per position for the language model), with Adam at optax's formulas
(PyTorch's `Adam(fused=True)`, eps outside the square root, matches them).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.suite.sides.base import Cursor, Runner, require
from benchmarks.suite.sides.torch_side import threads

if TYPE_CHECKING:
    from benchmarks.suite.sequences import SequenceProblem


@dataclasses.dataclass
class Trainer:
    """A side, built: `step(state, x, y) -> (state, loss)` on batches `convert(x, y)` made,
    from `state` at the problem's initial parameters. `setup()` runs before each chunk (PyTorch
    sets its global thread count there); `info` is shown next to the side in the report."""

    step: Callable
    state: Any
    convert: Callable[[np.ndarray, np.ndarray], Any]
    setup: Callable[[], None] | None = None
    info: dict = dataclasses.field(default_factory=dict)


def runner(problem: SequenceProblem, trainer: Trainer) -> tuple[Runner, dict]:
    """The suite's `Runner` around a trainer, and a box holding the loss of the first step (at
    the initial parameters, on batch 0) and of the latest, each kept on the device until read:
    `{"first_loss", "loss"}`."""
    cursor = Cursor([trainer.convert(*problem.batch(i))
                     for i in range(problem.workload.batches)])
    box = {"state": trainer.state, "first_loss": None, "loss": None}

    def run(n: int) -> None:
        if trainer.setup is not None:
            trainer.setup()
        state, loss = box["state"], None
        for _ in range(n):
            state, loss = trainer.step(state, *cursor.next())
            if box["first_loss"] is None:
                box["first_loss"] = loss
        box["state"], box["loss"] = jax.block_until_ready((state, loss))

    return Runner(run, dict, info=dict(trainer.info)), box


def jdnn_trainer(problem: SequenceProblem) -> Trainer:
    """`jdnn.make_train_step` (one jit, state donated), one call per batch."""
    from jdnn import make_train_step
    from jdnn.losses import softmax_cross_entropy
    from jdnn.train import TrainState

    w = problem.workload
    tx = optax.adam(w.lr)
    step = make_train_step(problem.model, softmax_cross_entropy, tx)
    params = jax.tree.map(jnp.array, problem.params)
    state = TrainState(params, jax.tree.map(jnp.array, problem.state), tx.init(params),
                       jax.random.key(w.seed), jnp.zeros((), jnp.int32))

    def train(ts, x, y):
        ts, metrics = step(ts, x, y)
        return ts, metrics["loss"]

    return Trainer(train, state, lambda x, y: (jnp.asarray(x), jnp.asarray(y)))


def children(tree: dict) -> list:
    """A combinator's children's subtrees in order (`"0_gru"`, `"1_dense"`, ...)."""
    return [tree[k] for k in sorted(tree, key=lambda k: int(k.split("_", 1)[0]))]


def device(x, y):
    """A batch as JAX arrays."""
    return jnp.asarray(x), jnp.asarray(y)


def mean_xent(logits, y):
    """The mean softmax cross-entropy over every label: `(..., C)` logits, `(...)` labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def linen_trainer(problem: SequenceProblem, net, params: dict) -> Trainer:
    """A linen module's step: `jax.jit` with the parameters and Adam's state donated."""
    tx = optax.adam(problem.workload.lr)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, x, y):
        params, opt_state = state
        loss, grads = jax.value_and_grad(
            lambda p: mean_xent(net.apply({"params": p}, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return Trainer(step, (params, tx.init(params)), device)


def torch_trainer(problem: SequenceProblem, net, *, integer_inputs: bool,
                  num_threads: int | None = None) -> Trainer:
    """PyTorch eager on the CPU, `Adam(fused=True)`; `num_threads` (default: the CPU count) is
    set before each chunk, since PyTorch's thread count is global to the process."""
    torch = require("torch")
    n_threads = num_threads or threads()
    opt = torch.optim.Adam(net.parameters(), lr=problem.workload.lr, eps=1e-8, fused=True)
    cross_entropy = torch.nn.functional.cross_entropy

    def step(state, x, y):
        opt.zero_grad(set_to_none=True)
        logits = net(x)
        loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        return state, loss.detach()

    def convert(x, y):
        x = torch.from_numpy(np.array(x))
        return (x.long() if integer_inputs else x), torch.from_numpy(np.array(y)).long()

    return Trainer(step, None, convert, setup=lambda: torch.set_num_threads(n_threads),
                   info={"threads": n_threads})
