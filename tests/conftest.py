"""Shared fixtures and settings for jdnn's tests."""

import os

import jax
import pytest

# Tests that run CLI commands must not fill the user's compilation cache.
os.environ.setdefault("JDNN_CACHE_DIR", "off")


@pytest.fixture
def key():
    return jax.random.key(0)
