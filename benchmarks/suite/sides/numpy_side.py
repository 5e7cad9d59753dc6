"""The NumPy hand-written backprop reference (`jdnn.reference`), with the same updates.

This is jdnn's correctness oracle, a generic interpreter over specs: keyed "reference", it is
timed for context only. The baseline people mean by "hand-written NumPy backprop" is
`tight_numpy` (keyed "numpy")."""

from __future__ import annotations

import numpy as np

from jdnn import reference
from benchmarks.suite.sides.base import Runner, Side, batches, host
from benchmarks.suite.workloads import Problem


def build(problem: Problem, dtype=np.float32) -> Runner:
    """A Python loop of `Network.loss_and_grads` + the reference optimizer, in float32."""
    w = problem.workload
    net = reference.build(problem.model.spec)
    opt = {"sgd": reference.optimizers.sgd, "adam": reference.optimizers.adam}[w.optimizer](w.lr)
    box = [host(problem.params)]
    box.append(opt.init(box[0]))
    cursor = batches(problem, lambda x, y: (x, y))

    def run(n: int) -> None:
        params, opt_state = box
        for _ in range(n):
            x, y = cursor.next()
            _, grads, _ = net.loss_and_grads(params, problem.state, x, y, loss=w.loss,
                                              dtype=dtype)
            params, opt_state = opt.update(grads, opt_state, params)
        box[:] = [params, opt_state]

    return Runner(run, lambda: host(box[0]))


def loss_and_grads(problem: Problem, params: dict, x, y, dtype=np.float32) -> tuple[float, dict]:
    """The reference's objective and its hand-derived gradients."""
    net = reference.build(problem.model.spec)
    value, grads, _ = net.loss_and_grads(params, problem.state, np.asarray(x), np.asarray(y),
                                         loss=problem.workload.loss, dtype=dtype)
    return float(value), host(grads)


SIDE = Side("reference", "jdnn.reference: the generic NumPy reference (the correctness oracle), "
            "float32", build, loss_and_grads)
