"""nitp-eval lm: the real lm-evaluation-harness on tiny trained checkpoints and the real data in shared/data/lm.

Budget: ~2-3 min on 2 CPU cores (tiny limits, generation capped at 8 tokens).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nitp_eval.cli import app
from nitp_eval.lm.suite import SUITES, TASKS_DIR
from nitp_eval.lm.taskdir import write_task_dir
from nitp_train.errors import UserError

GEN = "max_gen_toks=8"  # tiny models generate garbage; keep it short


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _invoke(*args: str):
    result = CliRunner().invoke(app, ["lm", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, (SystemExit, UserError)):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def lm_data(shared_data) -> Path:
    return shared_data / "lm"


@pytest.fixture(scope="module")
def nitp_ckpt(tiny_run) -> Path:
    return sorted((tiny_run / "nitp" / "checkpoints").glob("step-*"))[-1]


@pytest.fixture(scope="module")
def suite_results(nitp_ckpt, lm_data, tmp_path_factory) -> dict:
    """The whole paper suite, offline, 2 docs per task (per subtask for mmlu_pro), on the NITP arm."""
    out = tmp_path_factory.mktemp("lm-suite")
    result = _invoke(nitp_ckpt, "--data-dir", lm_data, "--limit", 2, "--gen-kwargs", GEN, "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    files = list(out.glob("*.json"))
    assert [f.name for f in files] == [f"nitp-{nitp_ckpt.name}.json"]
    return json.loads(files[0].read_text())


def test_c3_task_prompt_target_and_split(tmp_path, lm_data):
    from lm_eval.tasks import TaskManager

    write_task_dir(tmp_path, ["c3"], lm_data)
    task = TaskManager(include_path=str(tmp_path), include_defaults=False).load(["c3"])["tasks"]["c3"]
    rows = _jsonl(lm_data / "c3" / "validation.jsonl")
    docs = list(task.eval_docs)
    assert len(docs) == len(rows) == 3816  # the dev set is evaluated
    for doc, row in zip(docs[:200], rows[:200]):
        assert task.doc_to_text(doc) == "文章：" + " ".join(row["context"]) + "\n问题：" + row["question"] + "\n答案："
        assert task.doc_to_choice(doc) == row["choice"]
        assert row["choice"][task.doc_to_target(doc)] == row["answer"]
    assert task.config.target_delimiter == "" and not task.config.num_fewshot


def test_suite_fewshot_is_written_into_task_configs(tmp_path, lm_data):
    import yaml

    suite = SUITES["paper"]
    write_task_dir(tmp_path, [t.name for t in suite], lm_data, {t.name: t.num_fewshot for t in suite})
    cfgs = {p.stem: yaml.safe_load(p.read_text()) for p in tmp_path.glob("*.yaml")}
    assert {n for n in cfgs if n.startswith("mmlu_pro_")} == {f"mmlu_pro_{c}" for c in (
        "biology business chemistry computer_science economics engineering health history law math other "
        "philosophy physics psychology").split()}
    assert cfgs["gsm8k"]["num_fewshot"] == 5 and cfgs["mmlu_pro_law"]["num_fewshot"] == 5
    assert cfgs["arc_challenge"]["num_fewshot"] == 0 and cfgs["c3"]["include"] == str(TASKS_DIR / "c3.yaml")
    assert cfgs["mmlu_pro_law"]["dataset_kwargs"]["data_files"] == {
        "test": str(lm_data / "mmlu_pro" / "test.jsonl"), "validation": str(lm_data / "mmlu_pro" / "validation.jsonl")}
    assert cfgs["gsm8k"]["dataset_path"] == "json" and cfgs["gsm8k"]["dataset_name"] is None


def test_missing_local_file_is_one_clear_line(tmp_path, lm_data, nitp_ckpt):
    (tmp_path / "c3").mkdir()
    (tmp_path / "c3" / "validation.jsonl").symlink_to(lm_data / "c3" / "validation.jsonl")
    result = _invoke(nitp_ckpt, "--tasks", "c3", "--data-dir", tmp_path, "--out", tmp_path / "out")
    err = result.exception
    assert isinstance(err, UserError), result.output  # printed by the CLI as one line, exit code 2
    assert "\n" not in str(err) and str(err).startswith("c3: ")
    assert "'train'" in str(err) and str(tmp_path / "c3" / "train.jsonl") in str(err)
    assert not (tmp_path / "out").exists()


def test_paper_suite_results_json(suite_results, lm_data, nitp_ckpt):
    r = suite_results
    assert r["schema"] == "nitp.lm" and r["schema_version"] == 1
    assert r["arm"] == "nitp" and r["step"] == int(nitp_ckpt.name.split("-")[1]) and r["checkpoint"] == str(nitp_ckpt)
    assert r["versions"]["lm_eval"] not in (None, "not installed")
    assert r["settings"]["limit"] == 2 and r["settings"]["gen_kwargs"] == GEN
    suite = {t.name: t for t in SUITES["paper"]}
    assert set(r["tasks"]) == set(r["samples"]) == set(suite)
    for name, t in r["tasks"].items():
        assert t["primary"] == suite[name].primary and t["num_fewshot"] == suite[name].num_fewshot
        value, stderr = t["metrics"][t["primary"]], t["metrics"][t["primary"] + "_stderr"]
        assert 0.0 <= value <= 1.0 and stderr >= 0.0
        recs = r["samples"][name]
        assert len(recs) == t["n_samples"] == (14 * 2 if name == "mmlu_pro" else 2)
        assert len({rec["doc_id"] for rec in recs}) == len(recs)
        # the task score is the mean of the per-sample scores (what a paired bootstrap resamples)
        assert np.mean([rec[t["primary"]] for rec in recs]) == pytest.approx(value)
    assert r["tasks"]["gsm8k"]["fewshot_split"] == "train" and r["tasks"]["mmlu_pro"]["fewshot_split"] == "validation"
    for name in ("gsm8k", "mmlu_pro"):
        assert r["tasks"][name]["generation_kwargs"]["max_gen_toks"] == 8
        assert all(isinstance(rec["response"], str) for rec in r["samples"][name])
    mmlu = r["tasks"]["mmlu_pro"]
    assert len(mmlu["subtasks"]) == 14 and all(s["n_samples"] == 2 for s in mmlu["subtasks"].values())
    assert {rec["doc_id"] for rec in r["samples"]["mmlu_pro"]} == {f"{s}:{i}" for s in mmlu["subtasks"] for i in range(2)}


def test_multiple_choice_records_recompute_from_loglikelihoods(suite_results, lm_data):
    """acc = [argmax of the option log-likelihoods == gold]; gold from the raw jsonl, not from lm-eval."""
    rows = {
        "c3": [row["choice"].index(row["answer"]) for row in _jsonl(lm_data / "c3" / "validation.jsonl")[:2]],
        "arc_challenge": [row["choices"]["label"].index(row["answerKey"]) for row in _jsonl(lm_data / "arc_challenge" / "test.jsonl")[:2]],
        "commonsense_qa": ["ABCDE".index(row["answerKey"]) for row in _jsonl(lm_data / "commonsense_qa" / "validation.jsonl")[:2]],
    }
    for name, gold in rows.items():
        recs = sorted(suite_results["samples"][name], key=lambda rec: rec["doc_id"])
        assert [rec["doc_id"] for rec in recs] == [0, 1]
        for rec, g in zip(recs, gold):
            assert rec["acc"] == float(int(np.argmax(rec["loglikelihoods"])) == g)


def test_run_dir_evaluates_both_arms_and_never_overwrites_silently(tiny_run, lm_data, tmp_path):
    args = (tiny_run, "--tasks", "arc_challenge", "--data-dir", lm_data, "--limit", 2, "--out", tmp_path)
    result = _invoke(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert [n.split("-step-")[0] for n in names] == ["nitp", "ntp"]
    before = {n: (tmp_path / n).read_text() for n in names}
    again = _invoke(*args)
    assert again.exit_code != 0 and isinstance(again.exception, UserError) and "--overwrite" in str(again.exception)
    assert {n: (tmp_path / n).read_text() for n in names} == before


def test_scores_identical_to_lm_eval_command_line(nitp_ckpt, lm_data, tmp_path):
    """Same checkpoint, tasks, few-shot and limit: `lm_eval --model hf` gives the same numbers, sample by sample."""
    common = ("--tasks", "arc_challenge,c3", "--data-dir", lm_data, "--num-fewshot", 1)
    exported = _invoke("--export-tasks", tmp_path / "tasks", *common)
    assert exported.exit_code == 0, exported.output
    ours = _invoke(nitp_ckpt, *common, "--limit", 4, "--out", tmp_path / "ours")
    assert ours.exit_code == 0, ours.output + repr(ours.exception)
    ours = json.loads(next((tmp_path / "ours").glob("*.json")).read_text())

    cmd = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={nitp_ckpt},dtype=float32",
           "--tasks", "arc_challenge,c3", "--include_path", str(tmp_path / "tasks"), "--num_fewshot", "1",
           "--limit", "4", "--batch_size", "8", "--log_samples", "--output_path", str(tmp_path / "cli")]
    lm_eval_bin = Path(sys.executable).with_name("lm_eval")
    proc = subprocess.run([str(lm_eval_bin), *cmd[1:]], capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(next((tmp_path / "cli").rglob("results_*.json")).read_text())
    for task in ("arc_challenge", "c3"):
        for metric in ("acc", "acc_norm"):
            assert ours["tasks"][task]["metrics"][metric] == theirs["results"][task][f"{metric},none"]
            assert ours["tasks"][task]["metrics"][metric + "_stderr"] == theirs["results"][task][f"{metric}_stderr,none"]
        assert ours["tasks"][task]["num_fewshot"] == theirs["n-shot"][task] == 1
        logged = _jsonl(next((tmp_path / "cli").rglob(f"samples_{task}_*.jsonl")))
        assert {s["doc_id"]: (s["acc"], s["acc_norm"]) for s in logged} == {
            rec["doc_id"]: (rec["acc"], rec["acc_norm"]) for rec in ours["samples"][task]}
        assert [float(s["filtered_resps"][0][0]) for s in sorted(logged, key=lambda s: s["doc_id"])] == [
            rec["loglikelihoods"][0] for rec in sorted(ours["samples"][task], key=lambda rec: rec["doc_id"])]


def test_metric_names_and_record_merging_by_hand():
    from nitp_eval.lm.evaluate import RESPONSE_CHARS, metric_name, sample_records

    assert metric_name("acc,none") == "acc" and metric_name("acc_norm_stderr,none") == "acc_norm_stderr"
    assert metric_name("exact_match_stderr,strict-match") == "exact_match,strict-match_stderr"
    long = "x" * (RESPONSE_CHARS + 50)
    logged = [  # lm-eval logs a generative doc once per filter
        {"doc_id": 7, "filter": "strict-match", "metrics": ["exact_match"], "exact_match": 0.0, "target": "18",
         "resps": [[long]], "filtered_resps": ["[invalid]"]},
        {"doc_id": 7, "filter": "flexible-extract", "metrics": ["exact_match"], "exact_match": 1.0, "target": "18",
         "resps": [[long]], "filtered_resps": ["18"]},
    ]
    (rec,) = sample_records(logged, prefix="gsm8k_sub:")
    assert rec["doc_id"] == "gsm8k_sub:7" and rec["subtask"] == "gsm8k_sub"
    assert rec["exact_match,strict-match"] == 0.0 and rec["exact_match,flexible-extract"] == 1.0
    assert rec["extracted"] == {"strict-match": "[invalid]", "flexible-extract": "18"}
    assert rec["response"] == "x" * RESPONSE_CHARS + "..."
    (mc,) = sample_records([{"doc_id": 0, "filter": "none", "metrics": ["acc"], "acc": 1.0, "target": 1,
                             "resps": [[(-3.0, False)], [(-1.5, True)]], "filtered_resps": [(-3.0, False), (-1.5, True)]}])
    assert mc == {"doc_id": 0, "acc": 1.0, "target": 1, "loglikelihoods": [-3.0, -1.5]}
