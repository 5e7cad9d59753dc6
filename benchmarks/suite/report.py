"""Writing results: one JSON file per benchmark, and a markdown report built from all of them.

`benchmarks/results/<name>.json` holds `{"name", "machine", "mode", "seconds", "results",
"targets"}`; `report.md` is rebuilt from every JSON in the folder after each run, so running one
benchmark with `--only` refreshes its section and keeps the others.
"""

from __future__ import annotations

import json
import math
import pathlib

from benchmarks.suite import findings
from benchmarks.suite.targets import MISS, format_value

ORDER = ("machine", "headline", "gpu", "correctness", "mlp", "cnn", "small", "convergence",
         "compilation", "memory", "scaling", "vectorized", "sequences", "diagnostics")


def _clean(value):
    """JSON-safe: NaN and infinities become None; tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_result(folder: pathlib.Path, name: str, payload: dict) -> pathlib.Path:
    """Writes `<folder>/<name>.json` (valid JSON: no NaN) and returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(_clean(payload), indent=1, allow_nan=False) + "\n")
    return path


def load_results(folder: pathlib.Path) -> dict[str, dict]:
    """Every `<name>.json` in `folder`, in the report's order."""
    found = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    return {name: found[name] for name in sorted(found, key=_rank)}


def _rank(name: str) -> tuple[int, str]:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def targets_table(results: dict[str, dict]) -> list[str]:
    lines = ["| target | measured (median [IQR]) | bound | verdict |", "|---|---|---|---|"]
    for payload in results.values():
        for t in payload.get("targets", []):
            measured = format_value(t["measured"], t["unit"])
            if t.get("q1") is not None and t["unit"] == "x":
                measured += f" [{t['q1']:.3g}-{t['q3']:.3g}]"
            verdict = f"**{t['status']}**" + (" (within noise)" if t["within_noise"] else "")
            note = f"<br><sub>{t['note']}</sub>" if t.get("note") else ""
            lines.append(f"| {t['target']}{note} | {measured} | {t['op']} "
                         f"{format_value(t['threshold'], t['unit'])} | {verdict} |")
    return lines


def misses_section(results: dict[str, dict]) -> list[str]:
    misses = [t for p in results.values() for t in p.get("targets", []) if t["status"] == MISS]
    if not misses:
        return ["No target missed in this run."]
    lines = []
    for t in misses:
        lines.append(f"- MISS `{t['key']}`: {format_value(t['measured'], t['unit'])} "
                     f"({t['op']} {format_value(t['threshold'], t['unit'])} wanted)"
                     + (" (within noise)" if t["within_noise"] else ""))
    lines.append("")
    for text in findings.for_keys([t["key"] for t in misses]):
        lines += [text, ""]
    return lines


def render(folder: pathlib.Path) -> str:
    """The markdown report of every result in `folder` (plots are written beside it)."""
    from benchmarks.suite import sections

    results = load_results(folder)
    if not results:
        return "# jdnn benchmark report\n\nNo results yet.\n"
    first = next(iter(results.values()))
    lines = ["# jdnn benchmark report", "",
             f"Mode: {first.get('mode', '?')}. Reproduce: `python benchmarks/run.py"
             f"{' --quick' if first.get('mode') == 'quick' else ''}`. "
             "Every time is a median over interleaved rounds, with its interquartile range; "
             "ratios are taken within each round. See benchmarks/README.md for how to read it.",
             ""]
    if first.get("mode") == "quick":
        lines += ["> **Quick mode:** 5 rounds of ~50 ms chunks. Differences below ~10-15% are "
                  "within its noise on a shared machine; take verdicts from a full run.", ""]
    lines += sections.load_warning(results)
    lines += ["## Targets", ""] + targets_table(results) + [""]
    lines += ["## Misses and what was found", ""] + misses_section(results) + [""]
    lines += [findings.notes(), ""]
    for name, payload in results.items():
        lines += sections.render(folder, name, payload)
    return "\n".join(lines) + "\n"


def write_report(folder: pathlib.Path) -> pathlib.Path:
    path = folder / "report.md"
    path.write_text(render(folder))
    return path
