"""Figures over seeds: each seed thin, the mean over seeds bold, the band between the seeds' extremes shaded
(paper Fig. 1 and Fig. 5 over seeds; per-layer profiles)."""

from __future__ import annotations

import numpy as np

from nitp_eval.report.common import arm_name, pick
from nitp_eval.report.load import Study
from nitp_eval.report.stats import finite

# --- figures: every seed thin, the mean over seeds bold ---------------------------------------------


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The mean over seeds at the steps every seed has, and the band between the seeds' lowest and highest."""
    common = sorted(set.intersection(*[set(x.tolist()) for x, _ in curves])) if curves else []
    if not common:
        return np.array([]), np.array([]), np.array([]), np.array([])
    ys = np.array([np.interp(common, x, y) for x, y in curves])
    return np.array(common), ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def _mean_and_band(ax, curves, color, ls, **mean_style) -> bool:
    """The mean over seeds bold and, with several seeds, the band between the lowest and highest shaded."""
    mx, my, lo, hi = mean_curve(curves)
    if len(mx):
        ax.plot(mx, my, color=color, ls=ls, lw=2, **mean_style)
        if len(curves) > 1:
            ax.fill_between(mx, lo, hi, color=color, alpha=0.15, lw=0)
    return bool(len(mx))


def study_dynamics(study: Study, arms: list[str], notes: list[str]):
    """Paper Fig. 1 and Fig. 5 over seeds: probe effective rank and cosine, the NITP loss, Δ validation CE."""
    from nitp_eval.report.figures import (
        NOISY_MIN,
        arm_color,
        arm_style,
        integer_ticks,
        legend,
        metric_series,
        pyplot,
        smooth,
    )

    panels = [
        ("probe_erank", "effective rank (last layer, probe)", arms),
        ("probe_cosine", "cosine similarity (last layer, probe)", arms),
        ("loss_nitp", "NITP loss (1 − cos), smoothed", [a for a in arms if a != arms[0]]),
        ("val_ce", f"Δ validation CE vs {arm_name(arms[0])} (nats/token)", [a for a in arms if a != arms[0]]),
    ]
    runs = [study.seeds[s] for s in sorted(study.seeds)]
    if not any(
        len(metric_series(r, a, "probe_erank")[0]) or len(metric_series(r, a, "loss_nitp")[0])
        for r in runs
        for a in arms
    ):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.4), layout="constrained")
    for ax, (key, label, shown) in zip(axes.flat, panels):
        drawn = False
        for a in shown:
            c, ls = arm_color(a, arms), arm_style(a, arms)
            curves = []
            for run in runs:
                x, y = metric_series(run, a, key)
                if key == "val_ce":  # paired per seed: the difference to the baseline at the same steps
                    bx, by = metric_series(run, arms[0], key)
                    common, ia, ib = np.intersect1d(x, bx, return_indices=True)
                    x, y = common, y[ia] - by[ib]
                if key == "loss_nitp" and len(y) >= NOISY_MIN:  # a per-step loss: smoothed like Fig. 5's
                    y = smooth(y)
                if len(x):
                    curves.append((x, y))
                    ax.plot(x, y, color=c, ls=ls, lw=0.7, alpha=0.35)
            drawn = _mean_and_band(ax, curves, c, ls) or drawn
        if key == "val_ce" and drawn:
            ax.axhline(0, color="grey", lw=1)
        if key == "loss_nitp" and drawn:
            ax.set_yscale("log")
        if not drawn:
            notes.append(f"{study.label}: no {key} in the seeds' metrics.jsonl: its panel is empty")
        ax.set_ylabel(label)
        ax.set_xlabel("training step")
        integer_ticks(ax)
    legend(
        fig, arms, arms, keys=[("one seed (thin), mean over seeds (bold), band: lowest to highest seed", {"lw": 1.5})]
    )
    fig.suptitle(f"{study.label}: training dynamics over {len(runs)} seeds (paper Fig. 1, Fig. 5)")
    return fig


def study_trajectories(study: Study, arms: list[str]):
    """Fig. 1 from the evaluated checkpoints: every last-layer geometry metric vs step, each seed thin, the
    mean bold, the band between the lowest and highest seed shaded."""
    from nitp_eval.report.figures import (
        TRAJECTORY_KEYS,
        TRAJECTORY_LABELS,
        arm_color,
        arm_style,
        checkpoint_series,
        integer_ticks,
        legend,
        panel_grid,
    )

    runs = [study.seeds[s] for s in sorted(study.seeds)]
    keys = [k for k in TRAJECTORY_KEYS if any(len(checkpoint_series(r, a, k)[0]) > 1 for r in runs for a in arms)]
    if not keys:
        return None
    fig, axes = panel_grid(len(keys))
    for ax, key in zip(axes, keys):
        for a in arms:
            c, ls = arm_color(a, arms), arm_style(a, arms)
            curves = [checkpoint_series(r, a, key) for r in runs]
            curves = [(x, y) for x, y in curves if len(x)]
            for x, y in curves:
                ax.plot(x, y, color=c, ls=ls, lw=0.7, alpha=0.35)
            _mean_and_band(ax, curves, c, ls, marker="o", ms=3)
        ax.set_xlabel("training step")
        ax.set_ylabel(TRAJECTORY_LABELS[key] + " (last layer)")
        integer_ticks(ax)
    legend(
        fig, arms, arms, keys=[("one seed (thin), mean over seeds (bold), band: lowest to highest seed", {"lw": 1.5})]
    )
    fig.suptitle(f"{study.label}: last-layer geometry over the checkpoints, {len(runs)} seeds (paper Fig. 1)")
    return fig


def study_profiles(study: Study, arms: list[str], step: int | None, notes: list[str], panels=None):
    """Per-layer geometry of the evaluated checkpoints, every seed and the mean (default: effective rank and
    anisotropy; `panels`: other (key, label) pairs, e.g. the further representation metrics)."""
    from nitp_eval.report.figures import arm_color, arm_style, integer_ticks, legend, panel_grid

    runs = [study.seeds[s] for s in sorted(study.seeds)]
    if not any(pick(r, "geometry", a, step) for r in runs for a in arms):
        return None
    found = [pick(r, "geometry", a, step) for r in runs for a in arms]
    panels = panels or (("erank_cov", "effective rank (cov)"), ("anisotropy", "anisotropy"))
    panels = [(k, lab) for k, lab in panels if any(res and (res.data.get("per_layer") or {}).get(k) for res in found)]
    if not panels:
        return None
    fig, axes = panel_grid(len(panels), height=3.6, margin=1.5)
    for ax, (key, label) in zip(axes, panels):
        for a in arms:
            c, ls = arm_color(a, arms), arm_style(a, arms)
            curves = []
            for run in runs:
                res = pick(run, "geometry", a, step)
                vals = ((res.data.get("per_layer") or {}).get(key) if res else None) or []
                layers = (res.data.get("layers") if res else None) or []
                if vals and len(vals) == len(layers):
                    y = np.array([v if finite(v) else np.nan for v in vals], dtype=float)
                    curves.append((np.array(layers), y))
                    ax.plot(layers, y, color=c, ls=ls, lw=0.7, alpha=0.35)
            _mean_and_band(ax, curves, c, ls, marker="o", ms=3)
        ax.set_xlabel("layer (hidden_states index)")
        ax.set_ylabel(label)
        integer_ticks(ax)
    legend(
        fig, arms, arms, keys=[("one seed (thin), mean over seeds (bold), band: lowest to highest seed", {"lw": 1.5})]
    )
    fig.suptitle(f"{study.label}: per-layer geometry over {len(runs)} seeds")
    return fig
