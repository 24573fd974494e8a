"""Training tables: cross-entropy at the end of training (CE preserved?) and cost (throughput, overhead)."""

from __future__ import annotations

import numpy as np

from nitp_eval.report.common import NA, NOT_RECORDED, fmt, pct, row_label, run_arms
from nitp_eval.report.load import Run
from nitp_eval.report.spec import Spec
from nitp_eval.report.stats import finite
from nitp_eval.report.table import Table


def last_value(records: list[dict], key: str) -> tuple[int, float] | None:
    vals = [(r["step"], r[key]) for r in records if finite(r.get(key))]
    return vals[-1] if vals else None


def ce_table(runs: list[Run], spec: Spec, notes: list[str]) -> Table | None:
    table = Table(
        "cross_entropy",
        "Cross-entropy at the end of training (nats/token)",
        ["Model", "Last step", f"Train NTP loss (mean of last {spec.ce_window} logs)", "Val CE", "Δ val CE"],
    )
    for run in runs:
        arms = [a for a in run_arms(run, spec) if run.metrics.get(a)]
        base_val = None
        for j, a in enumerate(arms):
            recs = run.metrics[a]
            ntp = [r["loss_ntp"] for r in recs if finite(r.get("loss_ntp"))][-spec.ce_window :]
            val = last_value(recs, "val_ce")
            if val is None:
                notes.append(f"{run.label}: {a}/metrics.jsonl has no val_ce records")
            if j == 0:
                base_val = val
            dv = f"{val[1] - base_val[1]:+.4f}" if (j > 0 and val and base_val) else ""
            if dv and val[0] != base_val[0]:
                notes.append(
                    f"{run.label}: Δ val CE of {a} compares its step {val[0]} with {arms[0]} step {base_val[0]}"
                )
            table.add(
                row_label(run, a, len(runs) > 1),
                str(recs[-1]["step"]),
                f"{np.mean(ntp):.4f}" if ntp else NA,
                f"{val[1]:.4f} (step {val[0]})" if val else NA,
                dv,
                rule=(j == 0),
            )
    return table if table.rows else None


def analytic_flops_overhead(run: Run, arm: str) -> tuple[dict | None, str]:
    """Analytic training-FLOPs overhead of an arm over NTP, as the trainer recorded it: ({"paper", "exact"}, "")
    or (None, why it is unknown).

    The trainer writes `flops` = nitp_train.flops.flops_per_token(...).to_dict() for the arm's exact
    config (seq_len, vocabulary, projector) into <arm>/provenance.json; the report reads that file
    only (it never recomputes from the presets installed now, which may differ from the run's).
    """
    prov = run.read_json(run.path / arm / "provenance.json")
    flops = (prov or {}).get("flops")
    if not isinstance(flops, dict) or not finite(flops.get("paper_overhead")):
        return None, f"not recorded ({arm}/provenance.json has no `flops`; runs from older trainers)"
    exact = flops.get("exact_overhead")
    return {"paper": float(flops["paper_overhead"]), "exact": float(exact) if finite(exact) else None}, ""


def sessions(records: list[dict]) -> int:
    """Training sessions in a metrics.jsonl: elapsed_s restarts at 0 at each --resume."""
    el = [r["elapsed_s"] for r in records if finite(r.get("elapsed_s"))]
    return 1 + sum(b < a for a, b in zip(el, el[1:])) if el else 0


def wall_clock(records: list[dict]) -> float | None:
    """Training wall-clock over every session: the sum of each session's last elapsed_s (None if unlogged)."""
    el = [r["elapsed_s"] for r in records if finite(r.get("elapsed_s"))]
    if not el:
        return None
    return float(sum(a for a, b in zip(el, el[1:] + [-1.0]) if b < a))  # a session's last record


LOAD_SPREAD = 0.2  # tokens/s interquartile range over its median above this: the run was timed under changing load


def cost_table(runs: list[Run], spec: Spec, notes: list[str]) -> Table | None:
    table = Table(
        "cost",
        "Training throughput and overhead",
        [
            "Model",
            "Steps logged",
            "Tokens/s (median)",
            "Wall-clock (s)",
            "Measured overhead",
            "FLOPs overhead (paper approx.)",
            "FLOPs overhead (exact)",
        ],
    )
    table.notes.append(
        "Measured overhead = baseline median tokens/s ÷ arm median tokens/s − 1 (same hardware "
        "assumed). Wall-clock = the sum over the run's sessions of each session's last elapsed_s (a resumed "
        "run counts every session, not the time between them). FLOPs: Appendix G (paper approx.: 6 × "
        "params per token, projector 72 d², cosine 18 d; exact: the real config incl. attention "
        'scores), as the trainer recorded them in each arm\'s provenance.json (`flops`; "not recorded" for '
        "runs without it). ! = unreliable (see the caveats)."
    )
    measured_all = []
    for run in runs:
        arms = [a for a in run_arms(run, spec) if run.metrics.get(a)]
        tps, unsteady = {}, {}
        for j, a in enumerate(arms):
            recs = run.metrics[a]
            vals = [r["tokens_per_s"] for r in recs if finite(r.get("tokens_per_s")) and r["tokens_per_s"] > 0]
            tps[a] = float(np.median(vals)) if vals else None
            if len(vals) >= 8:
                q1, q3 = np.quantile(vals, [0.25, 0.75])
                unsteady[a] = (q3 - q1) / tps[a]
                if unsteady[a] > LOAD_SPREAD:
                    notes.append(
                        f"{run.label}: {a} tokens/s varied by {unsteady[a]:.0%} of its median (interquartile "
                        "range): it was timed under changing load; its tokens/s and the measured overhead are unreliable"
                    )
            n_sessions = sessions(recs)
            if n_sessions > 1:
                notes.append(
                    f"{run.label}: {a} was resumed ({n_sessions} sessions): its wall-clock is the sum of the sessions' "
                    "elapsed time; tokens/s mixes the sessions' machines and loads"
                )
            wall = wall_clock(recs)
            measured, paper, exact = "", "", ""
            if j > 0:
                b = arms[0]
                ok = tps.get(b) and tps[a]
                overhead = tps[b] / tps[a] - 1 if ok else None
                bad = overhead is not None and (
                    overhead < 0 or any(unsteady.get(x, 0) > LOAD_SPREAD for x in (a, b)) or n_sessions > 1
                    or sessions(run.metrics[b]) > 1
                )  # fmt: skip
                if overhead is not None and overhead < 0:
                    notes.append(
                        f"{run.label}: the measured overhead of {a} is negative ({pct(overhead, sign=True)}%): "
                        f"{a} does strictly more work per step than {b}, so the arms were timed under different load "
                        "(or noise dominates); the measured overhead is unreliable, the FLOPs overhead is not"
                    )
                measured = pct(overhead, sign=True) + "%" + ("!" if bad else "") if ok else NA
                if overhead is not None:
                    measured_all.append(overhead)
                ov, why = analytic_flops_overhead(run, a)
                paper, exact = (
                    pct(ov[k], sign=True) + "%" if ov and ov.get(k) is not None else (NA if ov else NOT_RECORDED)
                    for k in ("paper", "exact")
                )
                if ov is None:
                    notes.append(f"{run.label}: no analytic FLOPs overhead for arm {a}: {why}")
            table.add(
                row_label(run, a, len(runs) > 1),
                str(len(recs)),
                fmt(tps[a], "{:.1f}"),
                fmt(wall, "{:.1f}") if wall is not None else NA,
                measured,
                paper,
                exact,
                rule=(j == 0),
            )
    if len(measured_all) > 1:
        table.notes.append(
            f"Measured overhead over the {len(measured_all)} pairs: mean {pct(float(np.mean(measured_all)), sign=True)}%, "
            f"range {pct(min(measured_all), sign=True)}% to {pct(max(measured_all), sign=True)}%."
        )
    return table if table.rows else None
