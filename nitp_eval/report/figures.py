"""The report's figures: per-layer profiles, CKA heat maps, training dynamics (paper Fig. 1, Fig. 5), CE.

Every function takes a loaded Run and returns a matplotlib Figure, or None when the run has no
data for it. Colours are fixed per arm name (NTP blue, NITP red, as in the paper) in every figure.
"""

from __future__ import annotations

from pathlib import Path

from nitp_eval.report.load import Run
from nitp_eval.report.tables import arm_name, pick

ARM_COLORS = {"ntp": "#1f77b4", "nitp": "#d62728"}
# Other arms (ablations) get these, in arm order; none is blue or red.
EXTRA_COLORS = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")


def arm_color(arm: str, arms: list[str]) -> str:
    if arm in ARM_COLORS:
        return ARM_COLORS[arm]
    extra = [a for a in arms if a not in ARM_COLORS]
    return EXTRA_COLORS[extra.index(arm) % len(EXTRA_COLORS)] if arm in extra else "#000000"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3, "font.size": 10,
                         "svg.hashsalt": "nitp", "pdf.fonttype": 42})
    return plt


def save(fig, out_dir: Path, name: str) -> list[Path]:
    """PNG and PDF, without timestamps so the same inputs give the same files."""
    plt = _plt()
    paths = [Path(out_dir) / f"{name}.png", Path(out_dir) / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None, "Creator": None, "Producer": None})
    plt.close(fig)
    return paths


def geometry_profiles(run: Run, arms: list[str], step: int | None = None):
    """Effective rank, anisotropy and CKA to the last layer vs layer index, every arm on each panel."""
    picked = {a: pick(run, "geometry", a, step) for a in arms}
    picked = {a: r for a, r in picked.items() if r is not None}
    if not picked:
        return None
    plt = _plt()
    panels = [("erank_cov", "effective rank (cov)"), ("anisotropy", "anisotropy (mean pair cosine)"),
              ("cka_to_last", "linear CKA to last layer")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, label) in zip(axes, panels):
        for a, r in picked.items():
            y = r.data.get("per_layer", {}).get(key)
            if y:
                layers = r.data.get("layers") or list(range(len(y)))
                ax.plot(layers, y, "o-", ms=4, color=arm_color(a, arms), label=f"{arm_name(a)} (step {r.step})")
        al = next(iter(picked.values())).data.get("alignment") or {}
        if al.get("target_layer") is not None:
            ax.axvline(al["target_layer"], color="grey", ls=":", lw=1)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel(label)
    axes[2].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{run.label}: per-layer geometry" + ("  (dotted: NITP target layer k)" if al.get("target_layer") is not None else ""))
    fig.tight_layout()
    return fig


def cka_heatmaps(run: Run, arms: list[str], step: int | None = None):
    """Layer-by-layer linear CKA, one panel per arm, one shared colour scale [0, 1]."""
    picked = {a: pick(run, "geometry", a, step) for a in arms}
    picked = {a: r for a, r in picked.items() if r is not None and r.data.get("cka_matrix")}
    if not picked:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(picked), figsize=(4.6 * len(picked) + 0.8, 4.2), squeeze=False)
    im = None
    for ax, (a, r) in zip(axes[0], picked.items()):
        m = r.data["cka_matrix"]
        layers = r.data.get("layers") or list(range(len(m)))
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis", origin="lower")
        ticks = list(range(0, len(layers), max(1, len(layers) // 8)))
        ax.set_xticks(ticks, [layers[i] for i in ticks])
        ax.set_yticks(ticks, [layers[i] for i in ticks])
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
        ax.set_title(f"{arm_name(a)} (step {r.step})", color=arm_color(a, arms))
        ax.grid(False)
    fig.colorbar(im, ax=axes[0].tolist(), label="linear CKA", shrink=0.9)
    fig.suptitle(f"{run.label}: CKA between layers")
    return fig


def _series(run: Run, arm: str, key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in run.metrics.get(arm, []) if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _checkpoint_series(run: Run, arm: str, key: str) -> tuple[list, list]:
    pts = [(r.step, r.data["per_layer"][key][-1]) for r in run.series("geometry", arm)
           if r.step is not None and r.data.get("per_layer", {}).get(key)]
    return [p[0] for p in pts], [p[1] for p in pts]


def dynamics(run: Run, arms: list[str]):
    """Paper Fig. 1: last-layer effective rank and cosine similarity vs training step.

    Lines: the trainer's in-training probes (metrics.jsonl probe_erank / probe_cosine).
    Squares: checkpoint-series geometry results (erank_cov / anisotropy of the last layer).
    """
    panels = [("probe_erank", "erank_cov", "effective rank (last layer)"),
              ("probe_cosine", "anisotropy", "cosine similarity (last layer)")]
    data = {(p, a): (_series(run, a, probe), _checkpoint_series(run, a, geo))
            for p, (probe, geo, _) in enumerate(panels) for a in arms}
    if not any(s[0] or c[0] for s, c in data.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for p, (ax, (_, _, label)) in enumerate(zip(axes, panels)):
        for a in arms:
            (xs, ys), (xc, yc) = data[(p, a)]
            c = arm_color(a, arms)
            if xs:
                ax.plot(xs, ys, "-", color=c, lw=1.5, label=f"{arm_name(a)} (probe)")
            if xc:
                ax.plot(xc, yc, "s--", color=c, ms=5, lw=0.8, alpha=0.8, label=f"{arm_name(a)} (checkpoints)")
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{run.label}: last-layer geometry during training")
    fig.tight_layout()
    return fig


def aux_loss(run: Run, arms: list[str]):
    """Paper Fig. 5: the auxiliary loss (L_NITP, or the cosine regulariser) vs step.

    Log-scaled steps when the run spans more than two decades, so the early drop, the hump
    during warm-up and the slow convergence are all visible.
    """
    curves = [(a, key, *_series(run, a, key)) for a in arms for key in ("loss_nitp", "loss_cosine_reg")]
    curves = [c for c in curves if c[2]]
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for a, key, xs, ys in curves:
        ax.plot(xs, ys, "-", color=arm_color(a, arms), lw=1.2, label=f"{arm_name(a)}: {key}")
    xmax = max(max(c[2]) for c in curves)
    xmin = min(x for c in curves for x in c[2] if x > 0) if any(x > 0 for c in curves for x in c[2]) else 1
    if xmax / xmin > 100:
        ax.set_xscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("auxiliary loss (1 − cos for NITP)")
    ax.legend(fontsize=8)
    ax.set_title(f"{run.label}: auxiliary loss during training")
    fig.tight_layout()
    return fig


def cross_entropy(run: Run, arms: list[str]):
    """Train NTP loss (lines) and validation CE (markers) of every arm vs step, and each arm's
    validation-CE difference to the first (baseline) arm: the paper's "CE is preserved" check."""
    curves = {a: (_series(run, a, "loss_ntp"), _series(run, a, "val_ce")) for a in arms}
    if not any(t[0] or v[0] for t, v in curves.values()):
        return None
    plt = _plt()
    fig, (ax, dx) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (a, ((xt, yt), (xv, yv))) in enumerate(curves.items()):
        c = arm_color(a, arms)
        if xt:
            ax.plot(xt, yt, "-", color=c, lw=1, alpha=0.7, label=f"{arm_name(a)} train NTP loss")
        if xv:  # distinct markers: the arms' curves usually overlap
            ax.plot(xv, yv, "--", marker="os^vD"[i % 5], mfc="none", color=c, ms=7 - i, lw=1,
                    label=f"{arm_name(a)} validation CE")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend(fontsize=8)
    base = dict(zip(*curves[arms[0]][1])) if arms else {}
    for a in arms[1:]:
        pts = [(s, v - base[s]) for s, v in zip(*curves[a][1]) if s in base]
        if pts:
            dx.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=arm_color(a, arms), ms=4,
                    label=f"{arm_name(a)} − {arm_name(arms[0])}")
    dx.axhline(0, color="grey", lw=1)
    dx.set_xlabel("training step")
    dx.set_ylabel("Δ validation CE (nats/token)")
    if dx.lines[:-1]:
        dx.legend(fontsize=8)
    fig.suptitle(f"{run.label}: next-token cross-entropy")
    fig.tight_layout()
    return fig
