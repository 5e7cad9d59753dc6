"""PyTorch on the CPU: eager, eager with fused optimizers, and `torch.compile`d.

`torch.nn` layers rebuilt from jdnn's spec, weights converted as for Equinox (channel-first);
`torch.optim.SGD`/`Adam` (same formulas as optax: Adam's eps outside the square root). PyTorch
on the CPU runs synchronously, so a step is done when its call returns. Its thread count is set
before each call (it is global to the process): the CPU count, or one.

- `torch`: eager, the optimizers' default implementation (foreach on the CPU).
- `torch_fused`: eager, `fused=True` for Adam and for SGD (both have a CPU kernel in 2.13).
- `torch_compile`: the forward and the loss in one `torch.compile(fullgraph=True)` function
  (inductor; its backward graph is compiled with it by AOTAutograd), `loss.backward()`, fused
  Adam/SGD step eager (a single fused kernel already). Inductor's CPU backend writes and builds
  C++, so `build` first compiles a tiny probe function and raises `Skipped` with the error when
  that fails (no C++ compiler, no OpenMP); the model's own compile happens in the first call,
  whose excess over the second is reported as the compile time.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from benchmarks.suite.sides.base import Runner, Side, Skipped, batches, require
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


def _loss_fn(problem: Problem):
    """`f(logits, y)`: the workload's mean loss (resolved here, so `torch.compile` traces it)."""
    functional = require("torch.nn.functional", "torch")
    if problem.workload.classes == 1:
        return lambda logits, y: functional.binary_cross_entropy_with_logits(logits[:, 0], y)
    return functional.cross_entropy


def _pairs(net, grad: bool = False) -> list:
    torch = require("torch")
    out = []
    for layer in net:
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            w, b = (layer.weight.grad, layer.bias.grad) if grad else (layer.weight, layer.bias)
            out.append((w.detach().numpy().copy(), b.detach().numpy().copy()))
    return out


def _optimizer(problem: Problem, net, fused: bool):
    torch = require("torch")
    w = problem.workload
    extra = {"fused": True} if fused else {}
    if w.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=w.lr, **extra)
    return torch.optim.Adam(net.parameters(), lr=w.lr, eps=1e-8, **extra)


@functools.cache
def compile_probe() -> str | None:
    """None if `torch.compile` (inductor, CPU) compiles and runs a tiny function here, else the
    error, one line. Once per process."""
    torch = require("torch")
    try:
        f = torch.compile(lambda x: torch.relu(x) * 2.0, fullgraph=True)
        x = torch.ones(8, requires_grad=True)
        f(x).sum().backward()
    except Exception as error:  # noqa: BLE001 - any failure means the side cannot run here
        first = (str(error).strip().splitlines() or [""])[0]
        return f"{type(error).__name__}: {first[:300]}"
    return None


def _compiled_loss(problem: Problem, net, n_threads: int):
    """`torch.compile` of forward + loss; `Skipped` if inductor cannot compile here."""
    torch = require("torch")
    failure = compile_probe()
    if failure is not None:
        raise Skipped(f"torch.compile (inductor CPU backend) fails here: {failure}")
    # Each build compiles a new closure of the same code; dynamo's per-code recompile limit
    # (8) would silently fall back to eager after eight workloads in one process.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 512)
    # Inductor bakes the OpenMP thread count into its kernels: state it, so that the 1-thread
    # and the N-thread sides never share a cached kernel.
    loss = _loss_fn(problem)
    return torch.compile(lambda x, y: loss(net(x), y), fullgraph=True,
                         options={"cpp.threads": n_threads})


def build(problem: Problem, num_threads: int | None = None, fused: bool = False,
          compiled: bool = False) -> Runner:
    """PyTorch's training loop; `num_threads` (default: the CPU count) is set before each call,
    since PyTorch's thread count is global to the process. `fused`: the fused optimizer step;
    `compiled`: forward + loss through `torch.compile` (with the fused step)."""
    torch = require("torch")
    net = torch_model(problem, problem.params)
    opt = _optimizer(problem, net, fused or compiled)
    n_threads = num_threads or threads()
    loss = _loss_fn(problem)
    loss_fn = (_compiled_loss(problem, net, n_threads) if compiled
               else lambda x, y: loss(net(x), y))
    cursor = batches(problem, _tensors(problem))

    def run(n: int) -> None:
        torch.set_num_threads(n_threads)
        for _ in range(n):
            x, y = cursor.next()
            opt.zero_grad(set_to_none=True)
            loss_fn(x, y).backward()
            opt.step()

    return Runner(run, lambda: from_channel_first(problem, _pairs(net)))


def loss_and_grads(problem: Problem, params: dict, x, y) -> tuple[float, dict]:
    net = torch_model(problem, params)
    inputs, labels = _tensors(problem)(x, y)
    loss = _loss_fn(problem)(net(inputs), labels)
    loss.backward()
    return float(loss.detach()), from_channel_first(problem, _pairs(net, grad=True))


SIDE = Side("torch", "PyTorch eager on the CPU, threads = CPU count, torch.optim (default, "
            "foreach)", build, loss_and_grads, "torch")
ONE_THREAD = Side("torch_1thread", "PyTorch eager on the CPU with one thread (for reference: "
                  "on a loaded machine its thread pool stalls)",
                  lambda problem: build(problem, 1), loss_and_grads, "torch")
FUSED = Side("torch_fused", "PyTorch eager on the CPU, threads = CPU count, torch.optim "
             "Adam/SGD fused=True", lambda problem: build(problem, fused=True), loss_and_grads,
             "torch")
FUSED_ONE_THREAD = Side("torch_fused_1thread", "PyTorch eager on the CPU with one thread, "
                        "torch.optim Adam/SGD fused=True",
                        lambda problem: build(problem, 1, fused=True), loss_and_grads, "torch")
COMPILE = Side("torch_compile", "PyTorch, forward + loss in torch.compile(fullgraph=True) "
               "(inductor C++), threads = CPU count, fused Adam/SGD",
               lambda problem: build(problem, compiled=True), loss_and_grads, "torch")
COMPILE_ONE_THREAD = Side("torch_compile_1thread", "PyTorch, forward + loss in torch.compile "
                          "(inductor C++), one thread, fused Adam/SGD",
                          lambda problem: build(problem, 1, compiled=True), loss_and_grads,
                          "torch")
