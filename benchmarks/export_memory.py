"""Which part of a training run sets its peak host memory: one process vs each rank of a 2-rank FSDP run.

    python benchmarks/export_memory.py                   # dense-125m, 1 process then torchrun x 2 (FSDP)
    python benchmarks/export_memory.py --preset tiny-moe --nproc 2
    python benchmarks/export_memory.py --record          # both host-memory settings; benchmarks/results/export_memory.json

Runs the real trainer (`nitp_train.train.train`) for a few steps with a save and an HF export, and
records the process's peak RSS (ru_maxrss, a running maximum) after each part: setup (tokenise, build,
shard, materialise), every training step, every save, every export. The part after which the maximum
jumps last is the one that sets the peak. The wrappers only read ru_maxrss; the run is unchanged.
With --record it runs with the trainer's `release_host_memory` always (its `auto` under FSDP) and never at
`--nproc` ranks, with `fsdp_grad_sync=last_micro` (gradients unsharded between micro-batches) instead of
`auto` (every_micro on a CPU), and at twice as many ranks; global batch 4, micro-batch 1. It records the
ratio of each rank's peak to one process's (nitp_train/distributed.py says why it matters) beside its
floor: the runtime (the peak before any weight exists), 1/N of the fp32 training state and the root
group's tied embedding, which FSDP keeps gathered from the forward to the backward, with its unsharded
gradient, all over one process's peak, before any activation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


GLOBAL_BATCH = 4  # sequences a step, one a micro-batch: 2 micro-batches a rank on 2 ranks, 1 on 4


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(sets: list[str], out: str) -> dict:
    import nitp_train.train as trainer
    from nitp_train.checkpoint import Checkpointer
    from nitp_train.config import load_config

    parts: list[tuple[str, float]] = []

    def measured(name, fn):
        def wrapper(*a, **k):
            result = fn(*a, **k)
            parts.append((name, _peak_mb()))
            return result

        return wrapper

    def before_weights(module, *a, **k):  # the process's runtime: everything before the first weight exists
        parts.append(("runtime", _peak_mb()))
        sizes.update(training_state_mb(module))
        return materialise(module, *a, **k)

    sizes: dict[str, float] = {}
    materialise = trainer.materialise
    trainer.materialise = before_weights
    trainer.setup = measured("setup", trainer.setup)
    trainer.train_step = measured("step", trainer.train_step)
    Checkpointer.save = measured("save", Checkpointer.save)
    Checkpointer.export = measured("export", Checkpointer.export)
    trainer.train(load_config(sets=sets), out, progress=False)
    rank = int(os.environ.get("RANK", "0"))
    runtime = next(mb for name, mb in parts if name == "runtime")
    parts = [(name, mb) for name, mb in parts if name != "runtime"]
    peak = max(mb for _, mb in parts)
    sets_by = next(name for name, mb in parts if mb == peak)  # the first part at which the maximum was reached
    return {"rank": rank, "world": int(os.environ.get("WORLD_SIZE", "1")), "peak_rss_mb": peak, "set_by": sets_by,
            "runtime_mb": round(runtime, 1), **sizes,
            "parts": [{"part": name, "peak_rss_mb": round(mb, 1)} for name, mb in parts]}  # fmt: skip


def training_state_mb(module) -> dict[str, float]:
    """From the (meta) module: the fp32 training state (weights, gradients, AdamW's two moments: 16 bytes a
    parameter) and the largest tensor FSDP keeps whole on every rank from the forward to the backward (the
    root group's: the tied embedding / LM head), in MB."""
    params = {id(p): p for p in module.parameters()}.values()  # a tied weight once
    root = max(module.model.model.embed_tokens.weight.numel(), module.model.lm_head.weight.numel())
    return {"state_mb": round(16 * sum(p.numel() for p in params) / 2**20, 1), "root_mb": round(4 * root / 2**20, 1)}


def floor(single: dict, world: int) -> float:
    """The least peak RSS a rank of `world` can have, as a fraction of one process's measured peak: its runtime
    (measured before any weight), its 1/world of the training state, and the root group's weight gathered from
    the forward to the backward with its unsharded gradient (2 x root_mb), before any activation."""
    return (single["runtime_mb"] + single["state_mb"] / world + 2 * single["root_mb"]) / single["peak_rss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="dense-125m")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/corpus/tinystories/validation.txt"))
    ap.add_argument("--tokenizer", default=str(REPO.parent / "shared/data/tokenizers/gpt2"))
    ap.add_argument("--out", default="/tmp/nitp-export-memory")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument(
        "--record", action="store_true", help="every setting above, into benchmarks/results/export_memory.json"
    )
    args = ap.parse_args()
    sets = [f"model.preset={args.preset}", f"data.path={args.data}", f"data.tokenizer={args.tokenizer}",
            f"data.cache_dir={args.out}/data", "precision=fp32", "seq_len=128", f"global_batch={GLOBAL_BATCH}", "micro_batch=1",
            "steps=2", "save_every=2", "optim.warmup_steps=0", "eval_every=0", "probe_every=0", "parallel=fsdp",
            *args.sets]  # fmt: skip
    if args.worker:
        result = json.dumps(run(sets, f"{args.out}/run-{os.environ.get('WORLD_SIZE', '1')}"))
        sys.stdout.write(result + "\n")  # one write (under PIPE_BUF): the ranks' lines must not interleave
        sys.stdout.flush()
        return
    if not args.record:
        for r in measure(args, args.sets, args.nproc):
            print(json.dumps(r))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import record

    rows, runs = [], {}
    n = args.nproc
    for setting, nproc, sync in (("always", n, "auto"), ("never", n, "auto"), ("always", n, "last_micro"),
                                 ("always", 2 * n, "auto")):  # fmt: skip
        key = f"{setting}-{nproc}-{sync}"
        runs[key] = measure(args, [*args.sets, f"release_host_memory={setting}", f"fsdp_grad_sync={sync}"], nproc)
        single = next(r for r in runs[key] if r["world"] == 1)
        ranks = [r for r in runs[key] if r["world"] > 1]
        accumulation = GLOBAL_BATCH // nproc  # micro-batch 1
        rows.append((
            f"peak host RSS of each rank of a {nproc}-rank FSDP run vs one process, {args.preset}, 2 steps, "
            f"a save and an HF export, release_host_memory={setting}, {accumulation} micro-batch(es) a rank"
            + (f", fsdp_grad_sync={sync}" if accumulation > 1 else ""),
            f"{max(r['peak_rss_mb'] for r in ranks):.0f} vs {single['peak_rss_mb']:.0f} MB: "
            f"{max(r['ratio_to_one_process'] for r in ranks):.2f}x (set by: {', '.join(sorted({r['set_by'] for r in ranks}))}; "
            f"floor {floor(single, nproc):.2f}x: runtime {single['runtime_mb']:.0f} MB + 1/{nproc} of the "
            f"{single['state_mb']:.0f} MB training state + 2 x the {single['root_mb']:.0f} MB tied embedding, gathered)",
        ))  # fmt: skip
    record("export_memory", f"python benchmarks/export_memory.py --preset {args.preset} --record", rows, runs=runs)
    for what, number in rows:
        print(f"{what}: {number}")


def measure(args, sets: list[str], nproc: int) -> list[dict]:
    """One process, then `nproc` ranks under torchrun: each one's peak RSS, the part that set it, and its
    ratio to the one process's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    worker = [str(Path(__file__).resolve()), "--worker", "--preset", args.preset, "--data", args.data,
              "--tokenizer", args.tokenizer, "--out", args.out, *(a for s in sets for a in ("--set", s))]  # fmt: skip
    subprocess.run(["rm", "-rf", f"{args.out}/run-1", f"{args.out}/run-{nproc}"], check=True)
    rows = []
    for cmd in ([sys.executable, *worker],
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *worker]):  # fmt: skip
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode:
            sys.exit(res.stderr[-3000:])
        rows += [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    single = next(r for r in rows if r["world"] == 1)
    for r in rows:
        r["ratio_to_one_process"] = round(r["peak_rss_mb"] / single["peak_rss_mb"], 3)
    return rows


if __name__ == "__main__":
    main()
