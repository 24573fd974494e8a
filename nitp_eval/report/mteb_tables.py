"""The MTEB tables (paper Table 6): groups and tasks of frozen mean-pooled embeddings."""

from __future__ import annotations

import numpy as np

from nitp_eval.report.common import MTEB_GROUPS, NA, arm_name, bold_best, check_steps, pct, pct_delta, pick, run_arms
from nitp_eval.report.load import Run
from nitp_eval.report.spec import Spec
from nitp_eval.report.stats import finite
from nitp_eval.report.table import Cell, Table

# uniform-chance accuracy (1 / classes) of the paper's MTEB classification tasks: a score at or below it
# says the embedding carries no usable signal for the task
MTEB_CHANCE = {
    "AmazonCounterfactualClassification": 1 / 2,
    "AmazonReviewsClassification": 1 / 5,
    "Banking77Classification": 1 / 77,
    "EmotionClassification": 1 / 6,
    "MTOPDomainClassification": 1 / 11,
    "MTOPIntentClassification": 1 / 113,
    "MassiveIntentClassification": 1 / 60,
    "MassiveScenarioClassification": 1 / 18,
    "ToxicConversationsClassification": 1 / 2,
    "TweetSentimentExtractionClassification": 1 / 3,
}


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
    check_steps(run, "mteb", picked, notes)
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
        bold = bold_best(means)
        deltas = [Cell(pct_delta(means[0], means[j])) for j in range(1, len(arms))]
        # a group of one task is that task, named as such (not a group score)
        name = f"{g} ({len(members)} of {of.get('of', '?')})" if len(members) > 1 else f"{g}: only {members[0]}"
        groups.add(
            name,
            *[Cell(pct(m), b) for m, b in zip(means, bold)],
            *deltas,
            rule=(g == "Overall"),
        )

    per_task = Table(
        "mteb_tasks" + suffix, title + " per task", ["Task", "Group", "Metric", *heads, "Chance", "n"], left=3
    )
    per_task.notes.append(
        "n = rows evaluated; (limit) = a --limit subsample, not comparable to published scores. Chance = uniform-"
        "chance accuracy (1 / classes) of classification tasks; ≤ = at or below it, never bold. Δ has no interval: "
        "MTEB results hold no per-item records (one seed; a study gives intervals over seeds)."
    )
    limited = [t for t in common if tasks[base][t].get("limited")]
    if limited:
        groups.notes.append(
            f"{len(limited)} of {len(common)} tasks evaluated on --limit subsamples (n in the per-task table): "
            "not comparable to published scores."
        )
    for t in common:
        vals = [tasks[a][t]["main_score"] for a in arms]
        chance = MTEB_CHANCE.get(t)
        bold = bold_best(vals, chance)
        n_eval = tasks[base][t].get("n_eval") or {}
        rows = sum(v for v in n_eval.values() if isinstance(v, int)) if n_eval else None
        per_task.add(
            t,
            tasks[base][t].get("group", ""),
            tasks[base][t].get("main_score_name", ""),
            *[Cell(pct(v) + ("≤" if chance is not None and v <= chance else ""), b) for v, b in zip(vals, bold)],
            *[Cell(pct_delta(vals[0], v)) for v in vals[1:]],
            pct(chance) if chance is not None else "",
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
