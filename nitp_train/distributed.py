"""Processes, devices and parallel wrapping: the torch.distributed side of the trainer.

One process group per process (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; gloo on CPU, NCCL on
GPU), created with a timeout and, on GPU, a `device_id` (NCCL binds eagerly to it). `parallelize`
applies activation checkpointing, then FSDP2 `fully_shard` per decoder layer (with a mixed-precision
policy) or DDP.
"""

from __future__ import annotations

import contextlib
import os
import sys
from datetime import timedelta

import torch
from torch import nn

from nitp_train.config import TrainConfig
from nitp_train.errors import UserError
from nitp_train.launch import is_main_process


class Dist:
    """torch.distributed when launched by torchrun; a no-op for one process."""

    def __init__(self, device_pref: str = "auto", timeout_s: int = 1800):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
        if use_cuda and not torch.cuda.is_available():
            raise UserError("device=cuda but torch sees no CUDA GPU here; use device=auto or cpu")
        if use_cuda and local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) here; "
                            f"start at most that many processes per node (--nproc_per_node)")  # fmt: skip
        self.device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(
                "nccl" if use_cuda else "gloo",
                timeout=timedelta(seconds=timeout_s),
                device_id=self.device if use_cuda else None,
            )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t


HOST_RELEASE_THRESHOLD = 16 << 20  # bytes; `always`: blocks this large are mmapped, so a free returns them
GLIBC_TRIM_THRESHOLD = 128 << 10  # bytes; glibc's default: this much free at the heap's top goes back to the OS
HOST_KEEP_THRESHOLD = 1 << 30  # bytes; `never`: blocks below it come from the heap, which keeps them for reuse
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameter numbers (malloc.h)


def host_memory_policy(cfg: TrainConfig) -> str:
    """`release_host_memory` made concrete: `always`, `never` or `glibc` (docs/training.md, "Host memory and
    speed on CPU", has the measurements)."""
    if cfg.release_host_memory != "auto":
        return cfg.release_host_memory
    if cfg.parallel == "fsdp":  # else the per-layer all-gather / reduce-scatter buffers stay in the heap
        return "always"
    cuda = torch.cuda.is_available() if cfg.device == "auto" else cfg.device == "cuda"
    # on a CPU the step's activations are reused, not faulted in afresh; a GPU host holds no step buffers
    return "glibc" if cuda else "never"


def _malloc_tuned_by_environment() -> bool:
    return any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_")) or (
        "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
    )


def release_host_memory(cfg: TrainConfig) -> str | None:
    """Set glibc's allocator for `host_memory_policy`, for the rest of the process (nothing resets it). The
    policy set, or None when glibc is left as it is: `glibc`, a malloc setting in the environment (it
    wins), or not Linux with glibc."""
    policy = host_memory_policy(cfg)
    if policy == "glibc" or not sys.platform.startswith("linux") or _malloc_tuned_by_environment():
        return None
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
        return None
    if policy == "always":
        ok = mallopt(M_MMAP_THRESHOLD, HOST_RELEASE_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
        return policy if ok else None
    # never: the trim threshold too, else a free at the heap's top hands its pages back. An older glibc may
    # refuse an mmap threshold above 32 MiB (the cap mallopt(3) documents); then nothing is mmapped at all
    # (M_MMAP_MAX 0), since a step's activations can be just over 32 MiB
    ok = mallopt(M_MMAP_THRESHOLD, HOST_KEEP_THRESHOLD) or mallopt(M_MMAP_MAX, 0)
    return policy if ok and mallopt(M_TRIM_THRESHOLD, HOST_KEEP_THRESHOLD) else None


def configure_kernels(cfg: TrainConfig) -> None:
    """TF32 matmuls on CUDA (fp32 work outside autocast on tensor cores); `deterministic` kernels on request;
    the host allocator's release of freed buffers (`release_host_memory`).

    Called before the first CUDA/cuBLAS work: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it creates a handle.
    """
    if release_host_memory(cfg) is None and cfg.release_host_memory in ("always", "never") and is_main_process():
        print(f"note: release_host_memory={cfg.release_host_memory} not applied: glibc's malloc is not tunable "
              "here (not glibc, or a malloc setting in the environment, which wins)", file=sys.stderr)  # fmt: skip
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        # the flash and memory-efficient SDPA backward kernels accumulate with atomics: math SDPA only
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)


def compile_layers(module: nn.Module, cfg: TrainConfig) -> None:
    """torch.compile each decoder layer in place (`Module.compile`: parameter names, and so checkpoints, unchanged).

    Per layer, as torchtitan does: one graph serves every layer, compile time stays that of one layer,
    and FSDP's per-layer communication stays outside the compiled regions.
    """
    if cfg.compile:
        for layer in module.model.model.layers:
            layer.compile()


def cpu_vendor() -> str:
    """The CPU vendor as /proc/cpuinfo names it (GenuineIntel, AuthenticAMD), "" where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:  # not Linux
        return ""


def cpu_bf16_is_faster() -> bool:
    """True on CPUs where bf16 autocast is measured to be the faster training step (oneDNN's bf16 kernels):
    with AMX tiles, or on an AMD CPU with AVX512-BF16 (Zen 4 and later).

    Measured (docs/training.md, "Precision and threads on CPU"), the same tiny-dense step: 1.6x faster in
    bf16 with AMX (cpuinfo flag `amx_bf16`, usable by this process: `torch.cpu._is_amx_tile_supported()`
    also asks the kernel for the tile state); 1.5x faster on an AMD EPYC with AVX512-BF16; 1.43x *slower*
    on a Xeon whose AMX tiles the VM withheld (AVX512-BF16 alone). Elsewhere fp32, which no CPU runs slower.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    return torch.cpu._is_amx_tile_supported() or (
        torch.cpu._is_avx512_bf16_supported() and cpu_vendor() == "AuthenticAMD"
    )


def cpu_bf16_is_emulated() -> bool:
    """True on CPUs where torch has no oneDNN bf16 matmul (x86 without AVX-512 BW/VL/DQ; ARM without bf16):
    its fallback is ~100x slower than fp32 (docs/training.md, "Precision and threads on CPU")."""
    return not torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` made concrete for this device: bf16 on GPUs that support it and on CPUs where bf16 is the
    faster step (`cpu_bf16_is_faster`: a fixed rule, so a run's precision never hangs on a timing), fp32
    elsewhere; `bf16` and `fp32` as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_bf16_is_faster() else "fp32"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `precision` on `device` (resolve_precision), None for fp32."""
    return torch.bfloat16 if resolve_precision(precision, device) == "bf16" else None


def autocast(device: torch.device, amp: torch.dtype | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


def _dtype(name: str, amp: torch.dtype | None) -> torch.dtype:
    if name == "auto":
        return amp or torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def uses_fsdp(cfg: TrainConfig, dist: Dist) -> bool:
    return cfg.parallel == "fsdp" and dist.world > 1


def shard(module: nn.Module, cfg: TrainConfig, dist: Dist, amp: torch.dtype | None) -> None:
    """FSDP2 per decoder layer, then the backbone (its own group, so evaluation can call it alone), then the root.

    Runs on the meta device, before any parameter is allocated; `fully_shard` wraps the modules in place.
    """
    if not uses_fsdp(cfg, dist):
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # bf16 compute copies of the parameters, fp32 master weights and (by default) fp32 gradient reductions
    mp = MixedPrecisionPolicy(
        param_dtype=_dtype(cfg.fsdp_param_dtype, amp), reduce_dtype=_dtype(cfg.fsdp_reduce_dtype, amp)
    )
    for layer in module.model.model.layers:
        fully_shard(layer, mp_policy=mp)
    # kept gathered from its forward to its backward (as torchtitan keeps its root's): the chunked loss
    # (nitp_train/loss.py) applies its LM head after the forward returns, in TrainModule.forward
    fully_shard(module.model, mp_policy=mp, reshard_after_forward=False)
    fully_shard(module, mp_policy=mp)


def replicate(module: nn.Module, cfg: TrainConfig, dist: Dist) -> nn.Module:
    """DDP for several processes without FSDP (after the weights exist: DDP broadcasts rank 0's)."""
    if dist.world == 1 or uses_fsdp(cfg, dist):
        return module
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
    )
