"""The `jdnn` command line: `train` (the main job), `gradcheck`, `summary`, `bench`, `info`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from importlib import metadata


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


def _train(args: argparse.Namespace) -> int:
    from jdnn import run

    fields = {f.name for f in dataclasses.fields(run.Config)}
    config = run.Config(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        run.train(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"jdnn train: error: {error}", file=sys.stderr)
        return 2
    return 0


def _builtin_models() -> dict:
    """The built-in models by name: `jdnn train`'s digits MLP and CNN and the gradcheck zoo,
    each as `(model, input_shape)` with a batch of one."""
    from jdnn import run, zoo

    models = {f"digits-{name}": (run.build(run.Config(model=name), 10), shape) for name, shape
              in (("mlp", (1, 64)), ("cnn", (1, 8, 8, 1)))}
    models.update({name: (entry.build(10), (1, *entry.example_shape))
                   for name, entry in zoo.MODELS.items()})
    return models


def _summary(args: argparse.Namespace) -> int:
    from jdnn.summary import summary

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
    from jdnn import gradcheck_zoo, io, zoo

    models = list(zoo.MODELS) if args.model == "all" else [args.model]
    loss_names = list(gradcheck_zoo.LOSSES) if args.loss == "all" else [args.loss]
    rows = gradcheck_zoo.run(models, loss_names, mode=args.mode, dtype=args.dtype,
                             seed=args.seed, batch=args.batch)
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

    bench = commands.add_parser(
        "bench", help="run the benchmark suite (jdnn vs the NumPy reference, raw JAX, peers)",
        description="Runs jdnn's benchmark suite; options after 'bench' (e.g. --quick, --only, "
                    "--out) are passed to it.")
    bench.add_argument("--quick", action="store_true", help="the ~4-minute subset")

    from jdnn.gradcheck_zoo import LOSSES, MODES
    from jdnn.zoo import MODELS

    check = commands.add_parser(
        "gradcheck", help="check jax.grad against the NumPy backprop reference and finite "
                          "differences over a zoo of models covering every layer kind",
        description="Checks every zoo model with every loss (plus an L1+L2 penalty) in training "
                    "and evaluation mode; exits 1 if any check fails.")
    check.add_argument("--model", choices=["all", *MODELS], default="all")
    check.add_argument("--loss", choices=["all", *LOSSES], default="all")
    check.add_argument("--mode", choices=list(MODES), default="both")
    check.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--batch", type=int, default=4, help="batch size (default 4)")
    check.add_argument("--json", metavar="PATH", help="also write every report as JSON")
    check.add_argument("--verbose", action="store_true", help="print each report's full table")
    check.set_defaults(run=_gradcheck)
    return parser


def _zoo_names() -> list[str]:
    from jdnn.zoo import MODELS

    return list(MODELS)


def _add_train(commands) -> None:
    from jdnn import run

    defaults = run.Config()
    train = commands.add_parser(
        "train", help="train a built-in model on a built-in dataset (the main job)",
        description="Trains a model with fit() and writes a run directory: config.json, "
                    "history.json, final.safetensors, summary.json. With no options: an MLP on "
                    "scikit-learn's bundled digits with Adam.")
    train.add_argument("--model", choices=run.MODELS, default=defaults.model)
    train.add_argument("--dataset", choices=run.DATASETS, default=defaults.dataset)
    train.add_argument("--data-dir", help="folder with the IDX files for mnist/fashion-mnist")
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--optimizer", choices=run.OPTIMIZERS, default=defaults.optimizer)
    train.add_argument("--lr", type=float, default=defaults.lr, help="learning rate")
    train.add_argument("--l1", type=float, default=0.0, help="L1 penalty strength (weights)")
    train.add_argument("--l2", type=float, default=0.0, help="L2 penalty strength (weights)")
    train.add_argument("--dropout", type=float, default=0.0, help="dropout rate before the head")
    train.add_argument("--batch-norm", action="store_true", help="batch norm after hidden layers")
    train.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                       help="stop when the test loss has not improved for PATIENCE epochs")
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--out", help="run directory (default runs/<model>-<dataset>-<time>)")
    train.add_argument("--resume", metavar="PATH", help="continue from a checkpoint")
    train.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar")
    train.set_defaults(run=_train)


def enable_compilation_cache() -> str | None:
    """Turns on JAX's persistent compilation cache, so a second run of a command reuses the
    compiled programs of the first. The folder is `$JDNN_CACHE_DIR`, else
    `~/.cache/jdnn/jax`; `JDNN_CACHE_DIR=off` disables it. Returns the folder (None if off)."""
    import jax

    folder = os.environ.get("JDNN_CACHE_DIR", os.path.expanduser("~/.cache/jdnn/jax"))
    if folder.lower() in ("", "off", "0", "none"):
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def main(argv: list[str] | None = None) -> int:
    """Runs the `jdnn` command; returns its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the suite parses its own options
        enable_compilation_cache()
        from jdnn.bench.run import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    enable_compilation_cache()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
