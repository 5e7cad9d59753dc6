"""PyTorch on the CPU, eager, with its thread count matched to the machine's CPUs.

`torch.nn` layers rebuilt from jdnn's spec, weights converted as for Equinox (channel-first);
`torch.optim.SGD`/`Adam` (same formulas as optax: Adam's eps outside the square root). PyTorch
on the CPU runs synchronously, so a step is done when its call returns.
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks.suite.sides.base import Runner, Side, batches, require
from benchmarks.suite.sides.equinox_side import channel_first, from_channel_first, to_channel_first
from benchmarks.suite.workloads import Problem


def threads() -> int:
    """The thread count PyTorch is given: one per CPU, like XLA's and OpenBLAS's pools."""
    return os.cpu_count() or 1


# `Op` kind -> `f(torch.nn, op)`: the `torch.nn` layer, channel-first.
_TORCH_LAYERS = {
    "dense": lambda nn, op: nn.Linear(op.in_shape[-1], op.out_shape[-1]),
    "conv": lambda nn, op: nn.Conv2d(op.in_shape[-1], op.out_shape[-1], 3, padding=1),
    "maxpool": lambda nn, op: nn.MaxPool2d(2),
    "relu": lambda nn, op: nn.ReLU(),
    "sigmoid": lambda nn, op: nn.Sigmoid(),
    "flatten": lambda nn, op: nn.Flatten(),
}


def torch_model(problem: Problem, params: dict):
    torch = require("torch")
    nn = torch.nn
    torch.set_num_threads(threads())
    net = nn.Sequential(*(_TORCH_LAYERS[op.kind](nn, op) for op in problem.ops))
    pairs = iter(to_channel_first(problem, params))
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                weight, bias = next(pairs)
                layer.weight.copy_(torch.from_numpy(np.array(weight)))
                layer.bias.copy_(torch.from_numpy(np.array(bias)))
    return net


def _tensors(problem: Problem):
    torch = require("torch")

    def convert(x, y):
        y = torch.from_numpy(np.array(y))
        y = y.float() if problem.workload.classes == 1 else y.long()
        return torch.from_numpy(channel_first(np.array(x))), y

    return convert


def _loss(problem: Problem, logits, y):
    functional = require("torch.nn.functional", "torch")
    if problem.workload.classes == 1:
        return functional.binary_cross_entropy_with_logits(logits[:, 0], y)
    return functional.cross_entropy(logits, y)


def _pairs(net, grad: bool = False) -> list:
    torch = require("torch")
    out = []
    for layer in net:
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            w, b = (layer.weight.grad, layer.bias.grad) if grad else (layer.weight, layer.bias)
            out.append((w.detach().numpy().copy(), b.detach().numpy().copy()))
    return out


def build(problem: Problem, num_threads: int | None = None) -> Runner:
    """PyTorch's training loop; `num_threads` (default: the CPU count) is set before each call,
    since PyTorch's thread count is global to the process."""
    torch = require("torch")
    w = problem.workload
    net = torch_model(problem, problem.params)
    opt = (torch.optim.SGD(net.parameters(), lr=w.lr) if w.optimizer == "sgd"
           else torch.optim.Adam(net.parameters(), lr=w.lr, eps=1e-8))
    cursor = batches(problem, _tensors(problem))

    def run(n: int) -> None:
        torch.set_num_threads(num_threads or threads())
        for _ in range(n):
            x, y = cursor.next()
            opt.zero_grad(set_to_none=True)
            _loss(problem, net(x), y).backward()
            opt.step()

    return Runner(run, lambda: from_channel_first(problem, _pairs(net)))


def loss_and_grads(problem: Problem, params: dict, x, y) -> tuple[float, dict]:
    net = torch_model(problem, params)
    inputs, labels = _tensors(problem)(x, y)
    loss = _loss(problem, net(inputs), labels)
    loss.backward()
    return float(loss.detach()), from_channel_first(problem, _pairs(net, grad=True))


SIDE = Side("torch", "PyTorch eager on the CPU, threads = CPU count, torch.optim", build,
            loss_and_grads, "torch")
ONE_THREAD = Side("torch_1thread", "PyTorch eager on the CPU with one thread (for reference: "
                  "on a loaded machine its thread pool stalls)",
                  lambda problem: build(problem, 1), loss_and_grads, "torch")
