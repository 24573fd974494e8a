"""What every report table shares: names of arms and tasks, number formats, picking an arm's result.

Scores from lm/mteb results (fractions 0-1) are shown as percentages with two decimals, like the paper.
Each table builder appends what it could not find or had to work around to `notes`; the report prints
those in its "Missing inputs and caveats" section.
"""

from __future__ import annotations

from nitp_eval.report.load import Result, Run
from nitp_eval.report.spec import Spec
from nitp_eval.report.stats import Delta, finite
from nitp_eval.report.table import Cell

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
# geometry schema 2's further per-layer metrics (docs/geometry.md): results key -> (label, decimals)
EXTRA_LAYER_METRICS = {
    "rankme": ("RankMe", 2),
    "alpha_req": ("α-ReQ (spectral decay)", 4),
    "twonn": ("TwoNN intrinsic dimension", 2),
    "prompt_entropy": ("prompt entropy", 4),
    "dataset_entropy": ("dataset entropy", 4),
    "curvature": ("curvature (rad)", 4),
}
# per-checkpoint metrics of the unembedding (results `unembedding`): key -> (label, decimals)
UNEMBEDDING_METRICS = {
    "erank": ("unembedding effective rank", 2),
    "top_k_share": ("last-layer variance in the head's top directions", 4),
}
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


def row_label(run: Run, arm: str, many_runs: bool) -> str:
    return f"{run.label} {arm_name(arm)}" if many_runs else arm_name(arm)


def bold_best(values: list[float | None], floor: float | None = None) -> list[bool]:
    """Bold the one best score as shown (two decimals): a tie has no best, and a score at or below `floor`
    (the task's chance or majority-answer baseline) is never best."""
    known = [shown(v) for v in values if finite(v)]
    if len(known) < 2 or known.count(max(known)) > 1 or (finite(floor) and max(known) <= shown(floor)):
        return [False] * len(values)
    return [finite(v) and shown(v) == max(known) for v in values]


def check_steps(run: Run, kind: str, picked: dict[str, Result | None], notes: list[str]) -> None:
    steps = {a: r.step for a, r in picked.items() if r is not None}
    if len(set(steps.values())) > 1:
        notes.append(
            f"{run.label}: {kind} results compare different steps: "
            + ", ".join(f"{arm_name(a)} step {s}" for a, s in steps.items())
        )
