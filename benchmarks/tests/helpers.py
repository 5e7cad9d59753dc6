"""What several benchmark tests share: a context that waits for nothing, and spies that record
the public calls a benchmark side makes."""

from __future__ import annotations

from typing import Any

from benchmarks.suite import compare
from benchmarks.suite.context import Context

NO_WAIT = compare.Settings(rounds=2, chunk_s=0.0, pause_s=0.0, max_steps=1, warm_s=0.0)


def tiny_context() -> Context:
    """A quick-mode context whose timing loops run once, with no pauses."""
    return Context(quick=True, settings=NO_WAIT)


def spy_calls(monkeypatch, **targets: tuple[Any, str]) -> dict[str, list]:
    """Replaces each `getattr(owner, attribute)` named in `targets` (name -> (owner,
    attribute)) by a wrapper that calls it and records `(args, kwargs, result)` under its name;
    returns the record."""
    calls: dict[str, list] = {name: [] for name in targets}

    def spy(name, real):
        def wrapper(*args, **kwargs):
            result = real(*args, **kwargs)
            calls[name].append((args, kwargs, result))
            return result
        return wrapper

    for name, (owner, attribute) in targets.items():
        monkeypatch.setattr(owner, attribute, spy(name, getattr(owner, attribute)))
    return calls
