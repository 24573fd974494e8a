"""The paper's 25-task suite as data, and the Table-6-style summary."""

from __future__ import annotations

import re

import pytest

from nitp_train.errors import UserError


def _paper_notes_tasks(shared_data):
    """{group: [tasks]} parsed from the task list in ../shared/paper-notes.md (an independent source)."""
    text = (shared_data.parent / "paper-notes.md").read_text()
    section = text.split("The 25 MTEB tasks:")[1]
    out = {}
    for label, group in (
        ("Classification", "Classification"),
        ("STS", "STS"),
        ("Retrieval / duplicate detection", "Retrieval/Dup"),
    ):
        line = re.search(rf"^- {re.escape(label)}: (.*)$", section, re.M).group(1)
        out[group] = [t.strip() for t in line.split(",")]
    return out


def test_paper_suite_is_the_papers_25_tasks(shared_data):
    from nitp_eval.mteb_eval.suite import PAPER

    expected = _paper_notes_tasks(shared_data)
    got = {g: [t.name for t in PAPER if t.group == g] for g in expected}
    assert got == expected
    assert [len(v) for v in got.values()] == [10, 9, 6] and len(PAPER) == 25


def test_summary_means_say_what_they_cover():
    from nitp_eval.mteb_eval.run import summarize
    from nitp_eval.mteb_eval.suite import PAPER

    tasks = {
        "Banking77Classification": {"main_score": 0.8},
        "EmotionClassification": {"main_score": 0.4},
        "STSBenchmark": {"main_score": 0.3},
    }
    s = summarize(PAPER, tasks)
    assert s["groups"]["Classification"] == {"mean": pytest.approx(0.6), "n": 2, "of": 10}
    assert s["groups"]["STS"] == {"mean": pytest.approx(0.3), "n": 1, "of": 9}
    assert s["groups"]["Retrieval/Dup"] == {"mean": None, "n": 0, "of": 6}
    # the overall mean is over tasks, not over groups (the paper's 39.24 over 25 tasks)
    assert s["overall"] == {"mean": pytest.approx(1.5 / 3), "n": 3, "of": 25}


def test_overall_reproduces_paper_table6_from_group_means():
    """Paper Table 6 (NITP): 10 x 42.29, 9 x 38.58, 6 x 44.83 -> overall 41.56 as a task mean."""
    from nitp_eval.mteb_eval.run import summarize
    from nitp_eval.mteb_eval.suite import PAPER

    means = {"Classification": 0.4229, "STS": 0.3858, "Retrieval/Dup": 0.4483}
    tasks = {t.name: {"main_score": means[t.group]} for t in PAPER}
    assert summarize(PAPER, tasks)["overall"]["mean"] == pytest.approx(0.4156, abs=5e-5)


def test_task_lists_and_unknown_tasks():
    from nitp_eval.mteb_eval.suite import resolve_suite

    st = resolve_suite("STSBenchmark, SICK-R,STSBenchmark")
    assert [(t.name, t.group) for t in st] == [("STSBenchmark", "STS"), ("SICK-R", "STS")]
    assert resolve_suite("STS22")[0].group == "STS"  # outside the paper's suite: group from the mteb type
    with pytest.raises(UserError, match="NoSuchTask"):
        resolve_suite("NoSuchTask")
    with pytest.raises(UserError, match="empty"):
        resolve_suite(" , ")


def test_tasks_are_restricted_to_english_test_splits():
    from nitp_eval.mteb_eval.suite import PAPER, load_task

    by_name = {t.name: t for t in PAPER}
    for name, subsets in [
        ("AmazonCounterfactualClassification", ["en"]),
        ("STS17", ["en-en"]),
        ("MassiveIntentClassification", ["en"]),
        ("STSBenchmark", ["default"]),
    ]:
        task = load_task(by_name[name])
        assert list(task.hf_subsets) == subsets, name
        assert list(task.eval_splits) == ["test"], name


def test_pinned_revisions_are_those_the_installed_mteb_names():
    """The suite's one record of dataset revisions against mteb's own TaskMetadata (the source of the pins)."""
    from nitp_eval.mteb_eval import import_mteb
    from nitp_eval.mteb_eval.suite import PAPER

    mteb = import_mteb()
    assert all(t.revision and len(t.revision) == 40 for t in PAPER)
    assert {t.name: t.revision for t in PAPER} == {
        t.name: mteb.get_task(t.name).metadata.dataset["revision"] for t in PAPER
    }


def test_a_pin_wins_over_another_mteb_revision_and_both_are_known():
    """Under an mteb that names another revision, the task loads the pinned one; the class's metadata is untouched."""
    from dataclasses import replace

    from nitp_eval.mteb_eval import import_mteb
    from nitp_eval.mteb_eval.suite import PAPER, load_task, mteb_revision

    st = next(t for t in PAPER if t.name == "STS17")
    installed = import_mteb().get_task("STS17").metadata.dataset["revision"]
    task = load_task(replace(st, revision="0" * 40))
    assert task.metadata.dataset["revision"] == "0" * 40  # what mteb's load_data hands to load_dataset
    assert task.metadata.revision == "0" * 40 and mteb_revision(task) == installed
    assert list(task.hf_subsets) == ["en-en"] and list(task.eval_splits) == ["test"]
    again = load_task(st)  # the override did not leak into the shared class metadata
    assert again.metadata.dataset["revision"] == installed == st.revision
