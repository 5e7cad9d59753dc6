"""Sequence models: a GRU and an LSTM classifier, and a small transformer language model.

- `gru_b64_t100`, `lstm_b64_t100`: 128 input features per step, length 100, batch 64, a
  recurrent layer of 128 units whose last state feeds a `Dense(10)` head; softmax
  cross-entropy on one label per sequence; Adam (lr 1e-3).
- `transformer_b32_t128`: a 2-layer pre-norm decoder on token ids, d = 128, 4 heads of 32, an
  MLP of 4d with a tanh-approximated GELU, vocabulary 96, length 128, batch 32; softmax
  cross-entropy at every position (the next token); Adam (lr 1e-3).

Every side starts from jdnn's initial parameters, converted (`sides/rnn_peers.py`,
`sides/lm_peers.py`), and walks the same batches in the same order, so every side's first
loss is the same number (recorded in the payload, checked by the tests). Timing is the suite's
(`compare`: warm-up, compile time apart, interleaved shuffled rounds, medians and IQRs, ratios
within rounds, `block_until_ready` at the end of each chunk). Each side is a `Trainer`
(`sides/sequence_loops.py`): a `step(state, x, y) -> (state, loss)` that one shared loop calls
once per batch.

    python benchmarks/run.py --only sequences           # ~3-4 minutes on 2 cores
    python benchmarks/run.py --only sequences --quick   # ~1 minute: PyTorch on one thread only
"""

from __future__ import annotations

import dataclasses
import sys
import traceback
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from benchmarks.suite import targets, timing
from benchmarks.suite.compare import compare
from benchmarks.suite.context import Context
from benchmarks.suite.sides.base import Skipped
from benchmarks.suite.sides.sequence_loops import Trainer, jdnn_trainer, runner


@dataclasses.dataclass(frozen=True)
class SequenceWorkload:
    """What is trained, on what, and how.

    Attributes:
        name: a short label, e.g. `"gru_b64_t100"`.
        kind: `"gru"`, `"lstm"` or `"transformer"`.
        batch: sequences per step.
        length: time steps per sequence.
        features: per-step input features (RNNs) or the model width d (the transformer).
        hidden: the recurrent layer's units (RNNs) or the MLP width, 4d (the transformer).
        classes: the RNN head's classes, or the transformer's vocabulary.
        heads: attention heads (the transformer).
        layers: transformer blocks.
        batches: distinct batches in the data (one epoch).
        lr: Adam's learning rate.
        seed: seeds the initial parameters and the data.
    """

    name: str
    kind: str
    batch: int
    length: int
    features: int
    hidden: int
    classes: int
    heads: int = 0
    layers: int = 0
    batches: int = 4
    lr: float = 1e-3
    seed: int = 0

    @property
    def head_features(self) -> int:
        return self.features // self.heads

    def describe(self) -> str:
        if self.kind == "transformer":
            return (f"{self.layers}-layer causal transformer LM, d={self.features}, "
                    f"{self.heads} heads, MLP {self.hidden}, vocab {self.classes}, length "
                    f"{self.length}, batch {self.batch}, per-token cross-entropy, Adam")
        return (f"{self.kind.upper()}({self.hidden}) on {self.features} features x "
                f"{self.length} steps, last state -> Dense({self.classes}), batch "
                f"{self.batch}, Adam")


def rnn(kind: str, batch: int = 64, length: int = 100, features: int = 128,
        hidden: int = 128) -> SequenceWorkload:
    """A GRU or LSTM classifier (`kind`): the last state through a `Dense(10)` head."""
    return SequenceWorkload(f"{kind}_b{batch}_t{length}", kind, batch, length, features,
                            hidden, classes=10)


def transformer(batch: int = 32, length: int = 128, width: int = 128, heads: int = 4,
                layers: int = 2, vocab: int = 96) -> SequenceWorkload:
    """The pre-norm causal transformer language model."""
    return SequenceWorkload(f"transformer_b{batch}_t{length}", "transformer", batch, length,
                            width, 4 * width, classes=vocab, heads=heads, layers=layers)


def build_model(w: SequenceWorkload):
    """jdnn's model of the workload; every peer is converted from its parameters."""
    from jdnn import Dense, Gelu, serial
    from jdnn.layers import residual
    from jdnn.layers.attention import MultiHeadAttention
    from jdnn.layers.embedding import Embedding, PositionalEmbedding
    from jdnn.layers.normalization import LayerNorm
    from jdnn.layers.recurrent import GRU, LSTM

    if w.kind in ("gru", "lstm"):
        cell = {"gru": GRU, "lstm": LSTM}[w.kind]
        return serial(cell(w.hidden, return_sequences=False), Dense(w.classes))
    blocks = [serial(residual(serial(LayerNorm(),
                                     MultiHeadAttention(w.heads, w.head_features, causal=True))),
                     residual(serial(LayerNorm(), Dense(w.hidden), Gelu(), Dense(w.features))))
              for _ in range(w.layers)]
    return serial(Embedding(w.classes, w.features), PositionalEmbedding(w.length), *blocks,
                  LayerNorm(), Dense(w.classes))


def make_data(w: SequenceWorkload) -> tuple[np.ndarray, np.ndarray]:
    """RNNs: N(0, 1) float32 sequences `(N, T, F)` and int32 labels `(N,)`. The transformer:
    random int32 tokens `(N, T)` and the same streams one step later as targets `(N, T)`."""
    rng = np.random.default_rng(w.seed + 1)
    n = w.batch * w.batches
    if w.kind == "transformer":
        tokens = rng.integers(0, w.classes, size=(n, w.length + 1)).astype(np.int32)
        return tokens[:, :-1], tokens[:, 1:]
    x = rng.standard_normal((n, w.length, w.features), dtype=np.float32)
    return x, rng.integers(0, w.classes, size=n).astype(np.int32)


@dataclasses.dataclass
class SequenceProblem:
    """What the sides share: the workload, jdnn's model and initial parameters (NumPy), the
    data. `compare` reads only `.workload`."""

    workload: SequenceWorkload
    model: Any
    params: dict
    state: dict
    x: np.ndarray
    y: np.ndarray

    def batch(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        b = self.workload.batch
        i %= self.workload.batches
        return self.x[i * b:(i + 1) * b], self.y[i * b:(i + 1) * b]


def make_problem(w: SequenceWorkload) -> SequenceProblem:
    """jdnn's model of `w`, initialized as `fit` does (`TrainState.create`: one compiled
    program), and its data."""
    from jdnn.train import TrainState

    model = build_model(w)
    example = (w.batch, w.length) if w.kind == "transformer" else (w.batch, w.length,
                                                                   w.features)
    start = TrainState.create(model, optax.adam(w.lr), jax.random.key(w.seed), example)
    x, y = make_data(w)
    host = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
    return SequenceProblem(w, model, host(start.params), host(start.state), x, y)


JDNN = "jdnn_step"
TORCH = ("torch_fused", "torch_fused_1thread")
SIDES = {"gru": (JDNN, "linen", "equinox", *TORCH), "lstm": (JDNN, "linen", "equinox", *TORCH),
         "transformer": (JDNN, "linen", *TORCH)}
JDNN_LABEL = "jdnn make_train_step (jit + donation), one call per batch"


def _peers(kind: str):
    """The module of the peers of a workload kind (imported only when asked)."""
    if kind == "transformer":
        from benchmarks.suite.sides import lm_peers
        return lm_peers
    from benchmarks.suite.sides import rnn_peers
    return rnn_peers


def builders(kind: str) -> dict[str, Callable[[SequenceProblem], Trainer]]:
    """The sides of a workload kind, by name."""
    return {JDNN: jdnn_trainer, **_peers(kind).BUILDERS}


def labels(kind: str) -> dict[str, str]:
    """What each side of a workload kind is, for the report."""
    return {JDNN: JDNN_LABEL, **_peers(kind).LABELS}


def measure(ctx: Context, w: SequenceWorkload, sides: tuple[str, ...] | None = None) -> dict:
    """Times `sides` (default: all of `SIDES[w.kind]`) on `w` in interleaved rounds
    (`compare`); ratios are side / jdnn. Also records each side's first loss."""
    print(f"  {w.name}: {w.describe()}", flush=True)
    problem, table = make_problem(w), builders(w.kind)
    runners, boxes, skipped = {}, {}, {}
    for name in sides or SIDES[w.kind]:
        try:
            runners[name], boxes[name] = runner(problem, table[name](problem))
        except Skipped as reason:
            skipped[name] = str(reason)
    result = compare(problem, [], baseline=JDNN, settings=ctx.settings, extra=runners)
    result["skipped"].update(skipped)
    result["labels"] = {name: labels(w.kind)[name] for name in runners}
    result["first_loss"] = {name: None if box["first_loss"] is None
                            else float(box["first_loss"]) for name, box in boxes.items()}
    for side, entry in result["sides"].items():
        print(f"    {side:20s} {entry['seconds']['median'] * 1e3:9.2f} ms/step  "
              f"x{entry.get('ratio', {}).get('median', float('nan')):.3f}", flush=True)
    return result


# --- targets ----------------------------------------------------------------------------------

TORCH_BOUND = 1.3


def torch_best(result: dict) -> dict | None:
    """jdnn's time over PyTorch's at its best (per round, the faster of its variants), summarized
    over rounds; None when PyTorch did not run."""
    raw = result.get("raw_seconds", {})
    variants = [raw[name] for name in TORCH if name in raw]
    if JDNN not in raw or not variants:
        return None
    return timing.summarize([t / min(v) for t, *v in zip(raw[JDNN], *variants)]).to_dict()


# The peers jdnn's RNN steps must beat: side -> (target-key family, what it is).
RNN_PEERS = {"linen": ("rnn_vs_linen/", "Flax linen (nn.RNN, jit + donation)"),
             "equinox": ("rnn_vs_equinox/", "Equinox (cell under lax.scan, filter_jit)")}
TORCH_FAMILY = "rnn_vs_torch/"
TRANSFORMER_FAMILY = "transformer_vs_linen/"
LINEN_LM = "Flax linen (nn.MultiHeadDotProductAttention blocks, jit + donation)"


def _transformer_target(results: dict, failed: dict) -> dict:
    """jdnn's transformer LM step faster than Flax linen's (PyTorch's is reported, not a target:
    the issue bounds PyTorch's fused RNN kernels only)."""
    key = next((k for k in results if k.startswith("transformer_")), None)
    result = results.get(key, {})
    broke = next((f"failed: {why}" for k, why in failed.items() if k.startswith("transformer")),
                 "")
    return targets.from_ratio(
        TRANSFORMER_FAMILY + "transformer", f"jdnn transformer LM step faster than {LINEN_LM}",
        result.get("sides", {}).get("linen", {}).get("ratio"), 1.0, ">=",
        note=broke or result.get("skipped", {}).get("linen", ""))


def targets_for(results: dict, failed: dict | None = None) -> list[dict]:
    """jdnn's GRU and LSTM steps faster than Flax linen and Equinox, and within 1.3x of
    PyTorch's fused CPU kernels at their best; its transformer LM step faster than Flax linen's;
    SKIP where a part or a side did not run."""
    failed, out = failed or {}, []
    for kind in ("gru", "lstm"):
        key = next((k for k in results if k.startswith(kind + "_")), None)
        result = results.get(key, {})
        broke = next((f"failed: {why}" for k, why in failed.items() if k.startswith(kind)), "")
        name = kind.upper()
        for side, (family, label) in RNN_PEERS.items():
            ratio = result.get("sides", {}).get(side, {}).get("ratio")
            out.append(targets.from_ratio(
                family + kind, f"jdnn {name} step faster than {label}", ratio, 1.0, ">=",
                note=broke or result.get("skipped", {}).get(side, "")))
        ran = [side for side in TORCH if side in result.get("raw_seconds", {})]
        out.append(targets.from_ratio(
            TORCH_FAMILY + kind, f"jdnn {name} step <= {TORCH_BOUND:g}x PyTorch's fused CPU "
            f"nn.{name} at its best (fused Adam; per round the faster of all threads and one)",
            torch_best(result), TORCH_BOUND, "<=",
            note=broke or (f"PyTorch variants timed: {', '.join(ran)}" if ran else "")))
    out.append(_transformer_target(results, failed))
    return out


QUICK_SKIPS = ("torch_fused",)   # under load its thread pool stalls for seconds per step


def parts(ctx: Context) -> dict[str, Callable[[], dict]]:
    """The measurements of this run, by result key. Quick: the same sizes, fewer rounds and
    shorter chunks (`ctx.settings`), and PyTorch on one thread only."""
    out = {}
    for w in (rnn("gru"), rnn("lstm"), transformer()):
        sides = tuple(s for s in SIDES[w.kind] if not (ctx.quick and s in QUICK_SKIPS))
        out[w.name] = lambda w=w, sides=sides: measure(ctx, w, sides)
    return out


def run(ctx: Context) -> dict:
    results, failed = {}, {}
    for key, part in parts(ctx).items():
        try:
            results[key] = part()
        except Exception as error:  # one broken part must not lose the others
            traceback.print_exc(file=sys.stderr)
            failed[key] = f"{type(error).__name__}: {error}"
    return {"results": results, "targets": targets_for(results, failed), "failed": failed}
