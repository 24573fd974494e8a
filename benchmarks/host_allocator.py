"""The CPU training step under glibc's own allocator thresholds vs `release_host_memory=never`, in one run.

    python benchmarks/host_allocator.py                  # tiny-dense and dense-125m, 2 alternated runs each
    python benchmarks/host_allocator.py --record         # benchmarks/results/host_allocator.json (make bench)

glibc mmaps a block above a threshold that it raises to the size of each large block freed, up to 32 MiB,
so a step's larger activations come as fresh pages, faulted in on every allocation; `never` (what `auto`
picks for one process on a CPU, nitp_train.distributed.host_memory_policy) keeps freed blocks in the heap
for reuse. The setting lasts for the process, so each run is its own process: the trainer's NITP step
(benchmarks/step_overhead.step_fn: its module, fused AdamW, clip) at the `precision=auto` dtype, 16 x 256
tokens, `--steps` steps of which the first two are left out; the median step time and the peak RSS.
The two settings alternate, so that machine load affects both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = ("glibc", "never")  # release_host_memory values; glibc: its own thresholds


def worker(preset: str, setting: str, steps: int, batch: int, seq_len: int, vocab: int) -> dict:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as nitp-train runs: before torch loads
    import torch

    from nitp_train.config import load_config
    from nitp_train.distributed import release_host_memory, resolve_precision
    from nitp_train.model import SizedVocab

    sys.path.insert(0, str(HERE))
    from step_overhead import alternate, step_fn

    got = release_host_memory(load_config(sets=[f"release_host_memory={setting}"]))
    if got != (None if setting == "glibc" else setting):
        raise SystemExit(f"release_host_memory={setting} could not be set here (not glibc, or set in the environment)")
    precision = resolve_precision("auto", torch.device("cpu"))
    sets = [f"model.preset={preset}", f"seq_len={seq_len}", f"global_batch={batch}", f"micro_batch={batch}",
            "steps=1000", f"precision={precision}", "objective.name=nitp"]  # fmt: skip
    step = step_fn(load_config(sets=sets), SizedVocab(vocab))
    times = alternate({"step": step}, torch.randint(0, vocab, (batch, seq_len)), steps - 2, warmup=2)["step"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step_s": statistics.median(times), "peak_rss_mb": peak_mb, "precision": precision}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny-dense", "dense-125m"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting, alternated")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--record", action="store_true", help="write benchmarks/results/host_allocator.json")
    ap.add_argument("--worker", nargs=2, metavar=("PRESET", "SETTING"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = (args.steps, args.batch, args.seq_len, args.vocab)
    if args.worker:
        print(json.dumps(worker(*args.worker, *shape)))
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    rows, runs = [], {}
    for preset in args.presets:
        got = {setting: [] for setting in SETTINGS}
        for i in range(args.repeats):
            for setting in SETTINGS if i % 2 == 0 else SETTINGS[::-1]:
                out = subprocess.run([sys.executable, __file__, "--worker", preset, setting, "--steps", str(args.steps),
                                      "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--vocab",
                                      str(args.vocab)], capture_output=True, text=True, env=env, check=True)  # fmt: skip
                got[setting].append(json.loads(out.stdout.splitlines()[-1]))
                print(preset, setting, got[setting][-1], flush=True)
        runs[preset] = got
        step = {s: statistics.median(r["step_s"] for r in got[s]) for s in SETTINGS}
        rss = {s: max(r["peak_rss_mb"] for r in got[s]) for s in SETTINGS}
        rows.append((
            f"NITP step under release_host_memory=never vs glibc's own thresholds, {preset}, batch {args.batch} x "
            f"{args.seq_len}, {got['never'][0]['precision']}, {args.repeats} runs each",
            f"{step['never']:.2f} vs {step['glibc']:.2f} s: {step['never'] / step['glibc']:.2f}x; "
            f"peak RSS {rss['never']:.0f} vs {rss['glibc']:.0f} MB ({rss['never'] / rss['glibc']:.2f}x)",
        ))  # fmt: skip
    for what, number in rows:
        print(f"  {what}: {number}")
    if args.record:
        sys.path.insert(0, str(HERE))
        from results import record

        record("host_allocator", f"python benchmarks/host_allocator.py --steps {args.steps} --repeats {args.repeats}",
               rows, runs=runs)  # fmt: skip


if __name__ == "__main__":
    main()
