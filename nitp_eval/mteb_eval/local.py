"""Task data from local copies (no hub), and deterministic subsampling of evaluation splits.

Layout of a data dir (see ../shared/data/mteb and docs/mteb.md):

    <data_dir>/<Task>/<split>.jsonl            monolingual tasks
    <data_dir>/<Task>/<subset>/<split>.jsonl   multilingual tasks, one folder per hf_subset (e.g. en)

Rows are in the column schema the task evaluates on, i.e. after the task's own
`dataset_transform` (pair classification: sentence1, sentence2, labels). mteb 2.x then runs
the task without touching the hub: `task.dataset` is set and `task.data_loaded = True`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


class MissingData(Exception):
    """A task's local copy is absent or incomplete; the message says what is missing."""


def needed_splits(task) -> list[str]:
    """Splits a task reads: its evaluation splits, plus the train split classification fits on."""
    splits = list(task.eval_splits)
    train = getattr(task, "train_split", None)
    if train is not None and train not in splits:
        splits.append(train)
    return splits


def _read_jsonl(path: Path):
    """(in-memory Dataset, {"sha256", "rows"}) of a jsonl file: nothing is written to the datasets cache."""
    from datasets import Dataset

    from nitp_eval.runs import read_jsonl
    from nitp_train.errors import UserError

    raw = path.read_bytes()
    try:
        rows = read_jsonl(path, raw)
    except UserError as e:  # a broken copy is reported with the missing ones; the other tasks still run
        raise MissingData(str(e)) from None
    return Dataset.from_list(rows), {"sha256": hashlib.sha256(raw).hexdigest(), "rows": len(rows)}


def attach_local(task, data_dir: str | Path) -> dict[str, dict]:
    """Give `task` its data from `data_dir`.

    Returns the files used, {path relative to data_dir: {"sha256", "rows"}}: local copies may
    differ from the hub revision mteb pins (docs/mteb.md), so results record exactly what ran.
    Raises MissingData, with nothing set on the task, when the copy is absent or incomplete."""
    from datasets import DatasetDict

    root = Path(data_dir) / task.metadata.name
    if not root.is_dir():
        raise MissingData(f"no folder {root}")
    if _is_retrieval(task):
        raise MissingData(
            f"{root}: local copies of {task.metadata.type} tasks are not supported yet "
            "(classification, STS, pair classification are)"
        )
    folders = {s: root / s for s in task.hf_subsets} if task.metadata.is_multilingual else {None: root}
    files = {
        subset: {split: folder / f"{split}.jsonl" for split in needed_splits(task)}
        for subset, folder in folders.items()
    }
    absent = [str(p) for per_split in files.values() for p in per_split.values() if not p.is_file()]
    if absent:
        raise MissingData(f"missing {', '.join(absent)}")
    dataset, provenance = {}, {}
    for subset, per_split in files.items():
        dataset[subset] = DatasetDict()
        for split, path in per_split.items():
            dataset[subset][split], provenance[path.relative_to(data_dir).as_posix()] = _read_jsonl(path)
    task.dataset = dataset[None] if None in dataset else dataset
    task.data_loaded = True
    return provenance


def _is_retrieval(task) -> bool:
    from mteb.abstasks import AbsTaskRetrieval

    return isinstance(task, AbsTaskRetrieval)


def _is_pair(task) -> bool:
    from mteb.abstasks import AbsTaskPairClassification

    return isinstance(task, AbsTaskPairClassification)


def _one_row_per_pair(ds):
    """mteb's pinned v1 hub copies of pair tasks hold a whole split in ONE row of lists (mteb
    unwraps it in AbsTaskPairClassification._evaluate_subset): expand it so limits count pairs."""
    from datasets import Dataset

    if len(ds) == 1 and all(isinstance(v, list) for v in ds[0].values()):
        return Dataset.from_dict(ds[0])
    return ds


def _as_one_pair_split(ds):
    """A single pair, in the one-row-of-lists form: mteb reads any one-row pair split that way."""
    from datasets import Dataset

    return Dataset.from_dict({k: [v] for k, v in ds.to_dict().items()})


def _subsample(ds, limit: int | None, seed: int):
    """At most `limit` rows of `ds`: a seeded random subset, original order kept."""
    if limit is None or len(ds) <= limit:
        return ds
    return ds.select(np.sort(np.random.default_rng(seed).choice(len(ds), size=limit, replace=False)))


def limit_eval_splits(task, limit: int | None, seed: int = 0) -> dict[str, int]:
    """Keep at most `limit` rows (pairs, texts; queries for reranking) of each evaluation split.

    Train splits are left whole: classification draws its few examples per label from them.
    Returns the evaluated row count per split (summed over subsets; pairs for pair tasks)."""
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
                    data["corpus"] = data["corpus"].filter(lambda row, docs=docs: row["id"] in docs)
                counts[split] = counts.get(split, 0) + len(data["queries"])
        return counts
    per_subset = task.dataset.values() if task.metadata.is_multilingual else [task.dataset]
    pair = _is_pair(task)
    for dd in per_subset:
        for split in task.eval_splits:
            ds = _subsample(_one_row_per_pair(dd[split]) if pair else dd[split], limit, seed)
            counts[split] = counts.get(split, 0) + len(ds)
            dd[split] = _as_one_pair_split(ds) if pair and len(ds) == 1 else ds
    return counts
