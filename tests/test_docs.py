"""The documentation site (`mkdocs.yml`, `docs/`): it builds without a single warning, every
link and picture in it resolves, the API reference documents every public name, and every
executable page runs (`docs/execute.py`), so what the pages teach is what the code does.

The site's tests need the `docs` extra (`pip install -e ".[docs]"`) and skip without it; the
pages run with jdnn's own dependencies.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import jdnn

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# The page executor, loaded from its file (`docs` is no package).
_spec = importlib.util.spec_from_file_location("docs_execute", DOCS / "execute.py")
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)

# jdnn's public modules beside `jdnn.__all__`: every name each one exports must be documented.
PUBLIC_MODULES = ("data", "losses", "metrics", "regularizers", "reference", "checkpoint",
                  "multi", "privacy", "parallel", "distributed", "sharding", "compress",
                  "explain", "export", "viz", "interop", "space")

PAGE_TIMEOUT = 300  # seconds; a page should take under ~25 s, this is for a loaded machine


def _build(site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # no banner about Material's future


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """`mkdocs build --strict` once for this module's tests: `(result, site directory)`."""
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module)
    site = tmp_path_factory.mktemp("site")
    return _build(site), site


@pytest.fixture(scope="module")
def site(build):
    """The built site's directory; the tests that read it fail if the build did not pass."""
    result, directory = build
    if result.returncode != 0:
        pytest.fail("the site did not build (see test_the_site_builds_without_warnings):\n"
                    + result.stdout + result.stderr)
    return directory


def test_the_site_builds_without_warnings(build):
    result, _ = build
    if result.returncode != 0:
        pytest.fail("`mkdocs build --strict` failed (any warning fails it):\n" + result.stdout
                    + result.stderr)


class _Page(HTMLParser):
    """The `id`s a page defines and the `href`/`src` values it uses."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)
            elif name in ("href", "src") and value:
                self.urls.append(value)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _target(site: Path, page: Path, path: str) -> Path:
    """The file a link's path points to: a folder means its `index.html`."""
    base = site if path.startswith("/") else page.parent
    target = (base / unquote(path).lstrip("/")).resolve()
    return target / "index.html" if target.is_dir() else target


def test_every_link_and_picture_in_the_site_resolves(site):
    pages = {path.resolve(): _parse(path) for path in site.rglob("*.html")}
    broken = []
    for path, page in pages.items():
        for url in page.urls:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc:  # http(s), mailto, data: not this site's
                continue
            target = _target(site, path, parts.path) if parts.path else path
            where = f"{path.relative_to(site)}: {url}"
            if not target.is_file():
                broken.append(f"{where} (no file {target})")
            elif parts.fragment and target in pages and unquote(parts.fragment) not in \
                    pages[target].ids:
                broken.append(f"{where} (no id {parts.fragment!r} in {target.name})")
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)


def test_every_relative_link_in_the_readme_resolves():
    """The README is the front door: its links into `docs/` (and elsewhere in the checkout)
    lead to files that exist."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    broken = [link for link in links if not urlsplit(link).scheme
              and not (ROOT / unquote(urlsplit(link).path)).exists()]
    assert links and not broken, f"README links to files that do not exist: {broken}"


def _public_names(module) -> list[str]:
    """What `module` exports: its `__all__`, or else what its source defines at the top level
    (functions, classes, assignments) and its submodules, less `_private` names."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    tree = ast.parse(Path(inspect.getfile(module)).read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    names.update(name for name, value in vars(module).items()
                 if inspect.ismodule(value) and value.__name__.startswith(module.__name__ + "."))
    return sorted(name for name in names if not name.startswith("_"))


_MISSING = object()


def _module(path: str):
    try:
        return importlib.import_module(path)
    except ImportError:
        return _MISSING


def _resolve(path: str):
    """The object a dotted path names (`jdnn.fit`, `jdnn.multi.space.grid`), or `_MISSING`:
    an attribute first (`jdnn.data.pipeline` is the function), else a member of the module of
    that name (`jdnn.data.pipeline.pipeline`), else the module."""
    parent, _, name = path.rpartition(".")
    if parent:
        for owner in (_resolve(parent), _module(parent)):
            value = getattr(owner, name, _MISSING)
            if value is not _MISSING:
                return value
    return _module(path)


def test_the_api_reference_documents_every_public_name(site):
    """A name is documented when a reference page has a heading for it: at the path it is
    exported under (`jdnn.fit`) or at another that names the very same object
    (`jdnn.search` is documented as `jdnn.multi.search`, `jdnn.space` as `jdnn.multi.space`)."""
    ids = set()
    for path in (site / "reference").rglob("*.html"):
        ids |= {i for i in _parse(path).ids if i.startswith("jdnn.")}
    documented: dict[str, list] = {}
    for anchor in ids:
        value = _resolve(anchor)
        if value is not _MISSING:
            documented.setdefault(anchor.rpartition(".")[2], []).append(value)

    def covered(name: str, value) -> bool:
        return any(value is other for other in documented.get(name, ()))

    owners = {"jdnn": jdnn} | {f"jdnn.{m}": getattr(jdnn, m) for m in PUBLIC_MODULES}
    missing = [f"{owner}.{name}" for owner, module in owners.items()
               for name in _public_names(module)
               if not covered(name, getattr(module, name))]
    assert not missing, (
        "public names no page of docs/reference/ documents (add a `::: name` directive, or a "
        "docstring where the name has none):\n" + "\n".join(missing))


def test_the_benchmarks_page_tables_are_the_committed_report_s():
    """docs/benchmarks.md's tables are transcribed from benchmarks/results/report.md: a row that
    is not there (the report was re-run, the page was not) is a stale number."""
    report = set((ROOT / "benchmarks" / "results" / "report.md").read_text().splitlines())
    rows = [line for line in (DOCS / "benchmarks.md").read_text().splitlines()
            if line.startswith("|")]
    stale = [row for row in rows if row not in report]
    assert rows and not stale, ("docs/benchmarks.md rows not in benchmarks/results/report.md "
                                "(copy the tables again):\n" + "\n".join(stale[:10]))


def test_every_jdnn_name_the_pages_use_exists():
    """`jdnn.NAME` in a page's text or code names something `import jdnn` reaches, so a
    renamed or removed function cannot linger in the documentation (no build needed)."""
    pattern = re.compile(r"\bjdnn((?:\.[A-Za-z_]\w*)+)")
    missing = [f"{page.relative_to(ROOT)}:{number}: jdnn{match[1]}"
               for page in sorted(DOCS.rglob("*.md"))
               for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
               for match in pattern.finditer(line) if _resolve("jdnn" + match[1]) is _MISSING]
    assert not missing, "names the pages use that jdnn does not have:\n" + "\n".join(missing)


def _executable_pages() -> list[Path]:
    return sorted(path for path in DOCS.rglob("*.md")
                  if execute.python_blocks(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", _executable_pages(),
                         ids=lambda page: page.relative_to(DOCS).as_posix())
def test_the_page_runs(page):
    """`python docs/execute.py PAGE.md` exits 0: every ```python block of the page runs, in
    order, in one namespace (and the page's own asserts hold)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(DOCS / "execute.py"), str(page)],
                            cwd=ROOT, capture_output=True, text=True, timeout=PAGE_TIMEOUT,
                            env={**os.environ, "MPLBACKEND": "Agg"})
    seconds = time.perf_counter() - started
    assert result.returncode == 0, (
        f"{page.relative_to(ROOT)} failed after {seconds:.0f} s:\n"
        + result.stdout[-6000:] + result.stderr[-6000:])
