"""The `jdnn` command line: `info`, `gradcheck` (more subcommands arrive with the features they
drive: `train`, `bench`, `summary`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
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


def _gradcheck(args: argparse.Namespace) -> int:
    from jdnn import gradcheck_zoo, zoo

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
        _write_json(args.json, gradcheck_zoo.to_json(rows))
    for row in rows:
        if not row.report.ok:
            print(f"FAILED {row.model} / {row.loss}: {row.report.worst}", file=sys.stderr)
    return 0 if all(row.report.ok for row in rows) else 1


def _write_json(path: str, data) -> None:
    """Writes JSON atomically: a temporary file in the same folder, then a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def _version() -> str:
    from jdnn import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `jdnn` command."""
    parser = argparse.ArgumentParser(
        prog="jdnn", description="jdnn: a functional deep-neural-network library for JAX.")
    parser.add_argument("--version", action="version", version=f"jdnn {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="print versions and devices (for bug reports)")
    info.set_defaults(run=_info)

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


def main(argv: list[str] | None = None) -> int:
    """Runs the `jdnn` command; returns its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
