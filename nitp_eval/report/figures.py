"""The report's figures: per-layer profiles, CKA heat maps, training dynamics (paper Fig. 1, Fig. 5), CE.

Every function takes a loaded Run and returns a matplotlib Figure, or None when the run has no
data for it; panels it could not fill say "no data: ..." and the reason goes to `notes` (the
report's "Missing inputs and caveats"). Each arm keeps one colour and one line style in every
figure (NTP blue solid, NITP red dashed, as in the paper's colours), so close curves stay
distinguishable; one legend per figure, outside the axes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nitp_eval.report.common import EXTRA_LAYER_METRICS, arm_name, pick
from nitp_eval.report.comparable import check_geometry_comparable
from nitp_eval.report.load import Run
from nitp_eval.report.stats import finite

ARM_COLORS = {"ntp": "#1f77b4", "nitp": "#d62728"}
ARM_STYLES = {"ntp": "-", "nitp": "--"}
# Other arms (ablations) get these, in arm order; no colour is blue or red.
EXTRA_COLORS = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
EXTRA_STYLES = ("-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 2)), (0, (3, 1, 1, 1)))
ZOOM = 0.2  # the zoom panels show the last this fraction of the logged steps


def _extra_index(arm: str, arms: list[str]) -> int | None:
    extra = [a for a in arms if a not in ARM_COLORS]
    return extra.index(arm) if arm in extra else None


def arm_color(arm: str, arms: list[str]) -> str:
    if arm in ARM_COLORS:
        return ARM_COLORS[arm]
    i = _extra_index(arm, arms)
    return EXTRA_COLORS[i % len(EXTRA_COLORS)] if i is not None else "#000000"


def arm_style(arm: str, arms: list[str]):
    if arm in ARM_STYLES:
        return ARM_STYLES[arm]
    i = _extra_index(arm, arms)
    return EXTRA_STYLES[i % len(EXTRA_STYLES)] if i is not None else "-"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "font.size": 10,
            "svg.hashsalt": "nitp",
            "pdf.fonttype": 42,
        }
    )
    return plt


def save(fig, out_dir: Path, name: str) -> list[Path]:
    """PNG and PDF, without timestamps so the same inputs give the same files."""
    plt = pyplot()
    paths = [Path(out_dir) / f"{name}.png", Path(out_dir) / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None, "Creator": None, "Producer": None})
    plt.close(fig)
    return paths


# --- shared pieces ----------------------------------------------------------------------------------


def _floats(values) -> np.ndarray:
    """Results files write NaN as null: None becomes NaN, which matplotlib leaves as a gap."""
    return np.array([v if finite(v) else np.nan for v in values], dtype=float)


def integer_ticks(ax, axis: str = "x") -> None:
    """Steps and layers are integers: no 2.5 ticks on short runs or shallow models."""
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def _no_data(ax, why: str) -> None:
    ax.text(
        0.5,
        0.5,
        f"no data:\n{why}",
        ha="center",
        va="center",
        transform=ax.transAxes,
        color="#555555",
        fontsize=9,
        wrap=True,
    )
    # hide ticks without changing locators, which a shared axis would pass on to its data panels
    ax.tick_params(bottom=False, left=False, labelbottom=False, labelleft=False)
    ax.grid(False)


def legend(fig, arms: list[str], all_arms: list[str], labels: dict[str, str] | None = None, keys=()) -> None:
    """One legend for the whole figure, below the axes: an entry per arm, then grey style keys."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D(
            [],
            [],
            color=arm_color(a, all_arms),
            ls=arm_style(a, all_arms),
            lw=2,
            label=(labels or {}).get(a, arm_name(a)),
        )
        for a in arms
    ]
    handles += [Line2D([], [], color="#555555", label=label, **style) for label, style in keys]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), frameon=False, fontsize=9)


def smooth(y: np.ndarray, frac: float = 0.05, cap: float = 0.02) -> np.ndarray:
    """Light EMA whose span grows with the point index (5 % of the points so far, at most 2 % of all):
    the fast early drop stays sharp, the late step-to-step noise is averaged out."""
    out = np.empty(len(y))
    cap_span = max(1.0, cap * len(y))
    s = y[0] if len(y) else 0.0
    for i, v in enumerate(y):
        alpha = 2 / (min(1 + frac * i, cap_span) + 1)
        s = s + alpha * (v - s)
        out[i] = s
    return out


NOISY_MIN = 30  # fewer logged points than this: plot them as they are


def _noisy(ax, x, y, color, ls, raw: bool = True) -> np.ndarray:
    """A per-step loss: raw values faint in the background (unless raw=False), the smoothed curve on
    top; returns what was drawn on top."""
    x, y = np.asarray(x), np.asarray(y, dtype=float)
    if len(y) < NOISY_MIN:
        ax.plot(x, y, color=color, ls=ls, lw=1.5, marker="." if len(y) < 15 else None)
        return y
    if raw:
        ax.plot(x, y, color=color, lw=0.6, alpha=0.22)
    top = smooth(y)
    ax.plot(x, top, color=color, ls=ls, lw=1.8)
    return top


def metric_series(run: Run, arm: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in run.metrics.get(arm, []) if finite(r.get(key))]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts], dtype=float)


def _zoom_limits(ax, x0: float, curves: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Limit a zoom panel to steps >= x0 and the y-range of the (smoothed) curves there."""
    ys = np.concatenate([y[x >= x0] for x, y in curves if len(x)] or [np.array([])])
    ys = ys[np.isfinite(ys)]
    xmax = max(x.max() for x, _ in curves if len(x))
    ax.set_xlim(x0, xmax + 0.01 * (xmax - x0))
    if len(ys):
        lo, hi = ys.min(), ys.max()
        pad = 0.15 * (hi - lo) or 0.01 * abs(hi) or 0.01
        ax.set_ylim(lo - pad, hi + pad)


# --- geometry ---------------------------------------------------------------------------------------


def geometry_profiles(run: Run, arms: list[str], step: int | None = None, notes: list[str] | None = None):
    """Effective rank, anisotropy and CKA to the last layer vs layer index, every arm on each panel."""
    picked = {a: pick(run, "geometry", a, step) for a in arms}
    picked = {a: r for a, r in picked.items() if r is not None}
    if not picked:
        return None
    plt = pyplot()
    panels = [
        ("erank_cov", "effective rank (cov)"),
        ("anisotropy", "anisotropy (mean pair cosine)"),
        ("cka_to_last", "linear CKA to last layer"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
    al = next(iter(picked.values())).data.get("alignment") or {}
    k = al.get("target_layer")
    for ax, (key, label) in zip(axes, panels):
        drawn = False
        for a, r in picked.items():
            y = (r.data.get("per_layer") or {}).get(key)
            if y and np.isfinite(_floats(y)).any():
                layers = r.data.get("layers") or list(range(len(y)))
                ax.plot(layers, _floats(y), marker="o", ms=3.5, color=arm_color(a, arms), ls=arm_style(a, arms), lw=1.5)
                drawn = True
        if not drawn:
            _no_data(ax, f"per_layer.{key} missing or null")
            (notes if notes is not None else []).append(
                f"{run.label}: geometry results have no {key}: its profile panel is empty"
            )
            continue
        if k is not None:
            ax.axvline(k, color="grey", ls=":", lw=1)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel(label)
        integer_ticks(ax)
        if key == "cka_to_last":
            ax.set_ylim(-0.02, 1.02)
    labels = {a: arm_name(a) + (f" (step {r.step})" if r.step is not None else "") for a, r in picked.items()}
    legend(
        fig, list(picked), arms, labels, keys=[("NITP target layer k", {"ls": ":", "lw": 1})] if k is not None else []
    )
    fig.suptitle(f"{run.label}: per-layer geometry")
    return fig


def panel_grid(n: int, height: float = 3.3, margin: float = 1.0):
    """`n` panels, at most 4 a row; cells left over are removed (no empty panel)."""
    plt = pyplot()
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols + margin, height * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.remove()  # an unused grid cell: no empty panel
    return fig, axes.flat


def metric_profiles(run: Run, arms: list[str], step: int | None = None):
    """The further representation metrics (RankMe, α-ReQ, TwoNN, entropies, curvature) vs layer index."""
    picked = {a: pick(run, "geometry", a, step) for a in arms}
    picked = {a: r for a, r in picked.items() if r is not None}
    keys = [k for k in EXTRA_LAYER_METRICS if any((r.data.get("per_layer") or {}).get(k) for r in picked.values())]
    if not keys:
        return None  # results of geometry schema 1
    fig, axes = panel_grid(len(keys))
    for ax, key in zip(axes, keys):
        for a, r in picked.items():
            y = (r.data.get("per_layer") or {}).get(key)
            if y:
                layers = r.data.get("layers") or list(range(len(y)))
                ax.plot(layers, _floats(y), marker="o", ms=3, color=arm_color(a, arms), ls=arm_style(a, arms), lw=1.5)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel(EXTRA_LAYER_METRICS[key][0])
        integer_ticks(ax)
    legend(fig, list(picked), arms)
    fig.suptitle(f"{run.label}: further representation metrics per layer (docs/geometry.md)")
    return fig


TRAJECTORY_KEYS = ("erank_cov", "anisotropy", *EXTRA_LAYER_METRICS)
TRAJECTORY_LABELS = {"erank_cov": "effective rank (cov)", "anisotropy": "anisotropy"} | {
    k: v[0] for k, v in EXTRA_LAYER_METRICS.items()
}


def metric_trajectories(run: Run, arms: list[str]):
    """Every last-layer geometry metric over the evaluated checkpoints (Fig. 1-style), one panel each."""
    keys = [k for k in TRAJECTORY_KEYS if any(len(checkpoint_series(run, a, k)[0]) > 1 for a in arms)]
    if not keys:
        return None
    fig, axes = panel_grid(len(keys))
    for ax, key in zip(axes, keys):
        for a in arms:
            x, y = checkpoint_series(run, a, key)
            if len(x):
                ax.plot(x, y, marker="o", ms=3, color=arm_color(a, arms), ls=arm_style(a, arms), lw=1.5)
        ax.set_xlabel("training step")
        ax.set_ylabel(TRAJECTORY_LABELS[key] + " (last layer)")
        integer_ticks(ax)
    legend(fig, arms, arms)
    fig.suptitle(f"{run.label}: last-layer geometry over the evaluated checkpoints")
    return fig


def cka_heatmaps(run: Run, arms: list[str], step: int | None = None):
    """Layer-by-layer linear CKA, one panel per arm, one shared colour scale [0, 1]; null entries grey."""
    picked = {a: pick(run, "geometry", a, step) for a in arms}
    picked = {a: r for a, r in picked.items() if r is not None and r.data.get("cka_matrix")}
    if not picked:
        return None
    plt = pyplot()
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#cccccc")
    fig, axes = plt.subplots(
        1, len(picked), figsize=(4.6 * len(picked) + 0.8, 4.2), squeeze=False, layout="constrained"
    )
    im = None
    for ax, (a, r) in zip(axes[0], picked.items()):
        m = np.array([_floats(row) for row in r.data["cka_matrix"]])
        layers = r.data.get("layers") or list(range(len(m)))
        im = ax.imshow(m, vmin=0, vmax=1, cmap=cmap, origin="lower")
        ticks = list(range(0, len(layers), max(1, len(layers) // 8)))
        ax.set_xticks(ticks, [layers[i] for i in ticks])
        ax.set_yticks(ticks, [layers[i] for i in ticks])
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
        ax.set_title(arm_name(a) + (f" (step {r.step})" if r.step is not None else ""), color=arm_color(a, arms))
        ax.grid(False)
    fig.colorbar(im, ax=axes[0].tolist(), label="linear CKA", shrink=0.9)
    fig.suptitle(f"{run.label}: CKA between layers")
    return fig


# --- training dynamics ------------------------------------------------------------------------------


def checkpoint_series(run: Run, arm: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """The last layer's `key` over the arm's evaluated checkpoints (steps, values)."""
    pts = [
        (r.step, (r.data.get("per_layer") or {}).get(key, [None])[-1])
        for r in run.series("geometry", arm)
        if r.step is not None and (r.data.get("per_layer") or {}).get(key)
    ]
    pts = [p for p in pts if finite(p[1])]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts], dtype=float)


def dynamics(run: Run, arms: list[str], notes: list[str] | None = None, allow_mismatch: bool = False):
    """Paper Fig. 1: last-layer effective rank and cosine similarity vs training step.

    Two sources, one row each, since they measure different token sets and their levels differ:
    the trainer's in-training probes (metrics.jsonl probe_erank / probe_cosine, a fixed small batch)
    and the checkpoint-series geometry results (erank_cov / anisotropy of the last layer).
    """
    notes = notes if notes is not None else []
    # the checkpoint row is one curve per arm over steps: every point must be measured the same way
    check_geometry_comparable(
        [r for a in arms for r in run.series("geometry", a)],
        allow_mismatch,
        notes,
        f"{run.label}: dynamics figure (geometry checkpoint series)",
    )
    tokens = sorted(
        {r.data.get("tokens") for a in arms for r in run.series("geometry", a) if finite(r.data.get("tokens"))}
    )
    ckpt_src = "checkpoints (eval/geometry" + (f", {tokens[-1]:,} tokens" if len(tokens) == 1 else "") + ")"
    sources = [
        (
            "in-training probes (metrics.jsonl)",
            ("probe_erank", "probe_cosine"),
            metric_series,
            ("probe (line)", {"lw": 1.5}),
        ),
        (
            ckpt_src,
            ("erank_cov", "anisotropy"),
            checkpoint_series,
            ("checkpoint (squares)", {"marker": "s", "ms": 5, "lw": 1.5}),
        ),
    ]
    labels = ("effective rank", "cosine similarity")
    rows = []
    for name, keys, get, key_style in sources:
        data = [{a: get(run, a, key) for a in arms} for key in keys]
        if any(len(x) for d in data for x, _ in d.values()):
            rows.append((name, keys, data, key_style))
    if not rows:
        return None
    for name, *_ in sources:
        if all(r[0] != name for r in rows):
            notes.append(f"{run.label}: no values from {name}: the dynamics figure shows the other source only")
    # one step axis per column, unless a "no data" panel would take the shared tick labels with it
    shared = all(any(len(x) for x, _ in d.values()) for r in rows for d in r[2])
    plt = pyplot()
    fig, axes = plt.subplots(
        len(rows), 2, figsize=(11, 3.4 * len(rows) + 0.6), squeeze=False, sharex=shared, layout="constrained"
    )
    for i, ((name, keys, data, (_, style)), row) in enumerate(zip(rows, axes)):
        for ax, key, label, d in zip(row, keys, labels, data):
            ax.set_title(name, fontsize=9.5)
            if not any(len(x) for x, _ in d.values()):
                _no_data(ax, f"no {key} values")
                notes.append(f"{run.label}: no {key} in {name}: that dynamics panel is empty")
                continue
            for a, (x, y) in d.items():
                if len(x):
                    ax.plot(x, y, color=arm_color(a, arms), ls=arm_style(a, arms), **style)
            if i == len(rows) - 1 or not shared:
                ax.set_xlabel("training step")
            ax.set_ylabel(f"{label} (last layer)")
            integer_ticks(ax)
    shown = [a for a in arms if any(len(d[a][0]) for _, _, data, _ in rows for d in data)]
    legend(fig, shown, arms, keys=[r[3] for r in rows])
    fig.suptitle(f"{run.label}: last-layer geometry during training")
    return fig


def aux_loss(run: Run, arms: list[str], notes: list[str] | None = None):
    """Paper Fig. 5: the auxiliary loss (L_NITP, or the cosine regulariser) vs step.

    Left: the whole run, log-scaled steps when it spans more than two decades, so the early drop,
    the hump during warm-up and the slow convergence are all visible. Right: the last 20 % of the
    steps, where the converged values of close arms are told apart.
    """
    curves = [(a, key, *metric_series(run, a, key)) for a in arms for key in ("loss_nitp", "loss_cosine_reg")]
    curves = [c for c in curves if len(c[2])]
    if not curves:
        return None
    plt = pyplot()
    xs = np.concatenate([c[2] for c in curves])
    zoom = len(np.unique(xs)) >= NOISY_MIN
    fig, axes = plt.subplots(
        1, 2 if zoom else 1, figsize=(12 if zoom else 6.5, 4.2), squeeze=False, layout="constrained"
    )
    axes = axes[0]
    tops = []
    for i, ax in enumerate(axes):
        for a, _key, x, y in curves:  # the zoom panel without the raw values: their spread would set its scale
            tops.append((x, _noisy(ax, x, y, arm_color(a, arms), arm_style(a, arms), raw=i == 0)))
        ax.set_xlabel("training step")
        ax.set_ylabel("auxiliary loss (1 − cos for NITP)")
    pos = xs[xs > 0]
    if len(pos) and xs.max() / pos.min() > 100:
        axes[0].set_xscale("log")
    else:
        integer_ticks(axes[0])
    if zoom:
        axes[0].set_title("whole run", fontsize=9.5)
        x0 = xs.min() + (1 - ZOOM) * (xs.max() - xs.min())
        _zoom_limits(axes[1], x0, tops[len(curves) :])
        integer_ticks(axes[1])
        axes[1].set_title(f"last {ZOOM:.0%} of steps (zoom)", fontsize=9.5)
    many_keys = len({c[1] for c in curves}) > 1
    labels = {a: f"{arm_name(a)}: {key}" if many_keys else arm_name(a) for a, key, *_ in curves}
    keys = [("raw (faint), smoothed (bold)", {"lw": 1.8})] if len(xs) >= NOISY_MIN else []
    legend(fig, list(dict.fromkeys(c[0] for c in curves)), arms, labels, keys)
    fig.suptitle(f"{run.label}: auxiliary loss during training")
    return fig


def cross_entropy(run: Run, arms: list[str], notes: list[str] | None = None):
    """Train NTP loss (lines) and validation CE (markers) of every arm vs step: the whole run, the last
    20 % of the steps, and each arm minus the baseline (first) arm: the paper's "CE is preserved" check.

    The difference panel pairs the arms step by step: both see the same batches, so the per-step
    difference of train loss has far less noise than either loss.
    """
    notes = notes if notes is not None else []
    train = {a: metric_series(run, a, "loss_ntp") for a in arms}
    val = {a: metric_series(run, a, "val_ce") for a in arms}
    have = [a for a in arms if len(train[a][0]) or len(val[a][0])]
    if not have:
        return None
    plt = pyplot()
    steps = np.concatenate([train[a][0] for a in have] + [val[a][0] for a in have])
    zoom = len(np.unique(steps)) >= NOISY_MIN
    base = arms[0]
    others = [a for a in have if a != base]
    delta = base in have and others
    n = 1 + zoom + bool(delta)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.2), squeeze=False, layout="constrained")
    axes = list(axes[0])
    tops = []
    for i, ax in enumerate(axes[: 1 + zoom]):
        for a in have:
            c, ls = arm_color(a, arms), arm_style(a, arms)
            x, y = train[a]
            if len(x):
                tops.append((x, _noisy(ax, x, y, c, ls, raw=i == 0)))
            x, y = val[a]
            if len(x):
                ax.plot(x, y, ls=ls, color=c, marker="o", mfc="white", ms=5, lw=1)
                tops.append((x, y))
        ax.set_xlabel("training step")
        ax.set_ylabel("cross-entropy (nats/token)")
        integer_ticks(ax)
    axes[0].set_title("whole run", fontsize=9.5)
    if zoom:
        x0 = steps.min() + (1 - ZOOM) * (steps.max() - steps.min())
        _zoom_limits(axes[1], x0, tops[len(tops) // 2 :])
        axes[1].set_title(f"last {ZOOM:.0%} of steps (zoom)", fontsize=9.5)
    if delta:
        # validation CE when logged (one number per eval, the paper's check); else the smoothed
        # per-step train-loss difference (both arms see the same batches, so it is paired)
        dx, key = axes[-1], "val_ce" if any(len(val[a][0]) for a in have) else "loss_ntp"
        series = val if key == "val_ce" else train
        drawn = False
        for a in others:
            common, ib, ia = np.intersect1d(series[base][0], series[a][0], return_indices=True)
            if not len(common):
                continue
            d = series[a][1][ia] - series[base][1][ib]
            c, ls = arm_color(a, arms), arm_style(a, arms)
            if key == "val_ce":
                dx.plot(common, d, color=c, ls=ls, marker="o", mfc="white", ms=5, lw=1.2)
            else:
                _noisy(dx, common, d, c, ls, raw=False)
            drawn = True
        what = "validation CE" if key == "val_ce" else "train NTP loss, smoothed (no val_ce logged)"
        if drawn:
            dx.axhline(0, color="grey", lw=1)
            dx.set_xlabel("training step")
            dx.set_ylabel(f"Δ vs {arm_name(base)} (nats/token)")
            dx.set_title(f"Δ {what}", fontsize=9.5)
            integer_ticks(dx)
        else:
            _no_data(dx, f"no {key} step logged by both {arm_name(base)} and another arm")
            notes.append(
                f"{run.label}: no {key} step logged by both {base} and another arm: the CE difference panel is empty"
            )
    if not any(len(val[a][0]) for a in arms):
        notes.append(f"{run.label}: no val_ce in any metrics.jsonl: the cross-entropy figure shows train loss only")
    keys = [("train NTP loss (line)", {"lw": 1.8})] if any(len(train[a][0]) for a in have) else []
    keys += (
        [("validation CE (circles)", {"marker": "o", "mfc": "white", "lw": 1})]
        if any(len(val[a][0]) for a in have)
        else []
    )
    legend(fig, have, arms, keys=keys)
    fig.suptitle(f"{run.label}: next-token cross-entropy")
    return fig
