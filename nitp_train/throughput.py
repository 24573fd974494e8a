"""Achieved FLOP/s and MFU: the Appendix G FLOPs of the exact config against the device's peak.

GPU peaks are the vendors' dense bf16 tensor-core numbers (no sparsity), matched by device name; on a
CPU the peak is measured at start-up with a large matmul on all threads, at the dtype the run computes in
(bf16 under bf16 autocast, else fp32): the roofline a training step can at best reach there. `peak_tflops` in the config overrides both.
"""

from __future__ import annotations

import functools
import re
import time

import torch

# Dense bf16 peak FLOP/s per device (vendor data sheets, no sparsity), keyed by the model's words in
# torch.cuda.get_device_name(). A key matches whole words in order, so "L4" never matches an L40 and
# "H200" never an H200 NVL; the longest matching key wins. Names not here: set peak_tflops.
GPU_PEAK_BF16 = {
    "GB200": 2.5e15,
    "B200": 2.25e15,
    "GH200": 989e12,
    "H200": 989e12,  # SXM
    "H200 NVL": 835e12,
    "H100": 989e12,  # SXM ("H100 80GB HBM3", "H100 SXM5 ...")
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H800": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10": 125e12,
    "MI300X": 1307e12,
    "MI250X": 383e12,
}


def _words(name: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", name.lower())


def gpu_peak(name: str) -> float | None:
    """The table's peak for a device name, matched by whole words (the longest matching key), or None."""
    words = _words(name)
    best = None
    for key, peak in GPU_PEAK_BF16.items():
        k = _words(key)
        if any(words[i : i + len(k)] == k for i in range(len(words))) and (best is None or len(k) > best[0]):
            best = (len(k), peak)
    return best[1] if best else None


def fastest_mm_s(rows: int, inner: int, cols: int, dtype: torch.dtype, seconds: float) -> float:
    """Seconds of the fastest of repeated [rows, inner] @ [inner, cols] products at `dtype` (all torch threads)
    run for `seconds`, after one warm-up product (thread pool, caches, oneDNN's kernel choice)."""
    a, b = torch.randn(rows, inner).to(dtype), torch.randn(inner, cols).to(dtype)
    torch.mm(a, b)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_cpu_peak(n: int = 1024, seconds: float = 0.3, dtype: torch.dtype = torch.float32) -> float:
    """Matmul FLOP/s of this CPU (all torch threads) at `dtype`: the best of repeated n x n @ n x n products."""
    return 2 * n**3 / fastest_mm_s(n, n, n, dtype, seconds)


@functools.cache  # the trainer's start-up peak, once per process and dtype: a pair's second arm reuses it
def _start_up_cpu_peak(dtype: torch.dtype) -> float:
    return measure_cpu_peak(dtype=dtype)


def gemm_roofline(config, tokens: int, dtype: torch.dtype = torch.float32, seconds: float = 0.2) -> float:
    """FLOP/s of a dense model's weight matmuls at their forward shapes, each timed alone (best of repeats; all
    torch threads): per decoder layer the q, k, v, o projections and the MLP's gate, up and down, then the LM
    head, each as [tokens, in] @ [in, out]. A model whose matrices are small cannot reach the n x n peak of
    `measure_cpu_peak`; this is roughly the rate its shapes allow. Roughly: the backward's matmuls (the same
    FLOPs, transposed shapes) and attention's score matmuls are not timed, and the LM head is timed over all
    tokens, not in ce_chunk_tokens chunks."""
    if getattr(config, "num_experts", 0):
        raise ValueError("gemm_roofline times dense layers; an MoE model's expert matmuls are not modelled")
    d, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    q, kv, ffn = heads * head_dim, config.num_key_value_heads * head_dim, config.intermediate_size
    shapes = [(d, q), (d, kv), (d, kv), (q, d), (d, ffn), (d, ffn), (ffn, d)] * config.num_hidden_layers
    shapes.append((d, config.vocab_size))
    flops = seconds_total = 0.0
    for n_in, n_out in dict.fromkeys(shapes):  # each distinct shape timed once, counted as often as it occurs
        count = shapes.count((n_in, n_out))
        flops += count * 2 * tokens * n_in * n_out
        seconds_total += count * fastest_mm_s(tokens, n_in, n_out, dtype, seconds)
    return flops / seconds_total


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
        return _start_up_cpu_peak(dtype), f"measured {name} matmul, {torch.get_num_threads()} threads"
    return None, f"{device.type}: unknown peak (set peak_tflops)"
