"""History: what a `fit` run measured, one record per epoch."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from jdnn import io


@dataclasses.dataclass
class History:
    """Per-epoch training loss and metrics, validation loss and metrics, and seconds.

    Attributes:
        records: one dict per epoch, e.g. `{"epoch": 3, "loss": 0.21, "accuracy": 0.94,
            "val_loss": 0.25, "val_accuracy": 0.93, "seconds": 0.4}`; `epoch` counts from 1
            and continues across resumed runs.
        stop_reason: why training ended before its last epoch, for people (early stopping, a
            non-finite loss, an interrupt), or None.
        stopped_by: the same as data: `"early_stopping"`, `"non_finite"`, `"interrupted"`,
            `"callback"` (any other callback that stopped the run), or None.
    """

    records: list[dict[str, float]] = dataclasses.field(default_factory=list)
    stop_reason: str | None = None
    stopped_by: str | None = None

    def append(self, record: dict[str, float]) -> None:
        """Adds one epoch's record."""
        self.records.append(dict(record))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, name: str) -> list[float]:
        """The values of one quantity over the epochs, e.g. `history["val_loss"]`."""
        if self.records and name not in self.records[-1]:
            raise KeyError(f"no {name!r} in the history; it has {self.keys()}")
        return [record[name] for record in self.records if name in record]

    def keys(self) -> list[str]:
        """The recorded quantities."""
        return list(self.records[-1]) if self.records else []

    def best(self, monitor: str = "val_loss", mode: str = "min") -> dict[str, float]:
        """The record of the epoch with the best `monitor` (`mode` "min" or "max")."""
        candidates = [r for r in self.records if monitor in r and math.isfinite(r[monitor])]
        if not candidates:
            raise KeyError(f"no finite {monitor!r} in the history; it has {self.keys()}")
        pick = min if mode == "min" else max
        return pick(candidates, key=lambda r: r[monitor])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: `{"records": [...], "stop_reason": ..., "stopped_by": ...}`."""
        return {"records": [dict(r) for r in self.records], "stop_reason": self.stop_reason,
                "stopped_by": self.stopped_by}

    def to_json(self, path) -> None:
        """Writes `to_dict()` as JSON, atomically."""
        io.write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """The inverse of `to_dict`."""
        return cls([dict(r) for r in data["records"]], data.get("stop_reason"),
                   data.get("stopped_by"))
