"""Measured peak memory of real training steps vs `nitp-train plan`'s prediction, on this machine.

    python benchmarks/memory_plan.py [--set key=value ...]                     # one process
    torchrun --nproc_per_node 2 benchmarks/memory_plan.py --set parallel=fsdp  # per rank, sharded

Builds the trainer's own module (meta device, sharded, materialised), runs two optimiser steps (the
first creates AdamW's state) under torch's MemTracker (every tensor storage the process allocates,
any device), and prints one JSON line per rank: the measured peak, the plan's total for the same
config in fp32 (what a CPU step uses), and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nitp_train.config import load_config  # noqa: E402
from nitp_train.distributed import Dist, replicate, shard  # noqa: E402
from nitp_train.model import SizedVocab, build_meta_module, hf_config, make_optimizer, materialise  # noqa: E402
from nitp_train.plan import memory_plan  # noqa: E402


def measure(sets: list[str], vocab: int) -> dict:
    from torch.distributed._tools.mem_tracker import MemTracker

    cfg = load_config(sets=["precision=fp32", *sets])
    dist = Dist(cfg.device, cfg.dist_timeout_s)
    config = hf_config(cfg, SizedVocab(vocab))
    module = build_meta_module(cfg, config)
    shard(module, cfg, dist, None)
    materialise(module, cfg, config, dist.device)
    wrapped = replicate(module, cfg, dist)
    opt, _ = make_optimizer(cfg, module)
    tracker = MemTracker()
    tracker.track_external(module, opt)
    g = torch.Generator().manual_seed(0)
    _, accumulation, micro = cfg.batch_split(dist.world)
    with tracker:
        for step in range(2):
            for m in range(accumulation):  # FSDP's reduce-scatter as the trainer schedules it (fsdp_grad_sync)
                if hasattr(wrapped, "set_requires_gradient_sync"):
                    last = m == accumulation - 1
                    wrapped.set_requires_gradient_sync(last or cfg.fsdp_grad_sync == "every_micro")
                x = torch.randint(0, vocab, (micro, cfg.seq_len), generator=g)
                total, _ = wrapped(x, step)
                total.backward()
                tracker.reset_mod_stats()  # per-module stats are per forward; the global peak is kept
            opt.step()
            opt.zero_grad(set_to_none=True)
    peak = tracker.get_tracker_snapshot("peak")
    measured = max(v["Total"] for v in peak.values())
    plan = memory_plan(cfg, vocab, dist.world, bytes_act=4, bytes_compute=4)
    return {"rank": dist.rank, "world": dist.world, "parallel": cfg.parallel if dist.world > 1 else "none",
            "measured_bytes": measured, "planned_bytes": plan.total(cfg.activation_checkpointing),
            "ratio": plan.total(cfg.activation_checkpointing) / measured}  # fmt: skip


TINY = ["model.hf_overrides.hidden_size=64", "model.hf_overrides.num_hidden_layers=4",
        "model.hf_overrides.num_attention_heads=2", "model.hf_overrides.num_key_value_heads=1",
        "model.hf_overrides.intermediate_size=128", "objective.target_layer=1", "seq_len=64"]  # fmt: skip
MID = ["model.hf_overrides.hidden_size=512", "model.hf_overrides.num_hidden_layers=8",
       "model.hf_overrides.num_attention_heads=8", "model.hf_overrides.num_key_value_heads=2",
       "model.hf_overrides.intermediate_size=1536", "seq_len=256"]  # fmt: skip
SWEEP = {  # name: (config fields, processes); batch 4 x seq_len per process (unless set), FSDP when 2
    "tiny dense (d 64, 4 layers), 1 process": (TINY, 1),
    "tiny dense, 2 FSDP ranks": (TINY, 2),
    "d 512, 8 layers, 1 process": (MID, 1),
    "d 512, 8 layers, 2 FSDP ranks": (MID, 2),
    "d 512, 8 layers, activation checkpointing": (MID + ["activation_checkpointing=true"], 1),
    "tiny-moe, 1 process": (["model.preset=tiny-moe", "seq_len=256"], 1),
    # 2 micro-batches a rank: the reduce-scatter once a step holds the whole model's unsharded gradients
    "d 512, 8 layers, 2 FSDP ranks, 2 micro-batches, fsdp_grad_sync=last_micro": (
        MID + ["micro_batch=2", "fsdp_grad_sync=last_micro"],
        2,
    ),
    "d 512, 8 layers, 2 FSDP ranks, 2 micro-batches, fsdp_grad_sync=every_micro": (
        MID + ["micro_batch=2", "fsdp_grad_sync=every_micro"],
        2,
    ),
}


def sweep() -> None:
    """Every configuration of SWEEP in its own process(es); records the ratios (make bench)."""
    import subprocess

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import record

    rows = []
    for name, (sets, n) in SWEEP.items():
        flags = [a for s in ["micro_batch=4", f"global_batch={4 * n}", "parallel=fsdp", *sets] for a in ("--set", s)]
        cmd = [sys.executable, __file__, *flags]
        if n > 1:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                str(n),
                "--master_port",
                "29688",
                *cmd[1:],
            ]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if res.returncode:
            sys.exit(f"{name} failed:\n{res.stderr[-2000:]}")
        r = max(
            (json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")), key=lambda r: r["ratio"]
        )
        print(
            f"{name:45} planned {r['planned_bytes'] / 1e6:8.1f} MB  measured {r['measured_bytes'] / 1e6:8.1f} MB  ratio {r['ratio']:.2f}"
        )
        rows.append((f"`nitp-train plan` vs the peak torch's MemTracker measures in real CPU steps (fp32): {name}",
                     f"planned / measured {r['ratio']:.2f} ({r['planned_bytes'] / 1e6:.0f} vs {r['measured_bytes'] / 1e6:.0f} MB)"))  # fmt: skip
    record("memory_plan", "python benchmarks/memory_plan.py --sweep", rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config field, e.g. micro_batch=2")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument(
        "--sweep", action="store_true", help="measure every configuration the README reports and record them"
    )
    args = ap.parse_args()
    if args.sweep:
        sweep()
        return
    result = measure(args.sets, args.vocab)
    sys.stdout.write(json.dumps(result) + "\n")  # one write: two ranks' lines must not interleave
    sys.stdout.flush()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
