"""A study's rows rendered: the primary endpoints, the exploratory tables and the verdict paragraph.

Everything here formats `Row`s (rows.py); no number is computed from display text.
"""

from __future__ import annotations

import numpy as np

from nitp_eval.report.common import arm_name
from nitp_eval.report.endpoints import CLAIMS
from nitp_eval.report.load import Study
from nitp_eval.report.rows import (
    Direction,
    Family,
    Row,
    Verdict,
    diff_text,
    interval_text,
    p_text,
    value_text,
)
from nitp_eval.report.setup import scale_sentence, verdict_word
from nitp_eval.report.spec import Spec
from nitp_eval.report.table import Cell, Table

# exploratory tables: name, title, the row sections they hold
EXPLORATORY_TABLES = (
    ("exploratory", "exploratory rows", ("training", "probes", "geometry", "downstream", "mteb")),
    ("exploratory_layers", "per-layer effective rank (exploratory; the last layer is a geometry row)", ("layers",)),
    ("exploratory_mteb_tasks", "MTEB tasks (exploratory)", ("mteb_tasks",)),
)
SECTION_NAMES = {
    "training": "Training",
    "probes": "Probes (last layer)",
    "geometry": "Geometry",
    "downstream": "Downstream",
    "mteb": "MTEB",
}


def _claim(r: Row) -> str:
    if r.direction is Direction.NON_INFERIOR:
        return f"NITP − NTP < {diff_text(r.margin, r.unit).lstrip('+')}"
    return f"NITP {r.direction.value}"


def _per_seed(r: Row, n: int) -> str:
    return ", ".join((f"s{s} " if r.n < n else "") + diff_text(d, r.unit) for s, d in zip(r.seeds, r.deltas))


def _label(r: Row, n: int) -> str:
    extra = [f"n = {r.n}"] if r.n < n else []
    extra += list(r.flags) + ([r.settings] if r.settings else [])
    return r.label + (f" [{'; '.join(extra)}]" if extra else "")


def seed_tables(rows: list[Row], study: Study, spec: Spec, base: str, other: str, alpha: float) -> list[Table]:
    """The primaries' table, then the exploratory tables (one BH family across all of them)."""
    n = len(study.seeds)
    b, o = arm_name(base), arm_name(other)
    seeds = ", ".join(f"s{s}" for s in sorted(study.seeds))
    level = f"{round(100 * spec.ci)}%"
    common = [f"{b} (mean)", f"{o} (mean)", f"Δ per seed ({seeds})", "Mean Δ", f"{level} CI", "CI covers"]
    notes = [
        f"Δ = {o} − {b} on each seed (within a seed both arms share init, data and order; across seeds both "
        "change). CI: Student-t interval of the mean Δ. Covers `seeds`: the t interval over the n seeds "
        "(training-seed noise). Covers `seeds × documents`: benchmark rows with per-document records, where every "
        "seed scores the same documents; the variance of a crossed seed × document design (ANOVA mean squares, "
        "Satterthwaite degrees of freedom) covers both. MDE: the smallest true Δ the row's test detects with 80 % "
        "power at its observed spread. Not estimable: fewer than 3 seeds, or identical Δ on every seed (no spread "
        "is not certainty). Scores in %, Δ in points; CE in nats/token. docs/report.md explains each column."
    ]
    primary = Table(
        "primary",
        f"{study.label}: primary endpoints (declared before training; Holm across {len([r for r in rows if r.family is Family.PRIMARY])})",
        ["Endpoint", "Claim", *common, "p (one-sided)", "Holm p", "MDE", "Paper's effect", "Verdict"],
        left=2,
    )
    primary.notes += notes + [
        f"p: one-sided t test in the claimed direction (non-inferiority: H0 Δ ≥ margin). Holm: family-wise error "
        f"at α = {alpha} across the declared primaries. MDE at α/m one-sided (Holm's strictest step). Paper's effect: "
        "the effect the paper reports for the claim, in this row's units; `UNDERPOWERED` when it is below the MDE."
    ]
    for r in (r for r in rows if r.family is Family.PRIMARY):
        effect = diff_text(r.paper_effect, r.unit) if r.paper_effect is not None else "—"
        if r.underpowered:
            effect += " UNDERPOWERED"
        primary.add(
            _label(r, n), _claim(r), *_common_cells(r, n), p_text(r.p), p_text(r.p_adj),
            diff_text(r.mde, r.unit).lstrip("+") if r.mde is not None else "—", effect, verdict_word(r),
        )  # fmt: skip
    tables = [primary]
    for name, title, sections in EXPLORATORY_TABLES:
        t = Table(
            name,
            f"{study.label}: {title}",
            ["Metric", *common, "p", "BH q", "MDE", "Seed SD of Δ", f"{o} higher", "Verdict"],
        )
        t.notes += notes + [
            "Exploratory: two-sided t tests; BH q = Benjamini-Hochberg false-discovery q-value across every "
            "exploratory row of the report (one family). A small q marks a hypothesis for the next study, not a "
            "finding. Flags: degenerate tasks (left out of the downstream average), scores at or below their "
            "chance or majority-answer baseline; settings that change a score follow its name."
        ]
        last = None
        for r in (r for r in rows if r.family is Family.EXPLORATORY and r.section in sections):
            label = _label(r, n)
            if len(sections) > 1:
                label = f"{SECTION_NAMES[r.section]}: {label}"
            t.add(
                label, *_common_cells(r, n), p_text(r.p), p_text(r.p_adj),
                diff_text(r.mde, r.unit).lstrip("+") if r.mde is not None else "—",
                diff_text(r.seed_sd, r.unit).lstrip("+") if r.seed_sd is not None else "—",
                f"{r.k_higher} of {r.n}", verdict_word(r), rule=last not in (None, r.section),
            )  # fmt: skip
            last = r.section
        if t.rows:
            tables.append(t)
    return [t for t in tables if t.rows]


def _common_cells(r: Row, n: int) -> list:
    return [
        value_text(float(np.mean(r.base)), r.unit),
        value_text(float(np.mean(r.other)), r.unit),
        _per_seed(r, n),
        Cell(diff_text(r.estimate.mean, r.unit), bold=r.resolved),
        interval_text(r.estimate.interval(), r.unit),
        r.estimate.covers,
    ]


def verdict_paragraph(study: Study, rows: list[Row], f: dict, alpha: float, prereg: str) -> str:
    """Primaries first, each claim with its estimate, interval, Holm p, verdict and MDE; then what the
    exploratory rows flag (never counted as findings); then the scale."""
    if not rows:
        return "**Verdict.** No metric was measured in both arms of any seed: nothing to conclude." + scale_sentence(f)
    n = len(study.seeds)
    prim = [r for r in rows if r.family is Family.PRIMARY]
    said = []
    for r in prim:
        claim = CLAIMS.get(r.key, f"{r.label} {r.direction.value}")
        what = f"mean Δ {diff_text(r.estimate.mean, r.unit)} {interval_text(r.estimate.interval(), r.unit)}"
        if r.direction is Direction.NON_INFERIOR and r.estimate.estimable:
            upper = r.estimate.interval(1 - 2 * alpha)[1]
            what += f", one-sided {round(100 * (1 - alpha))}% upper bound {diff_text(upper, r.unit)} against the margin {diff_text(r.margin, r.unit)}"
        if r.verdict is Verdict.NOT_ESTIMABLE:
            tail = f"not estimable ({r.estimate.why_not})"
        elif r.resolved:
            tail = f"supported ({verdict_word(r)}; Holm p = {p_text(r.p_adj)})"
        else:
            tail = f"not resolved at n = {n} (Holm p = {p_text(r.p_adj)}); " + (
                f"the smallest margin this design could establish is {diff_text(r.mde, r.unit).lstrip('+')}"
                if r.direction is Direction.NON_INFERIOR
                else f"the design detects {diff_text(r.mde, r.unit).lstrip('+')} or more"
            )
            lo_hi = r.estimate.interval()
            if lo_hi and (
                (lo_hi[1] < 0 and r.direction is Direction.HIGHER)
                or (lo_hi[0] > 0 and r.direction in (Direction.LOWER, Direction.NON_INFERIOR))
            ):
                tail += "; the two-sided interval excludes 0 against the claim"
        if r.underpowered and r.direction is Direction.NON_INFERIOR:
            tail += f"; underpowered for its margin ({diff_text(r.paper_effect, r.unit)})"
        elif r.underpowered:
            tail += f"; underpowered for the paper's effect ({diff_text(r.paper_effect, r.unit)}: {r.paper_source})"
        said.append(f"{claim}: {what}; {tail}")
    missing = "" if prim else " None of the declared primary endpoints was measured."
    expl = [r for r in rows if r.family is Family.EXPLORATORY]
    flagged = [r for r in expl if r.resolved]
    exploratory = (
        f"Exploratory: {len(flagged)} of {len(expl)} rows have a Benjamini-Hochberg q < {alpha}"
        + (
            " ("
            + "; ".join(f"{SECTION_NAMES.get(r.section, '')} {r.label}: {r.verdict.value.lower()}, Δ {diff_text(r.estimate.mean, r.unit)}, q = {p_text(r.p_adj)}".strip() for r in flagged)
            + ")"
            if flagged
            else ""
        )
        + "; they are hypotheses for a next study, not findings."
    )  # fmt: skip
    return (
        f"**Verdict.** Over n = {n} seed{'s' if n != 1 else ''}, primary endpoints (Holm at α = {alpha} across "
        f"{len(prim)}): "
        + "; ".join(said)
        + "."
        + missing
        + f' {prereg} {exploratory} "Not resolved" means smaller than the row\'s minimum detectable effect at '
        f"n = {n}, not evidence of no effect." + scale_sentence(f)
    )


def peak_paragraph(study: Study, arms: list[str]) -> str:
    """The paper's Fig. 1 in words: where each arm's mean probe effective rank peaks after the warm-up, how far
    it has fallen by the start of the LR decay, where it ends, and where each seed's own curve peaks."""
    from nitp_eval.report.stats import finite
    from nitp_eval.report.study_figures import mean_curve
    from nitp_eval.report.study_rows import fall_after_peak, schedule_marks

    runs = [study.seeds[s] for s in sorted(study.seeds)]
    said, per_seed = [], []
    for arm in arms[:2]:
        marks = schedule_marks(runs[0].configs.get(arm))
        per_run = [{r["step"]: r["probe_erank"] for r in run.metrics.get(arm, []) if finite(r.get("probe_erank"))}
                   for run in runs]  # fmt: skip
        if not all(per_run):
            continue
        curves = [(np.array(sorted(m)), np.array([m[k] for k in sorted(m)])) for m in per_run]
        x, mean, _, _ = mean_curve(curves)
        found = fall_after_peak(dict(zip(x.tolist(), mean.tolist())), *marks)
        if found is None:
            continue
        step, fall, end_step, end = found
        final = f"; it ends at {mean[-1]:.1f} (step {int(x[-1])})" if x[-1] > end_step else ""
        if step == end_step:
            said.append(f"{arm_name(arm)}'s is still at its highest at step {end_step} ({end:.1f}): no peak yet{final}")
        else:
            peak = end / (1 - fall)
            said.append(
                f"{arm_name(arm)}'s peaks at step {step} ({peak:.1f}) and has fallen {100 * fall:.1f} % by step "
                f"{end_step}, where the LR decay starts ({end:.1f}){final}"
            )
        steps = [fall_after_peak(m, *marks) for m in per_run]
        per_seed.append(f"{arm_name(arm)} at steps {', '.join(str(f[0]) if f else '-' for f in steps)}")
    if not said:
        return ""
    n = len(runs)
    return (
        f"**Fig. 1 (where the effective rank peaks).** The last layer's in-training probe effective rank, "
        f"averaged over the {n} seed{'s' if n != 1 else ''} and smoothed over 5 probes (cut at the decay's start): "
        + "; ".join(said)
        + ". Each seed's own smoothed curve is highest (before the decay) at: "
        + "; ".join(per_seed)
        + " (seeds in order); the exploratory row 'fall after its peak' compares the arms seed by seed."
    )
