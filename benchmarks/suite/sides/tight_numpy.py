"""Tight hand-written float32 NumPy backprop: the baseline people mean by "I wrote it in NumPy".

Not `jdnn.reference` (the generic correctness oracle, an interpreter over specs): this is what a
competent NumPy programmer writes for one fixed network, and what jdnn should be raced against.

- All parameters live in ONE flat float32 buffer (each layer's `w`/`b` are views into it) and all
  gradients in another, so SGD is two vector ops and Adam a handful, in place, on flat buffers.
- Activations and caches are allocated once for `max_batch`; a shorter batch uses views of their
  first rows. Every op writes into a preallocated buffer (`np.matmul(..., out=)`, ...);
  activations work in place on the buffer of the layer before them.
- No gradient with respect to the network input: backward stops at the first weighted layer.
- Convolution (3x3, stride 1, SAME, NHWC) is im2col + one GEMM; its input gradient is one GEMM +
  col2im. The im2col buffer's padding entries are zeroed once and never written again.
- 2x2 max pooling is a reshape to `(N, H/2, 2, W/2, 2, C)` and a max; the backward routes each
  window's gradient to its FIRST maximum in row-major order, jdnn's `MaxPool2D` tie rule.
- Losses: softmax cross-entropy on int labels, or (one output) binary cross-entropy on logits,
  both averaged over the batch. Adam is optax's (b1 0.9, b2 0.999, eps 1e-8 outside the root,
  bias-corrected).

BLAS threads (OpenBLAS via threadpoolctl, set for this side's steps only, restored after): one
thread below `MULTI_THREAD_FLOPS` matmul FLOPs per step (`roofline.step_flops`), all CPUs from
there up. Measured on the 2-core benchmark machine, nearly idle (ms per step, 1 thread / 2
threads, median of 7 interleaved chunks of ~0.1 s):

    digits MLP b32 (1 MFLOP)   0.14 / 0.14    MLP b128 (411)    6.8 / 4.4
    XOR b8 (0 MFLOP)           0.07 / 0.07    MLP b256 (822)   13.0 / 8.7
    MLP b32 (103 MFLOP)        3.0-3.2 / 2.5-10.7 (noisy)        MLP b1024 (3286) 42.3 / 25.2
    MLP b64 (205)              4.4-5.2 / 3.5-4.9                 CNN b16 (400)    10.6 / 8.6
    CNN b8 (200)               6.6 / 4.8                         CNN b64 (1600)   47.2 / 36.5

Two threads pay from ~200 MFLOP per step; below, they gain nothing or lose. With another
process busy on one core, two threads were 1.4-16x SLOWER than one at every size (OpenBLAS's
threads wait on each other), which is why a loaded run is flagged in the report.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from benchmarks.suite import roofline
from benchmarks.suite.sides.base import Runner, Side, batches
from benchmarks.suite.workloads import Op, Problem, Workload

F32 = np.float32
MULTI_THREAD_FLOPS = 150e6


def blas_threads(w: Workload) -> int:
    """The OpenBLAS thread count for a workload's steps (see the module docstring)."""
    if roofline.step_flops(w) < MULTI_THREAD_FLOPS:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


_CONTROLLER = []  # one threadpoolctl controller, built on first use (it scans the loaded libs)


def blas_limit(threads: int) -> contextlib.AbstractContextManager:
    """A context in which BLAS uses `threads` threads; the previous count is restored after."""
    if not _CONTROLLER:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=threads, user_api="blas")


# --- layers: `forward(x) -> y` keeps what backward needs; `backward(dy) -> dx` (None when the
# layer is the first weighted one: no gradient for the network input). -------------------------


class Dense:
    """`y = x @ w + b`, x `(n, in)`, w `(in, out)`."""

    def __init__(self, w, b, dw, db, max_batch: int, need_dx: bool):
        self.w, self.b, self.dw, self.db = w, b, dw, db
        self.y = np.empty((max_batch, w.shape[1]), F32)
        self.dx = np.empty((max_batch, w.shape[0]), F32) if need_dx else None

    def forward(self, x):
        self.x, y = x, self.y[:len(x)]
        np.matmul(x, self.w, out=y)
        y += self.b
        return y

    def backward(self, dy):
        np.matmul(self.x.T, dy, out=self.dw)  # dW = X^T dY
        np.sum(dy, axis=0, out=self.db)  # db = sum over the batch of dY
        if self.dx is None:
            return None
        dx = self.dx[:len(dy)]
        return np.matmul(dy, self.w.T, out=dx)  # dX = dY W^T


def _taps(h: int, w: int) -> list:
    """For each 3x3 tap `(i, j)`: the output rows/cols it reaches and the input rows/cols it reads
    (SAME padding: `y[r, c]` reads `x[r + i - 1, c + j - 1]` where that lies inside)."""

    def reach(shift: int, size: int) -> tuple[slice, slice]:  # (output range, input range)
        low, high = max(0, -shift), size - max(0, shift)
        return slice(low, high), slice(low + shift, high + shift)

    out = []
    for i in range(3):
        for j in range(3):
            (out_rows, in_rows), (out_cols, in_cols) = reach(i - 1, h), reach(j - 1, w)
            out.append((i, j, out_rows, out_cols, in_rows, in_cols))
    return out


class Conv:
    """3x3 stride-1 SAME convolution, NHWC, w `(3, 3, C, O)`: im2col + one GEMM."""

    def __init__(self, w, b, dw, db, in_shape, max_batch: int, need_dx: bool):
        (h, wd, c), o = in_shape, w.shape[-1]
        self.b, self.db, self.c, self.o, self.rows = b, db, c, o, h * wd  # rows: pixels/image
        self.w2, self.dw2 = w.reshape(9 * c, o), dw.reshape(9 * c, o)  # views: HWIO is (i, j, c)
        self.cols = np.zeros((max_batch, h, wd, 3, 3, c), F32)  # padding entries stay 0
        self.cols2 = self.cols.reshape(-1, 9 * c)
        self.y = np.empty((max_batch, h, wd, o), F32)
        self.taps = _taps(h, wd)
        if need_dx:
            self.dcols = np.empty_like(self.cols)
            self.dx = np.empty((max_batch, h, wd, c), F32)
        else:
            self.dx = None

    def forward(self, x):
        n = len(x)
        cols = self.cols[:n]
        for i, j, out_r, out_c, in_r, in_c in self.taps:
            cols[:, out_r, out_c, i, j, :] = x[:, in_r, in_c, :]
        y = self.y[:n]
        np.matmul(self.cols2[:n * self.rows], self.w2, out=y.reshape(-1, self.o))
        y += self.b
        return y

    def backward(self, dy):
        n = len(dy)
        cols2, dy2 = self.cols2[:n * self.rows], dy.reshape(-1, self.o)
        np.matmul(cols2.T, dy2, out=self.dw2)  # dW = cols^T dY
        np.sum(dy2, axis=0, out=self.db)
        if self.dx is None:
            return None
        dcols = self.dcols[:n]
        np.matmul(dy2, self.w2.T, out=dcols.reshape(-1, 9 * self.c))  # dcols = dY W^T
        dx = self.dx[:n]  # col2im: the centre tap covers every pixel, the others add on
        np.copyto(dx, dcols[:, :, :, 1, 1, :])
        for i, j, out_r, out_c, in_r, in_c in self.taps:
            if (i, j) != (1, 1):
                dx[:, in_r, in_c, :] += dcols[:, out_r, out_c, i, j, :]
        return dx


class MaxPool:
    """2x2 non-overlapping max pooling, NHWC, by reshape; ties go to the first maximum."""

    def __init__(self, in_shape, max_batch: int, need_dx: bool):
        h, w, c = in_shape
        self.tiled = (h // 2, 2, w // 2, 2, c)
        self.y = np.empty((max_batch, h // 2, w // 2, c), F32)
        self.dx = np.empty((max_batch, h, w, c), F32) if need_dx else None
        self.hit, self.taken = np.empty(self.y.shape, bool), np.empty(self.y.shape, bool)

    def forward(self, x):
        t, y = x.reshape(len(x), *self.tiled), self.y[:len(x)]
        # The max of the four window slots, pairwise: 3x faster than `np.max(t, axis=(2, 4))`.
        np.maximum(t[:, :, 0, :, 0], t[:, :, 0, :, 1], out=y)
        np.maximum(y, t[:, :, 1, :, 0], out=y)
        np.maximum(y, t[:, :, 1, :, 1], out=y)
        self.tiles, self.out = t, y
        return y

    def backward(self, dy):
        n, y = len(dy), self.out
        dx = self.dx[:n].reshape(n, *self.tiled)
        hit, taken = self.hit[:n], self.taken[:n]
        for k, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            if k == 0:
                np.equal(self.tiles[:, :, a, :, b, :], y, out=taken)
                np.multiply(dy, taken, out=dx[:, :, a, :, b, :])
            elif k < 3:  # a maximum no earlier slot took: hit & ~taken
                np.equal(self.tiles[:, :, a, :, b, :], y, out=hit)
                np.greater(hit, taken, out=hit)
                np.multiply(dy, hit, out=dx[:, :, a, :, b, :])
                np.logical_or(taken, hit, out=taken)
            else:
                np.logical_not(taken, out=hit)
                np.multiply(dy, hit, out=dx[:, :, a, :, b, :])
        return self.dx[:n]


class Relu:
    """`max(x, 0)`, in place on the previous layer's output (own buffer if it is the first)."""

    def __init__(self, shape, max_batch: int, first: bool):
        self.mask = np.empty((max_batch, *shape), bool)
        self.y = np.empty((max_batch, *shape), F32) if first else None

    def forward(self, x):
        self.out = np.maximum(x, 0.0, out=x if self.y is None else self.y[:len(x)])
        return self.out

    def backward(self, dy):
        mask = self.mask[:len(dy)]
        np.greater(self.out, 0.0, out=mask)
        return np.multiply(dy, mask, out=dy)


class Sigmoid:
    """`1 / (1 + exp(-x))`, in place like `Relu`; `dx = dy * y * (1 - y)`."""

    def __init__(self, shape, max_batch: int, first: bool):
        self.tmp = np.empty((max_batch, *shape), F32)
        self.y = np.empty((max_batch, *shape), F32) if first else None

    def forward(self, x):
        y = x if self.y is None else self.y[:len(x)]
        np.negative(x, out=y)
        np.exp(y, out=y)
        y += 1.0
        self.out = np.reciprocal(y, out=y)
        return y

    def backward(self, dy):
        tmp = self.tmp[:len(dy)]
        np.subtract(1.0, self.out, out=tmp)
        tmp *= self.out
        return np.multiply(dy, tmp, out=dy)


class Flatten:
    """`(n, h, w, c) -> (n, h * w * c)`: a view both ways."""

    def __init__(self, in_shape):
        self.in_shape = in_shape

    def forward(self, x):
        return x.reshape(len(x), -1)

    def backward(self, dy):
        return dy.reshape(len(dy), *self.in_shape)


# --- losses: `loss(z, y) -> (mean loss, dz)`, dz a buffer of the loss's own ------------------


class SoftmaxCrossEntropy:
    """Mean over the batch of `logsumexp(z) - z[y]`, int labels; `dz = (softmax(z) - 1_y) / n`."""

    def __init__(self, classes: int, max_batch: int):
        self.e = np.empty((max_batch, classes), F32)
        self.m, self.s = np.empty((max_batch, 1), F32), np.empty((max_batch, 1), F32)
        self.rows = np.arange(max_batch)

    def __call__(self, z, y):
        n = len(z)
        e, m, s, rows = self.e[:n], self.m[:n], self.s[:n], self.rows[:n]
        np.max(z, axis=1, keepdims=True, out=m)
        np.subtract(z, m, out=e)
        picked = e[rows, y]  # z_y - max
        np.exp(e, out=e)
        np.sum(e, axis=1, keepdims=True, out=s)
        loss = np.mean(np.log(s[:, 0]) - picked)
        np.divide(e, s, out=e)  # softmax
        e[rows, y] -= 1.0
        e *= 1.0 / n
        return loss, e


class BinaryCrossEntropy:
    """Mean of `softplus(z) - y z` on logits `z (n, 1)`, labels 0/1; `dz = (sigmoid(z) - y) / n`."""

    def __init__(self, max_batch: int):
        self.dz = np.empty((max_batch, 1), F32)

    def __call__(self, z, y):
        n, z1 = len(z), z[:, 0]
        t = np.exp(-np.abs(z1))  # stable: softplus(z) = max(z, 0) + log1p(exp(-|z|))
        loss = np.mean(np.maximum(z1, 0.0) - y * z1 + np.log1p(t))
        p = 1.0 / (1.0 + t)
        np.copyto(p, t * p, where=z1 < 0)  # sigmoid(z), from exp(-|z|)
        dz = self.dz[:n]
        np.subtract(p, y, out=dz[:, 0])
        dz *= 1.0 / n
        return loss, dz


# --- optimizers: `update(theta, g)` in place on the flat buffers (g is scratch after) ---------


class Sgd:
    def __init__(self, lr: float, size: int):
        del size  # no state: one signature for both optimizers
        self.lr = lr

    def update(self, theta, g):
        g *= self.lr
        theta -= g


class Adam:
    """optax's Adam: moments from 0, bias-corrected, `eps` outside the square root."""

    def __init__(self, lr: float, size: int, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps, self.count = lr, b1, b2, eps, 0
        self.m, self.v, self.tmp = (np.zeros(size, F32), np.zeros(size, F32),
                                    np.empty(size, F32))

    def update(self, theta, g):
        b1, b2, m, v, tmp = self.b1, self.b2, self.m, self.v, self.tmp
        self.count += 1
        m *= b1  # m = b1 m + (1 - b1) g
        np.multiply(g, 1.0 - b1, out=tmp)
        m += tmp
        v *= b2  # v = b2 v + (1 - b2) g^2
        np.multiply(g, g, out=g)
        g *= 1.0 - b2
        v += g
        # theta -= lr (m / c1) / (sqrt(v / c2) + eps), as (lr sqrt(c2) / c1) m / (sqrt(v) +
        # eps sqrt(c2)): the same value, one pass over the buffers fewer.
        root_c2, c1 = (1.0 - b2**self.count) ** 0.5, 1.0 - b1**self.count
        np.sqrt(v, out=tmp)
        tmp += self.eps * root_c2
        np.divide(m, tmp, out=tmp)
        tmp *= self.lr * root_c2 / c1
        theta -= tmp


# --- the network ------------------------------------------------------------------------------


class TightNet:
    """One fixed network with flat float32 parameters, preallocated for `max_batch` examples.

    Args:
        ops: the model as `workloads.plan` gives it (dense, conv, maxpool, relu, sigmoid, flatten).
        params: jdnn's `{layer_name: {"w", "b"}}` initial values (copied into the flat buffer).
        optimizer: `"sgd"` or `"adam"`.
        lr: the learning rate.
        max_batch: the largest batch `step`, `loss_and_grads` and each `predict` chunk take.

    Example:
        >>> net = TightNet(problem.ops, problem.params, "adam", 1e-3, max_batch=32)
        >>> loss = net.step(x[:32], y[:32])   # x (n, ...) float32, y (n,) int or 0/1 float
    """

    def __init__(self, ops: list[Op], params: dict, optimizer: str, lr: float, max_batch: int):
        weighted = [op for op in ops if op.has_params]
        sizes = [(params[op.name]["w"].size, params[op.name]["b"].size) for op in weighted]
        total = sum(a + b for a, b in sizes)
        self.theta, self.grad = np.empty(total, F32), np.zeros(total, F32)
        self.first = next(i for i, op in enumerate(ops) if op.has_params)
        self.names, self.views, self.layers = [op.name for op in ops], {}, []
        offset = 0
        for i, op in enumerate(ops):
            if op.has_params:
                views = []
                for key in ("w", "b"):
                    value = np.asarray(params[op.name][key])
                    end = offset + value.size
                    views += [self.theta[offset:end].reshape(value.shape),
                              self.grad[offset:end].reshape(value.shape)]
                    views[-2][...] = value
                    offset = end
                self.views[op.name] = views
                (w, dw, b, db), need_dx = views, i > self.first
                self.layers.append(Dense(w, b, dw, db, max_batch, need_dx) if op.kind == "dense"
                                   else Conv(w, b, dw, db, op.in_shape, max_batch, need_dx))
            elif op.kind in ("relu", "sigmoid"):  # in place after a dense/conv output only
                own = i == 0 or not ops[i - 1].has_params
                act = Relu if op.kind == "relu" else Sigmoid
                self.layers.append(act(op.out_shape, max_batch, own))
            elif op.kind == "maxpool":
                self.layers.append(MaxPool(op.in_shape, max_batch, i > self.first))
            else:
                self.layers.append(Flatten(op.in_shape))
        classes = ops[-1].out_shape[-1]
        self.loss = (BinaryCrossEntropy(max_batch) if classes == 1
                     else SoftmaxCrossEntropy(classes, max_batch))
        self.optimizer = {"sgd": Sgd, "adam": Adam}[optimizer](lr, total)
        self.max_batch = max_batch

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The network's output for `x (n <= max_batch, ...)`: a view of its buffer."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits `(len(x), classes)` for any number of examples (chunks of `max_batch`)."""
        return np.concatenate([self.logits(x[i:i + self.max_batch]).copy()
                               for i in range(0, len(x), self.max_batch)])

    def backprop(self, x: np.ndarray, y: np.ndarray) -> float:
        """Forward, loss and backward: the gradients land in the flat `grad` buffer."""
        if x.dtype != F32 or len(x) > self.max_batch:
            raise ValueError(f"TightNet takes float32 batches of at most {self.max_batch} "
                             f"examples; got {x.dtype} x {len(x)}")
        loss, dz = self.loss(self.logits(x), y)
        for layer in reversed(self.layers[self.first:]):
            dz = layer.backward(dz)
        return loss

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One training step on a batch of at most `max_batch` examples; returns its loss."""
        loss = self.backprop(x, y)
        self.optimizer.update(self.theta, self.grad)
        return loss

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
        """The loss and a copy of the gradients, in jdnn's tree format."""
        loss = self.backprop(x, y)
        return float(loss), self._tree(1)

    def params(self) -> dict:
        """A copy of the parameters: `{layer_name: {"w", "b"}}`, `{}` for the others."""
        return self._tree(0)

    def _tree(self, which: int) -> dict:
        tree = {name: {} for name in self.names}
        for name, views in self.views.items():
            tree[name] = {"w": views[which].copy(), "b": views[2 + which].copy()}
        return tree

    def arrays(self) -> list[np.ndarray]:
        """Every preallocated buffer (parameters, gradients, caches, optimizer moments)."""
        owners = [*self.layers, self.loss, self.optimizer]
        return [self.theta, self.grad, *[value for owner in owners
                                          for value in vars(owner).values()
                                          if isinstance(value, np.ndarray)]]


# --- the side ---------------------------------------------------------------------------------


def build(problem: Problem) -> Runner:
    """A `TightNet` stepping through the problem's batches, BLAS threads set per workload."""
    w = problem.workload
    net = TightNet(problem.ops, problem.params, w.optimizer, w.lr, w.batch)
    cursor = batches(problem, lambda x, y: (x, y))
    threads = blas_threads(w)

    def run(n: int) -> None:
        with blas_limit(threads):
            for _ in range(n):
                net.step(*cursor.next())

    return Runner(run, net.params, info={"blas_threads": threads})


def loss_and_grads(problem: Problem, params: dict, x, y) -> tuple[float, dict]:
    """The tight network's loss and gradients at `params` on one batch (float32)."""
    x = np.ascontiguousarray(x, F32)
    y = np.asarray(y, F32) if problem.workload.classes == 1 else np.asarray(y)
    net = TightNet(problem.ops, params, problem.workload.optimizer, problem.workload.lr, len(x))
    return net.loss_and_grads(x, y)


SIDE = Side("numpy", "tight hand-written float32 NumPy backprop (preallocated, in-place, flat "
            "Adam)", build, loss_and_grads)
