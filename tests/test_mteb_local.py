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


def _local_folders(root):
    folders = sorted(d.name for d in root.iterdir() if d.is_dir())
    assert len(folders) >= 15  # SOURCES.md: 15 of the paper's 25
    return folders


def _needed_files(root, name):
    """The files a task reads: its test split and, for classification, the train split it fits on."""
    return sorted(p for p in (root / name).rglob("*.jsonl") if p.stem in ("test", "train"))


def test_every_local_task_loads_offline(shared_data):
    """Every task folder of ../shared/data/mteb is a task of the paper suite and loads completely: the suite
    with --data-dir (what studies and the quick-start run) picks all of them up."""
    from nitp_eval.mteb_eval.local import attach_local
    from nitp_eval.mteb_eval.suite import PAPER, load_task

    root = shared_data / "mteb"
    folders = _local_folders(root)
    by_name = {t.name: t for t in PAPER}
    assert set(folders) <= set(by_name)
    for name in folders:
        task = load_task(by_name[name])
        files = attach_local(task, root)
        needed = _needed_files(root, name)
        assert files == {p.relative_to(root).as_posix(): _file_record(p) for p in needed}, name
        for path in needed:  # each subset's split holds the file's rows, in order
            subset, split = path.parent.name, path.stem
            ds = task.dataset[subset][split] if task.metadata.is_multilingual else task.dataset[split]
            rows = _rows(path)
            column = "text" if "text" in rows[0] else "sentence1"
            assert ds[column] == [r[column] for r in rows], path
        if task.metadata.is_multilingual:
            assert list(task.dataset) == list(task.hf_subsets) == [needed[0].parent.name], name
    for name in ("MassiveIntentClassification", "MassiveScenarioClassification"):  # string labels, as in mteb's data
        task = load_task(by_name[name])
        attach_local(task, root)
        assert all(isinstance(x, str) for x in task.dataset["en"]["train"]["label"])


def _check_scored(root, res, limit):
    from nitp_eval.mteb_eval.suite import PAPER

    pins = {t.name: t.revision for t in PAPER}
    assert res["failed"] == [], res["failed_reasons"]
    for name, got in res["tasks"].items():
        needed = _needed_files(root, name)
        assert got["local_files"] == {p.relative_to(root).as_posix(): _file_record(p) for p in needed}, name
        (test,) = [p for p in needed if p.stem == "test"]
        assert got["hf_subsets"] == [test.parent.name if test.parent != root / name else "default"], name
        assert got["n_eval"] == {"test": min(limit, len(_rows(test)))} and got["limited"], name
        assert got["version"] == got["mteb_revision"] == pins[name], name
        assert np.isfinite(got["main_score"]), name


def test_every_local_sts_and_pair_task_evaluates_offline(shared_data, encoder):
    """The local STS and pair tasks through mteb (the classification ones: the slow test below, and the MASSIVE
    pair in tests/test_mteb_reference.py); STS17 (subset en-en in a subfolder, an extra `lang` column) against scipy."""
    from scipy.stats import spearmanr

    from nitp_eval.mteb_eval.run import evaluate_suite
    from nitp_eval.mteb_eval.suite import PAPER

    root = shared_data / "mteb"
    folders = set(_local_folders(root))
    suite = tuple(t for t in PAPER if t.name in folders and t.group != "Classification")
    limit = 20
    res = evaluate_suite(encoder, suite, data_dir=root, limit=limit, show_progress_bar=False)
    assert sorted(res["tasks"]) == sorted(t.name for t in suite) and len(suite) >= 9
    _check_scored(root, res, limit)
    assert res["tasks"]["STS17"]["hf_subsets"] == ["en-en"]
    sts17 = _subsample(_rows(root / "STS17" / "en-en" / "test.jsonl"), limit)
    rho = spearmanr(_cosines(encoder, sts17), [r["score"] for r in sts17]).statistic
    assert res["tasks"]["STS17"]["main_score"] == pytest.approx(rho, abs=1e-6)


@pytest.mark.slow
def test_the_paper_suite_offline_scores_every_local_task(shared_data, encoder):
    """All of it as studies and the quick-start run it: ~2 min of CPU (5 min wall on the loaded 2 cores), most of
    it mteb's per-experiment undersampling of the classification train splits."""
    from nitp_eval.mteb_eval.run import evaluate_suite
    from nitp_eval.mteb_eval.suite import PAPER

    root = shared_data / "mteb"
    folders = _local_folders(root)
    limit = 20
    res = evaluate_suite(encoder, PAPER, data_dir=root, limit=limit, show_progress_bar=False)
    assert sorted(res["tasks"]) == folders
    assert sorted(res["missing"]) == sorted({t.name for t in PAPER} - set(folders))
    assert res["overall"]["n"] == len(folders) and res["overall"]["of"] == 25
    _check_scored(root, res, limit)


def test_a_local_task_outside_the_paper_suite_in_the_documented_schema(shared_data, encoder, tmp_path):
    """Any mteb task in the docs/mteb.md layout is served: STS22, multilingual, its `en` subset in a subfolder."""
    from scipy.stats import spearmanr

    from nitp_eval.mteb_eval.run import evaluate_suite
    from nitp_eval.mteb_eval.suite import resolve_suite

    rows = _rows(shared_data / "mteb" / "STSBenchmark" / "test.jsonl")[:60]
    path = tmp_path / "STS22" / "en" / "test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps({k: r[k] for k in ("sentence1", "sentence2", "score")}) + "\n" for r in rows))
    res = evaluate_suite(encoder, resolve_suite("STS22"), data_dir=tmp_path, show_progress_bar=False)
    got = res["tasks"]["STS22"]
    assert res["failed"] == [] and got["group"] == "STS" and got["hf_subsets"] == ["en"]
    assert got["local_files"] == {"STS22/en/test.jsonl": _file_record(path)}
    rho = spearmanr(_cosines(encoder, rows), [r["score"] for r in rows]).statistic
    assert got["main_score"] == pytest.approx(rho, abs=1e-6)
