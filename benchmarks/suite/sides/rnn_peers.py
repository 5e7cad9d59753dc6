"""The GRU and LSTM classifiers in Flax linen, Equinox and PyTorch, from jdnn's parameters.

jdnn's recurrent layers use PyTorch's gate conventions (`jdnn.layers.recurrent`):
- GRU: `w_x (F, 3H)`, `w_h (H, 3H)`, `b_x (3H,)`, `b_h (3H,)`, gates r, z, n;
  `n = tanh(x w_xn + b_xn + r * (h w_hn + b_hn))`, `h' = (1 - z) n + z h`.
- LSTM: `w_x (F, 4H)`, `w_h (H, 4H)`, `b (4H,)`, gates i, f, g, o.

Each peer's cell computes the same function with its parameters laid out its own way:
- PyTorch `nn.GRU`/`nn.LSTM`: `weight_ih (3H|4H, F)` = `w_x.T`, `weight_hh` = `w_h.T`, two
  biases (`bias_ih` = `b_x`, `bias_hh` = `b_h`; for the LSTM `b` and zeros).
- Flax linen `GRUCell`: one `Dense` per gate and input (`ir`, `iz`, `in` with biases, `hr`, `hz`
  without, `hn` with): the r and z biases of both are summed into `ir`, `iz`.
  `OptimizedLSTMCell`: `ii`.. `io` kernels without bias, `hi`.. `ho` with `b`'s quarters.
- Equinox `GRUCell`: `weight_ih`, `weight_hh` (PyTorch's layout), `bias` (3H: `b_x` plus the
  r and z parts of `b_h`) and `bias_n` (`b_hn`); `LSTMCell`: `bias` = `b`.

Every side: the last hidden state (the LSTM's `h`) through a `Dense` head, the mean softmax
cross-entropy, Adam with optax's formulas (PyTorch's `Adam(fused=True)` matches them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.suite.sides.base import require
from benchmarks.suite.sides.sequence_loops import (Trainer, children, device, linen_trainer,
                                                   mean_xent, torch_trainer)
from benchmarks.suite.sides.torch_side import threads

if TYPE_CHECKING:
    from benchmarks.suite.sequences import SequenceProblem


def _gates(a: np.ndarray, count: int) -> list[np.ndarray]:
    """The gate blocks of a fused `(..., count * H)` array, in order."""
    return np.split(np.asarray(a), count, axis=-1)


# --- Flax linen -------------------------------------------------------------------------------


def _linen_cell_params(kind: str, p: dict) -> dict:
    if kind == "gru":
        (xr, xz, xn), (hr, hz, hn) = _gates(p["w_x"], 3), _gates(p["w_h"], 3)
        (bxr, bxz, bxn), (bhr, bhz, bhn) = _gates(p["b_x"], 3), _gates(p["b_h"], 3)
        return {"ir": {"kernel": xr, "bias": bxr + bhr}, "iz": {"kernel": xz, "bias": bxz + bhz},
                "in": {"kernel": xn, "bias": bxn}, "hr": {"kernel": hr}, "hz": {"kernel": hz},
                "hn": {"kernel": hn, "bias": bhn}}
    wx, wh, b = _gates(p["w_x"], 4), _gates(p["w_h"], 4), _gates(p["b"], 4)
    out = {}
    for gate, kx, kh, bias in zip("ifgo", wx, wh, b, strict=True):
        out[f"i{gate}"] = {"kernel": kx}
        out[f"h{gate}"] = {"kernel": kh, "bias": bias}
    return out


def linen_module(problem: SequenceProblem):
    linen = require("flax.linen", "flax")
    w = problem.workload
    cell = {"gru": linen.GRUCell, "lstm": linen.OptimizedLSTMCell}[w.kind]

    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            states = linen.RNN(cell(w.hidden, name="cell"))(x)
            return linen.Dense(w.classes, name="head")(states[:, -1])

    return Net()


def linen_params(problem: SequenceProblem) -> dict:
    rnn, head = children(problem.params)
    cell = _linen_cell_params(problem.workload.kind, rnn)
    tree = {"cell": cell, "head": {"kernel": head["w"], "bias": head["b"]}}
    return jax.tree.map(jnp.array, tree)


def linen(problem: SequenceProblem) -> Trainer:
    return linen_trainer(problem, linen_module(problem), linen_params(problem))


# --- Equinox ----------------------------------------------------------------------------------


def eqx_model(problem: SequenceProblem):
    eqx = require("equinox")
    w = problem.workload
    rnn, head = children(problem.params)
    keys = jax.random.split(jax.random.key(0))
    wx, wh = jnp.array(np.asarray(rnn["w_x"]).T), jnp.array(np.asarray(rnn["w_h"]).T)
    if w.kind == "gru":
        cell = eqx.nn.GRUCell(w.features, w.hidden, key=keys[0])
        bhr, bhz, bhn = _gates(rnn["b_h"], 3)
        bias = np.asarray(rnn["b_x"]) + np.concatenate([bhr, bhz, np.zeros_like(bhn)])
        cell = eqx.tree_at(lambda c: (c.weight_ih, c.weight_hh, c.bias, c.bias_n), cell,
                           (wx, wh, jnp.array(bias), jnp.array(bhn)))
    else:
        cell = eqx.nn.LSTMCell(w.features, w.hidden, key=keys[0])
        cell = eqx.tree_at(lambda c: (c.weight_ih, c.weight_hh, c.bias), cell,
                           (wx, wh, jnp.array(rnn["b"])))
    linear = eqx.nn.Linear(w.hidden, w.classes, key=keys[1])
    linear = eqx.tree_at(lambda m: (m.weight, m.bias), linear,
                         (jnp.array(np.asarray(head["w"]).T), jnp.array(head["b"])))
    lstm = w.kind == "lstm"

    class Net(eqx.Module):
        """One sequence `(T, F)` -> logits: the cell scanned over time, then the head."""

        cell: eqx.Module
        head: eqx.nn.Linear

        def __call__(self, xs):
            zeros = jnp.zeros(w.hidden, xs.dtype)

            def body(carry, x):
                return self.cell(x, carry), None

            last, _ = jax.lax.scan(body, (zeros, zeros) if lstm else zeros, xs)
            return self.head(last[0] if lstm else last)

    return Net(cell, linear)


def equinox(problem: SequenceProblem) -> Trainer:
    eqx = require("equinox")
    tx = optax.adam(problem.workload.lr)
    model = eqx_model(problem)

    @eqx.filter_jit
    def step(state, x, y):
        model, opt_state = state
        loss, grads = eqx.filter_value_and_grad(
            lambda m: mean_xent(jax.vmap(m)(x), y))(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return (eqx.apply_updates(model, updates), opt_state), loss

    return Trainer(step, (model, tx.init(eqx.filter(model, eqx.is_array))), device)


# --- PyTorch ----------------------------------------------------------------------------------


def torch_model(problem: SequenceProblem):
    torch = require("torch")
    nn, w = torch.nn, problem.workload
    rnn, head = children(problem.params)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            cell = {"gru": nn.GRU, "lstm": nn.LSTM}[w.kind]
            self.rnn = cell(w.features, w.hidden, batch_first=True)
            self.head = nn.Linear(w.hidden, w.classes)

        def forward(self, x):
            _, last = self.rnn(x)
            h = last[0] if w.kind == "lstm" else last   # (layers, B, H)
            return self.head(h[-1])

    net = Net()
    b_h = rnn["b_h"] if w.kind == "gru" else np.zeros_like(rnn["b"])
    b_x = rnn["b_x"] if w.kind == "gru" else rnn["b"]
    values = {"rnn.weight_ih_l0": np.asarray(rnn["w_x"]).T, "rnn.weight_hh_l0":
              np.asarray(rnn["w_h"]).T, "rnn.bias_ih_l0": b_x, "rnn.bias_hh_l0": b_h,
              "head.weight": np.asarray(head["w"]).T, "head.bias": head["b"]}
    net.load_state_dict({k: torch.from_numpy(np.array(v, order="C")) for k, v in
                         values.items()})
    return net


def torch_fused(problem: SequenceProblem, num_threads: int | None = None) -> Trainer:
    """PyTorch eager: `nn.GRU`/`nn.LSTM` (its fused CPU kernels), `Adam(fused=True)`."""
    require("torch").set_num_threads(num_threads or threads())
    return torch_trainer(problem, torch_model(problem), integer_inputs=False,
                         num_threads=num_threads)


BUILDERS = {"linen": linen, "equinox": equinox, "torch_fused": torch_fused,
            "torch_fused_1thread": lambda problem: torch_fused(problem, 1)}
LABELS = {"linen": "Flax linen nn.RNN(GRUCell | OptimizedLSTMCell) + Dense, jax.jit + donation, "
                   "optax Adam",
          "equinox": "Equinox GRUCell | LSTMCell in lax.scan, vmap over the batch, "
                     "eqx.filter_jit, optax Adam",
          "torch_fused": "PyTorch eager nn.GRU | nn.LSTM (batch_first), Adam(fused=True), "
                         "threads = CPU count",
          "torch_fused_1thread": "the same with one thread"}
