"""The benchmark's workloads: a model, its data, its batch size and its optimizer.

Every side of a comparison starts from one `Problem`: the same jdnn model (every peer's model is
built from its spec), the same initial parameters (jdnn's, converted), the same examples cut into
the same batches, the same loss and the same optimizer with the same hyper-parameters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from jdnn.core import Layer, Spec, child_name, output_shape, rebuild
from jdnn.data import digits
from jdnn.data import xor as xor_data
from jdnn.layers import Conv2D, Dense, Flatten, MaxPool2D, Relu, Sigmoid, serial


@dataclasses.dataclass(frozen=True)
class Workload:
    """What is trained, on what, and how.

    Attributes:
        name: a short label, e.g. `"mlp_b128_adam"`.
        kind: `"mlp"` (flat inputs) or `"cnn"` (NHWC images).
        hidden: the hidden widths of an MLP (ignored by the CNN).
        example_shape: one input example's shape, e.g. `(784,)` or `(28, 28, 1)`.
        classes: outputs; 1 means a binary problem with `binary_cross_entropy`.
        batch: examples per step.
        optimizer: `"sgd"` or `"adam"`.
        lr: the learning rate.
        activation: `"relu"` or `"sigmoid"` between the dense layers.
        batches: how many distinct batches the data hold (one epoch).
        data: `"random"` (MNIST-shaped noise), `"digits"` or `"xor"`.
        seed: seeds the initial parameters and the random data.
    """

    name: str
    kind: str
    hidden: tuple[int, ...] = (512, 512)
    example_shape: tuple[int, ...] = (784,)
    classes: int = 10
    batch: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    activation: str = "relu"
    batches: int = 8
    data: str = "random"
    seed: int = 0

    @property
    def loss(self) -> str:
        return "binary_cross_entropy" if self.classes == 1 else "softmax_cross_entropy"

    @property
    def examples(self) -> int:
        return self.batch * self.batches

    def describe(self) -> str:
        if self.kind == "cnn":
            net = "CNN 28x28x1 conv32-pool-conv64-pool-dense128-10"
        else:
            widths = (math.prod(self.example_shape), *self.hidden, self.classes)
            net = "MLP " + "-".join(str(w) for w in widths) + f" ({self.activation})"
        return f"{net}, batch {self.batch}, {self.optimizer} lr={self.lr}, {self.data} data"


def mlp(batch: int, optimizer: str = "adam", **kw: Any) -> Workload:
    """The 784-512-512-10 ReLU MLP at `batch`."""
    lr = 0.01 if optimizer == "sgd" else 1e-3
    batches = kw.pop("batches", max(4, min(16, 4096 // batch)))
    return Workload(f"mlp_b{batch}_{optimizer}", "mlp", batch=batch, optimizer=optimizer, lr=lr,
                    batches=batches, **kw)


def cnn(batch: int = 64, optimizer: str = "adam") -> Workload:
    """The MNIST-shaped CNN: 28x28x1 conv32-pool-conv64-pool-dense128-10."""
    lr = 0.01 if optimizer == "sgd" else 1e-3
    return Workload(f"cnn_b{batch}_{optimizer}", "cnn", hidden=(128,), example_shape=(28, 28, 1),
                    batch=batch, optimizer=optimizer, lr=lr, batches=8)


def digits_mlp(batch: int = 32, optimizer: str = "adam", hidden: int = 128) -> Workload:
    """A 64-128-10 MLP on scikit-learn's digits: a small net, where Python overhead dominates."""
    return Workload(f"digits_mlp_b{batch}_{optimizer}", "mlp", hidden=(hidden,),
                    example_shape=(64,), batch=batch, optimizer=optimizer,
                    lr=0.05 if optimizer == "sgd" else 1e-3, batches=1347 // batch, data="digits")


def xor(batch: int = 8, batches: int = 32) -> Workload:
    """The XOR tutorial's 2-3-2-1 sigmoid net with a binary cross-entropy: a tiny model, so its
    step time is the fixed overhead per step."""
    return Workload(f"xor_b{batch}_sgd", "mlp", hidden=(3, 2), example_shape=(2,), classes=1,
                    batch=batch, optimizer="sgd", lr=0.5, activation="sigmoid",
                    batches=batches, data="xor")


def build_model(w: Workload) -> Layer:
    """The jdnn model of a workload (its spec is what every other side is built from)."""
    if w.kind == "cnn":
        return serial(Conv2D(32, 3), Relu(), MaxPool2D(2), Conv2D(64, 3), Relu(), MaxPool2D(2),
                      Flatten(), Dense(w.hidden[0]), Relu(), Dense(w.classes))
    act = {"relu": Relu, "sigmoid": Sigmoid}[w.activation]
    layers = [layer for width in w.hidden for layer in (Dense(width), act())]
    return serial(*layers, Dense(w.classes))


@dataclasses.dataclass(frozen=True)
class Op:
    """One layer of a model, as the peers rebuild it: jdnn's key, its kind, its shapes."""

    name: str
    kind: str  # a key of `PEER_KINDS`' values: "dense", "conv", "relu", "sigmoid", ...
    in_shape: tuple[int, ...]  # one example's input shape
    out_shape: tuple[int, ...]

    @property
    def has_params(self) -> bool:
        """Whether the layer holds parameters (`{"w", "b"}`): dense and conv."""
        return self.kind in WEIGHTED


def _always(hparams: dict) -> bool:
    del hparams
    return True


def _conv_3x3_same(hparams: dict) -> bool:
    return (hparams["kernel_size"] == (3, 3) and hparams["strides"] == (1, 1)
            and hparams["padding"] == "SAME")


def _pool_2x2(hparams: dict) -> bool:
    return (hparams["window"] == (2, 2) and hparams["strides"] == (2, 2)
            and hparams["padding"] == "VALID")


# The jdnn layer kinds the peers rebuild: kind -> (the `Op` kind every side translates, whether
# the hyper-parameters are in the only form the peers support). One lookup per layer: the
# benchmark's CNN uses only 3x3 stride-1 SAME convolutions and 2x2 non-overlapping max pooling.
PEER_KINDS = {"Dense": ("dense", _always), "Conv2D": ("conv", _conv_3x3_same),
              "MaxPool2D": ("maxpool", _pool_2x2), "Relu": ("relu", _always),
              "Sigmoid": ("sigmoid", _always), "Flatten": ("flatten", _always)}
WEIGHTED = frozenset({"dense", "conv"})  # the `Op` kinds that hold parameters


def plan(w: Workload) -> list[Op]:
    """The workload's model as a list of `Op`s, with each layer's per-example shapes."""
    model = build_model(w)
    shape = (1, *w.example_shape)
    ops = []
    for i, spec in enumerate(model.spec.children):
        out_shape = output_shape(rebuild(spec), shape)
        ops.append(Op(child_name(i, spec), _peer_kind(spec), shape[1:], tuple(out_shape[1:])))
        shape = out_shape
    return ops


def _peer_kind(spec: Spec) -> str:
    """The `Op` kind of a layer the peers can rebuild, else a `ValueError` naming the spec."""
    kind, supported = PEER_KINDS.get(spec.kind, (None, None))
    if kind is None or not supported(dict(spec.hparams)):
        raise ValueError(f"the benchmark's peers rebuild only Dense, 3x3 SAME Conv2D, 2x2 "
                         f"MaxPool2D, Relu, Sigmoid and Flatten; got {spec!r}")
    return kind


def make_data(w: Workload) -> tuple[np.ndarray, np.ndarray]:
    """`w.examples` inputs and labels (float32 x, int32 labels or float32 0/1 for XOR)."""
    n = w.examples
    if w.data == "digits":
        (x, y), _ = digits()
        return x[:n], y[:n]
    if w.data == "xor":
        (x, y), _ = xor_data(repeat=math.ceil(n / 4))
        return x[:n], y[:n]
    rng = np.random.default_rng(w.seed + 1)
    x = rng.random((n, *w.example_shape), dtype=np.float32)
    return x, rng.integers(0, w.classes, size=n).astype(np.int32)


@dataclasses.dataclass
class Problem:
    """Everything the sides share: the workload, jdnn's model, initial params, the data.

    `params`/`state` are NumPy copies of jdnn's initialization; each side builds its own device
    buffers from them (sides donate their buffers, so nothing may be shared).
    """

    workload: Workload
    model: Layer
    ops: list[Op]
    params: dict
    state: dict
    x: np.ndarray
    y: np.ndarray

    def batch(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The `i`-th batch (modulo the epoch): every side walks the batches in this order."""
        b = self.workload.batch
        i %= self.workload.batches
        return self.x[i * b:(i + 1) * b], self.y[i * b:(i + 1) * b]


def make_problem(w: Workload) -> Problem:
    """Initializes jdnn's model for the workload and draws its data."""
    model = build_model(w)
    # One compiled init instead of one compilation per initializer shape (op by op).
    init = jax.jit(model.init, static_argnums=1)
    _, params, state = init(jax.random.key(w.seed), (w.batch, *w.example_shape))
    x, y = make_data(w)
    to_numpy = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
    return Problem(w, model, plan(w), to_numpy(params), to_numpy(state), x, y)


def dense_ops(ops: list[Op]) -> list[Op]:
    """The ops that hold parameters (dense and conv), in order."""
    return [op for op in ops if op.has_params]


def flatten_permutation(op: Op) -> np.ndarray | None:
    """For the first dense layer after a `Flatten` of NHWC maps: the row order channel-first
    libraries (PyTorch, Equinox) see. jdnn flattens `(H, W, C)`; they flatten `(C, H, W)`, so
    row `k` of their weight is row `perm[k]` of jdnn's."""
    if len(op.in_shape) != 3:
        return None
    h, w, c = op.in_shape
    return np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).ravel()


def channel_first_rows(ops: list[Op]) -> dict[str, np.ndarray | None]:
    """For each layer with parameters, by name: `flatten_permutation` of the `Flatten` of NHWC
    maps (a 3-D example in, a 1-D one out) that feeds it, through parameter-free layers, when it
    is the first such layer after one; None for the others."""
    rows, pending = {}, None
    for op in ops:
        if op.has_params:
            rows[op.name], pending = pending, None
        elif len(op.in_shape) == 3 and len(op.out_shape) == 1:
            pending = flatten_permutation(op)
    return rows
