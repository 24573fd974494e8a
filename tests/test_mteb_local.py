"""Local task data (../shared/data/mteb), --limit, and mteb's scores against independent references."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _task(name):
    from nitp_eval.mteb_eval.suite import load_task, resolve_suite

    return load_task(resolve_suite(name)[0])


def test_local_copies_load_completely(shared_data):
    from nitp_eval.mteb_eval.local import attach_local

    root = shared_data / "mteb"
    task = _task("Banking77Classification")
    assert attach_local(task, root) is None and task.data_loaded
    for split in ("test", "train"):  # the eval split and the split the classifier is fit on
        rows = _rows(root / "Banking77Classification" / f"{split}.jsonl")
        assert task.dataset[split]["text"] == [r["text"] for r in rows]
        assert task.dataset[split]["label"] == [r["label"] for r in rows]

    multi = _task("AmazonCounterfactualClassification")  # multilingual: {subset: DatasetDict}
    assert attach_local(multi, root) is None
    assert list(multi.dataset) == ["en"]
    assert len(multi.dataset["en"]["test"]) == len(_rows(root / "AmazonCounterfactualClassification/en/test.jsonl"))


def test_absent_data_is_reported_not_loaded(shared_data, tmp_path):
    from nitp_eval.mteb_eval.local import attach_local

    task = _task("BIOSSES")
    assert "no folder" in attach_local(task, shared_data / "mteb")
    assert not task.data_loaded
    (tmp_path / "Banking77Classification").mkdir()  # a test split without the train split is incomplete
    (tmp_path / "Banking77Classification" / "test.jsonl").write_text('{"text": "a", "label": 0}\n')
    task = _task("Banking77Classification")
    assert "train.jsonl" in attach_local(task, tmp_path)
    assert not task.data_loaded


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
    res = evaluate_suite(encoder, resolve_suite("STSBenchmark,TwitterURLCorpus"), data_dir=shared_data / "mteb",
                         limit=limit, show_progress_bar=False)
    assert res["missing"] == [] and res["overall"]["n"] == 2

    def subsample(rows):
        keep = np.sort(np.random.default_rng(0).choice(len(rows), size=limit, replace=False))
        return [rows[i] for i in keep]

    def cosines(rows):
        a = encoder.embed([r["sentence1"] for r in rows], show_progress_bar=False)
        b = encoder.embed([r["sentence2"] for r in rows], show_progress_bar=False)
        return (a * b).sum(1)

    sts = subsample(_rows(shared_data / "mteb" / "STSBenchmark" / "test.jsonl"))
    rho = spearmanr(cosines(sts), [r["score"] for r in sts]).statistic
    got = res["tasks"]["STSBenchmark"]
    assert got["main_score_name"] == "cosine_spearman"
    assert got["main_score"] == pytest.approx(rho, abs=1e-6)

    pairs = subsample(_rows(shared_data / "mteb" / "TwitterURLCorpus" / "test.jsonl"))
    ap = average_precision_score([r["labels"] for r in pairs], cosines(pairs))
    got = res["tasks"]["TwitterURLCorpus"]
    assert got["scores"]["test"]["default"]["cosine_ap"] == pytest.approx(ap, abs=1e-6)
    assert got["main_score_name"] == "max_ap" and got["main_score"] >= ap - 1e-9
    assert got["n_eval"] == {"test": limit} and got["limited"] and got["source"] == "local"
