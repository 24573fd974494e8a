"""Per-layer effective rank and CKA of one model with and without its attention sink (docs/footguns.md).

    nitp-eval geometry MODEL --text TEXT --tokens 4096 --seq-len 512 --batch-size 4 --exclude-positions none --out A
    nitp-eval geometry MODEL --text TEXT --tokens 4096 --seq-len 512 --batch-size 4 --out B     # default: content tokens
    python benchmarks/sink_figure.py A/<model>.json B/<model>.json docs/figures/smollm2-sink.png

Reads the two results files only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(every: str, content: str, out: str) -> None:
    runs = {
        "every token (sink counted)": json.loads(Path(every).read_text()),
        "content tokens (default: BOS prepended, not counted)": json.loads(Path(content).read_text()),
    }
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for (label, r), style in zip(runs.items(), ("o-", "s--")):
        pl, layers = r["per_layer"], r["layers"]
        axes[0].plot(layers, pl["erank_cov"], style, ms=3, label=label)
        axes[1].plot(layers, pl["cka_to_last"], style, ms=3, label=label)
        axes[2].semilogy(
            layers, [m / med for m, med in zip(pl["norm_max"], pl["norm_median"])], style, ms=3, label=label
        )
    for ax, title in zip(
        axes, ("effective rank (erank_cov)", "linear CKA to the last layer", "max / median token norm")
    ):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer (hidden_states index)")
        ax.grid(alpha=0.3)
    axes[2].axhline(20, color="grey", lw=0.8, ls=":")  # the outlier rule, k = 20
    axes[1].legend(fontsize=8, loc="upper left")
    name = Path(runs[next(iter(runs))]["checkpoint"]).name
    fig.suptitle(f"{name}: {r['tokens']} tokens in windows of {r['settings']['seq_len']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:4])
