"""The sequence benchmarks (benchmarks.suite.sequences) at tiny sizes: structure, never timing.

Every side trains the same model from jdnn's parameters, converted: the same first loss on every
side and the same losses after a few Adam steps; the section runs end to end, reports a broken
part and a missing peer without losing the others, and renders; the targets' verdicts come from
the numbers they are given. PyTorch runs on one thread here (`torch_fused_1thread`): its
all-threads twin is the same code, and its thread pool stalls on a loaded machine. Where PyTorch
is not installed (the oldest-versions CI pass) its cases skip; the rest run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys

import pytest

from benchmarks.suite import compare, report, sequences, targets
from benchmarks.suite.context import Context
from benchmarks.suite.sides.base import Skipped

TINY = {"gru": sequences.rnn("gru", batch=4, length=5, features=3, hidden=6),
        "lstm": sequences.rnn("lstm", batch=4, length=5, features=3, hidden=6),
        "transformer": sequences.transformer(batch=2, length=6, width=8, heads=2, layers=1,
                                             vocab=7)}
_NO_WAIT = compare.Settings(rounds=2, chunk_s=0.0, pause_s=0.0, max_steps=1, warm_s=0.0)


def _sides(kind: str) -> tuple[str, ...]:
    return tuple(s for s in sequences.SIDES[kind] if s != "torch_fused")


def test_the_section_runs_end_to_end_and_renders(monkeypatch, tmp_path):
    """The section's plumbing, with jdnn and one peer that every install has (the peers: the
    next test)."""
    w, sides = TINY["gru"], (sequences.JDNN, "linen")

    def broken():
        raise RuntimeError("an API changed")

    monkeypatch.setattr(sequences, "parts", lambda ctx: {
        w.name: lambda: sequences.measure(ctx, w, sides), "lstm_broken": broken})
    payload = sequences.run(Context(quick=True, settings=_NO_WAIT))

    result = payload["results"][w.name]
    assert set(result["sides"]) == set(sides) and not result["skipped"]
    first = result["first_loss"]
    assert math.isfinite(first[sequences.JDNN]) and first[sequences.JDNN] > 0
    for side, entry in result["sides"].items():
        assert first[side] == pytest.approx(first[sequences.JDNN], rel=1e-5), side
        assert entry["seconds"]["n"] == _NO_WAIT.rounds and entry["ratio"]["median"] > 0
        assert "compile_s" in result["compile"][side]
    assert "RuntimeError: an API changed" in payload["failed"]["lstm_broken"]

    verdicts = {t["key"]: t for t in payload["targets"]}
    assert set(verdicts) == {f"rnn_vs_{peer}/{kind}" for peer in ("linen", "equinox", "torch")
                             for kind in ("gru", "lstm")} | {"transformer_vs_linen/transformer"}
    assert verdicts["rnn_vs_linen/gru"]["status"] in (targets.PASS, targets.MISS)
    assert verdicts["rnn_vs_torch/gru"]["status"] == targets.SKIP   # not measured here
    assert verdicts["rnn_vs_linen/lstm"]["status"] == targets.SKIP
    assert "an API changed" in verdicts["rnn_vs_linen/lstm"]["note"]

    report.write_result(tmp_path, "sequences", {"name": "sequences", "mode": "quick",
                                                "seconds": 1.0, "machine": {
                                                    "cpu_count": 2, "load_average": None},
                                                **payload})
    md = report.write_report(tmp_path).read_text()
    assert "## Sequence models: GRU, LSTM, a small transformer" in md
    assert f"**{w.name}**" in md and "| jdnn_step |" in md and "| linen |" in md
    assert "- first loss (initial parameters, batch 0): jdnn_step " in md
    assert "lstm_broken: FAILED, RuntimeError: an API changed" in md
    assert (tmp_path / "sequences.png").stat().st_size > 0
    for line in md.splitlines():
        assert not line.startswith("|") or line.count("|") >= 3


# The sides whose parameters map one to one onto jdnn's: the same losses step after step. The
# others fold two of jdnn's biases into one (Flax's and Equinox's GRU: b_xr + b_hr) or split one
# into two (PyTorch's LSTM: bias_ih + bias_hh); Adam moves every bias by about lr per step, so
# their losses drift from jdnn's by ~1e-3 within a few steps, the same model parametrized apart.
ONE_TO_ONE = {"gru": ("torch_fused_1thread",), "lstm": ("linen", "equinox"),
              "transformer": ("linen", "torch_fused_1thread")}


@functools.cache
def _losses(kind: str, side: str) -> tuple[float, float]:
    """The first loss and the loss after three Adam steps of `side` on the tiny `kind` problem;
    a peer that is not installed skips the test that asks for it."""
    problem = sequences.make_problem(TINY[kind])
    try:
        runner, box = sequences.runner(problem, sequences.builders(kind)[side](problem))
    except Skipped as reason:
        pytest.skip(str(reason))
    runner.run(3)
    return float(box["first_loss"]), float(box["loss"])


@pytest.mark.parametrize("kind, side", [(kind, side) for kind in TINY for side in _sides(kind)
                                        if side != sequences.JDNN])
def test_every_side_takes_the_same_steps(kind, side):
    """The same first loss as jdnn's; after three Adam steps on the same batches, the same loss
    where the parameters map one to one, within 2e-3 elsewhere."""
    first, last = _losses(kind, side)
    jdnn_first, jdnn_last = _losses(kind, sequences.JDNN)
    assert math.isfinite(jdnn_first) and math.isfinite(jdnn_last)
    assert first == pytest.approx(jdnn_first, rel=1e-5)
    tolerance = 1e-5 if side in ONE_TO_ONE[kind] else 2e-3
    assert last == pytest.approx(jdnn_last, rel=tolerance)


def test_a_missing_peer_is_skipped(monkeypatch):
    for name in list(sys.modules):
        if name == "equinox" or name.startswith("equinox."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "equinox", None)  # `import equinox` now raises
    ctx = Context(quick=True, settings=dataclasses.replace(_NO_WAIT, rounds=1))
    result = sequences.measure(ctx, TINY["gru"], ("equinox",))
    assert "not installed" in result["skipped"]["equinox"] and not result["sides"]


def _result(**seconds):
    """A `compare` result from per-round seconds, ratios to jdnn's from the medians."""
    def ratio(values):
        r = sorted(v / j for v, j in zip(values, seconds[sequences.JDNN]))[len(values) // 2]
        return {"median": r, "q1": r, "q3": r}

    return {"raw_seconds": seconds, "skipped": {},
            "sides": {side: {"ratio": ratio(values)} for side, values in seconds.items()}}


def test_targets_take_pytorch_at_its_best_per_round():
    # round 1: the one-thread variant is the faster PyTorch, round 2 the all-threads one
    result = _result(jdnn_step=[1.2, 1.2], torch_fused=[3.0, 1.0], torch_fused_1thread=[1.0, 2.0],
                     linen=[1.5, 1.5], equinox=[0.9, 0.9])
    assert sequences.torch_best(result)["median"] == pytest.approx(1.2)
    found = {t["key"]: t for t in sequences.targets_for({"gru_b4_t5": result})}
    assert found["rnn_vs_torch/gru"]["status"] == targets.PASS      # 1.2 <= 1.3
    assert found["rnn_vs_linen/gru"]["status"] == targets.PASS      # linen 1.25x slower
    assert found["rnn_vs_equinox/gru"]["status"] == targets.MISS    # equinox faster
    assert found["rnn_vs_linen/lstm"]["status"] == targets.SKIP     # not measured
    assert found["transformer_vs_linen/transformer"]["status"] == targets.SKIP
    lm = sequences.targets_for({"transformer_b2_t6": _result(jdnn_step=[1.0], linen=[0.9])})
    assert {t["key"]: t for t in lm}["transformer_vs_linen/transformer"]["status"] == targets.MISS
    assert sequences.torch_best(_result(jdnn_step=[2.0], torch_fused_1thread=[1.0]))[
        "median"] == pytest.approx(2.0)
    assert sequences.torch_best(_result(jdnn_step=[1.0])) is None
