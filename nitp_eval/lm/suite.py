"""Benchmark suites: which lm-eval tasks, their few-shot counts and primary metrics, in one place.

The paper (Table 1/2) reports MMLU-Pro, C3, CommonsenseQA, ARC-Challenge and GSM8k but does not
state its few-shot settings, so the suite keeps lm-eval's own defaults (and OpenCompass's 0-shot for
C3, which lm-eval lacks). The counts are written into the generated task configs, so a newer
lm-eval with other defaults still runs this suite as documented here.

Metric names are lm-eval's "metric,filter" keys with the trivial filter ",none" dropped:
"acc", "acc_norm", "exact_match,flexible-extract", ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nitp_train.errors import UserError

# The C3 task (and any other task this project ships), in lm-eval's YAML format: --include_path this dir.
TASKS_DIR = Path(__file__).resolve().parent / "tasks"


@dataclass(frozen=True)
class SuiteTask:
    name: str  # lm-eval task or group name (also the sub-directory of --data-dir holding its jsonl)
    num_fewshot: int
    primary: str  # metric reported in tables
    note: str = ""


SUITES: dict[str, tuple[SuiteTask, ...]] = {
    "paper": (
        SuiteTask(
            "mmlu_pro",
            5,
            "exact_match,custom-extract",
            "group of 14 per-category generative CoT tasks, first 5 validation questions of the category as shots",
        ),
        SuiteTask(
            "c3",
            0,
            "acc",
            "shipped here (nitp_eval/lm/tasks/c3.yaml); OpenCompass-style prompt, whole dev set "
            "(OpenCompass scores its dialogue part only, as far as known: task c3_dialogue)",
        ),
        SuiteTask("commonsense_qa", 0, "acc", "validation split, lettered options A-E"),
        SuiteTask("arc_challenge", 0, "acc_norm", "test split"),
        SuiteTask(
            "gsm8k",
            5,
            "exact_match,flexible-extract",
            "5-shot from train; flexible-extract (last number) is closest to OpenCompass's GSM8k post-processing",
        ),
    ),
}
# The paper's suite with CommonsenseQA scored on the answer texts (cloze) instead of the letters A-E:
# models too small to map options to letters answer one letter throughout, and the lettered score then
# measures that letter's share (docs/lm-eval.md, "Small models"). lm-eval offers no cloze form of
# MMLU-Pro (generative CoT) or of CSQA; ARC-Challenge is already cloze.
SUITES["paper-cloze"] = tuple(
    SuiteTask(
        "commonsense_qa_cloze",
        0,
        "acc_norm",
        "shipped here (nitp_eval/lm/tasks/commonsense_qa_cloze.yaml): the option texts scored after the question; "
        "acc_norm as for ARC",
    )
    if t.name == "commonsense_qa"
    else t
    for t in SUITES["paper"]
)


def suite_tasks(suite: str) -> tuple[SuiteTask, ...]:
    if suite not in SUITES:
        raise UserError(f"--suite {suite}: unknown suite; choose one of {', '.join(SUITES)} or give --tasks")
    return SUITES[suite]


def known_task(name: str) -> SuiteTask | None:
    """The suite entry for an lm-eval task name, if any suite defines it."""
    for tasks in SUITES.values():
        for t in tasks:
            if t.name == name:
                return t
    return None
