"""The machine a result was measured on, and its limits measured in the same run.

`describe()` records the device, CPU count and model, the load average (the machines are shared:
a load above the CPU count means other processes competed for the cores), versions of every
library involved, and the date. `limits()` measures the float32 matrix-multiply rate (a large
GEMM through XLA, NumPy and, when installed, PyTorch; interleaved in rounds) and the memory
bandwidth (a large copy): the roofline every workload is compared with.
"""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.suite import timing

PACKAGES = ("jdnn", "jax", "jaxlib", "numpy", "optax", "flax", "equinox", "torch", "matplotlib")


def versions() -> dict[str, str | None]:
    """Installed versions of jdnn, JAX, NumPy, optax and every peer (None if not installed)."""
    found = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def blas_threads() -> dict[str, int]:
    """Thread counts of the native thread pools NumPy (OpenBLAS/MKL) uses."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {}
    return {f"{p['internal_api']}": p["num_threads"] for p in threadpool_info()}


def describe() -> dict:
    """Device, CPUs, load, versions and date: recorded in every result."""
    device = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"{device.platform}: {device.device_kind}",
        "devices": len(jax.devices()),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_average": load_average(),
        "blas_threads": blas_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _xla_gemm(n: int):
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, b).block_until_ready()
    return lambda: matmul(a, b).block_until_ready()


def _numpy_gemm(n: int):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    out = np.empty((n, n), np.float32)
    return lambda: np.matmul(a, b, out=out)


def _torch_gemm(n: int):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    return lambda: torch.matmul(a, b, out=out)


def gemm_runners(n: int = 2048) -> dict:
    """GEMM "sides" to time in the same rounds as a workload: `{name: Runner}` where one step is
    one `(n, n) @ (n, n)` product (`2 n^3` FLOPs) through XLA and through NumPy. Measuring the
    peak interleaved with the workload keeps the fraction of peak honest on a loaded machine."""
    from benchmarks.suite.sides.base import Runner

    def runner(one):
        def run(steps: int) -> None:
            for _ in range(steps):
                one()

        return Runner(run, dict)

    return {"xla_gemm": runner(_xla_gemm(n)), "numpy_gemm": runner(_numpy_gemm(n))}


def limits(n: int = 2048, copy_mb: int = 256, rounds: int = 7, pause_s: float = 0.05) -> dict:
    """The machine's float32 GEMM rate (GFLOP/s) and copy bandwidth (GB/s), interleaved.

    Args:
        n: the GEMM is `(n, n) @ (n, n)`: `2 n^3` floating-point operations.
        copy_mb: the size of the copied array; a copy reads and writes it (2x its bytes).
        rounds: interleaved rounds (median and IQR reported).

    Returns:
        `{"gemm": {side: rate summary}, "gemm_peak_gflops": the best side's median,
          "bandwidth_gbs": summary, ...}`.
    """
    variants = [timing.Variant("xla", _xla_gemm(n)), timing.Variant("numpy", _numpy_gemm(n))]
    torch_gemm = _torch_gemm(n)
    if torch_gemm is not None:
        variants.append(timing.Variant("torch", torch_gemm))
    src = np.ones(copy_mb * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    variants.append(timing.Variant("copy", lambda: np.copyto(dst, src)))
    times = timing.interleave(variants, rounds, pause_s=pause_s)
    flops = 2.0 * n**3
    gemm = {name: timing.summarize([flops / t / 1e9 for t in times[name]]).to_dict()
            for name in times if name != "copy"}
    bandwidth = timing.summarize([2 * src.nbytes / t / 1e9 for t in times["copy"]]).to_dict()
    peak_side = max(gemm, key=lambda name: gemm[name]["median"])
    return {"gemm_n": n, "gemm_gflops": gemm, "gemm_peak_gflops": gemm[peak_side]["median"],
            "gemm_peak_side": peak_side, "copy_mb": copy_mb, "bandwidth_gbs": bandwidth,
            "rounds": rounds}
