"""`python benchmarks/run.py`: run the benchmark suite and write its report.

    python benchmarks/run.py              # everything (~15-20 minutes on 2 cores)
    python benchmarks/run.py --quick      # the ~3-4-minute subset
    python benchmarks/run.py --only mlp --only small
    python benchmarks/run.py --list

Results go to `--out` (default `benchmarks/results`, or `benchmarks/results/quick` with
`--quick`): `<name>.json` per benchmark, `report.md` with the targets table, and PNG plots.
The machine's GEMM peak and bandwidth are measured first in every run, since the roofline
figures of the other benchmarks need them.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Callable

DEFAULT_OUT = pathlib.Path("benchmarks") / "results"
QUICK_OUT = DEFAULT_OUT / "quick"


def _benchmarks() -> dict[str, Callable]:
    from benchmarks.suite import (compilation, convergence, correctness, diagnose, headline,
                                  memory, scaling, sequences, training, vectorized)

    return {"headline": headline.run, "correctness": correctness.run, "mlp": training.mlp,
            "cnn": training.cnn, "small": training.small, "convergence": convergence.run,
            "compilation": compilation.run, "memory": memory.run, "scaling": scaling.run,
            "vectorized": vectorized.run, "sequences": sequences.run,
            "diagnostics": diagnose.run}


NAMES = ("machine", "headline", "correctness", "mlp", "cnn", "small", "convergence",
         "compilation", "memory", "scaling", "vectorized", "sequences", "diagnostics")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py", description="Benchmarks jdnn against a tight hand-written "
        "NumPy backprop, raw JAX, Flax, Equinox, Keras and PyTorch, and against the machine's "
        "GEMM peak.")
    parser.add_argument("--quick", action="store_true",
                        help="the ~3-4-minute subset: fewer workloads, rounds and sweep points")
    parser.add_argument("--only", action="append", choices=NAMES, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(NAMES)}")
    parser.add_argument("--out", type=pathlib.Path,
                        help=f"results folder (default {DEFAULT_OUT}, or {QUICK_OUT} with --quick)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per comparison")
    parser.add_argument("--threads", type=int,
                        help="NumPy-BLAS and PyTorch threads (default: the CPU count)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--gpu-check", action="store_true",
                        help="only the GPU check (<= 5 minutes): the workloads at GPU-sized "
                             "batches; on a machine without a GPU it says so and exits 0")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild report.md and the plots from the JSON files in --out")
    return parser


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    from threadpoolctl import threadpool_limits

    from benchmarks.suite.sides import torch_side

    threadpool_limits(threads)
    torch_side.threads = lambda: threads


def main(argv: list[str] | None = None) -> int:
    """Runs the suite; returns the exit status (0, or 1 if a benchmark raised)."""
    args = build_parser().parse_args(argv)
    if args.list:
        print("\n".join(NAMES))
        return 0
    from benchmarks.suite import machine, report
    from benchmarks.suite.context import Context
    from jdnn.cli.commands import enable_compilation_cache

    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    if args.report_only:
        print(f"wrote {report.write_report(args.out)}")
        return 0
    _set_threads(args.threads)
    enable_compilation_cache()  # as `jdnn train` does; the end-to-end fits turn it off
    ctx = Context.create(args.quick, args.rounds, args.threads)
    if args.gpu_check:
        return _gpu_check(ctx, args.out)
    mode = "quick" if args.quick else "full"
    chosen = args.only or list(NAMES)
    benchmarks, failed = _benchmarks(), []
    began = time.perf_counter()
    print(f"jdnn benchmarks ({mode}): {', '.join(chosen)} -> {args.out}", flush=True)

    start = time.perf_counter()
    info = machine.describe()
    print("machine: measuring the GEMM peak and the copy bandwidth", flush=True)
    ctx.limits = machine.limits(n=1024 if args.quick else 2048,
                                rounds=3 if args.quick else 7)
    print(f"  GEMM peak {ctx.gemm_peak:.1f} GFLOP/s, copy {ctx.bandwidth:.1f} GB/s", flush=True)
    if "machine" in chosen:
        report.write_result(args.out, "machine", {
            "name": "machine", "mode": mode, "machine": info, "results": ctx.limits,
            "targets": [], "seconds": time.perf_counter() - start})

    for name in chosen:
        if name == "machine":
            continue
        print(f"{name}:", flush=True)
        start = time.perf_counter()
        info = machine.describe()
        try:
            payload = benchmarks[name](ctx)
        except Exception as error:  # a benchmark that breaks must not lose the others
            print(f"  FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        info["load_average_end"] = machine.load_average()
        report.write_result(args.out, name, {"name": name, "mode": mode, "machine": info,
                                             "seconds": time.perf_counter() - start, **payload})
        if payload.get("failed"):  # parts that raised; the rest was written
            print(f"  FAILED parts: {', '.join(payload['failed'])}", file=sys.stderr, flush=True)
            failed.append(name)
    path = report.write_report(args.out)
    _print_targets(args.out)
    print(f"wrote {path} in {time.perf_counter() - began:.0f} s", flush=True)
    return 1 if failed else 0


def _gpu_check(ctx, out: pathlib.Path) -> int:
    from benchmarks.suite import gpu, machine, report

    began = time.perf_counter()
    payload = gpu.check(ctx)
    if payload is None:
        return 0
    report.write_result(out, "gpu", {"name": "gpu", "mode": "gpu-check",
                                     "machine": machine.describe(),
                                     "seconds": time.perf_counter() - began, **payload})
    print(f"wrote {report.write_report(out)}", flush=True)
    return 0


def _print_targets(folder: pathlib.Path) -> None:
    from benchmarks.suite import report
    from benchmarks.suite.targets import format_value

    for payload in report.load_results(folder).values():
        for t in payload.get("targets", []):
            print(f"  {t['status']:4s} {format_value(t['measured'], t['unit']):>10s} "
                  f"{t['op']} {format_value(t['threshold'], t['unit']):<7s} {t['target']}")


if __name__ == "__main__":
    sys.exit(main())
