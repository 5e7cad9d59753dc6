"""What `jdnn train` can be asked for: the models, datasets and optimizers by name, which model
reads which dataset (`check_fits`), the numeric options' valid ranges (`RULES`, `check_option`),
and `Config`, everything a run depends on.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

DATASETS = ("digits", "xor", "moons", "mnist", "fashion-mnist", "chars", "adding")
MODELS = ("mlp", "cnn", "gru", "transformer")
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")

# Which models fit which datasets, and what each model reads. `load` refuses the other pairs.
FITS = {"mlp": ("digits", "xor", "moons", "mnist", "fashion-mnist"),
        "cnn": ("digits", "mnist", "fashion-mnist"),
        "gru": ("chars", "adding"),
        "transformer": ("chars", "adding")}
READS = {"mlp": "vectors or images", "cnn": "images", "gru": "sequences",
         "transformer": "sequences"}


# The numeric options' valid ranges: (kind, what is expected, test). The CLI checks them as it
# parses (`jdnn train --lr nan` is a usage error), `Config` when it is built.
RULES = {
    "lr": (float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0),
    "l1": (float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0),
    "l2": (float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0),
    "dropout": (float, "a rate in [0, 1)", lambda v: 0 <= v < 1),
    "epochs": (int, "an int >= 1", lambda v: v >= 1),
    "batch_size": (int, "an int >= 1", lambda v: v >= 1),
    "early_stopping": (int, "an int >= 0 (epochs of patience)", lambda v: v >= 0),
    "checkpoint_every": (int, "an int >= 1 (epochs)", lambda v: v >= 1),
    "keep_checkpoints": (int, "an int >= 1", lambda v: v >= 1),
    "seed": (int, "an int >= 0", lambda v: v >= 0),
}


def check_option(name: str, value: Any) -> Any:
    """`value` if it is valid for the numeric option `name` (see `RULES`), else a `ValueError`
    such as `"lr must be a finite number > 0, got nan"`."""
    kind, expected, test = RULES[name]
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and (kind is float or isinstance(value, int)) and test(value))
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on; saved as `config.json` in the run directory.

    `epochs` is the run's total: a resumed run trains the epochs its checkpoint has not done
    yet, as Keras's `initial_epoch` does. The numeric fields are checked (`RULES`).
    """

    model: str = "mlp"
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    l1: float = 0.0
    l2: float = 0.0
    dropout: float = 0.0
    batch_norm: bool = False
    early_stopping: int | None = None
    seed: int = 0
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    out: str | None = None
    resume: str | None = None
    progress: bool = True
    distributed: bool = False   # data parallel over every process's devices

    def __post_init__(self):
        for name in RULES:
            value = getattr(self, name)
            if value is not None:
                try:
                    check_option(name, value)
                except ValueError as error:
                    raise ValueError(f"Config: {error}") from None


def check_fits(model: str, dataset: str) -> None:
    """Refuses (`ValueError`) a model that cannot read a dataset, naming the ones that can."""
    if model not in FITS:
        raise ValueError(f"unknown model {model!r}; choose from {MODELS}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {DATASETS}")
    if dataset not in FITS[model]:
        fitting = [m for m in MODELS if dataset in FITS[m]]
        raise ValueError(f"--model {model} needs {READS[model]} ({', '.join(FITS[model])}); "
                         f"for --dataset {dataset} use --model {' or '.join(fitting)}")
