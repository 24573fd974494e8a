"""nitp-eval design SPEC: before training, the smallest effect each primary endpoint of a study design can
resolve, and what the design costs, from a pilot study's spread (docs/report.md, "Designing a study").

For each primary endpoint the pilot gives the per-seed variance of the delta (and, for benchmark rows, the
document term that more seeds do not average down). At the planned n seeds the standard error is

    SE^2 = seed_var / n + doc_var,        df = n − 1,

and the minimum detectable effect at 80 % power is (t_{1−α/m, df} + t_{0.8, df}) x SE, one-sided at α/m
(Holm's strictest step over the m declared primaries). A design whose MDE exceeds the paper's reported
effect for a claim (endpoints.PAPER_EFFECTS) is refused unless --accept-underpowered; the report built from
such a study marks those endpoints UNDERPOWERED.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from nitp_train.errors import UserError


def design(spec_path: Path, pilot: Path | None, seeds: int | None) -> dict:
    """The design's predictions as data (printed by `command`, written with --json)."""
    import numpy as np

    from nitp_eval.replicate import parse_plan
    from nitp_eval.report.endpoints import DEFAULT_ENDPOINTS, PAPER_EFFECTS
    from nitp_eval.report.load import Study, load_any
    from nitp_eval.report.rows import decide
    from nitp_eval.report.seed_stats import POWER, minimum_detectable
    from nitp_eval.report.spec import load_spec
    from nitp_eval.report.study_rows import collect_rows
    from nitp_eval.report.training_tables import wall_clock

    spec = load_spec(spec_path)
    plan = parse_plan(spec.study, spec_path)
    n = seeds or len(plan.seeds)
    if n < 2:
        raise UserError(
            f"design: {n} seed(s) give no interval over seeds; plan at least 3 (5 or more to resolve anything)"
        )
    endpoints = spec.endpoints or list(DEFAULT_ENDPOINTS)
    pilot = pilot or (Path(spec.design["pilot"]) if spec.design and spec.design.get("pilot") else None)
    if pilot is None and len(spec.runs) == 1 and Path(spec.runs[0]["path"]).is_dir():
        pilot = Path(spec.runs[0]["path"])  # the spec's own results: a finished study sizes its successor
    out = {"spec": str(spec_path), "seeds": n, "alpha": spec.alpha, "power": POWER, "pilot": str(pilot) if pilot else None,
           "endpoints": [], "time": {}}  # fmt: skip
    m = len(endpoints)
    if pilot is None:
        for e in endpoints:  # in units of the per-seed SD of the delta
            k = minimum_detectable(1.0 / np.sqrt(n), n - 1, spec.alpha / m, sided=1)
            out["endpoints"].append({"row": e.key, "direction": e.direction.value, "mde_in_sd": k})
        return out
    study = load_any(pilot)
    if not isinstance(study, Study):
        raise UserError(
            f"design: pilot {pilot} is not a study dir (seed-<s>/ pair dirs); give --pilot a study's results"
        )
    notes: list[str] = []
    rows = {r.key: r for r in decide(collect_rows(study, spec, notes), endpoints, spec.alpha, PAPER_EFFECTS)}
    for e in endpoints:
        r = rows.get(e.key)
        item = {"row": e.key, "direction": e.direction.value, "margin": e.margin if e.margin else None}
        if r is None or r.estimate.seed_var is None:
            item["why"] = "not in the pilot" if r is None else f"not estimable in the pilot ({r.estimate.why_not})"
            out["endpoints"].append(item)
            continue
        se = float(np.sqrt(r.estimate.seed_var / n + r.estimate.doc_var))
        mde = minimum_detectable(se, n - 1, spec.alpha / m, sided=1)
        item.update(label=r.label, unit=r.unit.value, pilot_seeds=r.n, seed_sd=float(np.sqrt(r.estimate.seed_var)),
                    mde=mde, paper_effect=r.paper_effect, paper_source=r.paper_source,
                    underpowered=r.paper_effect is not None and mde > abs(r.paper_effect))  # fmt: skip
        out["endpoints"].append(item)
    # cost: the pilot's training wall-clock per step and arm, scaled to the plan; MTEB's recorded time
    steps = int(plan.train.get("steps") or 0)
    presets = {(c.get("model") or {}).get("preset") for run in study.seeds.values() for c in run.configs.values()}
    if presets != {plan.preset}:  # another model's step time says nothing about this one's
        out["time"]["train_why"] = (
            f"the pilot's preset ({', '.join(map(str, sorted(presets, key=str)))}) is not {plan.preset}"
        )
    per_step = [wall_clock(recs) / recs[-1]["step"] for run in study.seeds.values() for recs in run.metrics.values()
                if recs and wall_clock(recs)]  # fmt: skip
    if per_step and steps and "train_why" not in out["time"]:
        out["time"]["train_s"] = float(np.mean(per_step)) * steps * 2 * n
    mteb = [sum(t.get("evaluation_time") or 0 for t in (res.data.get("tasks") or {}).values())
            for run in study.seeds.values() for by_step in run.results.get("mteb", {}).values() for res in by_step.values()]  # fmt: skip
    if mteb and "train_why" not in out["time"]:
        out["time"]["mteb_s"] = float(np.mean(mteb)) * 2 * n
    return out


def command(
    spec: Path = typer.Argument(..., help="A study spec with a `study:` block, e.g. analyses/replication-cpu.yaml."),
    pilot: Path = typer.Option(
        None,
        "--pilot",
        help="A finished study (dir of seed-<s>/ pairs, or its results copy) whose spread sizes this design. Default: "
        "the spec's `design.pilot`, else the spec's own runs when they exist.",
        show_default=False,
    ),
    seeds: int = typer.Option(None, "--seeds", help="Plan this many seeds instead of the spec's.", show_default=False),
    accept_underpowered: bool = typer.Option(
        False, "--accept-underpowered", help="Exit 0 even when an endpoint cannot resolve the paper's effect."
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the predictions here.", show_default=False),
) -> None:
    """Per primary endpoint, the minimum detectable effect of a study design, and its training and MTEB time."""
    if not spec.is_file():
        raise UserError(f"{spec}: no such spec file; the shipped designs are analyses/replication-*.yaml")
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds {seeds}: give a positive number of seeds")
    d = design(spec, pilot, seeds)
    typer.echo(
        f"design {d['spec']}: {d['seeds']} seeds, one-sided α = {d['alpha']}/{len(d['endpoints'])} (Holm's strictest "
        f"step), power {d['power']:.0%}, pilot {d['pilot'] or 'none'}"
    )
    weak = []
    for e in d["endpoints"]:
        if "mde_in_sd" in e:
            typer.echo(f"  {e['row']:16} {e['direction']:13} MDE = {e['mde_in_sd']:.2f} x the per-seed SD of the delta")
            continue
        if "why" in e:
            typer.echo(f"  {e['row']:16} {e['direction']:13} {e['why']}")
            weak.append(e["row"])
            continue
        k = 100 if e["unit"] == "percent" else 1
        paper = (
            f"{k * e['paper_effect']:+.4g} ({e['paper_source']})" if e["paper_effect"] is not None else "none stated"
        )
        typer.echo(
            f"  {e['row']:16} {e['direction']:13} MDE {k * e['mde']:.4g} (pilot seed SD {k * e['seed_sd']:.4g}, "
            f"n = {e['pilot_seeds']}); paper's effect {paper}" + ("  UNDERPOWERED" if e["underpowered"] else "")
        )
        if e["underpowered"]:
            weak.append(e["row"])
    t = d["time"]
    typer.echo(
        "  time: training "
        + (
            f"~{t['train_s'] / 3600:.1f} h"
            if "train_s" in t
            else f"unknown ({t.get('train_why', 'no pilot metrics')}; `nitp-eval replicate SPEC --stages time` times it)"
        )
        + ", MTEB "
        + (f"~{t['mteb_s'] / 3600:.1f} h" if "mteb_s" in t else "unknown")
        + " (geometry and lm time are not recorded in results files)"
    )
    if json_out:
        json_out.write_text(json.dumps(d, indent=2) + "\n")
    if d["pilot"] is None and not accept_underpowered:
        raise UserError(
            "design: no pilot, so no effect size can be checked; give --pilot a finished study, or --accept-underpowered"
        )
    if weak and not accept_underpowered:
        raise UserError(
            f"design: {', '.join(weak)} cannot resolve the paper's effect at {d['seeds']} seeds; add seeds "
            "(--seeds N to explore), or pass --accept-underpowered (the report will mark them UNDERPOWERED)"
        )
