"""The report's tables, built from loaded runs (load.py) alone.

Scores from lm/mteb results (fractions 0-1) are shown as percentages with two decimals, like the
paper. Each builder appends what it could not find or had to work around to `notes`; the report
prints those in its "Missing inputs and caveats" section.
"""

from __future__ import annotations

import numpy as np

from nitp_eval.report.comparable import check_geometry_comparable, erank_bias_note
from nitp_eval.report.load import Result, Run
from nitp_eval.report.spec import Spec, Variant
from nitp_eval.report.stats import Delta, finite, mean_delta, paired_samples
from nitp_eval.report.table import Cell, Table

# The paper's benchmark order and short names (Table 1); other tasks follow by name.
TASK_NAMES = {
    "mmlu": "MMLU",
    "mmlu_pro": "MMLU-Pro",
    "c3": "C3",
    "commonsense_qa": "CSQA",
    "arc_challenge": "ARC-C",
    "gsm8k": "GSM8k",
    "bbh": "BBH",
    "lcbench": "LCBench",
}
ARM_NAMES = {"ntp": "NTP", "nitp": "NITP", "cosine_reg": "Cosine reg."}
MTEB_GROUPS = ("Classification", "STS", "Retrieval/Dup")
NA = "n/a"
SINGLE_SEED_NOTE = (
    "One training seed per arm: these CIs cover evaluation (document) noise only, not training-seed noise, so a "
    "starred Δ can still be the seed; `nitp-train pair --seeds 0,1,2` and a report of the study dir separate the two."
)
NOT_RECORDED = "not recorded"


def arm_name(arm: str) -> str:
    return ARM_NAMES.get(arm, arm)


def task_name(task: str) -> str:
    return TASK_NAMES.get(task, task)


def fmt(x, spec: str = "{:.4f}") -> str:
    return spec.format(x) if finite(x) else NA


def pct(x: float | None, sign: bool = False) -> str:
    return fmt(100 * x if finite(x) else None, "{:+.2f}" if sign else "{:.2f}")


def shown(x: float) -> float:
    """A score as the table shows it (percent, two decimals)."""
    return float(pct(x))


def pct_delta(base: float | None, other: float | None) -> str:
    """other − base as the difference of the two shown scores, so every row adds up as printed
    and bold, Δ and the tasks-improved count always agree."""
    if not (finite(base) and finite(other)):
        return NA
    return f"{shown(other) - shown(base):+.2f}"


def delta_cell(base: float | None, other: float | None, d: Delta | None) -> Cell:
    """`+5.71*` with `[+4.10, +7.30]`: the difference, `*` when the CI excludes zero, and the CI."""
    text = pct_delta(base, other)
    if d is None or text == NA:
        return Cell(text)
    return Cell(f"{text}{'*' if d.significant else ''}", ci=f"[{pct(d.lo, True)}, {pct(d.hi, True)}]")


def pick(run: Run, kind: str, arm: str, step: int | None) -> Result | None:
    """The arm's result at `step`, or its latest when step is None."""
    if step is None:
        return run.latest(kind, arm)
    return run.results.get(kind, {}).get(arm, {}).get(step)


def run_arms(run: Run, spec: Spec) -> list[str]:
    """The arms to show, baseline first: the spec's list, or every arm of the run.

    Arms without results of some kind stay in the list, so the tables report them as missing.
    """
    arms = spec.arms or run.arms
    if spec.baseline in arms:
        arms = [spec.baseline] + [a for a in arms if a != spec.baseline]
    return arms


def ordered_tasks(names) -> list[str]:
    paper = list(TASK_NAMES)
    return sorted(set(names), key=lambda t: (paper.index(t) if t in paper else len(paper), t))


def _row_label(run: Run, arm: str, many_runs: bool) -> str:
    return f"{run.label} {arm_name(arm)}" if many_runs else arm_name(arm)


def _bold_best(values: list[float | None]) -> list[bool]:
    """Bold the best score as shown (two decimals): ties as displayed are all bold."""
    known = [shown(v) for v in values if finite(v)]
    if len(known) < 2:
        return [False] * len(values)
    return [finite(v) and shown(v) == max(known) for v in values]


def _check_steps(run: Run, kind: str, picked: dict[str, Result | None], notes: list[str]) -> None:
    steps = {a: r.step for a, r in picked.items() if r is not None}
    if len(set(steps.values())) > 1:
        notes.append(
            f"{run.label}: {kind} results compare different steps: "
            + ", ".join(f"{arm_name(a)} step {s}" for a, s in steps.items())
        )


# --- downstream (paper Table 1) -------------------------------------------------------------------


def lm_score(res: Result, task: str) -> float | None:
    """The task's primary metric, or None (task absent, or a group lm-eval gives no aggregate score)."""
    t = res.data.get("tasks", {}).get(task)
    if not t or t.get("primary") is None:
        return None
    score = (t.get("metrics") or {}).get(t["primary"])
    return score if finite(score) else None


def lm_count(res: Result, task: str) -> tuple[int | None, int | None]:
    """(documents scored, documents in the task's split): fewer scored means a --limit subsample."""
    t = res.data.get("tasks", {}).get(task) or {}
    return t.get("n_samples"), t.get("n_docs")


def subsampled(res: Result, task: str) -> bool:
    n, of = lm_count(res, task)
    return n is not None and of is not None and n < of


def count_cell(res: Result, task: str) -> Cell:
    n, of = lm_count(res, task)
    if n is None:
        return Cell(NA)
    return Cell(f"{n} of {of}" if subsampled(res, task) else f"{n}")


def lm_answers(res: Result, task: str) -> dict | None:
    """The answer-concentration record `nitp-eval lm` wrote for the task (nitp_eval.lm.evaluate), or None."""
    return (res.data.get("tasks", {}).get(task) or {}).get("answers")


def lm_pairs(run: Run, base: Result, other: Result, tasks: list[str], notes: list[str]) -> dict:
    """Per-task paired per-document values of the primary metric, for the tasks that have samples."""
    pairs = {}
    for task in tasks:
        if lm_score(base, task) is None or lm_score(other, task) is None:
            continue
        metric = base.data["tasks"][task]["primary"]
        sa, sb = base.data.get("samples", {}).get(task), other.data.get("samples", {}).get(task)
        if not sa or not sb:
            notes.append(
                f"{run.label}: no per-sample records for {task} in "
                f"{', '.join(r.path.name for r, s in ((base, sa), (other, sb)) if not s)}; its delta has no CI"
            )
            continue
        a, b = paired_samples(sa, sb, metric)
        if len(a) == 0:
            notes.append(f"{run.label}: {task}: the two arms share no doc_id; no CI")
            continue
        if len(a) < max(len(sa), len(sb)):
            notes.append(
                f"{run.label}: {task}: {len(a)} documents scored by both arms "
                f"({len(sa)} vs {len(sb)} records); the CI uses the common ones"
            )
        for res, s in ((base, sa), (other, sb)):
            m = float(np.mean([float(r[metric]) for r in s if finite(r.get(metric))]))
            if abs(m - lm_score(res, task)) > 1e-6:
                notes.append(
                    f"{run.label}: {task}: mean of per-sample {metric} in {res.path.name} is "
                    f"{100 * m:.2f}, the reported score {pct(lm_score(res, task))}; the CI is from the samples"
                )
        pairs[task] = (a, b)
    return pairs


def downstream_table(runs: list[Run], spec: Spec, notes: list[str]) -> Table | None:
    picked_all = {run.label: {a: pick(run, "lm", a, spec.step) for a in run_arms(run, spec)} for run in runs}
    found = [(r, t) for p in picked_all.values() for r in p.values() if r for t in r.data.get("tasks", {})]
    tasks = spec.tasks or ordered_tasks(t for r, t in found if lm_score(r, t) is not None)
    for r, t in found:
        if lm_score(r, t) is None and t not in tasks:
            notes.append(f"{r.path.name}: task {t} has no score (no primary metric); left out")
    if not tasks:
        return None
    ci = f"{round(100 * spec.ci)}%"
    table = Table(
        "downstream",
        f"Downstream benchmarks (%); Δ = arm − baseline with paired bootstrap {ci} CI",
        ["Model", *[task_name(t) for t in tasks], "Avg."],
    )
    table.notes.append(
        f"Best per model in bold. Δ rows: difference [{ci} paired bootstrap CI over documents, "
        f"{spec.n_boot} resamples, seed {spec.seed}]; * = the CI excludes 0. Δ = difference of the "
        f"shown scores. Avg. = unweighted mean over the tasks every arm has (marked k/{len(tasks)} "
        'when fewer). n = documents scored ("k of N": a --limit subsample of the task\'s N documents, not a '
        "full evaluation). Majority answer = the score of always giving the most frequent gold answer; "
        "! = the arm gave one answer to at least 90 % of the questions (a degenerate task: its score mostly "
        "measures how often that answer is right)."
    )
    table.notes.append(SINGLE_SEED_NOTE)
    for run in runs:
        picked = picked_all[run.label]
        arms = [a for a, r in picked.items() if r is not None]
        for a, r in picked.items():
            if r is None:
                notes.append(
                    f"{run.label}: no lm results for arm {a}"
                    + (f" at step {spec.step}" if spec.step is not None else "")
                )
        if not arms:
            continue
        _check_steps(run, "lm", picked, notes)
        scores = {a: [lm_score(picked[a], t) for t in tasks] for a in arms}
        for a in arms:
            for t, s in zip(tasks, scores[a]):
                if s is None:
                    why = "has no score" if t in picked[a].data.get("tasks", {}) else "missing"
                    notes.append(f"{run.label}: task {t} {why} in {picked[a].path.name}")
        common = [i for i in range(len(tasks)) if all(scores[a][i] is not None for a in arms)]
        avg = {a: (float(np.mean([scores[a][i] for i in common])) if common else None) for a in arms}
        cover = "" if len(common) == len(tasks) else f" ({len(common)}/{len(tasks)})"
        columns = [[scores[a][i] for a in arms] for i in range(len(tasks))] + [[avg[a] for a in arms]]
        bold = [_bold_best(col) for col in columns]
        for j, a in enumerate(arms):
            flags = ["!" if (lm_answers(picked[a], t) or {}).get("degenerate") else "" for t in tasks] + [""]
            cells = [
                Cell(pct(col[j]) + flags[i] + (cover if i == len(tasks) and finite(col[j]) else ""), bold[i][j])
                for i, col in enumerate(columns)
            ]
            table.add(_row_label(run, a, len(runs) > 1), *cells, rule=(j == 0))
            for t in tasks:
                ans = lm_answers(picked[a], t)
                if ans and ans["degenerate"]:
                    notes.append(
                        f"{run.label}: {arm_name(a)} gives answer {ans['top_answer']!r} to {ans['top_share']:.0%} of "
                        f"the {ans['n']} {t} questions (majority-answer baseline {pct(ans['majority_baseline'])} %): "
                        "a degenerate task; its score, and any delta on it, measure answer bias"
                        + ("; try the cloze variant (--suite paper-cloze)" if t == "commonsense_qa" else "")
                    )
        base = arms[0]
        for a in arms[1:]:
            pairs = lm_pairs(run, picked[base], picked[a], [tasks[i] for i in common], notes)
            per_task, avg_ci = mean_delta(pairs, spec.n_boot, spec.seed, spec.ci)
            if len(pairs) < len(common):  # a task without samples: the average has no CI
                avg_ci = None
            cells = []
            for i, t in enumerate(tasks):
                if scores[a][i] is None or scores[base][i] is None:
                    cells.append(Cell(NA))
                else:
                    cells.append(delta_cell(scores[base][i], scores[a][i], per_task.get(t)))
            cells.append(delta_cell(avg[base], avg[a], avg_ci) if common else Cell(NA))
            table.add(f"Δ {_row_label(run, a, len(runs) > 1)} − {arm_name(base)}", *cells)
        # what the scores are: documents scored and the majority-answer baseline (of the first arm)
        first = picked[arms[0]]
        suffix = f" {run.label}" if len(runs) > 1 else ""
        table.add(f"n{suffix}", *[count_cell(first, t) for t in tasks], Cell(""))
        majority = [(lm_answers(first, t) or {}).get("majority_baseline") for t in tasks]
        if any(m is not None for m in majority):
            table.add(f"Majority answer{suffix}", *[Cell(pct(m)) for m in majority], Cell(""))
        for t in tasks:
            counts = {lm_count(picked[a], t) for a in arms if lm_score(picked[a], t) is not None}
            if len(counts) > 1:
                notes.append(f"{run.label}: {t}: the arms scored different numbers of documents {sorted(counts)}")
        limited = [t for t in tasks if subsampled(first, t)]
        if limited:
            notes.append(
                f"{run.label}: {', '.join(limited)} scored on --limit subsamples (row n): not full evaluations"
            )
    return table if table.rows else None


# --- MTEB (paper Table 6) ---------------------------------------------------------------------------


def mteb_tables(run: Run, spec: Spec, notes: list[str], suffix: str = "") -> list[Table]:
    picked = {a: pick(run, "mteb", a, spec.step) for a in run_arms(run, spec)}
    listed: dict[str, list[str]] = {}  # one note per distinct task list, naming every file that has it
    for a, r in picked.items():
        if r is None:
            notes.append(f"{run.label}: no mteb results for arm {a}")
        else:
            for key, what in (("missing", "not evaluated (no data)"), ("failed", "whose evaluation failed")):
                if r.data.get(key):
                    reasons = r.data.get(f"{key}_reasons") or {}
                    text = f"{len(r.data[key])} MTEB task(s) {what}: " + ", ".join(
                        f"{t} ({reasons[t]})" if reasons.get(t) else str(t) for t in sorted(map(str, r.data[key]))
                    )
                    listed.setdefault(text, []).append(r.path.name)
    notes += [
        f"{run.label}: {' and '.join(files)} list{'s' if len(files) == 1 else ''} {text}"
        for text, files in listed.items()
    ]
    arms = [a for a, r in picked.items() if r is not None]
    if not arms:
        return []
    _check_steps(run, "mteb", picked, notes)
    tasks = {
        a: {t: v for t, v in (picked[a].data.get("tasks") or {}).items() if finite(v.get("main_score"))} for a in arms
    }
    for a in arms:
        unscored = sorted(set(picked[a].data.get("tasks") or {}) - set(tasks[a]))
        if unscored:
            notes.append(
                f"{run.label}: {picked[a].path.name}: no main_score (null) for {', '.join(unscored)}; left out"
            )
    common = sorted(
        set.intersection(*(set(t) for t in tasks.values())),
        key=lambda t: (_group_index(tasks[arms[0]][t].get("group", "")), t),
    )
    base, others = arms[0], arms[1:]
    heads = [arm_name(a) for a in arms] + [f"Δ {arm_name(a)}" for a in others]
    title = f"{run.label}: MTEB (%), frozen mean-pooled last-layer states"

    groups = Table("mteb_groups" + suffix, title + " by group", ["Group", *heads])
    groups.notes.append(
        "Means over the tasks that every arm has (n of the suite's tasks). Best in bold; "
        "Δ = difference of the shown values."
    )
    first = picked[base].data
    for g in [*MTEB_GROUPS, "Overall"]:
        members = [t for t in common if g == "Overall" or tasks[base][t].get("group") == g]
        of = (first.get("overall") if g == "Overall" else first.get("groups", {}).get(g, {})) or {}
        if not members:
            notes.append(f"{run.label}: MTEB group {g}: no task evaluated by every arm")
            continue
        means = [float(np.mean([tasks[a][t]["main_score"] for t in members])) for a in arms]
        bold = _bold_best(means)
        deltas = [Cell(pct_delta(means[0], means[j])) for j in range(1, len(arms))]
        groups.add(
            f"{g} ({len(members)} of {of.get('of', '?')})",
            *[Cell(pct(m), b) for m, b in zip(means, bold)],
            *deltas,
            rule=(g == "Overall"),
        )

    per_task = Table("mteb_tasks" + suffix, title + " per task", ["Task", "Group", "Metric", *heads, "n"], left=3)
    per_task.notes.append("n = rows evaluated; (limit) = a --limit subsample, not comparable to published scores.")
    limited = [t for t in common if tasks[base][t].get("limited")]
    if limited:
        groups.notes.append(
            f"{len(limited)} of {len(common)} tasks evaluated on --limit subsamples (n in the per-task table): "
            "not comparable to published scores."
        )
    for t in common:
        vals = [tasks[a][t]["main_score"] for a in arms]
        bold = _bold_best(vals)
        n_eval = tasks[base][t].get("n_eval") or {}
        rows = sum(v for v in n_eval.values() if isinstance(v, int)) if n_eval else None
        per_task.add(
            t,
            tasks[base][t].get("group", ""),
            tasks[base][t].get("main_score_name", ""),
            *[Cell(pct(v), b) for v, b in zip(vals, bold)],
            *[Cell(pct_delta(vals[0], v)) for v in vals[1:]],
            (NA if rows is None else str(rows)) + (" (limit)" if tasks[base][t].get("limited") else ""),
        )
    for a in others:
        # counted on the shown differences, so the count agrees with the table's Δ and bold
        diffs = {t: pct_delta(tasks[base][t]["main_score"], tasks[a][t]["main_score"]) for t in common}
        up = sum(float(d) > 0 for d in diffs.values())
        drops = ", ".join(f"{t} {d}" for t, d in sorted(diffs.items()) if float(d) <= 0)
        line = f"{arm_name(a)} improves {up} of {len(common)} tasks over {arm_name(base)}" + (
            f" (not improved: {drops})" if drops else ""
        )
        groups.notes.append(line + ".")
        per_task.notes.append(line + ".")
    only = sorted(set.union(*(set(t) for t in tasks.values())) - set(common))
    if only:
        notes.append(f"{run.label}: MTEB task(s) left out because not every arm has them: {', '.join(only)}")
    return [groups, per_task]


def _group_index(group: str) -> int:
    return MTEB_GROUPS.index(group) if group in MTEB_GROUPS else len(MTEB_GROUPS)


# --- geometry -----------------------------------------------------------------------------------

GEOMETRY_COLUMNS = (
    ("erank_cov", "Eff. rank (cov)", "{:.2f}"),
    ("erank_sv", "Eff. rank (sv)", "{:.2f}"),
    ("anisotropy", "Anisotropy", "{:.4f}"),
    ("anisotropy_exact", "Anisotropy (exact)", "{:.4f}"),
)


def geometry_table(runs: list[Run], spec: Spec, notes: list[str]) -> Table | None:
    table = Table(
        "geometry",
        "Last-layer geometry",
        ["Model", "Step", "Tokens", "Layer", *[c for _, c, _ in GEOMETRY_COLUMNS], "cos(h_t, z_t+1)", "Projector cos"],
    )
    table.notes.append(
        "Layer = the last analysed hidden_states index (0 = embeddings). Eff. rank: Roy & Vetterli entropy effective rank "
        "of the centred covariance spectrum (cov) or of the singular values (sv). Anisotropy: mean "
        "cosine of random cross-sequence token pairs (exact: all pairs). cos(h_t, z_t+1): last-layer "
        "state vs target-layer k state at t+1; Projector cos = 1 − L_NITP (NITP arms)."
    )
    # every result in the table must have been measured on the same tokens the same way
    compared = [pick(run, "geometry", a, spec.step) for run in runs for a in run_arms(run, spec)]
    check_geometry_comparable(compared, spec.allow_mismatch, notes, "geometry table")
    bias = erank_bias_note(compared)
    if bias:
        table.notes.append(bias)
    for run in runs:
        arms = run_arms(run, spec)
        picked = {a: pick(run, "geometry", a, spec.step) for a in arms}
        _check_steps(run, "geometry", picked, notes)
        for j, a in enumerate(arms):
            r = picked[a]
            if r is None:
                notes.append(f"{run.label}: no geometry results for arm {a}")
                continue
            d = r.data
            per_layer = d.get("per_layer") or {}
            cells = [fmt(per_layer[k][-1], f) if per_layer.get(k) else NA for k, _, f in GEOMETRY_COLUMNS]
            al = d.get("alignment") or {}
            cos = f"{al['cos_next']:.4f} (k={al.get('target_layer')})" if finite(al.get("cos_next")) else NA
            layer = (d.get("layers") or [None])[-1]
            table.add(
                _row_label(run, a, len(runs) > 1),
                fmt(r.step, "{}"),
                fmt(d.get("tokens"), "{}"),
                fmt(layer, "{}"),
                *cells,
                cos,
                fmt(al.get("projector_cos")),
                rule=(j == 0),
            )
    return table if table.rows else None


# --- training: CE preserved, cost ---------------------------------------------------------------


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
                _row_label(run, a, len(runs) > 1),
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
                _row_label(run, a, len(runs) > 1),
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


# --- ablations (paper Tables 3, 7, 8) -------------------------------------------------------------


def ablation_table(runs: list[Run], spec: Spec, notes: list[str]) -> Table | None:
    """One row per variant (run, arm); the first variant is the baseline of the Δ column."""
    by_label = {r.label: r for r in runs} | {str(r.path): r for r in runs}
    variants = spec.variants or [
        Variant(r.label, a, f"{r.label} {arm_name(a)}" if len(runs) > 1 else arm_name(a))
        for r in runs
        for a in run_arms(r, spec)
    ]
    rows = []
    for v in variants:
        run = by_label.get(v.run)
        if run is None:
            notes.append(
                f"ablation: variant {v.label!r} names run {v.run!r}, not one of {sorted(r.label for r in runs)}"
            )
            continue
        res = pick(run, "lm", v.arm, spec.step)
        if res is None:
            notes.append(f"ablation: no lm results for {v.run} arm {v.arm} (variant {v.label!r})")
            continue
        rows.append((v, run, res))
    if not rows:
        return None
    tasks = spec.tasks or ordered_tasks(
        t for _, _, r in rows for t in r.data.get("tasks", {}) if lm_score(r, t) is not None
    )
    scores = [[lm_score(r, t) for t in tasks] for _, _, r in rows]
    common = [i for i in range(len(tasks)) if all(s[i] is not None for s in scores)]
    ci = f"{round(100 * spec.ci)}%"
    table = Table(
        "ablation",
        f"Ablations (%): average over {len(common)} task(s); Δ vs {rows[0][0].label}",
        ["Variant", *[task_name(tasks[i]) for i in common], "Avg.", f"Δ Avg. [{ci} CI]"],
    )
    table.notes.append(
        f"Δ = variant avg − baseline avg with a paired bootstrap {ci} CI ({spec.n_boot} resamples, "
        f"seed {spec.seed}); * = the CI excludes 0; Δ = difference of the shown averages. Best per column in bold."
    )
    table.notes.append(SINGLE_SEED_NOTE)
    nobody = [tasks[i] for i in range(len(tasks)) if all(s[i] is None for s in scores)]
    some = [tasks[i] for i in range(len(tasks)) if i not in common and tasks[i] not in nobody]
    if nobody:
        notes.append(f"ablation: no variant has a score for {', '.join(nobody)}; left out")
    for t in some:
        lacking = [v.label for (v, _, _), sc in zip(rows, scores) if sc[tasks.index(t)] is None]
        notes.append(
            f"ablation: {t} left out because {len(lacking)} of {len(rows)} variants lack it: {', '.join(lacking)}"
        )
    avgs = [float(np.mean([s[i] for i in common])) if common else None for s in scores]
    cols = [[s[i] for s in scores] for i in common] + [avgs]
    bold = [_bold_best(c) for c in cols]
    base_v, base_run, base_res = rows[0]
    for j, (v, run, res) in enumerate(rows):
        delta = Cell("")
        if j > 0 and common:
            pairs = lm_pairs(run, base_res, res, [tasks[i] for i in common], notes)
            _, d = mean_delta(pairs, spec.n_boot, spec.seed, spec.ci) if len(pairs) == len(common) else (None, None)
            delta = delta_cell(avgs[0], avgs[j], d)
        table.add(v.label, *[Cell(pct(c[j]), bold[i][j]) for i, c in enumerate(cols)], delta)
    return table
