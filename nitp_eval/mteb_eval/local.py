"""Task data from local copies (no hub), and deterministic subsampling of evaluation splits.

Layout of a data dir (see ../shared/data/mteb and docs/mteb.md):

    <data_dir>/<Task>/<split>.jsonl            monolingual tasks
    <data_dir>/<Task>/<subset>/<split>.jsonl   multilingual tasks, one folder per hf_subset (e.g. en)

Rows are in the column schema the task evaluates on, i.e. after the task's own
`dataset_transform` (pair classification: sentence1, sentence2, labels). mteb 2.x then runs
the task without touching the hub: `task.dataset` is set and `task.data_loaded = True`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def needed_splits(task) -> list[str]:
    """Splits a task reads: its evaluation splits, plus the train split classification fits on."""
    splits = list(task.eval_splits)
    train = getattr(task, "train_split", None)
    if train is not None and train not in splits:
        splits.append(train)
    return splits


def _read_jsonl(path: Path):
    from datasets import Dataset

    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return Dataset.from_list(rows)  # in memory: nothing is written to the datasets cache


def attach_local(task, data_dir: str | Path) -> str | None:
    """Give `task` its data from `data_dir`; None on success, else why it is missing (nothing is set)."""
    from datasets import DatasetDict

    root = Path(data_dir) / task.metadata.name
    if not root.is_dir():
        return f"no folder {root}"
    if _is_retrieval(task):
        return f"{root}: local copies of {task.metadata.type} tasks are not supported yet (classification, STS, pair classification are)"
    folders = {s: root / s for s in task.hf_subsets} if task.metadata.is_multilingual else {None: root}
    dataset = {}
    for subset, folder in folders.items():
        files = {split: folder / f"{split}.jsonl" for split in needed_splits(task)}
        absent = [str(p) for p in files.values() if not p.is_file()]
        if absent:
            return f"missing {', '.join(absent)}"
        dataset[subset] = DatasetDict({split: _read_jsonl(p) for split, p in files.items()})
    task.dataset = dataset[None] if None in dataset else dataset
    task.data_loaded = True
    return None


def _is_retrieval(task) -> bool:
    from mteb.abstasks import AbsTaskRetrieval

    return isinstance(task, AbsTaskRetrieval)


def _subsample(ds, limit: int | None, seed: int):
    """At most `limit` rows of `ds`: a seeded random subset, original order kept."""
    if limit is None or len(ds) <= limit:
        return ds
    return ds.select(np.sort(np.random.default_rng(seed).choice(len(ds), size=limit, replace=False)))


def limit_eval_splits(task, limit: int | None, seed: int = 0) -> dict[str, int]:
    """Keep at most `limit` rows (pairs, texts; queries for reranking) of each evaluation split.

    Train splits are left whole: classification draws its few examples per label from them.
    Returns the evaluated row count per split (summed over subsets)."""
    counts: dict[str, int] = {}
    if _is_retrieval(task):  # {subset: {split: {queries, corpus, relevant_docs, top_ranked}}}
        for per_split in task.dataset.values():
            for split in task.eval_splits:
                data = per_split[split]
                data["queries"] = _subsample(data["queries"], limit, seed)
                kept = set(data["queries"]["id"])
                data["relevant_docs"] = {q: d for q, d in data["relevant_docs"].items() if q in kept}
                if data.get("top_ranked"):  # reranking: only the candidates of kept queries are encoded
                    data["top_ranked"] = {q: d for q, d in data["top_ranked"].items() if q in kept}
                    docs = {d for ds in data["top_ranked"].values() for d in ds}
                    data["corpus"] = data["corpus"].filter(lambda row: row["id"] in docs)
                counts[split] = counts.get(split, 0) + len(data["queries"])
        return counts
    per_subset = task.dataset.values() if task.metadata.is_multilingual else [task.dataset]
    for dd in per_subset:
        for split in task.eval_splits:
            dd[split] = _subsample(dd[split], limit, seed)
            counts[split] = counts.get(split, 0) + len(dd[split])
    return counts
