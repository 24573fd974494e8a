"""Achieved FLOP/s and MFU: the Appendix G FLOPs of the exact config against the device's peak.

GPU peaks are the vendors' dense bf16 tensor-core numbers (no sparsity), matched by device name; on a
CPU the peak is measured at start-up with a large matmul on all threads, at the dtype the run computes in
(bf16 under bf16 autocast, else fp32): the roofline a training step can at best reach there. `peak_tflops` in the config overrides both.
"""

from __future__ import annotations

import functools
import time

import torch

# dense bf16 peak FLOP/s per device, by a substring of torch.cuda.get_device_name() (first match wins)
GPU_PEAK_BF16 = [
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
]


def gpu_peak(name: str) -> float | None:
    for key, peak in GPU_PEAK_BF16:
        if key in name:
            return peak
    return None


@functools.cache  # once per process and dtype: a pair's second arm reuses it
def measure_cpu_peak(n: int = 1024, seconds: float = 0.3, dtype: torch.dtype = torch.float32) -> float:
    """Matmul FLOP/s of this CPU (all torch threads) at `dtype`: the best of repeated n x n @ n x n products."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up (thread pool, caches, oneDNN's kernel choice)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def device_peak(
    device: torch.device, override_tflops: float | None = None, dtype: torch.dtype | None = None
) -> tuple[float | None, str]:
    """(peak FLOP/s or None, where it came from); on a CPU, measured at `dtype` (the autocast dtype; None = fp32)."""
    if override_tflops:
        return override_tflops * 1e12, "config peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name)
        return peak, f"{name}, dense bf16 (table)" if peak else f"{name}: not in the table (set peak_tflops)"
    if device.type == "cpu":
        dtype = dtype or torch.float32
        name = str(dtype).removeprefix("torch.")
        return measure_cpu_peak(dtype=dtype), f"measured {name} matmul, {torch.get_num_threads()} threads"
    return None, f"{device.type}: unknown peak (set peak_tflops)"
