"""The report's section for each benchmark, rendered from its JSON payload."""

from __future__ import annotations

import pathlib

from jdnn.bench import plots

TITLES = {"machine": "The machine and its limits", "correctness": "Correctness (same run)",
          "mlp": "MLP 784-512-512-10: every side", "cnn": "MNIST-shaped CNN: every side",
          "small": "Small nets: the scan-fused epoch and the fixed overhead",
          "convergence": "Time to 97% test accuracy on digits",
          "compilation": "Compilation", "scaling": "Scaling", "vectorized": "vmap workloads",
          "diagnostics": "Diagnostics behind the findings"}


def load_warning(results: dict[str, dict]) -> list[str]:
    """A warning when other processes loaded the machine during the run."""
    loads = [p["machine"].get("load_average") for p in results.values() if p.get("machine")]
    loads = [load[0] for load in loads if load]
    cpus = next(iter(results.values()))["machine"]["cpu_count"] or 1
    if not loads or max(loads) <= cpus:
        return []
    return [f"> **Shared machine:** the 1-minute load average reached {max(loads):.1f} on "
            f"{cpus} CPUs during this run: other processes competed for the cores. Ratios "
            "within rounds absorb load that hits every side alike, but multi-threaded BLAS "
            "(NumPy's OpenBLAS, PyTorch's OpenMP) degrades far more than XLA under "
            "oversubscription, so NumPy and PyTorch look slower here than on an idle machine; "
            "see benchmarks/README.md.", ""]


def _ms(summary: dict) -> str:
    return (f"{summary['median'] * 1e3:.3g} [{summary['q1'] * 1e3:.3g}-"
            f"{summary['q3'] * 1e3:.3g}]")


def _ratio(summary: dict | None) -> str:
    if not summary:
        return ""
    return f"{summary['median']:.3g} [{summary['q1']:.3g}-{summary['q3']:.3g}]"


def machine(payload: dict) -> list[str]:
    m, lim = payload["machine"], payload["results"]
    v = ", ".join(f"{k} {val}" for k, val in m["versions"].items() if val)
    lines = [f"- date: {m['date']}; device: {m['device']}; {m['cpu_count']} x {m['cpu_model']}",
             f"- load average (1, 5, 15 min): {m['load_average']}; BLAS threads: "
             f"{m['blas_threads']}; PyTorch threads: {m['cpu_count']}",
             f"- versions: {v}; python {m['python']}", "",
             f"| float32 GEMM {lim['gemm_n']}x{lim['gemm_n']} | GFLOP/s median [IQR] |",
             "|---|---|"]
    for side, s in lim["gemm_gflops"].items():
        lines.append(f"| {side} | {s['median']:.1f} [{s['q1']:.1f}-{s['q3']:.1f}] |")
    bw = lim["bandwidth_gbs"]
    return lines + ["", f"Peak used for the roofline: {lim['gemm_peak_gflops']:.1f} GFLOP/s "
                        f"({lim['gemm_peak_side']}); copy bandwidth ({lim['copy_mb']} MB, read "
                        f"+ write): {bw['median']:.1f} GB/s [{bw['q1']:.1f}-{bw['q3']:.1f}]."]


def workload_table(name: str, r: dict) -> list[str]:
    lines = [f"**{name}**: {r['description']}; {r.get('rounds', '?')} rounds; ratio = side / "
             f"{r['baseline']} within each round.", "",
             "| side | ms/step median [IQR] | ratio [IQR] | compile s | steps/chunk | GFLOP/s | "
             "% of GEMM peak |", "|---|---|---|---|---|---|---|"]
    for side, e in r["sides"].items():
        roof = r.get("roofline", {}).get(side, {})
        comp = r["compile"].get(side, {}).get("compile_s")
        gflops = roof.get("gflops")
        fraction = roof.get("fraction_of_peak_in_rounds", {}).get(
            "median", roof.get("fraction_of_gemm_peak"))
        lines.append(f"| {side} | {_ms(e['seconds'])} | {_ratio(e.get('ratio'))} | "
                     f"{'' if comp is None else f'{comp:.2f}'} | "
                     f"{r.get('steps_per_chunk', {}).get(side, '')} | "
                     f"{'' if gflops is None else f'{gflops:.3g}'} | "
                     f"{'' if fraction is None else f'{100 * fraction:.1f}'} |")
    for side, why in r.get("skipped", {}).items():
        lines.append(f"| {side} | skipped: {why} | | | | | |")
    if "peak_in_rounds_gflops" in r:
        peak = r["peak_in_rounds_gflops"]
        lines += ["", f"The GEMM peak was measured in the same rounds ({peak['median']:.0f} "
                      f"GFLOP/s [{peak['q1']:.0f}-{peak['q3']:.0f}]); % of peak is per round."]
    return lines + [""]


def training(folder: pathlib.Path, name: str, payload: dict) -> list[str]:
    lines = []
    for workload, r in payload["results"].items():
        lines += workload_table(workload, r)
    png = plots.step_times(payload["results"], folder / f"{name}.png", f"{name}: time per step")
    return lines + ([f"![{name}]({png.name})"] if png else [])


def correctness(payload: dict) -> list[str]:
    r = payload["results"]
    lines = [f"jdnn's `jax.grad` against the NumPy hand-written backprop, float64 "
             f"(tolerance {r['gradient_tolerance']:g}):", "",
             "| model | batch | loss rel. diff | max grad rel. diff | ok |",
             "|---|---|---|---|---|"]
    for g in r["gradients"]:
        lines.append(f"| {g['description']} | {g['batch']} | {g['loss_relative_difference']:.2e}"
                     f" | {g['grads_max_relative_difference']:.2e} | {g['ok']} |")
    lines += ["", "Same updates: each side's parameters after a few float32 steps from the same "
                  "start, relative to jdnn's (Adam turns rounding in near-zero gradients into "
                  "+-lr steps, so its agreement is looser):", ""]
    for t in r["trajectories"]:
        cells = [f"{s}: " + (f"{v['max_relative_difference']:.1e}" if "skipped" not in v
                             else "skipped") for s, v in t["sides"].items()]
        lines.append(f"- {t['workload']} ({t['steps']} steps): " + "; ".join(cells))
    return lines


def convergence(payload: dict) -> list[str]:
    r = payload["results"]
    lines = [f"{r['workload']}; stop at {r['target_accuracy']:.0%} test accuracy (at most "
             f"{r['max_epochs']} epochs); {r['rounds']} round(s); wall time includes "
             "compilation.", "",
             "| side | seconds (median) | of which compile | epochs | final accuracy |",
             "|---|---|---|---|---|"]
    for side, s in r["sides"].items():
        lines.append(f"| {side} | {s['median_seconds']:.2f} | {s['compile_s']:.2f} | "
                     f"{s['epochs']} | {s['accuracy']:.4f} |")
    return lines + [f"| {side} | skipped: {why} | | | |" for side, why in r["skipped"].items()]


def compilation(payload: dict) -> list[str]:
    fit, cache = payload["results"]["fit"], payload["results"]["cache"]
    first, again = fit["first_fit"], fit["second_fit_same_process"]
    top = ", ".join(f"{n} x{e['count']} {e['seconds']:.2f} s"
                    for n, e in list(first["by_function"].items())[:6])
    c1, c2 = cache["first_run"], cache["second_run"]
    return [f"- `fit` ({fit['epochs']} epochs, validation): {first['compilations']} XLA "
            f"compilations, {first['compile_s']:.2f} s compiling + {first['trace_s']:.2f} s "
            f"tracing + {first['lower_s']:.2f} s lowering; the epoch compiled "
            f"{first['epoch_compilations']}x; {first['after_first_epoch']} after epoch 1.",
            f"- the costliest: {top}.",
            f"- a second `fit` in the same process: {again['compilations']} compilation(s), "
            f"{again['compile_s']:.2f} s.",
            f"- `jdnn train --epochs 1` in a fresh process ({cache['mechanism']}): first run "
            f"{c1['wall_s']:.1f} s wall, {c1['compile_s']:.2f} s compiling; second run "
            f"{c2['wall_s']:.1f} s wall, {c2['compile_s']:.2f} s compiling/fetching, "
            f"{c2['trace_s'] + c2['lower_s']:.2f} s tracing+lowering."]


def scaling(folder: pathlib.Path, payload: dict) -> list[str]:
    lines = ["| sweep | side | points | slope (all) | slope (upper half) |",
             "|---|---|---|---|---|"]
    for sweep, series in payload["results"].items():
        for side, s in series.items():
            slopes = [f"{v:.2f}" if v is not None else "-"
                      for v in (s["slope"], s["slope_upper_half"])]
            lines.append(f"| {sweep} | {side} | {s['x']} | {slopes[0]} | {slopes[1]} |")
    png = plots.scaling(payload["results"], folder / "scaling.png")
    return lines + (["", f"![scaling]({png.name})"] if png else [])


def vectorized(payload: dict) -> list[str]:
    lines = []
    for name, r in payload["results"].items():
        base = "batched_grad" if "batched_grad" in r["sides"] else "sequential_16_epochs"
        cells = [f"{side} {_ms(e['seconds'])} ms (x{e['ratio']['median']:.3g})"
                 for side, e in r["sides"].items()]
        lines.append(f"- {name} (ratios vs {base}): " + "; ".join(cells))
        for side, why in r.get("skipped", {}).items():
            lines.append(f"  - {side}: skipped, {why}")
        if "end_to_end" in r:
            e = r["end_to_end"]
            lines.append(f"  - end to end, {e['epochs']} epochs: " + ", ".join(
                f"{k} {v:.2f} s" for k, v in e["seconds"].items())
                + f"; speed-up {e['speedup']:.2f}x")
    return lines


def diagnostics(payload: dict) -> list[str]:
    r = payload["results"]
    lines = ["Page faults (XLA:CPU's temporary buffer is fresh memory on every execution):", "",
             "| workload | temp MB | mode | minor faults/step | system ms/step | wall ms/step |",
             "|---|---|---|---|---|---|"]
    for f in r["page_faults"]:
        for mode in [k for k in f if k not in ("workload", "temp_mb")]:
            m = f[mode]
            lines.append(f"| {f['workload']} | {f['temp_mb']:.1f} | {mode} | "
                         f"{m['minor_faults_per_step']:.0f} | {m['system_ms_per_step']:.1f} | "
                         f"{m['wall_ms_per_step']:.1f} |")
    lines += ["", "Where a small net's scan-fused epoch spends its time (us/step, ratio to jdnn's "
                  "epoch within rounds):", ""]
    for e in r["epoch_overhead"]:
        cells = [f"{name} {v['seconds']['median'] * 1e6:.1f} (x{v['ratio']['median']:.2f})"
                 for name, v in e["sides"].items()]
        lines.append(f"- {e['description']}: " + "; ".join(cells))
    d = r["dispatch"]
    lines += ["", "Dispatch, digits MLP (one compiled step per call, async): " + "; ".join(
        f"{k}: a call returns in {v['call_returns_us']:.0f} us, {v['us_per_step']:.0f} us/step "
        "in a loop" for k, v in d.items())]
    return lines


def render(folder: pathlib.Path, name: str, payload: dict) -> list[str]:
    """The markdown lines of one benchmark's section."""
    lines = [f"## {TITLES.get(name, name)}", ""]
    if name == "machine":
        lines += machine(payload)
    elif name in ("mlp", "cnn", "small"):
        lines += training(folder, name, payload)
    elif name in ("correctness", "convergence", "compilation", "vectorized", "diagnostics"):
        lines += globals()[name](payload)
    elif name == "scaling":
        lines += scaling(folder, payload)
    lines.append(f"\n<sub>{name}: {payload.get('seconds', 0):.0f} s, load average "
                 f"{payload.get('machine', {}).get('load_average')}</sub>")
    return lines + [""]
