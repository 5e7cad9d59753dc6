"""Readable differences between what a checkpoint holds and what it is restored into.

Each function returns a list of short sentences, one per problem, so the caller can raise one
error that lists them all: the model's layers (from specs), and leaves compared by path, shape
and dtype (params against `like`, optimizer state against a fresh `optimizer.init`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

Leaves = Mapping[str, tuple[tuple[int, ...], str]]  # path -> (shape, dtype name)


def jsonable(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists); unknown objects become repr."""
    return json.loads(json.dumps(value, default=repr))


def _show(value: Any) -> str:
    """A JSON value written like Python code, with lists shown as the tuples they were."""
    if isinstance(value, list):
        inner = ", ".join(_show(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _render(spec: Mapping[str, Any], names: list[str] | None = None) -> str:
    """`Dense(features=10, ...)` from a spec dict, with only `names` among the hyper-parameters."""
    hparams = spec.get("hparams", {})
    names = list(hparams) if names is None else names
    args = [f"{k}={_show(hparams[k]) if k in hparams else '<absent>'}" for k in names]
    return f"{spec.get('kind')}({', '.join(args)})"


def _child(where: str, index: int, spec: Mapping[str, Any]) -> str:
    name = f"{index}_{str(spec.get('kind')).lower()}"  # as jdnn.core.child_name files it
    return name if where == "<root>" else f"{where}/{name}"


def spec_differences(saved: Mapping[str, Any], given: Mapping[str, Any],
                     where: str = "<root>") -> list[str]:
    """The layers that differ between two spec dicts (`Spec.to_dict()`, after a JSON round trip).

    Returns:
        Sentences like `"layer 3_dense: Dense(features=10) saved, Dense(features=5) given"`,
        naming only the hyper-parameters that differ; `[]` when the specs agree.
    """
    if saved.get("kind") != given.get("kind"):
        return [f"layer {where}: {_render(saved)} saved, {_render(given)} given"]
    s_hp, g_hp = saved.get("hparams", {}), given.get("hparams", {})
    names = list(s_hp) + [k for k in g_hp if k not in s_hp]
    changed = [k for k in names if s_hp.get(k, ...) != g_hp.get(k, ...)]
    problems = []
    if changed:
        problems.append(f"layer {where}: {_render(saved, changed)} saved, "
                        f"{_render(given, changed)} given")
    s_kids, g_kids = saved.get("children", []), given.get("children", [])
    for index in range(max(len(s_kids), len(g_kids))):
        if index >= len(g_kids):
            s_kid = s_kids[index]
            problems.append(f"layer {_child(where, index, s_kid)}: {_render(s_kid)} saved, "
                            f"absent from the given model")
        elif index >= len(s_kids):
            g_kid = g_kids[index]
            problems.append(f"layer {_child(where, index, g_kid)}: not in the checkpoint, "
                            f"{_render(g_kid)} given")
        else:
            problems += spec_differences(s_kids[index], g_kids[index],
                                         _child(where, index, s_kids[index]))
    return problems


def _shape(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


def leaf_differences(saved: Leaves, expected: Leaves) -> tuple[list[str], list[str], list[str]]:
    """Compares two `{path: (shape, dtype)}` maps.

    Returns:
        `(missing, unexpected, mismatched)`: paths expected but not saved, paths saved but not
        expected, and sentences like `"shape mismatch 0_conv2d/w: (3, 3, 1, 32) saved vs
        (3, 3, 1, 16) expected"` (or `dtype mismatch ...`), each in `expected`'s order.
    """
    missing = [path for path in expected if path not in saved]
    unexpected = [path for path in saved if path not in expected]
    mismatched = []
    for path, (shape, dtype) in expected.items():
        if path not in saved:
            continue
        saved_shape, saved_dtype = saved[path]
        if tuple(saved_shape) != tuple(shape):
            mismatched.append(f"shape mismatch {path}: {_shape(saved_shape)} saved vs "
                              f"{_shape(shape)} expected")
        elif str(saved_dtype) != str(dtype):  # names: `jnp.dtype` cannot parse "key<fry>"
            mismatched.append(f"dtype mismatch {path}: {saved_dtype} saved vs {dtype} expected")
    return missing, unexpected, mismatched


def tree_problems(saved: Leaves, expected: Leaves) -> list[str]:
    """Every difference as one sentence each: `missing p`, `unexpected p`, `shape mismatch ...`."""
    missing, unexpected, mismatched = leaf_differences(saved, expected)
    return ([f"missing {path}" for path in missing] + [f"unexpected {path}" for path in unexpected]
            + mismatched)


def few(paths: list[str], limit: int = 4) -> str:
    """`a, b, c, d (+3 more)`: the first `limit` items and a count of the rest; `none`."""
    if not paths:
        return "none"
    shown = ", ".join(paths[:limit])
    return shown + (f" (+{len(paths) - limit} more)" if len(paths) > limit else "")


def optimizer_problems(saved: Leaves, expected: Leaves) -> list[str]:
    """Differences between a saved optimizer state and a fresh one, a few paths per kind."""
    missing, unexpected, mismatched = leaf_differences(saved, expected)
    problems = []
    if unexpected:
        problems.append(f"saved {few(unexpected)} not produced by this optimizer")
    if missing:
        problems.append(f"this optimizer has {few(missing)}, not in the checkpoint")
    if mismatched:
        problems.append(few(mismatched))
    return problems
