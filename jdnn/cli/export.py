"""`jdnn export RUN_DIR --format stablehlo|onnx`: a `jdnn train` run as a deployable artifact.

The run directory says everything needed: `config.json` rebuilds the model (`run.build`) and
names the dataset, whose examples give the input's shape and dtype (`run.load`, as training
read them); the checkpoint (`final.safetensors`, else the newest in `checkpoints/`) gives the
trained params and state, and `jdnn.checkpoint.restore` checks it was saved from that model.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from jdnn.checkpoint import ModelCheckpoint

FORMATS = ("stablehlo", "onnx")


def add_parser(commands) -> None:
    """Adds `export` to the `jdnn` command's subparsers."""
    parser = commands.add_parser(
        "export", help="export a jdnn train run for deployment (StableHLO or ONNX)",
        description="Writes the trained model of a `jdnn train` run directory as an artifact "
                    "that runs without jdnn: a jax.export folder (model.stablehlo + model.json; "
                    "runs with jax alone) or one ONNX file (runs with onnxruntime; needs "
                    "pip install 'jdnn[onnx]'). Evaluation mode, params embedded, any batch size.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a directory jdnn train wrote")
    parser.add_argument("--format", choices=FORMATS, default="stablehlo",
                        help="(default stablehlo)")
    parser.add_argument("--out", help="where to write (default RUN_DIR/export/model for "
                                      "stablehlo, RUN_DIR/export/model.onnx for onnx)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="the checkpoint to export (default RUN_DIR/final.safetensors, else "
                             "the newest in RUN_DIR/checkpoints)")
    parser.add_argument("--batch", default="dynamic", type=_batch,
                        help="'dynamic' (any batch size, the default) or a fixed batch size")
    parser.add_argument("--platforms", default="cpu,cuda", type=_platforms,
                        help="stablehlo: comma-separated platforms to lower for, of cpu, cuda, "
                             "rocm, tpu (default cpu,cuda)")
    parser.add_argument("--matmul-precision", choices=["highest", "high", "default"],
                        help="stablehlo: 'highest' for full float32 products on GPUs too "
                             "(default: jax's per platform, TF32 on NVIDIA GPUs)")
    parser.set_defaults(run=main)


def _batch(text: str) -> str | int:
    if text == "dynamic":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"must be 'dynamic' or an int >= 1, got {text!r}")


def _platforms(text: str) -> tuple[str, ...]:
    from jdnn.export.stablehlo import PLATFORMS

    chosen = tuple(p.strip() for p in text.split(",") if p.strip())
    if not chosen or any(p not in PLATFORMS for p in chosen):
        raise argparse.ArgumentTypeError(f"must be comma-separated names of {PLATFORMS}, got "
                                         f"{text!r}")
    return chosen


def find_checkpoint(run_dir: pathlib.Path, given: str | None) -> pathlib.Path:
    """The checkpoint to export: `given`, else `final.safetensors` (the run's final state:
    the best epoch's with early stopping), else the newest in `checkpoints/`."""
    if given is not None:
        path = pathlib.Path(given)
        if not path.is_file():
            raise FileNotFoundError(f"--checkpoint {path}: no such file")
        return path
    if (run_dir / "final.safetensors").is_file():
        return run_dir / "final.safetensors"
    latest = (ModelCheckpoint.latest(run_dir / "checkpoints")
              if (run_dir / "checkpoints").is_dir() else None)
    if latest is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (final.safetensors or "
                                f"checkpoints/epoch-*.safetensors); train it first, or give "
                                f"--checkpoint PATH")
    return latest


def load_run(run_dir: str | pathlib.Path, checkpoint_path: str | None = None):
    """`(model, train_state, input_shape, dtype)` of a run directory, the input shape with a
    batch of one.

    Raises:
        FileNotFoundError: for a directory without config.json or without a checkpoint.
        ValueError: for a config or checkpoint that does not fit (a `CheckpointError` names
            the layers whose spec differs).
    """
    from jdnn import checkpoint
    from jdnn.cli import run

    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a jdnn train run directory (no config.json "
                                f"in it)")
    saved = json.loads((run_dir / "config.json").read_text())
    config = run.Config(**{k: saved[k] for k in run.INHERITED if k in saved})
    train_data, test_data = run.load(config)
    model = run.build(config, run.outputs_of(config, train_data, test_data))
    path = find_checkpoint(run_dir, checkpoint_path)
    train_state = checkpoint.restore(path, model).train_state(run.make_optimizer(config))
    x = train_data[0]
    return model, train_state, (1, *x.shape[1:]), x.dtype


def main(args: argparse.Namespace) -> int:
    """Runs `jdnn export`; returns its exit status (2 for a run that cannot be exported)."""
    from jdnn import export

    run_dir = pathlib.Path(args.run_dir)
    try:
        model, train_state, input_shape, dtype = load_run(run_dir, args.checkpoint)
        if args.format == "onnx":
            out = pathlib.Path(args.out or run_dir / "export" / "model.onnx")
            export.to_onnx(out, model, train_state, input_shape, batch=args.batch, dtype=dtype)
        else:
            out = pathlib.Path(args.out or run_dir / "export" / "model")
            export.save(out, model, train_state, input_shape, batch=args.batch,
                        platforms=args.platforms, dtype=dtype,
                        matmul_precision=args.matmul_precision)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"jdnn export: error: {error}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in ([out] if out.is_file() else out.iterdir()))
    shape = ", ".join(["B", *map(str, input_shape[1:])])
    print(f"jdnn export: {run_dir} -> {out} ({args.format}, {size:,} bytes; input ({shape}) "
          f"{dtype}, step {int(train_state.step)})")
    return 0
