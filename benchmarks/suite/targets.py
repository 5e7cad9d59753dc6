"""The issue's targets, each checked against a measured value: PASS, MISS or SKIP.

A target is a measured number (a ratio within rounds, a time, a count), a threshold and a
direction. When the measured value's interquartile range straddles the threshold the verdict is
marked `within_noise`: the median decides, but another run on this shared machine could flip it.
"""

from __future__ import annotations

PASS, MISS, SKIP = "PASS", "MISS", "SKIP"


def check(key: str, text: str, measured: float | None, threshold: float, op: str, *,
          q1: float | None = None, q3: float | None = None, unit: str = "x",
          note: str = "") -> dict:
    """One target's verdict.

    Args:
        key: a stable identifier, e.g. `"step_vs_raw/mlp_b32_adam"` (findings refer to it).
        text: the target in words, e.g. `"jdnn step <= 1.05 x raw JAX"`.
        measured: the measured value (None: the measurement could not be made -> SKIP).
        threshold: the bound.
        op: `"<="` or `">="`: how `measured` must compare with `threshold`.
        q1, q3: the measured value's quartiles, if it has a spread.
        unit: how to print it (`"x"`, `"us"`, `"s"`, `"%"`, `""`).
        note: why it was skipped, or anything the reader should know.

    Returns:
        A JSON-ready dict with the verdict in `"status"`.
    """
    if op not in ("<=", ">="):
        raise ValueError(f"op must be '<=' or '>=', got {op!r}")
    if measured is None:
        status, noisy = SKIP, False
    else:
        ok = measured <= threshold if op == "<=" else measured >= threshold
        status = PASS if ok else MISS
        noisy = q1 is not None and q3 is not None and q1 <= threshold <= q3
    return {"key": key, "target": text, "measured": measured, "q1": q1, "q3": q3,
            "threshold": threshold, "op": op, "unit": unit, "status": status,
            "within_noise": noisy, "note": note}


def from_ratio(key: str, text: str, summary: dict | None, threshold: float, op: str, *,
               note: str = "") -> dict:
    """`check` on a ratio summary (`{"median", "q1", "q3"}`), SKIP when it is None."""
    if summary is None:
        return check(key, text, None, threshold, op, note=note or "not measured")
    return check(key, text, summary["median"], threshold, op, q1=summary["q1"], q3=summary["q3"],
                 note=note)


def format_value(value: float | None, unit: str) -> str:
    """`1.23x`, `23.4 us`, `0.41 s`, `62%`, or `-`."""
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.3g}x"
    if unit == "%":
        return f"{100 * value:.0f}%"
    if unit in ("us", "s", "ms"):
        return f"{value:.3g} {unit}"
    return f"{value:.3g}"
