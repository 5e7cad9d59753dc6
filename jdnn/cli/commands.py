"""The `jdnn` command line: `train` (the main job), `export`, `gradcheck`, `summary`, `info`.

`bench` only says how to run the benchmark suite from a checkout (it is not installed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

# The persistent compilation cache lives in the library now (fit turns it on too); the CLI's
# name for it is kept.
from jdnn.train.compilation_cache import enable_compilation_cache  # noqa: F401


def _info(args: argparse.Namespace) -> int:
    del args
    import jax

    print(f"jdnn {_version()}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    for package in ("jax", "jaxlib", "optax", "chex", "numpy"):
        try:
            print(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            print(f"{package} (not installed)")
    print(f"devices: {', '.join(str(d) for d in jax.devices())}")
    return 0


# Exit statuses of `jdnn train` beyond 0 (done) and 2 (usage, configuration or data error).
DIVERGED = 3
SIGNALLED = {"SIGINT": 130, "SIGTERM": 143}   # 128 + the signal's number, as shells report


def _train(args: argparse.Namespace) -> int:
    from jdnn.cli import run

    fields = {f.name for f in dataclasses.fields(run.Config)}
    options = {k: v for k, v in vars(args).items() if k in fields}
    try:
        if args.distributed:   # before anything touches a device; JAX finds the cluster
            from jdnn import distributed

            index, count = distributed.initialize()
            print(f"jdnn train: process {index} of {count}", file=sys.stderr)
        summary = run.train(run.resolve_config(options))
    except KeyboardInterrupt as interrupt:  # outside training: before it began, or saving
        name = "SIGTERM" if isinstance(interrupt, run.Terminated) else "SIGINT"
        print(f"jdnn train: {name} received outside training; stopped (checkpoints already "
              f"written, if any, are kept)", file=sys.stderr)
        return SIGNALLED.get(name, 130)
    except (ValueError, FileNotFoundError) as error:
        print(f"jdnn train: error: {error}", file=sys.stderr)
        return 2
    if summary["stopped_by"] == "interrupted":
        where = (f"the checkpoint is {summary['checkpoint']}" if summary["checkpoint"] else
                 "no checkpoint was written yet")
        print(f"jdnn train: {summary['signal']}: {summary['stop_reason'].split(':')[0]}; "
              f"{where}; history in {summary['run_directory']}/history.json. Resume with: "
              f"{summary['resume']}", file=sys.stderr)
        return SIGNALLED.get(summary["signal"], 130)
    if summary["stopped_by"] == "non_finite":
        print(f"jdnn train: training diverged: {summary['stop_reason']}. The run's files hold "
              f"the last finite state ({summary['checkpoint']})", file=sys.stderr)
        return DIVERGED
    return 0


def _builtin_models() -> dict:
    """The built-in models by name: `jdnn train`'s digits MLP and CNN and the gradcheck zoo,
    each as `(model, input_shape)` with a batch of one."""
    from jdnn.cli import run, zoo

    models = {f"digits-{name}": (run.build(run.Config(model=name), 10), shape) for name, shape
              in (("mlp", (1, 64)), ("cnn", (1, 8, 8, 1)))}
    models.update({name: (entry.build(10), (1, *entry.example_shape))
                   for name, entry in zoo.MODELS.items()})
    return models


def _summary(args: argparse.Namespace) -> int:
    from jdnn.summarize import summary

    models = _builtin_models()
    names = list(models) if args.model == "all" else [args.model]
    tables = {name: summary(*models[name]) for name in names}
    if args.json:
        print(json.dumps({name: table.to_dict() for name, table in tables.items()}, indent=2))
    else:
        for name, table in tables.items():
            print(f"== {name}\n{table}\n")
    return 0


def _gradcheck(args: argparse.Namespace) -> int:
    from jdnn import io
    from jdnn.cli import gradcheck_zoo, zoo

    models = list(zoo.MODELS) if args.model == "all" else [args.model]
    loss_names = list(gradcheck_zoo.LOSSES) if args.loss == "all" else [args.loss]
    try:
        rows = gradcheck_zoo.run(models, loss_names, mode=args.mode, dtype=args.dtype,
                                 seed=args.seed, batch=args.batch)
    except ValueError as error:  # a model that cannot run as asked: not a wrong gradient
        print(error, file=sys.stderr)
        return 2
    if args.verbose:
        for row in rows:
            print(f"== {row.model} / {row.loss} / {'train' if row.train else 'eval'}")
            print(row.report, end="\n\n")
    print(gradcheck_zoo.table(rows))
    if args.json:
        io.write_text(args.json, json.dumps(gradcheck_zoo.to_json(rows), indent=2))
    for row in rows:
        if not row.report.ok:
            print(f"FAILED {row.model} / {row.loss}: {row.report.worst}", file=sys.stderr)
    return 0 if all(row.report.ok for row in rows) else 1


def _version() -> str:
    from jdnn import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `jdnn` command."""
    parser = argparse.ArgumentParser(
        prog="jdnn", description="jdnn: a functional deep-neural-network library for JAX.")
    parser.add_argument("--version", action="version", version=f"jdnn {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(commands)
    info = commands.add_parser("info", help="print versions and devices (for bug reports)")
    info.set_defaults(run=_info)

    summary = commands.add_parser(
        "summary", help="print the layer table (shapes, parameters, FLOPs) of built-in models")
    summary.add_argument("--model", default="all",
                         choices=["all", "digits-mlp", "digits-cnn", *_zoo_names()])
    summary.add_argument("--json", action="store_true", help="print JSON instead of tables")
    summary.set_defaults(run=_summary)

    commands.add_parser("bench", help="how to run the benchmark suite (it lives in a checkout)",
                        description=BENCH_MOVED)

    from jdnn.cli.gradcheck_zoo import LOSSES, MODES
    from jdnn.cli.zoo import MODELS

    check = commands.add_parser(
        "gradcheck", help="check jax.grad against the NumPy backprop reference and finite "
                          "differences over a zoo of models covering every layer kind",
        description="Checks every zoo model with every loss (plus an L1+L2 penalty) in training "
                    "and evaluation mode; exits 1 if any check fails.")
    check.add_argument("--model", choices=["all", *MODELS], default="all")
    check.add_argument("--loss", choices=["all", *LOSSES], default="all")
    check.add_argument("--mode", choices=list(MODES), default="both")
    check.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    check.add_argument("--seed", type=_checked("seed", int, "an int >= 0", lambda v: v >= 0),
                       default=0)
    check.add_argument("--batch", type=_checked("batch", int, "an int >= 1", lambda v: v >= 1),
                       default=4, help="batch size (default 4)")
    check.add_argument("--json", metavar="PATH", type=_json_path,
                       help="also write every report as JSON (its folder is created)")
    check.add_argument("--verbose", action="store_true", help="print each report's full table")
    check.set_defaults(run=_gradcheck)

    from jdnn.cli import export

    export.add_parser(commands)   # jdnn/cli/export.py: a run directory as an artifact
    return parser


def _zoo_names() -> list[str]:
    from jdnn.cli.zoo import MODELS

    return list(MODELS)


def _checked(name: str, kind: type, expected: str, test) -> Callable[[str], Any]:
    """An argparse `type=`: parses the text as `kind` and checks `test`, so a bad value is a
    usage error (exit 2) naming the option, not a traceback or a silently broken run."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


def _run_option(name: str) -> Callable[[str], Any]:
    """The `type=` of `jdnn train`'s numeric option `name`, checked by `jdnn.cli.run.RULES`."""
    from jdnn.cli import run

    return _checked(name, *run.RULES[name])


def _json_path(text: str) -> str:
    """`gradcheck --json PATH`: not a directory; its folder exists or is created now."""
    path = pathlib.Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file path, e.g. "
                                         f"{os.path.join(text, 'gradcheck.json')}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot create the folder of {text!r}: "
                                         f"{error.strerror or error}") from None
    return text


def _add_train(commands) -> None:
    from jdnn.cli import run

    d = run.Config()
    train = commands.add_parser(
        "train", help="train a built-in model on a built-in dataset (the main job)",
        description="Trains a model with fit() and writes a run directory: config.json, "
                    "checkpoints/, history.json, final.safetensors, summary.json. With no "
                    "options: an MLP on scikit-learn's bundled digits with Adam. Ctrl-C or "
                    "SIGTERM stops after saving a checkpoint (exit 130 / 143); a run that "
                    "diverges exits 3; --resume continues a run.")
    # Defaults are None here and filled in by jdnn.cli.run.resolve_config: from the resumed run's
    # config.json when --resume names one, else from jdnn.cli.run.Config.
    train.add_argument("--model", choices=run.MODELS, help=f"(default {d.model})")
    train.add_argument("--dataset", choices=run.DATASETS, help=f"(default {d.dataset})")
    train.add_argument("--data-dir", help="folder with the IDX files for mnist/fashion-mnist")
    train.add_argument("--epochs", type=_run_option("epochs"),
                       help=f"the run's total epochs, also when resuming (default {d.epochs})")
    train.add_argument("--batch-size", type=_run_option("batch_size"),
                       help=f"(default {d.batch_size})")
    train.add_argument("--optimizer", choices=run.OPTIMIZERS, help=f"(default {d.optimizer})")
    train.add_argument("--lr", type=_run_option("lr"),
                       help=f"learning rate, > 0 (default {d.lr})")
    train.add_argument("--l1", type=_run_option("l1"), help="L1 penalty strength (weights)")
    train.add_argument("--l2", type=_run_option("l2"), help="L2 penalty strength (weights)")
    train.add_argument("--dropout", type=_run_option("dropout"),
                       help="dropout rate before the head, in [0, 1)")
    train.add_argument("--batch-norm", action="store_true", default=None,
                       help="batch norm after hidden layers")
    train.add_argument("--early-stopping", type=_run_option("early_stopping"),
                       metavar="PATIENCE",
                       help="stop when the test loss has not improved for PATIENCE epochs")
    train.add_argument("--seed", type=_run_option("seed"), help=f"(default {d.seed})")
    train.add_argument("--checkpoint-every", type=_run_option("checkpoint_every"),
                       metavar="N", help=f"save a checkpoint into <run>/checkpoints/ every N "
                                         f"epochs and at the end (default {d.checkpoint_every})")
    train.add_argument("--keep-checkpoints", type=_run_option("keep_checkpoints"), metavar="K",
                       help=f"keep the newest K checkpoints (default {d.keep_checkpoints})")
    train.add_argument("--out", help="run directory, new or empty (default "
                                     "runs/<model>-<dataset>-<time>; with --resume RUN_DIR, "
                                     "that run's directory)")
    train.add_argument("--resume", metavar="PATH",
                       help="continue a run: a run directory (its newest checkpoint and its "
                            "options) or a checkpoint file")
    train.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                       help="no progress bar")
    train.add_argument("--distributed", action="store_true", default=None,
                       help="one of several processes: jax.distributed.initialize() (finds "
                            "SLURM, Open MPI, Kubernetes, Cloud TPU, or reads "
                            "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), then "
                            "data parallel over every process's devices; --batch-size a "
                            "multiple of the device count")
    train.set_defaults(run=_train)


BENCH_MOVED = (
    "The benchmark suite is not part of the installed jdnn package. From a checkout of the\n"
    "repository:\n"
    '    pip install -e ".[bench,torch]"\n'
    "    python benchmarks/run.py --quick      # or without --quick for the full suite\n"
    "See benchmarks/README.md for what it measures.")


def main(argv: list[str] | None = None) -> int:
    """Runs the `jdnn` command; returns its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the suite is not part of the installed package
        print(BENCH_MOVED)
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    enable_compilation_cache()
    return args.run(args)

