"""The dependency bounds `pyproject.toml` declares, and the CI job that holds them true.

`.ci/run` runs the suite twice: with the newest releases the bounds allow, and with every
dependency pinned to its declared lower bound (`.ci/constraints-oldest.txt`). These tests keep
the two files from drifting apart, so a raised bound is always a tested bound.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSTRAINTS = ROOT / ".ci" / "constraints-oldest.txt"
CI_RUN = ROOT / ".ci" / "run"


def _declared() -> list[Requirement]:
    """The runtime dependencies and the `test` and `bench` extras: what the oldest pass installs."""
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *extras["test"], *extras["bench"]]]


def _lower_bound(requirement: Requirement) -> Version:
    bounds = [s.version for s in requirement.specifier if s.operator == ">="]
    assert len(bounds) == 1, f"{requirement}: declare the oldest version tested, as `>=X`"
    return Version(bounds[0])


def _pins() -> dict[str, Version]:
    """`{name: version}` from the constraints file's `name==version` lines."""
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            pin = Requirement(text)
            (spec,) = pin.specifier
            assert spec.operator == "==", f"{text!r}: the oldest pass pins exact versions"
            pins[canonicalize_name(pin.name)] = Version(spec.version)
    return pins


def test_the_oldest_constraints_pin_exactly_the_declared_lower_bounds():
    declared = {canonicalize_name(r.name): _lower_bound(r) for r in _declared()}
    assert _pins() == declared


def test_ci_runs_the_readme_test_command_verbatim_and_the_oldest_versions():
    readme = (ROOT / "README.md").read_text()
    command = 'pip install -e ".[test]" && pytest'
    assert f"```bash\n{command}\n```" in readme
    script = [line.strip() for line in CI_RUN.read_text().splitlines()]
    assert command in script
    assert 'pip install -e ".[test,bench]" -c .ci/constraints-oldest.txt' in script


def test_the_installed_package_holds_no_benchmark_code():
    """The suite lives in `benchmarks/` of a checkout; nothing under `jdnn/` imports it, and
    setuptools packages only `jdnn*`."""
    assert not (ROOT / "jdnn" / "bench").exists()
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["jdnn*"]
    for path in (ROOT / "jdnn").rglob("*.py"):
        text = path.read_text()
        assert "from benchmarks" not in text and "import benchmarks" not in text, path


def test_jdnn_bench_says_how_to_run_the_suite_from_a_checkout(capsys):
    from jdnn.cli import main

    assert main(["bench", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "python benchmarks/run.py" in out and 'pip install -e ".[bench,torch]"' in out
