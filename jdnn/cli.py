"""The `jdnn` command line. Subcommands arrive with the features they drive (`train`,
`gradcheck`, `bench`, `summary`); for now: `--version`, `--help` and `info`."""

from __future__ import annotations

import argparse
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
