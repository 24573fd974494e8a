"""A directory of derived lm-eval task configs: one plain YAML per task/group, usable with --include_path.

Each file `include`s the stock config (lm-eval's own, or ours for C3) and overrides only
  * `num_fewshot`, when the suite fixes it (so the suite is run as documented in suite.py);
  * the data source, offline: `dataset_path: json` + `data_files` = <data-dir>/<name>/<split>.jsonl,
    where <name> is the task or group asked for (mmlu_pro's 14 subtasks all read <data-dir>/mmlu_pro/).
The same directory serves `nitp-eval lm`, `lm_eval --include_path DIR`, `accelerate launch -m lm_eval`
and lm-eval's vLLM backend, so every path sees the identical task definitions.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from nitp_eval.lm.suite import TASKS_DIR
from nitp_train.errors import UserError

DATA_DIR_ENV = "NITP_LM_DATA_DIR"  # same as --data-dir
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


@functools.cache
def task_index() -> dict:
    """lm-eval's index of every task/group/tag (stock + ours); built once per process (~8 s)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR)).task_index


def expand_tags(names: list[str]) -> list[str]:
    """Tags (e.g. ai2_arc) replaced by their tasks, so every name has its own results entry."""
    from lm_eval.tasks._index import Kind

    index = task_index()
    out = []
    for name in names:
        entry = index.get(name)
        members = sorted(entry.tags) if entry is not None and entry.kind == Kind.TAG else [name]
        out += [m for m in members if m not in out]
    return out


def write_task_dir(out_dir: Path, names: list[str], data_dir: Path | None = None,
                   fewshot: dict[str, int] | None = None) -> Path:
    """Write the derived configs of `names` (tasks, groups or tags) into `out_dir`; returns it.

    `fewshot` maps a requested name to its few-shot count (applied to all its subtasks).
    Raises UserError for an unknown name or, with `data_dir`, a missing local split file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = task_index()
    configs: dict[str, dict] = {}
    for name in names:
        _derive(name, name, index, configs, data_dir, (fewshot or {}).get(name))
    for fname, cfg in configs.items():
        (out_dir / f"{fname}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return out_dir


def _derive(name, top, index, configs, data_dir, num_fewshot) -> None:
    from lm_eval.tasks._index import Kind

    entry = index.get(name)
    if entry is None:
        raise UserError(f"--tasks: unknown lm-eval task or group {name!r}; list them with `lm_eval ls tasks` "
                        "(C3 is shipped by nitp as 'c3')")
    if entry.kind == Kind.TAG:
        for child in sorted(entry.tags):
            _derive(child, top, index, configs, data_dir, num_fewshot)
        return
    if entry.yaml_path is None:
        raise UserError(f"{name}: defined inline in another config; nitp-eval lm cannot derive it, run it with lm_eval directly")
    if entry.kind == Kind.GROUP:
        children = entry.cfg.get("task") or []
        if not all(isinstance(c, str) for c in children):
            raise UserError(f"{name}: group with inline task definitions; nitp-eval lm cannot derive it, run it with lm_eval directly")
        configs[f"group-{name}"] = {"include": str(entry.yaml_path), "group": name}
        for child in children:
            _derive(child, top, index, configs, data_dir, num_fewshot)
        return
    cfg = {"include": str(entry.yaml_path), "task": name}
    if num_fewshot is not None:
        cfg["num_fewshot"] = num_fewshot
    if data_dir is not None:
        if entry.kind != Kind.TASK:
            raise UserError(f"{name}: a Python-defined lm-eval task; --data-dir supports YAML tasks only")
        cfg.update(dataset_path="json", dataset_name=None,
                   dataset_kwargs={"data_files": local_files(name, top, entry.cfg, Path(data_dir))})
    configs[name] = cfg


def local_files(task: str, top: str, cfg: dict, data_dir: Path) -> dict[str, str]:
    """{split: <data_dir>/<top>/<split>.jsonl} for every split the task config names; all must exist."""
    files = {}
    for key in SPLIT_KEYS:
        split = cfg.get(key)
        if not split or split in files:
            continue
        path = data_dir / top / f"{split}.jsonl"
        if not path.is_file():
            raise UserError(f"{task}: local data for split '{split}' not found at {path}; put that split there as jsonl "
                            f"in the dataset's own column schema, or drop --data-dir/{DATA_DIR_ENV} to load it from the hub")
        files[split] = str(path.resolve())
    return files
