"""nitp-eval pilot ARM_DIR --out reports/pilot-fig1: where a run's last-layer effective rank peaks after the
warm-up (the paper's Fig. 1: under NTP it rises, peaks early and then collapses), from its in-training probes.

The probe curve is smoothed with a centred moving average over `window` probes (the probes are noisy);
the peak is the largest smoothed value after the warm-up. It counts as a peak, not a plateau still
rising, only when the smoothed curve falls at least `min_drop` (a fraction of the peak) below it by the
end and the peak is not in the last `edge` fraction of the run. The pilot's small files (config.yaml,
metrics.jsonl, provenance.json), peak.json and the figure are written to --out, so the finding is committed
with what it was computed from.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import typer

from nitp_train.errors import UserError

SMALL_FILES = ("config.yaml", "metrics.jsonl", "provenance.json")


@dataclass(frozen=True)
class Peak:
    key: str
    after_step: int  # the warm-up: the peak is searched after it
    window: int
    step: int | None  # the smoothed curve's maximum after the warm-up
    value: float | None
    final_step: int | None
    final_value: float | None
    drop: float | None  # (peak − final) / peak of the smoothed curve
    is_peak: bool  # a fall of at least min_drop after a maximum that is not at the end
    why: str


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; the ends average over the points that exist."""
    k = np.ones(window)
    return np.convolve(y, k, "same") / np.convolve(np.ones_like(y), k, "same")


def find_peak(steps, values, after_step: int, key: str = "probe_erank", window: int = 5, min_drop: float = 0.05,
              edge: float = 0.1) -> Peak:  # fmt: skip
    x, y = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    s = smooth(y, window) if len(y) else y
    after = x > after_step
    if after.sum() < window:
        return Peak(key, after_step, window, None, None, None, None, None, False,
                    f"fewer than {window} probes after step {after_step}")  # fmt: skip
    i = int(np.flatnonzero(after)[np.argmax(s[after])])
    peak, final = float(s[i]), float(s[-1])
    drop = (peak - final) / peak if peak else 0.0
    late = x[i] >= x[-1] - edge * (x[-1] - after_step)
    is_peak = drop >= min_drop and not late
    why = (
        f"smoothed maximum at step {x[i]:.0f}, {drop:.0%} above the end"
        if is_peak
        else f"no peak: the smoothed maximum is at step {x[i]:.0f} "
        + ("(in the last part of the run)" if late else f"and the curve ends only {drop:.1%} below it")
    )
    return Peak(key, after_step, window, int(x[i]), peak, int(x[-1]), final, float(drop), bool(is_peak), why)


def command(
    arm: Path = typer.Argument(
        ..., help="An arm dir with in-training probes (metrics.jsonl), e.g. runs/pilot-fig1/ntp."
    ),
    out: Path = typer.Option(..., "--out", help="Where the pilot's files, peak.json and figure go."),
    key: str = typer.Option("probe_erank", "--key", help="The probe curve to search."),
    window: int = typer.Option(5, "--window", help="Probes in the centred moving average."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Find the step where the last layer's effective rank peaks after the warm-up; write the finding."""
    import yaml

    metrics = arm / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{arm}: no metrics.jsonl; give an arm dir written by nitp-train run")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    if window < 1:
        raise UserError(f"--window {window}: give at least 1")
    try:
        recs = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    except json.JSONDecodeError as e:
        raise UserError(f"{metrics}: not JSON lines ({e}); is it cut short?") from e
    pts = [(r["step"], r[key]) for r in recs if isinstance(r.get(key), (int, float))]
    if not pts:
        raise UserError(f"{metrics}: no {key} records; train with --set probe_every=N")
    try:
        cfg = yaml.safe_load((arm / "config.yaml").read_text()) if (arm / "config.yaml").is_file() else {}
    except yaml.YAMLError as e:
        raise UserError(f"{arm / 'config.yaml'}: not valid YAML ({e.__class__.__name__}); is it cut short?") from e
    if not isinstance(cfg, dict):
        raise UserError(f"{arm / 'config.yaml'}: not a config mapping; give an arm dir written by nitp-train run")
    warmup = int(((cfg or {}).get("optim") or {}).get("warmup_steps") or 0)
    steps, values = zip(*pts)
    peak = find_peak(steps, values, warmup, key, window)
    if out.exists():
        shutil.rmtree(out)
    (out / "results").mkdir(parents=True)
    for f in SMALL_FILES:
        if (arm / f).is_file():
            shutil.copy2(arm / f, out / "results" / f)
    (out / "peak.json").write_text(json.dumps(asdict(peak), indent=2) + "\n")
    _figure(recs, peak, out / "figures", cfg)
    typer.echo(f"{key}: {peak.why}; wrote {out}/peak.json and {out}/figures/pilot.png")


def _figure(recs: list[dict], peak: Peak, out: Path, cfg: dict) -> None:
    from nitp_eval.report.figures import integer_ticks, pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for ax, (key, label) in zip(axes, (("probe_erank", "effective rank (last layer, probe)"),
                                       ("probe_cosine", "cosine similarity (last layer, probe)"))):  # fmt: skip
        pts = [(r["step"], r[key]) for r in recs if isinstance(r.get(key), (int, float))]
        if not pts:
            continue
        x, y = map(np.array, zip(*pts))
        ax.plot(x, y, color="#1f77b4", lw=0.7, alpha=0.5, label="probe")
        ax.plot(x, smooth(y, peak.window), color="#1f77b4", lw=2, label=f"moving average ({peak.window} probes)")
        if key == peak.key and peak.step is not None:
            ax.axvline(
                peak.step,
                color="grey",
                ls="--",
                lw=1,
                label=f"{'peak' if peak.is_peak else 'maximum'}: step {peak.step}",
            )
        ax.axvline(peak.after_step, color="grey", ls=":", lw=1, label="end of warm-up")
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        integer_ticks(ax)
        ax.legend(fontsize=8)
    model = (cfg.get("model") or {}).get("preset", "?")
    fig.suptitle(f"Pilot: {model}, objective {(cfg.get('objective') or {}).get('name', '?')}, seed {cfg.get('seed')}")
    out.mkdir(parents=True, exist_ok=True)
    save(fig, out, "pilot")
