"""Local task data (../shared/data/mteb), --limit, and mteb's scores against independent references."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _task(name):
    from nitp_eval.mteb_eval.suite import load_task, resolve_suite

    return load_task(resolve_suite(name)[0])


def _file_record(path):
    """{"sha256", "rows"} of a file, computed here independently of local.py."""
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "rows": len(_rows(path))}


def test_local_copies_load_completely_and_record_their_files(shared_data):
    from nitp_eval.mteb_eval.local import attach_local

    root = shared_data / "mteb"
    task = _task("Banking77Classification")
    files = attach_local(task, root)
    assert task.data_loaded
    for split in ("test", "train"):  # the eval split and the split the classifier is fit on
        rows = _rows(root / "Banking77Classification" / f"{split}.jsonl")
        assert task.dataset[split]["text"] == [r["text"] for r in rows]
        assert task.dataset[split]["label"] == [r["label"] for r in rows]
    assert files == {
        f"Banking77Classification/{s}.jsonl": _file_record(root / "Banking77Classification" / f"{s}.jsonl")
        for s in ("test", "train")
    }
    assert files["Banking77Classification/test.jsonl"]["rows"] == 3080  # SOURCES.md

    multi = _task("AmazonCounterfactualClassification")  # multilingual: {subset: DatasetDict}
    files = attach_local(multi, root)
    assert list(multi.dataset) == ["en"]
    assert len(multi.dataset["en"]["test"]) == len(_rows(root / "AmazonCounterfactualClassification/en/test.jsonl"))
    assert sorted(files) == [
        "AmazonCounterfactualClassification/en/test.jsonl",
        "AmazonCounterfactualClassification/en/train.jsonl",
    ]


def test_absent_data_is_reported_not_loaded(shared_data, tmp_path):
    from nitp_eval.mteb_eval.local import MissingData, attach_local

    task = _task("BIOSSES")
    with pytest.raises(MissingData, match="no folder"):
        attach_local(task, shared_data / "mteb")
    assert not task.data_loaded
    (tmp_path / "Banking77Classification").mkdir()  # a test split without the train split is incomplete
    (tmp_path / "Banking77Classification" / "test.jsonl").write_text('{"text": "a", "label": 0}\n')
    task = _task("Banking77Classification")
    with pytest.raises(MissingData, match="train.jsonl"):
        attach_local(task, tmp_path)
    assert not task.data_loaded


def _subsample(rows, limit, seed=0):
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False))
    return [rows[i] for i in keep]


def test_limit_is_a_deterministic_ordered_subsample(shared_data):
    from nitp_eval.mteb_eval.local import attach_local, limit_eval_splits

    position = {r["id"]: i for i, r in enumerate(_rows(shared_data / "mteb" / "SICK-R" / "test.jsonl"))}
    picks = []
    for seed in (0, 0, 1):
        task = _task("SICK-R")
        attach_local(task, shared_data / "mteb")
        assert limit_eval_splits(task, 300, seed=seed) == {"test": 300}
        ids = task.dataset["test"]["id"]
        pos = [position[i] for i in ids]  # KeyError if a row is not from the file
        assert pos == sorted(pos) and len(set(ids)) == 300  # original order, no repeats
        picks.append(ids)
    assert picks[0] == picks[1] and picks[0] != picks[2]

    task = _task("Banking77Classification")
    attach_local(task, shared_data / "mteb")
    limit_eval_splits(task, 100)
    assert len(task.dataset["test"]) == 100 and len(task.dataset["train"]) == 10003  # train left whole
    task = _task("STSBenchmark")
    attach_local(task, shared_data / "mteb")
    assert limit_eval_splits(task, 10**6) == {"test": 1379}  # a limit above the size changes nothing


@pytest.fixture(scope="module")
def encoder(tiny_checkpoint):
    from nitp_eval.mteb_eval.encoder import MeanPoolEncoder

    return MeanPoolEncoder.from_pretrained(tiny_checkpoint, batch_size=64)


def test_sts_and_pair_scores_match_independent_references(shared_data, encoder):
    """mteb's main scores through our wrapper equal scipy/sklearn on the same subsample."""
    from scipy.stats import spearmanr
    from sklearn.metrics import average_precision_score

    from nitp_eval.mteb_eval.run import evaluate_suite
    from nitp_eval.mteb_eval.suite import resolve_suite

    limit = 150
    res = evaluate_suite(
        encoder,
        resolve_suite("STSBenchmark,TwitterURLCorpus"),
        data_dir=shared_data / "mteb",
        limit=limit,
        show_progress_bar=False,
    )
    assert res["missing"] == [] and res["overall"]["n"] == 2

    sts = _subsample(_rows(shared_data / "mteb" / "STSBenchmark" / "test.jsonl"), limit)
    rho = spearmanr(_cosines(encoder, sts), [r["score"] for r in sts]).statistic
    got = res["tasks"]["STSBenchmark"]
    assert got["main_score_name"] == "cosine_spearman"
    assert got["main_score"] == pytest.approx(rho, abs=1e-6)

    pairs = _subsample(_rows(shared_data / "mteb" / "TwitterURLCorpus" / "test.jsonl"), limit)
    ap = average_precision_score([r["labels"] for r in pairs], _cosines(encoder, pairs))
    got = res["tasks"]["TwitterURLCorpus"]
    assert got["scores"]["test"]["default"]["cosine_ap"] == pytest.approx(ap, abs=1e-6)
    assert got["main_score_name"] == "max_ap" and got["main_score"] >= ap - 1e-9
    assert got["n_eval"] == {"test": limit} and got["limited"] and got["source"] == "local"
    path = shared_data / "mteb" / "TwitterURLCorpus" / "test.jsonl"
    assert got["local_files"] == {"TwitterURLCorpus/test.jsonl": _file_record(path)}
    assert got["local_files"]["TwitterURLCorpus/test.jsonl"]["rows"] == 51524  # SOURCES.md


def _cosines(encoder, rows):
    a = encoder.embed([r["sentence1"] for r in rows], show_progress_bar=False)
    b = encoder.embed([r["sentence2"] for r in rows], show_progress_bar=False)
    return (a * b).sum(1)


def test_limit_counts_pairs_in_hub_form_pair_splits(shared_data, encoder):
    """mteb's pinned hub copies of pair tasks are ONE row of lists per split; --limit must count pairs,
    and mteb must then evaluate exactly the kept pairs."""
    from datasets import Dataset, DatasetDict
    from sklearn.metrics import average_precision_score

    from nitp_eval.mteb_eval import import_mteb
    from nitp_eval.mteb_eval.local import limit_eval_splits

    rows = _rows(shared_data / "mteb" / "TwitterURLCorpus" / "test.jsonl")[:40]
    assert {r["labels"] for r in rows} == {0, 1}

    def hub_form_task():
        task = _task("TwitterURLCorpus")
        cols = ("sentence1", "sentence2", "labels")
        task.dataset = DatasetDict({"test": Dataset.from_dict({c: [[r[c] for r in rows]] for c in cols})})
        task.data_loaded = True
        return task

    task = hub_form_task()
    assert len(task.dataset["test"]) == 1
    assert limit_eval_splits(task, None) == {"test": 40}  # counted in pairs even without a limit
    task = hub_form_task()
    assert limit_eval_splits(task, 10) == {"test": 10}
    kept = _subsample(rows, 10)
    assert task.dataset["test"]["sentence1"] == [r["sentence1"] for r in kept]

    result = import_mteb().evaluate(
        encoder,
        task,
        cache=None,
        co2_tracker=False,
        show_progress_bar=False,
        encode_kwargs={"show_progress_bar": False},
        raise_error=True,
    )
    got = result.task_results[0].scores["test"][0]["cosine_ap"]
    assert got == pytest.approx(average_precision_score([r["labels"] for r in kept], _cosines(encoder, kept)), abs=1e-6)


def test_limit_one_on_a_pair_task_runs(shared_data, encoder):
    """A one-pair split is what mteb takes for a hub-form row of lists: it must be given that form."""
    from nitp_eval.mteb_eval.run import evaluate_suite
    from nitp_eval.mteb_eval.suite import resolve_suite

    res = evaluate_suite(
        encoder, resolve_suite("TwitterURLCorpus"), data_dir=shared_data / "mteb", limit=1, show_progress_bar=False
    )
    assert res["failed"] == [] and res["tasks"]["TwitterURLCorpus"]["n_eval"] == {"test": 1}


def test_a_failing_task_is_recorded_and_the_others_still_run(shared_data, encoder, tmp_path):
    from nitp_eval.mteb_eval.run import evaluate_suite
    from nitp_eval.mteb_eval.suite import resolve_suite

    broken = tmp_path / "STSBenchmark" / "test.jsonl"  # rows without the gold "score" column
    broken.parent.mkdir()
    broken.write_text("".join(json.dumps({"sentence1": "a b", "sentence2": "c d"}) + "\n" for _ in range(5)))
    sick = tmp_path / "SICK-R" / "test.jsonl"
    sick.parent.mkdir()
    sick.write_text("".join(json.dumps(r) + "\n" for r in _rows(shared_data / "mteb" / "SICK-R" / "test.jsonl")[:40]))

    res = evaluate_suite(
        encoder, resolve_suite("STSBenchmark,SICK-R,BIOSSES"), data_dir=tmp_path, show_progress_bar=False
    )
    assert res["failed"] == ["STSBenchmark"] and "score" in res["failed_reasons"]["STSBenchmark"]
    assert res["missing"] == ["BIOSSES"] and list(res["tasks"]) == ["SICK-R"]
    assert res["overall"]["n"] == 1 and res["overall"]["of"] == 3
    assert res["tasks"]["SICK-R"]["local_files"] == {"SICK-R/test.jsonl": {**_file_record(sick), "rows": 40}}
