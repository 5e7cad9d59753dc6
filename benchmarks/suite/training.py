"""Training-step benchmarks: jdnn against raw JAX, hand-written NumPy and the peers.

- `mlp`: the 784-512-512-10 MLP at batch 32, 128 and 1024 (Adam; SGD too in the full run).
- `cnn`: the MNIST-shaped CNN at batch 64.
- `small`: small nets where Python overhead dominates (digits 64-128-10, XOR 2-3-2-1); the XOR
  net does almost no arithmetic, so its time per step is the fixed overhead per step.

The targets against the tight NumPy backprop and PyTorch at its best are checked in the
`headline` benchmark, on ratios from several processes; these sections show every side in one
process and check the targets against raw JAX, the peers and the GEMM peak.
"""

from __future__ import annotations

from benchmarks.suite import machine, roofline, targets, timing, workloads
from benchmarks.suite.compare import compare, ratio
from benchmarks.suite.context import Context

TORCH_SIDES = ("torch", "torch_1thread", "torch_fused", "torch_fused_1thread", "torch_compile",
               "torch_compile_1thread")
PEER_SIDES = ("jdnn_step", "jdnn_epoch", "raw_jax", "raw_jax_reduce_window", "raw_jax_lax_conv",
              "numpy", "reference", "nnx_jit", "nnx_split", "linen", "equinox", "equinox_donate",
              "keras", *TORCH_SIDES)
SMALL_SIDES = ("jdnn_epoch", "jdnn_step", "raw_jax_scan", "raw_jax", "numpy", "reference",
               "torch_fused", "torch_fused_1thread")
SMALL_PEERS = ("nnx_jit", "nnx_split", "linen", "equinox", "equinox_donate", "keras", "torch",
               "torch_1thread")
PEER_TARGETS = {"nnx_jit": "Flax NNX (nnx.jit)", "nnx_split": "Flax NNX (jax.jit+split/merge)",
                "linen": "Flax linen", "equinox": "Equinox (filter_jit)",
                "equinox_donate": "Equinox (filter_jit, donated)",
                "keras": "Keras 3 on JAX (fit, steps_per_execution)"}
OVERHEAD_US = 30.0


GEMM_N = 2048
GEMM_SIDES = ("xla_gemm", "numpy_gemm")


def add_roofline(ctx: Context, w: workloads.Workload, result: dict) -> None:
    """Each side's achieved GFLOP/s and fraction of the measured GEMM peak and bandwidth; when
    the GEMMs ran in the same rounds, also the fraction of the peak of each round."""
    if ctx.limits is None:
        return
    result["roofline"] = {
        side: roofline.achieved(w, entry["seconds"]["median"], ctx.gemm_peak, ctx.bandwidth)
        for side, entry in result["sides"].items() if side not in GEMM_SIDES}
    raw = result.get("raw_seconds", {})
    if not all(g in raw for g in GEMM_SIDES):
        return
    gemm_flops, flops = 2.0 * GEMM_N**3, roofline.step_flops(w)
    peaks = [gemm_flops / min(a, b) for a, b in zip(*(raw[g] for g in GEMM_SIDES))]
    result["peak_in_rounds_gflops"] = timing.summarize([p / 1e9 for p in peaks]).to_dict()
    for side, entry in result["roofline"].items():
        entry["fraction_of_peak_in_rounds"] = timing.summarize(
            [flops / t / peak for t, peak in zip(raw[side], peaks)]).to_dict()


def _skip_note(result: dict, side: str) -> str:
    return result["skipped"].get(side, "")


def step_targets(w: workloads.Workload, result: dict, ctx: Context) -> list[dict]:
    """The per-workload targets: library overhead, the peers, PyTorch, the roofline."""
    name, out = w.name, []
    out.append(targets.from_ratio(
        f"step_vs_raw/{name}", f"jdnn step <= 1.05x raw JAX ({w.describe()})",
        ratio(result, "jdnn_step", "raw_jax"), 1.05, "<="))
    for side, label in PEER_TARGETS.items():
        out.append(targets.from_ratio(
            f"vs_{side}/{name}", f"jdnn step faster than {label}, {name}",
            ratio(result, side, "jdnn_step"), 1.0, ">=", note=_skip_note(result, side)))
    if w.kind == "mlp" and w.batch >= 1024:
        roof = result.get("roofline", {}).get("jdnn_step", {})
        fraction = roof.get("fraction_of_peak_in_rounds")
        out.append(targets.check(
            f"gemm_fraction/{name}", f"jdnn step >= 65% of the GEMM peak measured in the same "
            f"rounds (best of XLA and NumPy, {GEMM_N}^2), {name}",
            None if fraction is None else fraction["median"], 0.65, ">=",
            q1=None if fraction is None else fraction["q1"],
            q3=None if fraction is None else fraction["q3"], unit="%",
            note=_fraction_note(result)))
    return out


def _fraction_note(result: dict) -> str:
    cells = [f"{side} {100 * e['fraction_of_peak_in_rounds']['median']:.0f}%"
             for side, e in result.get("roofline", {}).items()
             if side in ("raw_jax", "torch", "torch_1thread", "numpy")
             and "fraction_of_peak_in_rounds" in e]
    peak = result.get("peak_in_rounds_gflops", {}).get("median")
    head = f"peak in rounds {peak:.0f} GFLOP/s; " if peak else ""
    return head + ", ".join(cells)


def _run(ctx: Context, w: workloads.Workload, sides, baseline: str = "jdnn_step",
         gemm: bool = False) -> dict:
    print(f"  {w.name}: {w.describe()}", flush=True)
    result = compare(workloads.make_problem(w), sides, baseline=baseline,
                     settings=ctx.settings, extra=machine.gemm_runners(GEMM_N) if gemm else None)
    add_roofline(ctx, w, result)
    for side, entry in result["sides"].items():
        print(f"    {side:13s} {entry['seconds']['median'] * 1e3:9.3f} ms/step  "
              f"x{entry.get('ratio', {}).get('median', float('nan')):.3f}", flush=True)
    return result


def mlp(ctx: Context) -> dict:
    """The 784-512-512-10 MLP at batch 32, 128, 1024, every side."""
    results, found = {}, []
    for optimizer in ("adam",) if ctx.quick else ("sgd", "adam"):
        for batch in (32, 128, 1024):
            w = workloads.mlp(batch, optimizer)
            results[w.name] = _run(ctx, w, PEER_SIDES, gemm=batch >= 1024)
            found += step_targets(w, results[w.name], ctx)
    return {"results": results, "targets": found}


def cnn(ctx: Context) -> dict:
    """The MNIST-shaped CNN at batch 64, every side."""
    w = workloads.cnn(64)
    result = _run(ctx, w, PEER_SIDES)
    return {"results": {w.name: result}, "targets": step_targets(w, result, ctx)}


def small(ctx: Context) -> dict:
    """Small nets: the scan-fused epoch against the NumPy reference; the fixed overhead."""
    sides = SMALL_SIDES if ctx.quick else SMALL_SIDES + SMALL_PEERS
    results, found = {}, []
    for w in (workloads.digits_mlp(), workloads.xor()):
        result = _run(ctx, w, sides, baseline="jdnn_epoch")
        results[w.name] = result
    xor = results[workloads.xor().name]
    epoch = xor["sides"].get("jdnn_epoch")
    floor = xor["sides"].get("raw_jax_scan")
    note = (f"raw-JAX lax.scan floor on the same net: "
            f"{floor['seconds']['median'] * 1e6:.1f} us/step" if floor else "")
    found.append(targets.check(
        "fixed_overhead/xor", "fixed overhead inside the scan epoch <= 30 us/step (XOR 2-3-2-1)",
        None if epoch is None else epoch["seconds"]["median"] * 1e6, OVERHEAD_US, "<=",
        q1=None if epoch is None else epoch["seconds"]["q1"] * 1e6,
        q3=None if epoch is None else epoch["seconds"]["q3"] * 1e6, unit="us", note=note))
    return {"results": results, "targets": found}
