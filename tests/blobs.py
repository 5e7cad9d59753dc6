"""Gaussian blobs: a tiny classification set the search tests share (deterministic, no
download)."""

import numpy as np


def blobs(n: int, seed: int, d: int = 6, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """`n` points `(n, d)` float32 around `classes` fixed centres, and their labels `(n,)`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.int32)
    centers = np.random.default_rng(99).normal(size=(classes, d)) * 2
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y
