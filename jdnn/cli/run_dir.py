"""A run directory, and resuming one: the files that make a directory a run (`RUN_FILES`), where
`--resume PATH` continues from (`find_resume`), the `Config` a resumed run takes from its
`config.json` (`resolve_config`), and the directory a run writes into (`run_directory`), never
one that already holds another run.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

from jdnn.checkpoint import ModelCheckpoint
from jdnn.cli.config import DATASETS, FITS, MODELS, Config

# What a run directory holds; a directory with any of these is a run, never overwritten.
RUN_FILES = ("config.json", "history.json", "summary.json", "final.safetensors", "checkpoints")
# Options a resumed run takes from its run directory's config.json unless given again.
INHERITED = ("model", "dataset", "data_dir", "epochs", "batch_size", "optimizer", "lr", "l1",
             "l2", "dropout", "batch_norm", "early_stopping", "seed", "checkpoint_every",
             "keep_checkpoints")


@dataclasses.dataclass(frozen=True)
class Resume:
    """Where `--resume PATH` continues from: the checkpoint file, and the run directory it
    belongs to (None for a loose file)."""

    checkpoint: pathlib.Path
    run_dir: pathlib.Path | None


def _run_dir_of(folder: pathlib.Path) -> pathlib.Path | None:
    return folder if (folder / "config.json").is_file() else None


def find_resume(path: str | pathlib.Path) -> Resume:
    """Resolves `--resume PATH`: a run directory (its newest checkpoint in `checkpoints/`, by
    `ModelCheckpoint.latest`, else its `final.safetensors`), a `checkpoints/` folder, or a
    checkpoint file (whose run directory is the folder holding it or, for a file in
    `checkpoints/`, the one above).

    Raises:
        FileNotFoundError: if `path` does not exist or a directory holds no checkpoint.
    """
    path = pathlib.Path(path)
    if path.is_file():
        parent = path.parent
        run_dir = _run_dir_of(parent) or (_run_dir_of(parent.parent)
                                          if parent.name == "checkpoints" else None)
        return Resume(path, run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {path}: no such file or directory; give a run "
                                f"directory or a checkpoint file")
    if path.name == "checkpoints" and _run_dir_of(path.parent):
        path = path.parent
    found = ModelCheckpoint.latest(path / "checkpoints") if (path / "checkpoints").is_dir() \
        else None
    if found is None and (path / "final.safetensors").is_file():
        found = path / "final.safetensors"
    if found is None:
        raise FileNotFoundError(f"--resume {path}: the directory holds no checkpoint "
                                f"(checkpoints/epoch-*.safetensors or final.safetensors)")
    return Resume(found, _run_dir_of(path))


def resolve_config(options: dict[str, Any]) -> Config:
    """The `Config` of a run from the options given on the command line (None = not given):
    with `resume` naming a run directory, its `config.json` supplies every option in
    `INHERITED` that is not given; `Config`'s defaults the rest, except that without `--model`
    a dataset the default model cannot read gets the first model that can (`chars` -> gru)."""
    given = {k: v for k, v in options.items() if v is not None}
    base: dict[str, Any] = {}
    if given.get("resume"):
        resume = find_resume(given["resume"])
        if resume.run_dir is not None:
            saved = json.loads((resume.run_dir / "config.json").read_text())
            base = {k: saved[k] for k in INHERITED if k in saved}
    merged = {**base, **given}
    dataset = merged.get("dataset", Config.dataset)
    if "model" not in merged and dataset in DATASETS and dataset not in FITS[Config.model]:
        # no --model for a dataset the default model cannot read: the first model that can
        merged["model"] = next(m for m in MODELS if dataset in FITS.get(m, ()))
    return Config(**merged)


def check_fresh(out: pathlib.Path) -> None:
    """Refuses (`ValueError`) an `--out` that is an existing file or already holds a run."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file, not a directory; choose a new "
                         f"directory for the run")
    taken = [name for name in RUN_FILES if (out / name).exists()]
    if taken:
        raise ValueError(f"--out {out} already holds a run ({', '.join(taken)}); it is never "
                         f"overwritten: choose a new directory, or continue that run with "
                         f"jdnn train --resume {out}")


def run_directory(config: Config, resume: Resume | None = None) -> tuple[pathlib.Path, bool]:
    """`(directory, continuing)`: `--out` (which must be fresh, unless it is the resumed run's
    own directory), else the resumed run's directory (continued in place), else a fresh
    `runs/<model>-<dataset>-<time>`."""
    own = resume.run_dir if resume is not None else None
    if config.out:
        out = pathlib.Path(config.out)
        if own is not None and out.resolve() == own.resolve():
            return own, True
        check_fresh(out)
        return out, False
    if own is not None:
        return own, True
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out, n = pathlib.Path("runs") / f"{config.model}-{config.dataset}-{stamp}", 1
    while out.exists():
        n += 1
        out = out.with_name(f"{config.model}-{config.dataset}-{stamp}-{n}")
    return out, False
