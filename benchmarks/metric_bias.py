"""Every per-layer metric vs tokens per dimension on isotropic Gaussian states: the token-count bias of each.

    python benchmarks/metric_bias.py                  # d = 64, tokens/dim 1, 2, 5, 10, 50, 3 seeds, windows of 64
    python benchmarks/metric_bias.py --record         # also write benchmarks/results/metric_bias.json (make bench)

Isotropic states (rows of N(0, I_d), seeded) have full rank, no power-law decay (alpha 0), intrinsic
dimension d, and steps between consecutive rows at 2 pi / 3 on average (the steps x_{t+1} - x_t and
x_{t+2} - x_{t+1} have correlation -1/2). Whatever a metric reports away from that is the bias of
measuring on finitely many tokens (or, for the per-sequence metrics, of the window length). The states
go through `GeometryStats`, the path `nitp-eval geometry` takes, with the default `MetricOptions`, in
windows of `--window` rows (the sequences of the per-sequence metrics).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

RATIOS = (1, 2, 5, 10, 50)
KEYS = ("erank_cov", "rankme", "alpha_req", "twonn", "prompt_entropy", "dataset_entropy", "curvature")


def measure(dim: int, tokens: int, window: int, seed: int) -> dict:
    import torch

    from nitp_eval.geometry.extract import GeometryStats

    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((tokens, dim)))
    groups = torch.arange(tokens) // window
    stats = GeometryStats([0], 0, dim, seed=seed)
    stats.update({0: x}, groups, None)
    per_layer = stats.results()["per_layer"]
    return {k: per_layer[k][0] for k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    d = args.dim
    print(f"isotropic N(0, I_{d}), windows of {args.window}, mean of {args.seeds} seeds")
    print(f"{'tokens/dim':>10} " + " ".join(f"{k:>15}" for k in KEYS))
    table = []
    for r in RATIOS:
        rows = [measure(d, r * d, args.window, s) for s in range(args.seeds)]
        # nan where a metric is undefined (dataset entropy needs 2 windows)
        mean = {k: float(np.mean([row[k] for row in rows])) for k in KEYS}
        print(f"{r:>10} " + " ".join(f"{mean[k]:>15.3f}" for k in KEYS))
        table.append({"tokens_per_dim": r, **{k: v if v == v else None for k, v in mean.items()}})  # JSON: no NaN
    if args.record:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import record

        def series(key, scale=1.0):
            return ", ".join("n/a" if row[key] is None else f"{row[key] / scale:.2f}" for row in table)

        at = ", ".join(str(r) for r in RATIOS)
        record(
            "metric_bias",
            "python benchmarks/metric_bias.py --record",
            [
                (
                    f"isotropic N(0, I_{d}) at tokens/dim {at} (windows of {args.window}, {args.seeds} seeds): "
                    "erank_cov / d; RankMe / d; alpha-ReQ (truth 0); TwoNN / d; curvature (truth 2.09)",
                    f"{series('erank_cov', d)}; {series('rankme', d)}; {series('alpha_req')}; "
                    f"{series('twonn', d)}; {series('curvature')}",
                ),
                (
                    f"the same: prompt entropy (per window of {args.window}); dataset entropy (over the windows), "
                    "both / log min(n, d)",
                    f"{series('prompt_entropy')}; {series('dataset_entropy')}",
                ),
            ],
            table=table,
        )


if __name__ == "__main__":
    main()
