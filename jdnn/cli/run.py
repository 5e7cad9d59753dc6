"""The main job behind `jdnn train`: a built-in model on a built-in dataset, trained with `fit`
and written into a run directory (configuration, history, checkpoints, pictures).

Every step is a library call a user could make; this module only chooses and wires them. A run
loses nothing: `ModelCheckpoint` saves into `<run>/checkpoints/` on a schedule, SIGINT and
SIGTERM stop `fit` gracefully (it hands back the last completed epoch, which is saved), and
`--resume` continues a run directory or a checkpoint file up to the run's total `--epochs`.

Its parts live beside it and are re-exported here: `config` (the options and `Config`), `recipe`
(the data, model, loss and optimizer a config names), `run_dir` (run directories and resuming)
and `signals` (the graceful stop).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any

import jax

from jdnn import checkpoint, io, losses, parallel, regularizers
from jdnn.checkpoint import ModelCheckpoint
from jdnn.cli.config import (DATASETS, FITS, MODELS, OPTIMIZERS, READS, RULES, Config,
                             check_fits, check_option)
from jdnn.cli.recipe import (ADDING_LENGTH, ADDING_N, BLOCKS, CHAR_WINDOW, CHARS, D_MODEL,
                             EMBED_FEATURES, GRU_FEATURES, HEADS, build, build_sequence_model,
                             load, make_optimizer, objective, outputs_of, step_accuracy)
from jdnn.cli.run_dir import (INHERITED, RUN_FILES, Resume, check_fresh, find_resume,
                              resolve_config, run_directory)
from jdnn.cli.signals import StopOnSignal, Terminated, graceful_signals
from jdnn.data.batching import num_batches
from jdnn.train import EarlyStopping, History, PrintLogger, TerminateOnNaN, evaluate, fit

__all__ = [
    "ADDING_LENGTH", "ADDING_N", "BLOCKS", "build", "build_sequence_model", "CHAR_WINDOW",
    "CHARS", "check_fits", "check_fresh", "check_option", "Config", "D_MODEL", "DATASETS",
    "EMBED_FEATURES", "find_resume", "FITS", "graceful_signals", "GRU_FEATURES", "HEADS",
    "INHERITED", "load", "make_optimizer", "MODELS", "objective", "OPTIMIZERS", "outputs_of",
    "READS", "resolve_config", "Resume", "RULES", "RUN_FILES", "run_directory", "step_accuracy",
    "StopOnSignal", "Terminated", "train",
]


def _earlier_records(resume: Resume | None, done: int) -> list[dict]:
    """The resumed run's history up to its checkpoint's epoch (none for a loose file)."""
    path = resume.run_dir / "history.json" if resume and resume.run_dir else None
    if path is None or not path.is_file():
        return []
    records = History.from_dict(json.loads(path.read_text())).records
    return [r for r in records if r.get("epoch", math.inf) <= done]


def train(config: Config, log=print) -> dict[str, Any]:
    """Runs the job; returns a summary (how it ended, test loss and accuracy, paths, epochs).

    Writes into the run directory: `config.json`, `checkpoints/epoch-*.safetensors` (every
    `checkpoint_every` epochs and at the end, the newest `keep_checkpoints` kept),
    `history.json` (the whole run's, across resumptions), `summary.json`, and when training
    ends (not when interrupted) `final.safetensors` (the final state: the best epoch's with
    early stopping, the last finite one after a divergence) and `curves.png` (and
    `boundary.png` for 2-D data).

    `summary["stopped_by"]` says how training ended (`History.stopped_by`: None when all
    epochs ran, `"interrupted"`, `"non_finite"`, `"early_stopping"`); an interrupted run's
    summary also names the `signal` and the `checkpoint` and `resume` command to continue.

    Raises:
        ValueError: for a bad configuration, an `--out` that holds a run or is a file, a
            checkpoint that does not fit the model, or a resumed run that has already trained
            `epochs` epochs.
        FileNotFoundError: for missing data or checkpoints.
        KeyboardInterrupt: (`Terminated` for SIGTERM) if a signal arrives outside training.
    """
    with graceful_signals() as received:
        return _train(config, log, received)


def _train(config: Config, log, received: dict[str, str]) -> dict[str, Any]:
    began = time.perf_counter()
    resume = find_resume(config.resume) if config.resume else None
    out, continuing = run_directory(config, resume)
    (x, y), (x_test, y_test) = load(config)
    classes = outputs_of(config, (x, y), (x_test, y_test))
    model = build(config, classes)
    optimizer = make_optimizer(config)
    train_state, done, earlier = None, 0, []
    if resume is not None:
        train_state = checkpoint.restore(resume.checkpoint, model).train_state(optimizer)
        done = int(train_state.step) // num_batches(len(x), config.batch_size)
        if done >= config.epochs:
            raise ValueError(f"--resume: {resume.checkpoint} has trained {done} epochs and "
                             f"--epochs {config.epochs} is the run's total: give --epochs "
                             f"above {done} to train more")
        earlier = _earlier_records(resume, done)
    out.mkdir(parents=True, exist_ok=True)
    io.write_text(out / "config.json", json.dumps(dataclasses.asdict(config), indent=2))
    targets = "1 output (regression)" if config.dataset == "adding" else f"{classes} classes"
    log(f"jdnn train: {config.model} on {config.dataset} ({len(x)} train, {len(x_test)} test "
        f"examples of shape {x.shape[1:]}, {targets}) -> {out}")
    log(f"model: {model.spec}")
    if resume is not None:
        log(f"resumed from {resume.checkpoint} at epoch {done} (step {int(train_state.step)}); "
            f"training epochs {done + 1} to {config.epochs}")

    penalty = (regularizers.penalty(l1=config.l1, l2=config.l2)
               if config.l1 or config.l2 else None)
    checkpoints = out / "checkpoints"
    callbacks = [TerminateOnNaN(),  # ModelCheckpoint before EarlyStopping: it keeps the last
                 ModelCheckpoint(checkpoints, every=config.checkpoint_every,  # epoch, for resume
                                 keep=config.keep_checkpoints),
                 PrintLogger(log if log is not print else None)]
    if config.early_stopping is not None:
        callbacks.append(EarlyStopping("val_loss", patience=config.early_stopping))
    callbacks.append(StopOnSignal(received))
    loss, metrics = objective(config)
    train_state, history = fit(
        model, (x, y), loss=loss, optimizer=optimizer, epochs=config.epochs - done,
        batch_size=config.batch_size, key=jax.random.key(config.seed),
        validation_data=(x_test, y_test), metrics=metrics, penalty=penalty, callbacks=callbacks,
        progress=config.progress, train_state=train_state,
        mesh=parallel.data_mesh() if config.distributed else None)   # all processes' devices
    history = History(earlier + history.records, history.stop_reason, history.stopped_by)
    history.to_json(out / "history.json")
    summary = {"stopped_by": history.stopped_by, "stop_reason": history.stop_reason,
               "epochs": len(history), "run_directory": str(out)}
    if history.stopped_by == "interrupted":
        latest = ModelCheckpoint.latest(checkpoints) if checkpoints.is_dir() else None
        summary.update({"signal": received.get("signal", "SIGINT"),
                        "checkpoint": str(latest) if latest else None,
                        "resume": f"jdnn train --resume {out}",
                        "seconds": time.perf_counter() - began, "continued": continuing})
        io.write_text(out / "summary.json", json.dumps(summary, indent=2))
        return summary
    from jdnn import viz  # matplotlib only when a run is written

    plots = viz.save_run_plots(out, history, model=model, train_state=train_state,
                               data=(x_test, y_test))
    checkpoint.save(out / "final.safetensors", train_state, model,
                    metadata={"config": dataclasses.asdict(config)})
    test = evaluate(model, train_state, (x_test, y_test), loss=loss, metrics=metrics)
    summary.update({"test_loss": test["loss"], "test_accuracy": test.get("accuracy"),
                    "seconds": time.perf_counter() - began,
                    "checkpoint": str(out / "final.safetensors"),
                    "plots": [str(p) for p in plots], "continued": continuing})
    io.write_text(out / "summary.json", json.dumps(summary, indent=2))
    score = (f"test accuracy {test['accuracy']:.4f} (test loss {test['loss']:.4f})"
             if "accuracy" in test else f"test loss {test['loss']:.4f} ({losses.loss_name(loss)})")
    log(f"{score} after {len(history)} epochs in {summary['seconds']:.1f}s; wrote {out}")
    return summary
