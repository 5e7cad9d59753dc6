"""Shared fixtures and settings for jdnn's tests."""

import os

import jax
import pytest

# Hermetic: fit and the CLI turn on a persistent compilation cache in ~/.cache by default; the
# tests never read or fill one (a test of the cache points JDNN_CACHE_DIR at its own folder).
# Set before jdnn is imported, and inherited by the processes tests start.
os.environ["JDNN_CACHE_DIR"] = "off"


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def torch():
    """PyTorch, for the tests that hold a layer against its torch twin; they skip where it is
    not installed (the oldest-versions CI pass), and the rest of their file still runs."""
    return pytest.importorskip("torch")
