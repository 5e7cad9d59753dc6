"""FLOPs and bytes of one training step, and how close a measured step comes to the machine.

Counted: the matrix products and convolutions only (2 FLOPs per multiply-add), which is what a
GEMM peak can be compared with; element-wise work (activations, the loss, the optimizer) is
memory traffic and shows up in the byte count instead.

Per parametric layer with `m` multiply-adds per example in its forward pass, a training step on
a batch of `B` does `2 B m` FLOPs forward, `2 B m` for the weight gradient, and `2 B m` for the
gradient with respect to its input, except in the first layer, whose input needs none.

Bytes, the least traffic a step can have in float32: every parameter read in the forward and
backward passes, its gradient written and read by the update, the parameter written back, and
each optimizer-state leaf (Adam: two) read and written; the input batch read; every activation
written in the forward pass and read in the backward pass.
"""

from __future__ import annotations

import math

from benchmarks.suite.workloads import Op, Workload, plan

FLOAT_BYTES = 4


def multiply_adds(op: Op) -> int:
    """Multiply-adds of one example through a dense or conv layer (0 for the others)."""
    if op.kind == "dense":
        return op.in_shape[-1] * op.out_shape[-1]
    if op.kind == "conv":
        h, w, c_out = op.out_shape
        return h * w * 9 * op.in_shape[-1] * c_out  # 3x3 kernels
    return 0


def parameter_count(ops: list[Op]) -> int:
    count = 0
    for op in ops:
        if op.kind == "dense":
            count += (op.in_shape[-1] + 1) * op.out_shape[-1]
        elif op.kind == "conv":
            count += (9 * op.in_shape[-1] + 1) * op.out_shape[-1]
    return count


def step_flops(w: Workload, ops: list[Op] | None = None) -> int:
    """Matmul/conv FLOPs of one training step (forward + both backward products)."""
    ops = plan(w) if ops is None else ops
    total, first = 0, True
    for op in ops:
        macs = multiply_adds(op)
        if macs:
            total += 2 * w.batch * macs * (2 if first else 3)
            first = False
    return total


def step_bytes(w: Workload, ops: list[Op] | None = None) -> int:
    """The least float32 traffic of one training step (see the module docstring)."""
    ops = plan(w) if ops is None else ops
    slots = {"sgd": 0, "adam": 2}[w.optimizer]
    params = parameter_count(ops) * (2 + 2 + 1 + 2 * slots)
    activations = sum(math.prod(op.out_shape) for op in ops) * 2
    return FLOAT_BYTES * (params + w.batch * (math.prod(w.example_shape) + activations))


def achieved(w: Workload, seconds: float, gemm_gflops: float, bandwidth_gbs: float) -> dict:
    """What a measured step time means against the roofline.

    Returns:
        `gflops` (achieved), `fraction_of_gemm_peak`, `gbs` (achieved, at the least traffic),
        `fraction_of_bandwidth`, `arithmetic_intensity` (FLOP/byte), `bound` ("compute" or
        "memory": which roof is lower at this intensity) and `fraction_of_roofline`.
    """
    ops = plan(w)
    flops, nbytes = step_flops(w, ops), step_bytes(w, ops)
    intensity = flops / nbytes
    roof = min(gemm_gflops, intensity * bandwidth_gbs)
    gflops = flops / seconds / 1e9
    return {"flops": flops, "bytes": nbytes, "arithmetic_intensity": intensity,
            "gflops": gflops, "fraction_of_gemm_peak": gflops / gemm_gflops,
            "gbs": nbytes / seconds / 1e9, "fraction_of_bandwidth":
                nbytes / seconds / 1e9 / bandwidth_gbs,
            "bound": "compute" if gemm_gflops <= intensity * bandwidth_gbs else "memory",
            "fraction_of_roofline": gflops / roof}
