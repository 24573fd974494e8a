"""The trainer on this CPU against its matmul roofline, per preset and dtype, in one run.

    python benchmarks/roofline.py                        # tiny-dense and dense-125m, fp32 and bf16, 16 x 256
    python benchmarks/roofline.py --compile --record     # also compile=true at the auto dtype (make bench)

For each preset and dtype: the real trainer (`nitp_train.train.train`, NTP, no eval, probes or saves,
`log_every=1`) for `--steps` steps; its achieved FLOP/s (Appendix G FLOPs of the exact config x
tokens/s, median of the steps after the first two) as a fraction of
- this CPU's n x n matmul peak at that dtype (`measure_cpu_peak`, the best of n = 1024 and 2048, measured
  before and after the training runs: the peak is the best the CPU does, and one measurement on a shared
  VM varies by up to 1.8x between processes), and of
- the FLOP/s the model's own weight matmuls reach alone at their forward shapes (`gemm_roofline`), the
  ceiling small matrices allow.
The row of the dtype that `precision=auto` picks on this CPU says so: that is the issue's "roofline for
the dtype used". With --compile, each preset also runs with `compile=true` at that dtype (the first two
steps, which compile, are left out). The OpenMP wait policy and the host-allocator setting are the
trainer's (PASSIVE unless the environment sets it; release_host_memory=auto). bf16 is skipped, with a line,
on a CPU where torch has no bf16 matmul kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as nitp-train runs (nitp_train/cli.py): before torch loads

import torch  # noqa: E402

from nitp_train.config import load_config  # noqa: E402
from nitp_train.distributed import cpu_bf16_is_emulated, release_host_memory, resolve_precision  # noqa: E402
from nitp_train.model import SizedVocab, hf_config  # noqa: E402
from nitp_train.throughput import gemm_roofline, measure_cpu_peak  # noqa: E402
from nitp_train.train import train  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import record  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def peaks(dtypes: list[str]) -> dict[str, float]:
    return {name: max(measure_cpu_peak(n, 1.0, DTYPES[name]) for n in (1024, 2048)) for name in dtypes}


def emulated_bf16(auto: str) -> str | None:
    """Why bf16 is not worth timing on this CPU (`cpu_bf16_is_emulated`: torch has no bf16 matmul kernel
    there, docs/training.md), with both matmul rates for the record; None where it is. `auto` is what
    precision=auto picks here."""
    if not cpu_bf16_is_emulated():
        return None
    rates = {name: measure_cpu_peak(512, 0.2, DTYPES[name]) / 1e9 for name in ("fp32", "bf16")}
    return (f"bf16 skipped: this CPU's bf16 matmul runs at {rates['bf16']:.1f} GFLOP/s against "
            f"{rates['fp32']:.1f} in fp32 (no native bf16 kernel); precision=auto picks {auto} here")  # fmt: skip


def trainer_records(sets: list[str], steps: int) -> list[dict]:
    """The trainer's metrics records (NTP, no eval, probes or saves, a record every step) after the first
    two steps (compile, warm-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(sets=sets + ["objective.name=ntp", f"steps={steps}", f"save_every={10**6}",
                                       "optim.warmup_steps=1", "eval_every=0", "probe_every=0", "log_every=1"])  # fmt: skip
        train(cfg, Path(tmp) / "ntp", progress=False)
        records = [json.loads(line) for line in (Path(tmp) / "ntp" / "metrics.jsonl").read_text().splitlines()]
    return records[2:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny-dense", "dense-125m"])
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--compile", action="store_true", help="also compile=true at the dtype precision=auto picks")
    ap.add_argument("--record", action="store_true", help="write benchmarks/results/roofline.json (make bench)")
    args = ap.parse_args()
    # the trainer's host-allocator setting (it lasts for the process): every part runs under it
    release_host_memory(load_config(sets=["device=cpu"]))
    auto = resolve_precision("auto", torch.device("cpu"))
    skipped = emulated_bf16(auto) if "bf16" in args.dtypes else None
    if skipped:
        print(skipped, flush=True)
        args.dtypes = [dtype for dtype in args.dtypes if dtype != "bf16"]
    runs = [(dtype, False) for dtype in args.dtypes] + [(auto, True)] * args.compile
    timed = sorted({dtype for dtype, _ in runs})
    best = peaks(timed)
    achieved = {}
    for preset in args.presets:
        sets = [f"model.preset={preset}", f"seq_len={args.seq_len}", f"global_batch={args.batch}",
                f"micro_batch={args.batch}", f"data.tokenizer=train:{args.vocab}"]  # fmt: skip
        for dtype, compiled in runs:
            records = trainer_records(sets + [f"precision={dtype}", f"compile={str(compiled).lower()}"], args.steps)
            got = statistics.median(r["flops_per_s"] for r in records)
            achieved[preset, dtype, compiled] = got
            print(f"{preset} {dtype}{' compile=true' * compiled}: {got / 1e9:.1f} GFLOP/s", flush=True)
    best = {k: max(v, after) for (k, v), after in zip(best.items(), peaks(timed).values())}
    rows = []
    for preset in args.presets:
        config = hf_config(
            load_config(sets=[f"model.preset={preset}", f"seq_len={args.seq_len}"]), SizedVocab(args.vocab)
        )
        ran = {dtype for name, dtype, _ in achieved if name == preset}
        shaped = {dtype: gemm_roofline(config, args.batch * args.seq_len, DTYPES[dtype]) for dtype in ran}
        for (name, dtype, compiled), got in achieved.items():
            if name != preset:
                continue
            picked = " (what precision=auto picks here)" if dtype == auto else ""
            rows.append((
                f"trainer's achieved FLOP/s (Appendix G, NTP) vs this CPU's {dtype} matmul peak, {preset}, "
                f"batch {args.batch} x {args.seq_len}, {dtype}{', compile=true' * compiled}{picked}",
                f"{got / 1e9:.1f} vs {best[dtype] / 1e9:.1f} GFLOP/s: {got / best[dtype]:.2f} of the roofline; "
                f"{got / shaped[dtype]:.2f} of the {shaped[dtype] / 1e9:.1f} GFLOP/s its own matmuls reach alone at their shapes",
            ))  # fmt: skip
    print(f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
          f"precision=auto picks {auto}")  # fmt: skip
    for what, number in rows:
        print(f"  {what}: {number}")
    if args.record:
        command = f"python benchmarks/roofline.py --presets {' '.join(args.presets)} --steps {args.steps}" + (
            " --compile" * args.compile
        )
        if skipped:
            rows.append(("bf16 on this CPU", skipped.removeprefix("bf16 skipped: ")))
        record("roofline", command, rows, peaks_gflops={k: round(v / 1e9, 1) for k, v in best.items()},
               auto=auto, load_average=round(os.getloadavg()[0], 1))  # fmt: skip


if __name__ == "__main__":
    main()
