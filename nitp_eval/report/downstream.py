"""The downstream tables (paper Table 1, ablation Tables 3, 7, 8) from lm results, with paired bootstrap CIs."""

from __future__ import annotations

import numpy as np

from nitp_eval.report.common import (
    NA,
    SINGLE_SEED_NOTE,
    arm_name,
    bold_best,
    check_steps,
    delta_cell,
    ordered_tasks,
    pct,
    pick,
    row_label,
    run_arms,
    shown,
    task_name,
)  # fmt: skip
from nitp_eval.report.load import Result, Run
from nitp_eval.report.spec import Spec, Variant
from nitp_eval.report.stats import finite, mean_delta, paired_samples
from nitp_eval.report.table import Cell, Table


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


def degenerate_tasks(results: list[Result], tasks: list[str]) -> dict[str, str]:
    """Tasks whose scores measure answer bias, not skill, in any of `results` -> why. Left out of averages."""
    out = {}
    for t in tasks:
        recs = [(r.data.get("tasks") or {}).get(t) or {} for r in results]
        if any((x.get("answers") or {}).get("degenerate") for x in recs):
            out[t] = "one answer to at least 90 % of the questions in some arm"
        elif recs and all(x.get("output_type") == "generate_until" for x in recs) and all(
            lm_score(r, t) == 0 for r in results
        ):  # fmt: skip
            out[t] = "scores 0 in every arm"
    return out


def generation_settings(results: list[Result], task: str) -> str:
    """The generation cap a score depends on (e.g. max_gen_toks=32), as the results record it."""
    caps = {
        ((r.data.get("tasks") or {}).get(task) or {}).get("generation_kwargs", {}).get("max_gen_toks") for r in results
    }
    return ", ".join(f"max_gen_toks={m}" for m in sorted(caps - {None}))


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
        f"Best per model in bold: one best only (no bold on a tie), and never a score at or below the task's "
        f"majority-answer baseline. Δ rows: difference [{ci} paired bootstrap CI over documents, "
        f"{spec.n_boot} resamples, seed {spec.seed}]; * = the CI excludes 0. Δ = difference of the "
        f"shown scores. Avg. = unweighted mean over the tasks every arm has, degenerate tasks left out (marked "
        f'k/{len(tasks)} when fewer). n = documents scored ("k of N": a --limit subsample of the task\'s N '
        "documents, not a full evaluation). Majority answer = the score of always giving the most frequent gold "
        "answer; ≤ = at or below it. ! = degenerate: the arm gave one answer to at least 90 % of the questions, "
        "or a generation task scores 0 in every arm (its score measures answer bias or the generation cap, not "
        "skill). Generation cap = max_gen_toks of generation tasks."
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
        check_steps(run, "lm", picked, notes)
        scores = {a: [lm_score(picked[a], t) for t in tasks] for a in arms}
        for a in arms:
            for t, s in zip(tasks, scores[a]):
                if s is None:
                    why = "has no score" if t in picked[a].data.get("tasks", {}) else "missing"
                    notes.append(f"{run.label}: task {t} {why} in {picked[a].path.name}")
        degenerate = degenerate_tasks([picked[a] for a in arms], tasks)
        # the average leaves out degenerate tasks (their scores measure answer bias) and tasks an arm lacks
        common = [i for i, t in enumerate(tasks) if all(scores[a][i] is not None for a in arms) and t not in degenerate]
        avg = {a: (float(np.mean([scores[a][i] for i in common])) if common else None) for a in arms}
        cover = "" if len(common) == len(tasks) else f" ({len(common)}/{len(tasks)})"
        columns = [[scores[a][i] for a in arms] for i in range(len(tasks))] + [[avg[a] for a in arms]]
        floors = [(lm_answers(picked[arms[0]], t) or {}).get("majority_baseline") for t in tasks] + [None]
        bold = [bold_best(col, floor) for col, floor in zip(columns, floors)]
        if degenerate:
            notes.append(
                f"{run.label}: Avg. leaves out the degenerate task(s) "
                + "; ".join(f"{task_name(t)} ({why})" for t, why in degenerate.items())
            )
        for j, a in enumerate(arms):
            flags = [
                ("!" if t in degenerate else "") + ("≤" if finite(s) and finite(f) and shown(s) <= shown(f) else "")
                for t, s, f in zip(tasks, scores[a], floors)
            ] + [""]
            cells = [
                Cell(pct(col[j]) + flags[i] + (cover if i == len(tasks) and finite(col[j]) else ""), bold[i][j])
                for i, col in enumerate(columns)
            ]
            table.add(row_label(run, a, len(runs) > 1), *cells, rule=(j == 0))
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
            table.add(f"Δ {row_label(run, a, len(runs) > 1)} − {arm_name(base)}", *cells)
        # what the scores are: documents scored and the majority-answer baseline (of the first arm)
        first = picked[arms[0]]
        suffix = f" {run.label}" if len(runs) > 1 else ""
        table.add(f"n{suffix}", *[count_cell(first, t) for t in tasks], Cell(""))
        majority = [(lm_answers(first, t) or {}).get("majority_baseline") for t in tasks]
        if any(m is not None for m in majority):
            table.add(f"Majority answer{suffix}", *[Cell(pct(m)) for m in majority], Cell(""))
        caps = [generation_settings([picked[a] for a in arms], t) for t in tasks]
        if any(caps):
            table.add(
                f"Generation cap{suffix}",
                *[Cell(c.replace("max_gen_toks=", "") + (" tok" if c else "")) for c in caps],
                Cell(""),
            )
            for t, c in zip(tasks, caps):
                if c and t in degenerate:
                    notes.append(
                        f"{run.label}: {task_name(t)} generates at most {c.split('=')[1]} tokens here (--gen-kwargs "
                        "max_gen_toks): too few for a worked answer, so its 0 can be the cap, not the model"
                    )
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
    bold = [bold_best(c) for c in cols]
    base_v, base_run, base_res = rows[0]
    for j, (v, run, res) in enumerate(rows):
        delta = Cell("")
        if j > 0 and common:
            pairs = lm_pairs(run, base_res, res, [tasks[i] for i in common], notes)
            _, d = mean_delta(pairs, spec.n_boot, spec.seed, spec.ci) if len(pairs) == len(common) else (None, None)
            delta = delta_cell(avgs[0], avgs[j], d)
        table.add(v.label, *[Cell(pct(c[j]), bold[i][j]) for i, c in enumerate(cols)], delta)
    return table
