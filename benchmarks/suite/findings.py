"""The findings behind missed targets, read from the "Findings" section of benchmarks/README.md.

The text lives in the README, where people read it, not in code. Each finding there is a
`### title` subsection whose `keys:` line lists target-key prefixes in backticks; the report
prints, under the missed targets, the finding whose prefix matches each key (longest wins), and
the subsection without keys ("Noticed along the way") at the end of every report.
"""

from __future__ import annotations

import functools
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## Findings"


@functools.cache
def _parse(path: pathlib.Path = README) -> tuple[dict[str, str], str]:
    """`({key prefix: finding text}, notes)` from the README's "Findings" section."""
    text = path.read_text()
    if HEADING not in text:
        return {}, ""
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    findings, notes = {}, ""
    for block in section.split("\n### ")[1:]:
        title, _, rest = block.partition("\n")
        keys_line, _, body = rest.strip().partition("\n")
        keys = re.findall(r"`([^`]+)`", keys_line)
        if not keys:
            notes = f"**{title.strip()}.**\n{body.strip()}"
        body = f"**{title.strip()}.** {body.strip()}"
        for key in keys:
            findings[key] = body
    return findings, notes


def lookup(key: str) -> str | None:
    """The finding for a target key: the entry whose prefix matches it (longest wins)."""
    found, _ = _parse()
    matches = [prefix for prefix in found if key.startswith(prefix)]
    return found[max(matches, key=len)] if matches else None


def for_keys(keys: list[str]) -> list[str]:
    """The distinct findings for these keys, in the order first met."""
    out: list[str] = []
    for key in keys:
        text = lookup(key)
        if text is not None and text not in out:
            out.append(text)
    return out


def notes() -> str:
    """The README's "Noticed along the way" finding (printed at the end of every report)."""
    return _parse()[1]
