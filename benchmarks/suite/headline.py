"""The headline ratios, each from several separate processes: the numbers the README quotes.

One process's ratios hold within its rounds, but a process has its own memory layout, thread
placement and neighbours on a shared machine, so a headline taken from one process can be that
process's luck. This benchmark starts `processes` (at least 3) fresh Python processes one after
another; each runs the same comparisons (`child`) and writes its per-round times. For every
ratio the report gives the median over processes of each process's median, and the spread
(smallest and largest process median). The targets are checked on the median of medians; a
target whose spread straddles its bound is marked "within noise".

The ratios (time of the other side / time of jdnn, so > 1 means jdnn is faster):
- `vs_numpy`: the tight hand-written float32 NumPy backprop (`sides.tight_numpy`) against
  jdnn's scan epoch, as `fit` runs it: digits MLP, XOR, CNN, MLP 784-512-512-10 at batch 1024.
- `vs_torch_best`: PyTorch at its best against jdnn's step (one dispatched call per batch,
  like PyTorch's loop) on the MLP at batch 32, 128 and 1024 and the CNN. "At its best" is, in
  each round, the fastest of the PyTorch variants that ran (fused Adam with all threads or one,
  `torch.compile`); the report names the variant that won most often.
- `vs_reference`: the generic NumPy reference (`jdnn.reference`, the correctness oracle)
  against the scan epoch: reported, never a target.

    python benchmarks/run.py --only headline          # 3 processes, ~6-9 minutes on 2 cores
    python -m benchmarks.suite.headline --child OUT   # one process's measurements (internal)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROCESSES = 3
TORCH_BEST = ("torch_fused", "torch_fused_1thread", "torch_compile", "torch_compile_1thread")


def _workloads(quick: bool) -> list:
    from benchmarks.suite import workloads

    out = [workloads.digits_mlp(), workloads.xor(), workloads.cnn(64), workloads.mlp(32),
           workloads.mlp(1024)]
    return out if quick else [*out[:4], workloads.mlp(128), out[4]]


def _sides(workload) -> tuple[str, ...]:
    """The sides a workload's ratios need (the first is the baseline of its rounds): the NumPy
    sides against the scan epoch on the small nets, PyTorch's variants against the step on the
    mid-size MLPs, both on the CNN and the BLAS-bound MLP."""
    numpy = ("jdnn_epoch", "numpy", "reference")
    torch = ("jdnn_step", *TORCH_BEST)
    if workload.data in ("digits", "xor"):
        return numpy
    if workload.kind == "mlp" and workload.batch < 1024:
        return torch
    return numpy + torch


def child(out: pathlib.Path, quick: bool) -> None:
    """One process's measurements: `compare` on every workload, raw per-round times to `out`."""
    import dataclasses

    from benchmarks.suite import compare, workloads

    settings = compare.QUICK if quick else dataclasses.replace(compare.FULL, rounds=7)
    found = {}
    for w in _workloads(quick):
        result = compare.compare(workloads.make_problem(w), _sides(w), baseline=_sides(w)[0],
                                 settings=settings)
        info = {name: entry.get("info", {}) for name, entry in result["sides"].items()}
        found[w.name] = {"description": w.describe(), "raw_seconds": result.get("raw_seconds", {}),
                         "skipped": result["skipped"], "info": info}
        print(f"    {w.name}: {', '.join(result.get('raw_seconds', {}))}", flush=True)
    out.write_text(json.dumps(found))


def per_round(raw: dict[str, list[float]]) -> dict[str, dict]:
    """The ratios of one process's rounds on one workload: `{ratio: {"values", ...}}`."""
    out = {}
    epoch, step = raw.get("jdnn_epoch"), raw.get("jdnn_step")
    for side, key in (("numpy", "vs_numpy"), ("reference", "vs_reference")):
        if epoch and side in raw:
            out[key] = {"values": [a / b for a, b in zip(raw[side], epoch)]}
    torch = [name for name in TORCH_BEST if name in raw]
    if step and torch:
        best = [min((raw[name][i], name) for name in torch) for i in range(len(step))]
        out["vs_torch_best"] = {"values": [t / s for (t, _), s in zip(best, step)],
                                "winners": [name for _, name in best]}
        for name in torch:
            out[f"vs_{name}"] = {"values": [a / b for a, b in zip(raw[name], step)]}
    return out


def combine(processes: list[dict]) -> dict:
    """Median of the per-process medians, with the spread, per workload and ratio."""
    results: dict[str, dict] = {}
    for found in processes:
        for workload, entry in found.items():
            slot = results.setdefault(workload, {"description": entry["description"],
                                                 "skipped": entry["skipped"],
                                                 "info": entry.get("info", {}), "ratios": {}})
            for key, ratio in per_round(entry["raw_seconds"]).items():
                cell = slot["ratios"].setdefault(key, {"process_medians": [], "winners": []})
                cell["process_medians"].append(float(np.median(ratio["values"])))
                cell["winners"] += ratio.get("winners", [])
    for slot in results.values():
        for cell in slot["ratios"].values():
            medians = cell["process_medians"]
            cell.update(median=float(np.median(medians)), low=min(medians), high=max(medians),
                        processes=len(medians))
            winners = cell.pop("winners")
            if winners:
                cell["best_variant"] = max(set(winners), key=winners.count)
    return results


# (ratio, workload name prefix, bound, op, text): the targets, restated honestly.
TARGETS = (
    ("vs_numpy", "digits_mlp", 3.0, ">=", "scan epoch >= 3x faster than the tight NumPy "
     "backprop, digits MLP 64-128-10"),
    ("vs_numpy", "xor", 5.0, ">=", "scan epoch >= 5x faster than the tight NumPy backprop, "
     "XOR 2-3-2-1"),
    ("vs_numpy", "cnn", 2.0, ">=", "scan epoch >= 2x faster than the tight NumPy backprop, CNN"),
    ("vs_numpy", "mlp_b1024", 1.0, ">=", "scan epoch not slower than the tight NumPy backprop, "
     "MLP 784-512-512-10 at batch 1024 (BLAS-bound)"),
    ("vs_torch_best", "mlp_b32", 1.0, ">=", "jdnn step not slower than PyTorch at its best, "
     "MLP batch 32"),
    ("vs_torch_best", "mlp_b128", 1.0, ">=", "jdnn step not slower than PyTorch at its best, "
     "MLP batch 128"),
    ("vs_torch_best", "mlp_b1024", 1 / 1.15, ">=", "jdnn step within 1.15x of PyTorch at its "
     "best, MLP batch 1024 (ratio = PyTorch time / jdnn time)"),
)


def targets(results: dict) -> list[dict]:
    from benchmarks.suite import targets as check

    out = []
    for key, prefix, bound, op, text in TARGETS:
        cell = next((r["ratios"].get(key) for name, r in results.items()
                     if name.startswith(prefix)), None)
        name = next((name for name in results if name.startswith(prefix)), prefix)
        if cell is None:
            out.append(check.check(f"headline_{key}/{name}", text, None, bound, op,
                                   note="not measured in this run "
                                        "(not in --quick, or a side was skipped)"))
            continue
        note = f"{cell['processes']} processes: median of medians, spread " \
               f"{cell['low']:.3g}-{cell['high']:.3g}"
        if "best_variant" in cell:
            note += f"; PyTorch's fastest variant: {cell['best_variant']}"
        out.append(check.check(f"headline_{key}/{name}", text, cell["median"], bound, op,
                               q1=cell["low"], q3=cell["high"], note=note))
    return out


def run(ctx, processes: int = PROCESSES) -> dict:
    """The benchmark: `processes` fresh processes, one after another, then `combine`."""
    found = []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(processes):
            out = pathlib.Path(folder) / f"process{i}.json"
            command = [sys.executable, "-m", "benchmarks.suite.headline", "--child", str(out)]
            command += ["--quick"] if ctx.quick else []
            command += ["--threads", str(ctx.threads)] if ctx.threads else []
            began = time.perf_counter()
            print(f"  process {i + 1}/{processes}", flush=True)
            subprocess.run(command, cwd=ROOT, check=True)
            print(f"    {time.perf_counter() - began:.0f} s", flush=True)
            found.append(json.loads(out.read_text()))
    results = combine(found)
    return {"results": results, "processes": processes, "targets": targets(results)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one process of the headline benchmark")
    parser.add_argument("--child", type=pathlib.Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        from benchmarks.suite.run import _set_threads

        _set_threads(args.threads)
    child(args.child, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
