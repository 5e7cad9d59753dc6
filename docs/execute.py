"""Runs a documentation page's code, the way a reader would: `python docs/execute.py PAGE.md`.

Every fenced block that opens with ```python is executed, in page order, in ONE namespace
shared by the whole page (like a notebook). Blocks fenced ```py (shown, not run), ```bash and
```text are skipped. A block that needs an optional package says so on the line above its
fence, `<!-- requires: optuna -->` (names of modules, comma-separated): where one of them is not
installed the block is skipped, with a note, so a page runs also without the optional extras.
Figures are saved by the page under `images/`, relative to the working directory:

- without `--images` the page runs in a fresh temporary directory holding an empty `images/`,
  so a check (tests/test_docs.py) never touches the committed pictures;
- with `--images` it runs in `docs/`, so the pictures in `docs/images/` are written again.

matplotlib draws with the Agg backend (no display needed). If a block raises, the traceback is
printed with the block's number and first line and the line of the page it starts on, and the
exit status is 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

DOCS = Path(__file__).resolve().parent

# An opening fence: three or more backticks (or tildes), then the info string's first word.
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[^\s`]*)")
# The line above a block that needs optional packages: <!-- requires: optuna, qwix -->
REQUIRES = re.compile(r"^\s*<!--\s*requires:\s*(?P<modules>[\w., ]+?)\s*-->\s*$")


def python_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """The page's ```python blocks, as `(line number of the opening fence, code, the modules
    it requires)` triples."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        i += 1  # the closing fence
        if opening["lang"] == "python":
            needs = REQUIRES.match(lines[start - 1]) if start else None
            modules = [m.strip() for m in needs["modules"].split(",")] if needs else []
            blocks.append((start + 1, "\n".join(body) + "\n", modules))
    return blocks


def missing(modules: list[str]) -> list[str]:
    """Those of `modules` that cannot be imported here."""
    return [m for m in modules if importlib.util.find_spec(m.split(".")[0]) is None]


def run(page: Path, blocks: list[tuple[int, str, list[str]]]) -> int:
    """Executes `blocks` in order in one namespace; 0 if all ran, 1 at the first failure."""
    namespace = {"__name__": "__main__"}
    for index, (line, code, requires) in enumerate(blocks, start=1):
        if absent := missing(requires):
            print(f"block {index}/{len(blocks)} (line {line}): skipped, "
                  f"{', '.join(absent)} not installed", file=sys.stderr)
            continue
        started = time.perf_counter()
        try:
            # Compiled under the page's name and line, so tracebacks point into the page.
            exec(compile("\n" * line + code, str(page), "exec"), namespace)
        except BaseException:  # noqa: BLE001  (SystemExit and KeyboardInterrupt too: report)
            first = code.strip().splitlines()[0] if code.strip() else ""
            traceback.print_exc()
            print(f"\n{page}: block {index} of {len(blocks)} (page line {line}) failed: {first}",
                  file=sys.stderr)
            return 1
        print(f"block {index}/{len(blocks)} (line {line}): "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="the Markdown page to run")
    parser.add_argument("--images", action="store_true",
                        help="run in docs/ and write the committed images again")
    args = parser.parse_args(argv)
    page = args.page.resolve()
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    os.environ["MPLBACKEND"] = "Agg"
    sys.path.insert(0, str(DOCS.parent))  # the checkout's jdnn, also when not installed
    if args.images:
        os.chdir(DOCS)
        return run(page, blocks)
    with tempfile.TemporaryDirectory(prefix="jdnn-page-") as folder:
        (Path(folder) / "images").mkdir()
        os.chdir(folder)
        return run(page, blocks)


if __name__ == "__main__":
    sys.exit(main())
