"""Peak host memory of building a paper preset: one process vs each rank of an FSDP run.

    python benchmarks/sharded_init.py                 # runs both: 1 process, then torchrun x 2 (FSDP)
    python benchmarks/sharded_init.py --preset dense-0.5b --nproc 2

Each run builds the trainer's module the way training does (meta device -> fully_shard -> to_empty ->
seeded per-module init) and reports its peak RSS (ru_maxrss) and the init hash; the hashes must agree
(the initial weights do not depend on the layout). Under FSDP a rank holds its shard plus one module's
full weights at a time, so its peak is well under the single process's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build(preset: str) -> dict:
    import torch

    from nitp_train.config import load_config
    from nitp_train.distributed import Dist, shard
    from nitp_train.model import SizedVocab, build_meta_module, hf_config, materialise

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    cfg = load_config(sets=[f"model.preset={preset}", "parallel=fsdp", "precision=fp32", "global_batch=2", "micro_batch=1",
                            "optim.warmup_steps=0", "steps=10"])  # fmt: skip
    dist = Dist("cpu", 600)
    config = hf_config(cfg, SizedVocab(8192))
    module = build_meta_module(cfg, config)
    shard(module, cfg, dist, None)
    sha = materialise(module, cfg, config, torch.device("cpu"))
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in module.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rank": dist.rank, "world": dist.world, "peak_rss_mb": peak / 1024, "rss_before_build_mb": baseline / 1024,
            "local_params": local, "init_weights_sha256": sha, "seconds": time.perf_counter() - t0}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="dense-0.5b")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--record", action="store_true", help="write benchmarks/results/sharded_init.json (make bench)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(build(args.preset)), flush=True)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = [str(Path(__file__).resolve()), "--worker", "--preset", args.preset]
    runs = {
        "1 process": [sys.executable, *worker],
        f"{args.nproc} processes (FSDP)": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(args.nproc),
            "--master_port",
            "29677",
            *worker,
        ],  # fmt: skip
    }
    rows = {}
    for name, cmd in runs.items():
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"{name} failed:\n{res.stderr[-2000:]}")
        rows[name] = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    one = rows["1 process"][0]
    print(f"preset {args.preset}: {one['local_params'] / 1e6:.0f}M parameters (fp32)")
    print(f"{'run':24} {'rank':>4} {'params held':>12} {'peak RSS':>10} {'vs 1 process':>13} {'build s':>8}")
    for name, rs in rows.items():
        for r in rs:
            print(f"{name:24} {r['rank']:>4} {r['local_params'] / 1e6:>11.0f}M {r['peak_rss_mb']:>8.0f}MB "
                  f"{r['peak_rss_mb'] / one['peak_rss_mb']:>12.2f}x {r['seconds']:>8.1f}")  # fmt: skip
    hashes = {r["init_weights_sha256"] for rs in rows.values() for r in rs}
    print(f"init_weights_sha256 identical in every run: {len(hashes) == 1}")
    if args.record:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import record

        ranks = " / ".join(f"{r['peak_rss_mb']:.0f}" for r in rows[f"{args.nproc} processes (FSDP)"])
        fracs = " / ".join(
            f"{r['peak_rss_mb'] / one['peak_rss_mb']:.2f}x" for r in rows[f"{args.nproc} processes (FSDP)"]
        )
        record("sharded_init", "python benchmarks/sharded_init.py", [(
            f"building {args.preset} ({one['local_params'] / 1e6:.0f}M fp32 parameters): peak RSS, 1 process vs each "
            f"rank of {args.nproc} (FSDP, sharded before allocation)",
            f"{one['peak_rss_mb']:.0f} MB vs {ranks} MB ({fracs}); init hashes identical: {len(hashes) == 1}")])  # fmt: skip


if __name__ == "__main__":
    main()
