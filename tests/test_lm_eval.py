"""nitp-eval lm: the real lm-evaluation-harness on tiny trained checkpoints and the real data in shared/data/lm.

Budget: ~3-5 min on 2 CPU cores (tiny limits, generation capped at 8 tokens).
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
from nitp_eval.lm.taskdir import DATA_DIR_ENV, task_index, write_task_dir
from nitp_train.errors import UserError

GEN = "max_gen_toks=8"  # tiny models generate garbage; keep it short


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _invoke(*args: str, env: dict | None = None):
    env = {DATA_DIR_ENV: None, **(env or {})}  # only what the test says, whatever the caller's environment
    result = CliRunner().invoke(app, ["lm", *map(str, args)], env=env)
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
    assert {n for n in cfgs if n.startswith("mmlu_pro_")} == {
        f"mmlu_pro_{c}"
        for c in (
            "biology business chemistry computer_science economics engineering health history law math other "
            "philosophy physics psychology"
        ).split()
    }
    assert cfgs["gsm8k"]["num_fewshot"] == 5 and cfgs["mmlu_pro_law"]["num_fewshot"] == 5
    assert cfgs["arc_challenge"]["num_fewshot"] == 0 and cfgs["c3"]["include"] == str(TASKS_DIR / "c3.yaml")
    assert cfgs["mmlu_pro_law"]["dataset_kwargs"]["data_files"] == {
        "test": str(lm_data / "mmlu_pro" / "test.jsonl"),
        "validation": str(lm_data / "mmlu_pro" / "validation.jsonl"),
    }
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
    assert r["tasks"]["arc_challenge"]["fewshot_split"] is None  # 0-shot: no shots drawn from anywhere
    assert r["settings"]["device"] == "cpu" and "--device cpu" in r["settings"]["lm_eval_command"]
    for name in ("gsm8k", "mmlu_pro"):
        assert r["tasks"][name]["generation_kwargs"]["max_gen_toks"] == 8
        assert all(isinstance(rec["response"], str) for rec in r["samples"][name])
    mmlu = r["tasks"]["mmlu_pro"]
    assert len(mmlu["subtasks"]) == 14 and all(s["n_samples"] == 2 for s in mmlu["subtasks"].values())
    assert {rec["doc_id"] for rec in r["samples"]["mmlu_pro"]} == {
        f"{s}:{i}" for s in mmlu["subtasks"] for i in range(2)
    }


def test_multiple_choice_records_recompute_from_loglikelihoods(suite_results, lm_data):
    """acc = [argmax of the option log-likelihoods == gold]; gold from the raw jsonl, not from lm-eval."""
    rows = {
        "c3": [row["choice"].index(row["answer"]) for row in _jsonl(lm_data / "c3" / "validation.jsonl")[:2]],
        "arc_challenge": [
            row["choices"]["label"].index(row["answerKey"])
            for row in _jsonl(lm_data / "arc_challenge" / "test.jsonl")[:2]
        ],
        "commonsense_qa": [
            "ABCDE".index(row["answerKey"]) for row in _jsonl(lm_data / "commonsense_qa" / "validation.jsonl")[:2]
        ],
    }
    for name, gold in rows.items():
        recs = sorted(suite_results["samples"][name], key=lambda rec: rec["doc_id"])
        assert [rec["doc_id"] for rec in recs] == [0, 1]
        for rec, g in zip(recs, gold):
            assert rec["acc"] == float(int(np.argmax(rec["loglikelihoods"])) == g)


def test_run_dir_evaluates_both_arms_into_its_eval_dir_and_never_overwrites_silently(tiny_run, lm_data, tmp_path):
    """A run dir, no --out: results land in <run>/eval/lm/; the data dir comes from NITP_LM_DATA_DIR."""
    run = tmp_path / "x"  # a run dir of our own (the session's tiny_run stays clean for other tests)
    run.mkdir()
    for arm in ("ntp", "nitp"):
        (run / arm).symlink_to(tiny_run / arm)
    args, env = (run, "--tasks", "arc_challenge", "--limit", 2), {DATA_DIR_ENV: str(lm_data)}
    result = _invoke(*args, env=env)
    assert result.exit_code == 0, result.output + repr(result.exception)
    files = sorted((run / "eval" / "lm").glob("*.json"))
    assert [f.name.split("-step-")[0] for f in files] == ["nitp", "ntp"]
    r = json.loads(files[0].read_text())
    assert r["settings"]["data_dir"] == str(lm_data.resolve()) and r["tasks"]["arc_challenge"]["n_samples"] == 2
    before = {f: f.read_text() for f in files}
    again = _invoke(*args, env=env)
    assert again.exit_code != 0 and isinstance(again.exception, UserError) and "--overwrite" in str(again.exception)
    assert {f: f.read_text() for f in files} == before


def test_several_checkpoints_in_one_call(tiny_run, lm_data, tmp_path):
    """Both arms' checkpoints as two paths (the NITP one named twice: evaluated once)."""
    ntp, nitp = (sorted((tiny_run / arm / "checkpoints").glob("step-*"))[-1] for arm in ("ntp", "nitp"))
    result = _invoke(
        ntp, nitp, tiny_run / "nitp", "--tasks", "arc_challenge", "--data-dir", lm_data, "--limit", 2, "--out", tmp_path
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    got = {f.name: json.loads(f.read_text()) for f in tmp_path.glob("*.json")}
    assert set(got) == {f"ntp-{ntp.name}.json", f"nitp-{nitp.name}.json"}
    assert {r["checkpoint"] for r in got.values()} == {str(ntp), str(nitp)}
    assert all(r["tasks"]["arc_challenge"]["n_samples"] == 2 for r in got.values())


def test_results_path_collision_is_refused_before_any_work(tmp_path):
    for run in ("a", "b"):  # two model dirs with the same name: both would write <out>/model.json
        (tmp_path / run / "model").mkdir(parents=True)
        (tmp_path / run / "model" / "config.json").write_text("{}")  # never loaded: refused first
    for extra in ((), ("--overwrite",)):
        result = _invoke(
            tmp_path / "a" / "model",
            tmp_path / "b" / "model",
            "--tasks",
            "arc_challenge",
            "--out",
            tmp_path / "out",
            *extra,
        )
        assert isinstance(result.exception, UserError), result.output
        assert "would both write" in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_hub_failure_is_one_clear_line(nitp_ckpt, tmp_path):
    """No --data-dir and the hub unreachable (tests run with HF_DATASETS_OFFLINE=1)."""
    result = _invoke(nitp_ckpt, "--tasks", "arc_challenge", "--limit", 1, "--out", tmp_path)
    err = result.exception
    assert isinstance(err, UserError), result.output + repr(err)
    assert str(err).startswith("arc_challenge: a dataset could not be loaded from the Hugging Face hub")
    assert "--data-dir" in str(err) and DATA_DIR_ENV in str(err) and "\n" not in str(err)
    assert not list(tmp_path.glob("*.json"))


def test_subtask_reads_its_groups_local_data(nitp_ckpt, lm_data, tmp_path):
    """mmlu_pro_law alone reads <data-dir>/mmlu_pro/ (same hub dataset), 5-shot from validation."""
    result = _invoke(
        nitp_ckpt,
        "--tasks",
        "mmlu_pro_law",
        "--data-dir",
        lm_data,
        "--limit",
        1,
        "--gen-kwargs",
        "max_gen_toks=4",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    t = json.loads(next(tmp_path.glob("*.json")).read_text())["tasks"]["mmlu_pro_law"]
    assert t["n_samples"] == 1 and t["n_docs"] == 1101 and t["num_fewshot"] == 5 and t["fewshot_split"] == "validation"
    assert t["generation_kwargs"]["max_gen_toks"] == 4


def test_scores_identical_to_lm_eval_command_line(nitp_ckpt, lm_data, tmp_path):
    """Same checkpoint, tasks, few-shot, limit and generation settings: `lm_eval --model hf` gives the same
    numbers, sample by sample, for multiple choice (arc_challenge, c3) and generation (gsm8k)."""
    tasks = "arc_challenge,c3,gsm8k"
    common = ("--tasks", tasks, "--data-dir", lm_data, "--num-fewshot", 1)
    exported = _invoke("--export-tasks", tmp_path / "tasks", *common)
    assert exported.exit_code == 0, exported.output
    ours = _invoke(nitp_ckpt, *common, "--limit", 4, "--gen-kwargs", GEN, "--out", tmp_path / "ours")
    assert ours.exit_code == 0, ours.output + repr(ours.exception)
    ours = json.loads(next((tmp_path / "ours").glob("*.json")).read_text())

    cmd = [
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={nitp_ckpt},dtype=float32",
        "--tasks",
        tasks,
        "--include_path",
        str(tmp_path / "tasks"),
        "--num_fewshot",
        "1",
        "--gen_kwargs",
        GEN,
        "--limit",
        "4",
        "--batch_size",
        "8",
        "--log_samples",
        "--output_path",
        str(tmp_path / "cli"),
    ]
    lm_eval_bin = Path(sys.executable).with_name("lm_eval")
    proc = subprocess.run(
        [str(lm_eval_bin), *cmd[1:]], capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(next((tmp_path / "cli").rglob("results_*.json")).read_text())
    metrics = {
        "arc_challenge": ("acc", "acc_norm"),
        "c3": ("acc", "acc_norm"),
        "gsm8k": ("exact_match,strict-match", "exact_match,flexible-extract"),
    }
    for task, names in metrics.items():
        logged = sorted(
            _jsonl(next((tmp_path / "cli").rglob(f"samples_{task}_*.jsonl"))), key=lambda s: (s["doc_id"], s["filter"])
        )
        recs = sorted(ours["samples"][task], key=lambda rec: rec["doc_id"])
        assert ours["tasks"][task]["num_fewshot"] == theirs["n-shot"][task] == 1 and len(recs) == 4
        for metric in names:
            name, _, filt = metric.partition(",")
            key = f"{name},{filt or 'none'}"
            assert ours["tasks"][task]["metrics"][metric] == theirs["results"][task][key]
            assert (
                ours["tasks"][task]["metrics"][metric + "_stderr"]
                == theirs["results"][task][f"{name}_stderr,{filt or 'none'}"]
            )
            assert [s[name] for s in logged if s["filter"] == (filt or "none")] == [rec[metric] for rec in recs]
        if task == "gsm8k":  # the same generations, not only the same scores
            assert [s["resps"][0][0] for s in logged if s["filter"] == "strict-match"] == [
                rec["response"] for rec in recs
            ]
        else:
            assert [float(s["filtered_resps"][0][0]) for s in logged] == [rec["loglikelihoods"][0] for rec in recs]


def test_suite_fewshot_equals_lm_eval_stock_defaults():
    """The suite keeps lm-eval's own few-shot counts (0 when a config sets none); C3 is ours, 0-shot."""
    index = task_index()
    for t in SUITES["paper"]:
        entry = index[t.name]
        leaves = entry.cfg.get("task") if entry.cfg.get("group") else [t.name]
        stock = {leaf: index[leaf].cfg.get("num_fewshot") or 0 for leaf in leaves}
        assert set(stock.values()) == {t.num_fewshot}, (t.name, stock)
    assert index["c3"].yaml_path == TASKS_DIR / "c3.yaml"


def test_c3_variants_offline(tmp_path, lm_data):
    """c3_test: the test split with answers, no dev; c3_dialogue: the 1,825 dialogue questions of dev.
    Both read <data-dir>/c3/ (same hub dataset as c3)."""
    import re

    from lm_eval.tasks import TaskManager

    write_task_dir(tmp_path, ["c3_test", "c3_dialogue"], lm_data)
    tasks = TaskManager(include_path=str(tmp_path), include_defaults=False).load(["c3_test", "c3_dialogue"])["tasks"]
    test, dialogue = tasks["c3_test"], tasks["c3_dialogue"]
    assert test.config.validation_split is None and test.config.test_split == "test"
    rows = _jsonl(lm_data / "c3" / "test.jsonl")
    docs = list(test.eval_docs)
    assert len(docs) == len(rows) == 3892
    assert all(row["choice"][test.doc_to_target(doc)] == row["answer"] for doc, row in zip(docs, rows))

    dev = _jsonl(lm_data / "c3" / "validation.jsonl")
    docs = list(dialogue.eval_docs)
    assert [d["id"] for d in docs] == [r["id"] for r in dev[:1825]] and docs[-1]["id"] == 1627
    speaker = re.compile(r"^[^：:]{1,6}[：:]")  # "男：", "女：", ...: every paragraph is a turn of a dialogue
    assert all(speaker.match(p) for d in docs for p in d["context"])
    mixed = [r for r in dev[1825:] if all(speaker.match(p) for p in r["context"])]
    assert len(mixed) <= 3  # the rest of dev is prose (a few passages happen to start like a turn)
    assert len(list(dialogue.fewshot_docs())) == 5856  # shots, if asked for, from the dialogue part of train


def test_c3_test_without_local_data_is_one_clear_line(nitp_ckpt, tmp_path):
    result = _invoke(nitp_ckpt, "--tasks", "c3_test", "--out", tmp_path)
    err = result.exception
    assert isinstance(err, UserError), result.output + repr(err)
    assert str(err).startswith("c3_test: needs local data") and "--data-dir" in str(err) and "\n" not in str(err)


def test_c3_test_refuses_a_split_without_answers():
    """What plain lm_eval runs into on the hub's CLUE test split (answers blanked)."""
    from datasets import Dataset

    from nitp_eval.lm.tasks.c3_utils import require_answers

    ok = Dataset.from_list([{"choice": ["甲", "乙"], "answer": "乙"}])
    assert require_answers(ok) is ok
    with pytest.raises(ValueError, match="c3_test: 1 of 2 questions have no answer"):
        require_answers(
            Dataset.from_list([{"choice": ["甲", "乙"], "answer": "乙"}, {"choice": ["甲", "乙"], "answer": ""}])
        )


def test_export_overwrite_replaces_only_its_own_configs(tmp_path):
    out = tmp_path / "tasks"
    assert _invoke("--export-tasks", out, "--tasks", "arc_challenge,gsm8k").exit_code == 0
    assert sorted(p.name for p in out.glob("*.yaml")) == ["arc_challenge.yaml", "gsm8k.yaml"]
    again = _invoke("--export-tasks", out, "--tasks", "c3")
    assert isinstance(again.exception, UserError) and "--overwrite" in str(again.exception)
    assert _invoke("--export-tasks", out, "--tasks", "c3", "--overwrite").exit_code == 0
    assert sorted(p.name for p in out.glob("*.yaml")) == ["c3.yaml"]  # stale ones gone
    (out / "mine.yaml").write_text("task: mine\n")  # a user's own config is never deleted
    refused = _invoke("--export-tasks", out, "--tasks", "c3", "--overwrite")
    assert isinstance(refused.exception, UserError) and "mine.yaml" in str(refused.exception)
    assert sorted(p.name for p in out.glob("*.yaml")) == ["c3.yaml", "mine.yaml"]


def test_lm_eval_command_records_what_the_command_line_cannot_set():
    from nitp_eval.lm.evaluate import lm_eval_command

    cmd = lm_eval_command("/ck", ["c3"], "/td", device="cpu", limit=2)
    assert "--device cpu" in cmd and "--limit 2" in cmd and "#" not in cmd  # 100000 = lm_eval's own value
    zero = lm_eval_command("/ck", ["c3"], "/td", bootstrap_iters=0)
    assert zero.endswith("  # nitp ran bootstrap_iters=0; lm_eval always uses 100000")


def test_old_lm_eval_without_task_index_is_one_clear_line(monkeypatch):
    from nitp_eval.lm.taskdir import _kind

    monkeypatch.setitem(sys.modules, "lm_eval.tasks._index", None)  # as on lm-eval < 0.4.12: import fails
    with pytest.raises(UserError, match=r"too old for nitp-eval lm .*lm-eval\[hf\]>=0.4.12,<0.5"):
        _kind()


def test_metric_names_and_record_merging_by_hand():
    from nitp_eval.lm.evaluate import RESPONSE_CHARS, metric_name, sample_records

    assert metric_name("acc,none") == "acc" and metric_name("acc_norm_stderr,none") == "acc_norm_stderr"
    assert metric_name("exact_match_stderr,strict-match") == "exact_match,strict-match_stderr"
    long = "x" * (RESPONSE_CHARS + 50)
    logged = [  # lm-eval logs a generative doc once per filter
        {
            "doc_id": 7,
            "filter": "strict-match",
            "metrics": ["exact_match"],
            "exact_match": 0.0,
            "target": "18",
            "resps": [[long]],
            "filtered_resps": ["[invalid]"],
        },
        {
            "doc_id": 7,
            "filter": "flexible-extract",
            "metrics": ["exact_match"],
            "exact_match": 1.0,
            "target": "18",
            "resps": [[long]],
            "filtered_resps": ["18"],
        },
    ]
    (rec,) = sample_records(logged, prefix="gsm8k_sub:")
    assert rec["doc_id"] == "gsm8k_sub:7" and rec["subtask"] == "gsm8k_sub"
    assert rec["exact_match,strict-match"] == 0.0 and rec["exact_match,flexible-extract"] == 1.0
    assert rec["extracted"] == {"strict-match": "[invalid]", "flexible-extract": "18"}
    assert rec["response"] == "x" * RESPONSE_CHARS + "..."
    (mc,) = sample_records(
        [
            {
                "doc_id": 0,
                "filter": "none",
                "metrics": ["acc"],
                "acc": 1.0,
                "target": 1,
                "resps": [[(-3.0, False)], [(-1.5, True)]],
                "filtered_resps": [(-3.0, False), (-1.5, True)],
            }
        ]
    )
    assert mc == {"doc_id": 0, "acc": 1.0, "target": 1, "loglikelihoods": [-3.0, -1.5]}


def test_generation_length_is_capped_to_the_model_and_recorded(tiny_checkpoint, lm_data, tmp_path):
    """MMLU-Pro asks for 2,048 new tokens; a 512-position model runs it capped at 256, and says so (item 4)."""
    import lm_eval
    import yaml

    template = Path(lm_eval.__file__).parent / "tasks" / "mmlu_pro" / "_default_template_yaml"
    text = template.read_text().replace("!function ", "")  # lm-eval's hooks; not needed here
    stock = yaml.safe_load(text)["generation_kwargs"]
    assert stock["max_gen_toks"] == 2048  # what would not fit (the tiny model has 512 positions)
    out = tmp_path / "out"
    result = _invoke(tiny_checkpoint, "--tasks", "mmlu_pro_law", "--data-dir", lm_data, "--limit", 1, "--out", out)
    assert result.exit_code == 0, result.output
    assert "max_gen_toks 2048 capped at 256, half the model's 512 positions" in result.output
    r = json.loads((out / "model.json").read_text())
    assert r["settings"]["model_positions"] == 512
    assert r["settings"]["generation_overrides"]["mmlu_pro_law"] == {**stock, "max_gen_toks": 256}
    assert any("capped at 256" in n for n in r["settings"]["notes"])
    # lm-eval's own record of the config it ran
    assert r["tasks"]["mmlu_pro_law"]["generation_kwargs"]["max_gen_toks"] == 256
    assert r["tasks"]["mmlu_pro_law"]["generation_kwargs"]["until"] == stock["until"]


def test_repeated_lm_eval_warnings_are_said_once():
    import logging

    from nitp_eval.lm.evaluate import OncePerMessage

    once = OncePerMessage()
    records = [
        logging.LogRecord("lm_eval.models.huggingface", logging.WARNING, "f", 1, msg, None, None)
        for msg in (
            "Left truncation applied. Original sequence length was 1479, truncating to last 256 tokens.",
            "Left truncation applied. Original sequence length was 2210, truncating to last 256 tokens.",
            "Something else",
        )
    ]
    assert [once.filter(r) for r in records] == [True, False, True]
