"""Shared fixtures and helpers for jdnn's tests."""

import importlib.util
import sys
from pathlib import Path

import jax
import pytest

# CI installs the project (`pip install -e .`); a bare checkout run with `pytest` does not, so
# make the repository root importable in that case too.
if importlib.util.find_spec("jdnn") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture
def key():
    return jax.random.key(0)

