"""The transformer language model in Flax linen and PyTorch, from jdnn's parameters.

The model (`sequences.build_model`): token embedding + learned positions, then per block
`x + attn(LayerNorm(x))` (causal, `heads` heads) and `x + fc2(gelu(fc1(LayerNorm(x))))`, then
a final LayerNorm and the vocabulary head; GELU is the tanh approximation and LayerNorm's eps
1e-5 on every side.

- Flax linen: standard `nn.MultiHeadDotProductAttention` blocks with `nn.make_causal_mask`,
  `nn.Embed`, `nn.LayerNorm(epsilon=1e-5)`, `nn.Dense`; `jax.jit` + donation, optax Adam.
- PyTorch: `nn.TransformerEncoderLayer(norm_first=True, dropout=0, batch_first=True)` with a
  causal mask (`is_causal=True`; attention through `scaled_dot_product_attention`), eager,
  `Adam(fused=True)`.

Parameters are converted through one canonical form (`canonical`): per attention the fused-head
`(d, heads * head_features)` query, key and value matrices and biases and the output projection,
each dense layer as `(w (in, out), b)`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.suite.sides.base import require
from benchmarks.suite.sides.sequence_loops import (Trainer, children, linen_trainer,
                                                   torch_trainer)
from benchmarks.suite.sides.torch_side import threads

if TYPE_CHECKING:
    from benchmarks.suite.sequences import SequenceProblem

EPS = 1e-5


def attention(p: dict) -> dict:
    """jdnn's `MultiHeadAttention` parameters as `{"q", "k", "v": (w (d, heads * hf), b),
    "out": (w (heads * hf, d), b)}`."""
    def fused(w):
        w = np.asarray(w)
        return w.reshape(w.shape[0], -1)

    return {"q": (fused(p["w_q"]), np.asarray(p["b_q"]).ravel()),
            "k": (fused(p["w_k"]), np.asarray(p["b_k"]).ravel()),
            "v": (fused(p["w_v"]), np.asarray(p["b_v"]).ravel()),
            "out": (np.asarray(p["w_o"]).reshape(-1, np.shape(p["w_o"])[-1]),
                    np.asarray(p["b_o"]))}


def _dense(p: dict) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(p["w"]), np.asarray(p["b"])


def _norm(p: dict) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(p["scale"]), np.asarray(p["bias"])


def canonical(problem: SequenceProblem) -> dict:
    """jdnn's parameter tree as `{"embed", "pos", "blocks": [...], "norm", "head"}`."""
    embed, pos, *blocks, norm, head = children(problem.params)
    out = []
    for block in blocks:
        attn_branch, mlp_branch = (children(children(r)[0]) for r in children(block))
        norm1, attn = attn_branch
        norm2, fc1, _, fc2 = mlp_branch
        out.append({"norm1": _norm(norm1), "attn": attention(attn), "norm2": _norm(norm2),
                    "fc1": _dense(fc1), "fc2": _dense(fc2)})
    return {"embed": np.asarray(embed["table"]), "pos": np.asarray(pos["table"]),
            "blocks": out, "norm": _norm(norm), "head": _dense(head)}


# --- Flax linen -------------------------------------------------------------------------------


def linen_module(problem: SequenceProblem):
    linen = require("flax.linen", "flax")
    w = problem.workload

    class Block(linen.Module):
        @linen.compact
        def __call__(self, x, mask):
            h = linen.LayerNorm(epsilon=EPS, name="norm1")(x)
            x = x + linen.MultiHeadDotProductAttention(
                num_heads=w.heads, qkv_features=w.features, out_features=w.features,
                name="attn")(h, mask=mask)
            h = linen.LayerNorm(epsilon=EPS, name="norm2")(x)
            h = linen.Dense(w.hidden, name="fc1")(h)
            return x + linen.Dense(w.features, name="fc2")(linen.gelu(h, approximate=True))

    class LM(linen.Module):
        @linen.compact
        def __call__(self, tokens):
            pos = self.param("pos", linen.initializers.zeros, (w.length, w.features))
            x = linen.Embed(w.classes, w.features, name="embed")(tokens)
            x = x + pos[:tokens.shape[1]]
            mask = linen.make_causal_mask(tokens)
            for i in range(w.layers):
                x = Block(name=f"block{i}")(x, mask)
            x = linen.LayerNorm(epsilon=EPS, name="norm")(x)
            return linen.Dense(w.classes, name="head")(x)

    return LM()


def _heads(w: np.ndarray, b: np.ndarray, heads: int) -> dict:
    d = w.shape[0]
    return {"kernel": w.reshape(d, heads, -1), "bias": b.reshape(heads, -1)}


def linen_params(problem: SequenceProblem) -> dict:
    c, heads = canonical(problem), problem.workload.heads

    def norm(pair):
        return {"scale": pair[0], "bias": pair[1]}

    def dense(pair):
        return {"kernel": pair[0], "bias": pair[1]}

    tree = {"embed": {"embedding": c["embed"]}, "pos": c["pos"], "norm": norm(c["norm"]),
            "head": dense(c["head"])}
    for i, b in enumerate(c["blocks"]):
        wo, bo = b["attn"]["out"]
        attn = {n: _heads(*b["attn"][k], heads) for n, k in
                (("query", "q"), ("key", "k"), ("value", "v"))}
        attn["out"] = {"kernel": wo.reshape(heads, -1, wo.shape[-1]), "bias": bo}
        tree[f"block{i}"] = {"norm1": norm(b["norm1"]), "attn": attn,
                             "norm2": norm(b["norm2"]), "fc1": dense(b["fc1"]),
                             "fc2": dense(b["fc2"])}
    return jax.tree.map(jnp.array, tree)


def linen(problem: SequenceProblem) -> Trainer:
    return linen_trainer(problem, linen_module(problem), linen_params(problem))


# --- PyTorch ----------------------------------------------------------------------------------


def torch_model(problem: SequenceProblem):
    torch = require("torch")
    nn, functional, w = torch.nn, torch.nn.functional, problem.workload

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(w.classes, w.features)
            self.pos = nn.Parameter(torch.zeros(w.length, w.features))
            self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(
                w.features, w.heads, w.hidden, dropout=0.0,
                activation=functools.partial(functional.gelu, approximate="tanh"),
                layer_norm_eps=EPS, batch_first=True, norm_first=True)
                for _ in range(w.layers))
            self.norm = nn.LayerNorm(w.features, eps=EPS)
            self.head = nn.Linear(w.features, w.classes)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(
                w.length), persistent=False)

        def forward(self, tokens):
            x = self.embed(tokens) + self.pos[:tokens.shape[1]]
            for block in self.blocks:
                x = block(x, src_mask=self.mask, is_causal=True)
            return self.head(self.norm(x))

    net, c = LM(), canonical(problem)
    values = {"embed.weight": c["embed"], "pos": c["pos"], "norm.weight": c["norm"][0],
              "norm.bias": c["norm"][1], "head.weight": c["head"][0].T,
              "head.bias": c["head"][1]}
    for i, b in enumerate(c["blocks"]):
        a, at = b["attn"], f"blocks.{i}."
        values.update({
            at + "self_attn.in_proj_weight": np.concatenate([a[k][0].T for k in "qkv"]),
            at + "self_attn.in_proj_bias": np.concatenate([a[k][1] for k in "qkv"]),
            at + "self_attn.out_proj.weight": a["out"][0].T,
            at + "self_attn.out_proj.bias": a["out"][1],
            at + "linear1.weight": b["fc1"][0].T, at + "linear1.bias": b["fc1"][1],
            at + "linear2.weight": b["fc2"][0].T, at + "linear2.bias": b["fc2"][1],
            at + "norm1.weight": b["norm1"][0], at + "norm1.bias": b["norm1"][1],
            at + "norm2.weight": b["norm2"][0], at + "norm2.bias": b["norm2"][1]})
    net.load_state_dict({k: torch.from_numpy(np.array(v, order="C")) for k, v in
                         values.items()})
    return net


def torch_fused(problem: SequenceProblem, num_threads: int | None = None) -> Trainer:
    require("torch").set_num_threads(num_threads or threads())
    return torch_trainer(problem, torch_model(problem), integer_inputs=True,
                         num_threads=num_threads)


BUILDERS = {"linen": linen, "torch_fused": torch_fused,
            "torch_fused_1thread": lambda problem: torch_fused(problem, 1)}
LABELS = {"linen": "Flax linen, nn.MultiHeadDotProductAttention pre-norm blocks, jax.jit + "
                   "donation, optax Adam",
          "torch_fused": "PyTorch eager, nn.TransformerEncoderLayer(norm_first=True) with a "
                         "causal mask, Adam(fused=True), threads = CPU count",
          "torch_fused_1thread": "the same with one thread"}
