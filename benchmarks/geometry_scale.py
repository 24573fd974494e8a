"""Time and peak memory of the streaming geometry statistics vs the naive approach (stack all states, SVD).

    python benchmarks/geometry_scale.py                       # 1e4, 1e5, 1e6 tokens at d = 896 (Dense 0.5B width)
    python benchmarks/geometry_scale.py --tokens 10000 100000 --dim 1280 --json out.json

Each (method, token count) runs in a fresh subprocess so its peak resident memory (ru_maxrss)
is its own; "extra" is the peak minus the process's resident memory after imports. States are
synthetic, one layer, generated in chunks of 8192 from a seeded generator with a decaying
spectrum and a common offset (like real hidden states): the model's forward pass costs the
same in both approaches and is left out. Both methods compute erank_cov, erank_sv and the exact
anisotropy of the same tokens, and the script checks they agree.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CHUNK = 8192


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def chunks(n: int, dim: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -2, dim)  # a decaying spectrum, so the effective rank is well below dim
    offset = torch.randn(dim, generator=g) * 3  # a common direction: non-trivial anisotropy
    for s in range(0, n, CHUNK):
        yield torch.randn(min(CHUNK, n - s), dim, generator=g) * scales + offset


def worker(method: str, n: int, dim: int) -> dict:
    import torch

    from nitp_train.metrics import CovarianceAccumulator, effective_rank

    torch.set_num_threads(torch.get_num_threads())
    base = rss_mb()
    t0 = time.perf_counter()
    if method == "stream":
        acc = CovarianceAccumulator(dim)
        for x in chunks(n, dim):
            acc.update(x)
        out = {"erank_cov": acc.erank_cov(), "erank_sv": acc.erank_sv(), "anisotropy_exact": acc.anisotropy_exact()}
    elif method == "naive":  # what one writes first: keep every state, centre, SVD (float32, as the states come)
        x = torch.cat(list(chunks(n, dim)))
        sv = torch.linalg.svdvals(x - x.mean(0)).double().numpy()
        u = torch.nn.functional.normalize(x, dim=1).sum(0).double()
        out = {
            "erank_cov": effective_rank(sv**2),
            "erank_sv": effective_rank(sv),
            "anisotropy_exact": float((u @ u - n) / (n * (n - 1))),
        }
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "method": method,
        "tokens": n,
        "dim": dim,
        "seconds": seconds,
        "peak_mb": peak,
        "extra_mb": peak - base,
        **out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=896)
    ap.add_argument("--methods", nargs="+", default=["stream", "naive"])
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--record", action="store_true", help="write benchmarks/results/geometry_scale.json (make bench)")
    ap.add_argument("--worker", nargs=3, metavar=("METHOD", "TOKENS", "DIM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        m, n, d = args.worker
        print(json.dumps(worker(m, int(n), int(d))))
        return

    import torch

    rows = []
    print(f"dim {args.dim}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(
        f"{'method':7} {'tokens':>9} {'seconds':>9} {'peak MB':>9} {'extra MB':>9} {'erank_cov':>10} {'erank_sv':>9} {'aniso':>8}"
    )
    for n in args.tokens:
        for m in args.methods:
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", m, str(n), str(args.dim)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                print(
                    f"{m:7} {n:>9} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
                )
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(
                f"{m:7} {n:>9} {r['seconds']:>9.2f} {r['peak_mb']:>9.0f} {r['extra_mb']:>9.0f} "
                f"{r['erank_cov']:>10.3f} {r['erank_sv']:>9.3f} {r['anisotropy_exact']:>8.4f}"
            )
    by = {(r["method"], r["tokens"]): r for r in rows}
    recorded = []
    for n in args.tokens:
        s, v = by.get(("stream", n)), by.get(("naive", n))
        if s and v:
            agree = abs(s["erank_cov"] - v["erank_cov"]) / v["erank_cov"]
            print(
                f"{n:>9} tokens: naive / stream = {v['seconds'] / s['seconds']:.2f}x time, "
                f"{v['extra_mb'] / max(s['extra_mb'], 1):.1f}x extra memory; erank_cov rel. diff {agree:.1e}"
            )
            recorded.append((f"geometry statistics, streaming vs stack + SVD, {n:.0e} tokens at d = {args.dim}",
                             f"{s['extra_mb']:.0f} MB vs {v['extra_mb']:.0f} MB extra memory, {s['seconds']:.0f} s vs "
                             f"{v['seconds']:.0f} s; erank_cov rel. diff {agree:.1e}"))  # fmt: skip
    if args.record and recorded:
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import record

        record("geometry_scale", "python benchmarks/geometry_scale.py", recorded[-1:])
    streams = [by[("stream", n)] for n in args.tokens if ("stream", n) in by]
    if len(streams) > 1:
        print(
            f"stream extra memory from {streams[0]['tokens']} to {streams[-1]['tokens']} tokens: "
            f"{streams[0]['extra_mb']:.0f} -> {streams[-1]['extra_mb']:.0f} MB"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
