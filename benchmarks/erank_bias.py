"""Effective rank vs tokens per dimension on isotropic Gaussian states: how the token count biases erank_cov.

    python benchmarks/erank_bias.py                   # d = 64, 192, 768 at tokens/dim 1 .. 200, 5 seeds each
    python benchmarks/erank_bias.py --dims 192 --seeds 3
    python benchmarks/erank_bias.py --record          # also write benchmarks/results/erank_bias.json (make bench)
    python benchmarks/erank_bias.py --markdown        # the docs/footguns.md table, from the recorded file
    python benchmarks/erank_bias.py --plot docs/figures/erank_bias.png   # its figure, from the recorded file

Isotropic states have full rank d whatever the token count, so every shortfall of erank below d is
the bias of measuring on finitely many tokens. The states (n = tokens/dim x d rows of N(0, I_d),
seeded) are streamed in chunks of 8192 into the `CovarianceAccumulator` that `nitp-eval geometry`
uses; erank_cov is `nitp_train.metrics.effective_rank` of its centred covariance spectrum, the
project's definition. Where the whole matrix fits in 160 MB, a plain numpy computation (exp of the
entropy of the normalised eigenvalues of np.cov) checks it. "limit" is the large-d value
`nitp_eval.report.comparable.isotropic_erank_fraction` (exp(-1/(2 r))), which the report's erank note uses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RATIOS = (1, 2, 5, 10, 20, 50, 100, 200)
CHUNK = 8192
NUMPY_CHECK = 20_000_000  # numbers in the matrix (160 MB in float64) up to which numpy checks the streamed erank
RESULT = Path(__file__).resolve().parent / "results" / "erank_bias.json"
COMMAND = "python benchmarks/erank_bias.py --record"


def states(dim: int, tokens: int, seed: int):
    """`tokens` rows of N(0, I_dim) (float64), in chunks of CHUNK rows, from one seeded generator."""
    rng = np.random.default_rng(seed)
    for s in range(0, tokens, CHUNK):
        yield rng.standard_normal((min(CHUNK, tokens - s), dim))


def isotropic_erank(dim: int, tokens: int, seed: int) -> float:
    """erank_cov of `states(dim, tokens, seed)`, computed as `nitp-eval geometry` computes it (streamed)."""
    from nitp_train.metrics import CovarianceAccumulator

    acc = CovarianceAccumulator(dim)
    for x in states(dim, tokens, seed):
        acc.update(x)
    return acc.erank_cov()


def numpy_erank(x: np.ndarray) -> float:
    """The plain computation: exp(entropy) of the normalised eigenvalues of the centred covariance."""
    eig = np.clip(np.linalg.eigvalsh(np.cov(x, rowvar=False)), 0, None)
    p = eig[eig > 0] / eig.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def measure(dims, ratios, seeds: int) -> tuple[list[dict], float]:
    """(one row per (dim, ratio) with the mean, sd and erank/d over seeds, the largest numpy check difference)."""
    from nitp_eval.report.comparable import isotropic_erank_fraction

    rows, worst = [], 0.0
    for d in dims:
        for r in ratios:
            n = int(r * d)
            values = []
            for seed in range(seeds):
                e = isotropic_erank(d, n, seed)
                if n * d <= NUMPY_CHECK:
                    worst = max(worst, abs(e - numpy_erank(np.concatenate(list(states(d, n, seed))))) / e)
                values.append(e)
            mean, sd = float(np.mean(values)), float(np.std(values, ddof=1)) if seeds > 1 else 0.0
            row = {"dim": d, "tokens_per_dim": r, "tokens": n, "seeds": seeds, "erank_mean": mean, "erank_sd": sd,
                   "fraction": mean / d, "limit": isotropic_erank_fraction(r)}  # fmt: skip
            rows.append(row)
            print(
                f"d {d:>4}  tokens/dim {r:>4}  erank {mean:8.2f} +- {sd:5.2f}  erank/d {mean / d:.4f}  "
                f"limit {row['limit']:.4f}",
                flush=True,
            )
    return rows, worst


def markdown(rows: list[dict]) -> str:
    """The footguns table: one line per tokens/dim, erank (mean ± sd) and erank/d per dim, and the limit."""
    dims = sorted({r["dim"] for r in rows})
    by = {(r["dim"], r["tokens_per_dim"]): r for r in rows}
    limit = {r["tokens_per_dim"]: r["limit"] for r in rows}
    lines = [
        "| tokens/dim | " + " | ".join(f"d = {d}: erank (erank/d)" for d in dims) + " | large-d limit |",
        "|---|" + "---|" * (len(dims) + 1),
    ]
    for ratio in sorted(limit):
        cells = [
            f"{r['erank_mean']:.2f} ± {r['erank_sd']:.2f} ({r['fraction']:.3f})" if (r := by.get((d, ratio))) else ""
            for d in dims
        ]
        lines.append(f"| {ratio:g} | " + " | ".join(cells) + f" | {limit[ratio]:.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the shortfall 1 - erank/d on log axes: the bias itself, a straight line ~ 1/(2 r) once r >> 1
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for d in sorted({r["dim"] for r in rows}):
        pts = sorted((r["tokens_per_dim"], 1 - r["fraction"], r["erank_sd"] / d) for r in rows if r["dim"] == d)
        x, y, e = (np.array(v) for v in zip(*pts))
        ax.errorbar(x, y, yerr=e, marker="o", ms=4, capsize=2, label=f"measured, d = {d}")
    r = np.geomspace(1, max(row["tokens_per_dim"] for row in rows), 200)
    ax.plot(r, 1 - np.exp(-1 / (2 * r)), color="black", ls=":", label="large-d limit 1 - exp(-1/(2 r))")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens / dim")
    ax.set_ylabel("shortfall 1 - erank / d")
    ax.set_title("erank_cov of isotropic Gaussian states (full rank d): the token-count bias", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=150, metadata={"Software": None})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="64,192,768", help="comma-separated widths")
    ap.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="comma-separated tokens/dim")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--record", action="store_true", help=f"write {RESULT.relative_to(RESULT.parents[2])}")
    ap.add_argument("--markdown", action="store_true", help="print the footguns table from the recorded file")
    ap.add_argument("--plot", metavar="PNG", help="draw the recorded curve to this file")
    args = ap.parse_args()
    if args.markdown or args.plot:
        rows = json.loads(RESULT.read_text())["curve"]
        if args.markdown:
            print(markdown(rows))
        if args.plot:
            plot(rows, args.plot)
        return
    dims = [int(d) for d in args.dims.split(",")]
    rows, worst = measure(dims, [float(r) if "." in r else int(r) for r in args.ratios.split(",")], args.seeds)
    print(f"streamed erank_cov vs plain numpy: largest relative difference {worst:.1e}")
    print(markdown(rows))
    if args.record:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import record

        readme = [
            (
                f"effective rank / d of isotropic Gaussian states, d = {d}, at tokens/dim "
                + ", ".join(f"{r['tokens_per_dim']:g}" for r in rows if r["dim"] == d)
                + f" (mean of {args.seeds} seeds)",
                ", ".join(f"{r['fraction']:.3f}" for r in rows if r["dim"] == d)
                + f"; largest gap to exp(-1/(2 r)) {max(abs(r['fraction'] - r['limit']) for r in rows if r['dim'] == d):.3f}",
            )
            for d in dims
        ]
        readme.append(
            ("erank_cov streamed (nitp-eval geometry's path) vs plain numpy, same states", f"{worst:.1e} relative")
        )
        print(f"wrote {record('erank_bias', COMMAND, readme, curve=rows)}")


if __name__ == "__main__":
    main()
