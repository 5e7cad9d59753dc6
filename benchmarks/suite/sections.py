"""The report's section for each benchmark, rendered from its JSON payload."""

from __future__ import annotations

import pathlib

from benchmarks.suite import plots

TITLES = {"machine": "The machine and its limits", "correctness": "Correctness (same run)",
          "mlp": "MLP 784-512-512-10: every side", "cnn": "MNIST-shaped CNN: every side",
          "small": "Small nets: the scan-fused epoch and the fixed overhead",
          "convergence": "Time to 97% test accuracy on digits",
          "compilation": "Compilation", "memory": "Peak memory per side", "scaling": "Scaling",
          "vectorized": "vmap workloads: per-example gradients, DP-SGD, ensembles, search",
          "diagnostics": "Diagnostics behind the findings",
          "headline": "Headline ratios, from separate processes",
          "sequences": "Sequence models: GRU, LSTM, a small transformer",
          "gpu": "GPU check"}


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
        threads = e.get("info", {}).get("blas_threads")
        label = side if threads is None else f"{side} (BLAS threads {threads})"
        lines.append(f"| {label} | {_ms(e['seconds'])} | {_ratio(e.get('ratio'))} | "
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
    tight = r.get("tight_vs_reference", [])
    if tight:
        lines += ["", "The tight hand-written NumPy backprop (the `numpy` side) against the "
                      f"reference oracle, parameters after several float32 steps from the same "
                      f"start (tolerance {r['tight_tolerance']:g}):", "",
                  "| model | steps | max rel. diff | ok |", "|---|---|---|---|"]
        lines += [f"| {t['description']} | {t['steps']} | {t['max_relative_difference']:.1e} | "
                  f"{t['ok']} |" for t in tight]
    return lines


CONVERGENCE_LABELS = {
    "jdnn_cold": "jdnn `fit`, cold (fresh process, empty persistent cache)",
    "jdnn_warm": "jdnn `fit`, warm persistent cache (fresh process)",
    "numpy": "tight hand-written float32 NumPy",
    "reference": "jdnn.reference (the correctness oracle, not a contender)",
    "torch_fused": "PyTorch eager, Adam(fused=True)",
    "keras": "Keras 3 on JAX, `model.fit`"}


def convergence(payload: dict) -> list[str]:
    r = payload["results"]

    def cell(value, digits=2):
        return "" if value is None else f"{value:.{digits}f}"

    lines = [f"{r['workload']}; stop at {r['target_accuracy']:.0%} test accuracy (at most "
             f"{r['max_epochs']} epochs); each run a fresh Python process, {r['rounds']} per "
             "side, medians. Seconds from the process's launch (the harness's own imports "
             "taken out); *first step*: launch to the first completed training step (jdnn: "
             "its first epoch, one compiled call).", "",
             "| side | seconds to target | import | compile | first step | epochs | accuracy |",
             "|---|---|---|---|---|---|---|"]
    for side, s in r["sides"].items():
        programs = (f" ({s['median_programs']:.0f} programs"
                    + (f", {s['median_cache_hits']:.0f} cache hits" if s.get(
                        "median_cache_hits") else "") + ")") if s.get("median_programs") else ""
        lines.append(f"| {CONVERGENCE_LABELS.get(side, side)} | {cell(s['median_total_s'])} | "
                     f"{cell(s['median_import_s'])} | {cell(s['median_compile_s'])}{programs} | "
                     f"{cell(s['median_first_step_s'])} | {s['epochs']:.0f} | "
                     f"{cell(s['median_accuracy'], 4)} |")
    lines += [f"| {CONVERGENCE_LABELS.get(side, side)} | skipped: {why} | | | | | |"
              for side, why in r["skipped"].items()]
    return lines + [f"- {side}: failed: {why}" for side, why in r.get("errors", {}).items()]


def memory(payload: dict) -> list[str]:
    def mib(value):
        return "" if value is None else f"{value:.0f}"

    lines = ["Each side on each workload in its own fresh process; MiB of resident memory. "
             "*Over imports*: peak RSS minus RSS after imports (the shared problem's data "
             "included, the *problem* column); *training*: the peak while the side was built "
             "and trained, over the RSS once the problem existed. *Compiled*: jdnn's step (or "
             "epoch) program, arguments + outputs + temporaries, from `memory_analysis()`. XLA's "
             "`memory_stats()`: None on the CPU backend.", ""]
    for workload, row in payload["results"]["workloads"].items():
        lines += [f"**{workload}** ({row['description']})", "",
                  "| side | over imports | problem | training | compiled (args + out + temp) |",
                  "|---|---|---|---|---|"]
        for side, r in row["sides"].items():
            if "skipped" in r or "error" in r:
                lines.append(f"| {side} | {'skipped' if 'skipped' in r else 'failed'}: "
                             f"{(r.get('skipped') or r.get('error'))[:120]} | | | |")
                continue
            c = r.get("compiled")
            compiled = (f"{c['argument_size_in_bytes'] / 2**20:.1f} + "
                        f"{c['output_size_in_bytes'] / 2**20:.1f} + "
                        f"{c['temp_size_in_bytes'] / 2**20:.1f}" if c else "")
            lines.append(f"| {side} | {mib(r['peak_over_imports_mib'])} | "
                         f"{mib(r['problem_mib'])} | {mib(r['training_peak_mib'])} | {compiled} |")
        lines.append("")
    return lines


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


def _compile_s(r: dict, side: str) -> float | None:
    """A side's compile seconds: `compare`'s, an end-to-end median, or an older payload's first
    call."""
    entry = r.get("compile", {}).get(side)
    if isinstance(entry, dict) and "compile_s" in entry:
        value = entry["compile_s"]
        return value["median"] if isinstance(value, dict) else value
    return r.get("first_call_s", {}).get(side)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _vmap_timing(name: str, r: dict) -> list[str]:
    """A per-call table: per-example gradients, DP-SGD steps, the ensemble's epochs."""
    unit = r.get("unit", "call")
    about = [r.get("description"), r.get("rounds") and f"{r['rounds']} rounds",
             r.get("baseline") and f"ratio = side / {r['baseline']} within each round"]
    lines = [f"**{name}**: " + "; ".join(a for a in about if a) + ".", "",
             f"| side | ms per {unit} median [IQR] | ratio [IQR] | compile s | calls/chunk |",
             "|---|---|---|---|---|"]
    for side, e in r["sides"].items():
        threads = e.get("info", {}).get("blas_threads")
        label = side if threads is None else f"{side} (BLAS threads {threads})"
        lines.append(f"| {label} | {_ms(e['seconds'])} | {_ratio(e.get('ratio'))} | "
                     f"{_seconds(_compile_s(r, side))} | "
                     f"{r.get('steps_per_chunk', {}).get(side, '')} |")
    lines += [f"| {side} | skipped: {why} | | | |" for side, why in r.get("skipped", {}).items()]
    if "end_to_end" in r:  # older payloads: one untimed-rounds pass, full run only
        e = r["end_to_end"]
        lines += ["", f"End to end, {e['epochs']} epochs: " + ", ".join(
            f"{k} {v:.2f} s" for k, v in e["seconds"].items()) + f"; speed-up {e['speedup']:.2f}x"]
    return lines + [""]


def _vmap_end_to_end(name: str, r: dict) -> list[str]:
    scaled = "" if r["sequential_scale"] == 1 else (
        f" The sequential side timed fits {r['sequential_fits_timed']} of the {r['members']} "
        f"per round, its time scaled x{r['sequential_scale']:g}.")
    lines = [f"**{name}**: {r['description']}; {r['rounds']} rounds; persistent compilation "
             f"cache {r['persistent_cache']}; ratio = side / vectorized within each round (the "
             f"sequential side's ratio is the speed-up).{scaled}", "",
             f"| side | what | s per {r['unit']} median [IQR] | ratio [IQR] | of which XLA "
             "compile s | trace + lower s |", "|---|---|---|---|---|---|"]
    for side, e in r["sides"].items():
        c, s = r["compile"][side], e["seconds"]
        lines.append(f"| {side} | {r['labels'][side]} | {s['median']:.3g} [{s['q1']:.3g}-"
                     f"{s['q3']:.3g}] | {_ratio(e.get('ratio'))} | {c['compile_s']['median']:.2f}"
                     f" | {c['trace_s']['median'] + c['lower_s']['median']:.2f} |")
    return lines + [""]


def _ghost_check(name: str, r: dict) -> list[str]:
    return [f"**{name}**: `jdnn.ghost_clipped_grad` against `jdnn.clip_and_aggregate("
            f"jdnn.per_example_grads(...))`, {r['description']}, {r['dtype']}; max relative "
            "difference = max |ghost - naive| / max |naive|, leaf by leaf.", "",
            "| clip norm | clipped | gradient max rel. diff | norms max rel. diff | tolerance "
            "| ok |", "|---|---|---|---|---|---|",
            f"| {r['l2_norm_clip']:.4g} | {r['clipped_fraction']:.0%} | "
            f"{r['grads_max_relative_difference']:.2e} | "
            f"{r['norms_max_relative_difference']:.2e} | {r['tolerance']:g} | {r['ok']} |", ""]


def vectorized(payload: dict) -> list[str]:
    lines = []
    for name, r in payload["results"].items():
        if "grads_max_relative_difference" in r:
            lines += _ghost_check(name, r)
        elif "sequential_scale" in r:
            lines += _vmap_end_to_end(name, r)
        else:
            lines += _vmap_timing(name, r)
    for name, why in payload.get("failed", {}).items():
        lines.append(f"- {name}: FAILED, {why}")
    for name, why in payload.get("skipped", {}).items():
        lines.append(f"- {name}: skipped, {why}")
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


def sequences(folder: pathlib.Path, payload: dict) -> list[str]:
    """Per workload: the suite's table, what each side is, and every side's first loss (the
    same parameters and batch on every side, so the same number up to float32 rounding)."""
    lines = []
    for workload, r in payload["results"].items():
        lines += workload_table(workload, r)
        lines += [f"- `{side}`: {label}" for side, label in r.get("labels", {}).items()]
        losses = ", ".join(f"{side} {loss:.6g}" for side, loss in r.get("first_loss", {}).items()
                           if loss is not None)
        lines += [f"- first loss (initial parameters, batch 0): {losses}", ""]
    lines += [f"- {name}: FAILED, {why}" for name, why in payload.get("failed", {}).items()]
    png = plots.step_times(payload["results"], folder / "sequences.png",
                           "sequences: time per step")
    return lines + ([f"![sequences]({png.name})"] if png else [])


HEADLINE_LABELS = {"vs_numpy": "tight NumPy backprop / jdnn scan epoch",
                   "vs_reference": "generic NumPy reference (the oracle) / jdnn scan epoch",
                   "vs_torch_best": "PyTorch at its best / jdnn step"}


def headline(payload: dict) -> list[str]:
    lines = [f"Each ratio is the other side's time over jdnn's (> 1: jdnn faster), the median of "
             f"{payload['processes']} separate processes' medians, with the smallest and largest "
             "process median. \"PyTorch at its best\" is, per round, the fastest PyTorch variant "
             "that ran (fused Adam, all threads or one, `torch.compile`); the other rows are "
             "each variant alone.", "",
             "| workload | ratio | median of medians | spread over processes | notes |",
             "|---|---|---|---|---|"]
    for r in payload["results"].values():
        threads = r.get("info", {}).get("numpy", {}).get("blas_threads")
        for key, cell in r["ratios"].items():
            notes = []
            if key == "vs_numpy" and threads is not None:
                notes.append(f"NumPy BLAS threads: {threads}")
            if "best_variant" in cell:
                notes.append(f"fastest: {cell['best_variant']}")
            label = HEADLINE_LABELS.get(key, key.removeprefix("vs_") + " / jdnn step")
            lines.append(f"| {r['description']} | {label} | {cell['median']:.3g}x | "
                         f"{cell['low']:.3g}-{cell['high']:.3g} | {'; '.join(notes)} |")
        for side, why in r.get("skipped", {}).items():
            lines.append(f"| {r['description']} | {side} | skipped | | {why} |")
    return lines


def gpu(folder: pathlib.Path, payload: dict) -> list[str]:
    rates = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in payload["gemm_gflops"].items())
    lines = [f"Device: {payload['machine']['device']}. XLA GEMM 4096^2: {rates}.", ""]
    return lines + training(folder, "gpu", payload)


def render(folder: pathlib.Path, name: str, payload: dict) -> list[str]:
    """The markdown lines of one benchmark's section."""
    lines = [f"## {TITLES.get(name, name)}", ""]
    if name == "machine":
        lines += machine(payload)
    elif name in ("mlp", "cnn", "small"):
        lines += training(folder, name, payload)
    elif name in ("correctness", "convergence", "compilation", "memory", "vectorized",
                  "diagnostics"):
        lines += globals()[name](payload)
    elif name == "scaling":
        lines += scaling(folder, payload)
    elif name == "headline":
        lines += headline(payload)
    elif name == "sequences":
        lines += sequences(folder, payload)
    elif name == "gpu":
        lines += gpu(folder, payload)
    lines.append(f"\n<sub>{name}: {payload.get('seconds', 0):.0f} s, load average "
                 f"{payload.get('machine', {}).get('load_average')}</sub>")
    return lines + [""]
