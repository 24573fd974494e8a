"""A directory of derived lm-eval task configs: one plain YAML per task/group, usable with --include_path.

Each file `include`s the stock config (lm-eval's own, or ours for C3) and overrides only
  * `num_fewshot`, when the suite fixes it (so the suite is run as documented in suite.py);
  * `generation_kwargs.max_gen_toks`, when a generation task asks for more new tokens than fit the
    model (`generation_caps`; `nitp-eval lm` caps them at half the model's positions);
  * the data source, offline: `dataset_path: json` + `data_files` = <data-dir>/<dir>/<split>.jsonl, where
    <dir> is the task's own name if <data-dir> has it, else the sub-directory of a task or group that
    reads the same hub dataset (mmlu_pro_law reads <data-dir>/mmlu_pro/, c3_test reads <data-dir>/c3/).
The same directory serves `nitp-eval lm`, `lm_eval --include_path DIR`, `accelerate launch -m lm_eval`
and lm-eval's vLLM backend, so every path sees the identical task definitions.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from nitp_eval.lm.suite import TASKS_DIR
from nitp_eval.runs import read_jsonl
from nitp_train.errors import UserError

DATA_DIR_ENV = "NITP_LM_DATA_DIR"  # same as --data-dir
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
HEADER = "# written by nitp-eval lm (nitp_eval/lm/taskdir.py)\n"  # marks files --export-tasks may replace


def _kind():
    """lm-eval's task-index kinds; the private module appeared in lm-eval 0.4.12."""
    try:
        from lm_eval.tasks._index import Kind
    except ImportError:
        from importlib.metadata import version

        raise UserError(
            f"lm-eval {version('lm_eval')} is too old for nitp-eval lm (no lm_eval.tasks._index); "
            "pip install 'lm-eval[hf]>=0.4.12,<0.5'"
        ) from None
    return Kind


@functools.cache
def task_index() -> dict:
    """lm-eval's index of every task/group/tag (stock + ours); built once per process (~8 s)."""
    from lm_eval.tasks import TaskManager

    _kind()  # one clear line on an lm-eval without the index, before anything else fails
    return TaskManager(include_path=str(TASKS_DIR)).task_index


def expand_tags(names: list[str]) -> list[str]:
    """Tags (e.g. ai2_arc) replaced by their tasks, so every name has its own results entry."""
    index, tag = task_index(), _kind().TAG
    out = []
    for name in names:
        entry = index.get(name)
        members = sorted(entry.tags) if entry is not None and entry.kind == tag else [name]
        out += [m for m in members if m not in out]
    return out


LM_EVAL_MAX_GEN_TOKS = 256  # what lm-eval's HF model generates when a task config sets no max_gen_toks


def stock_config(name: str) -> dict:
    """A task's config as lm-eval resolves it (includes merged; !function hooks left unresolved)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(task_index()[name].yaml_path, resolve_func=False)


def leaf_tasks(names: list[str]) -> list[str]:
    """The plain tasks behind task, group and tag names (groups and tags expanded, in order)."""
    index, kind = task_index(), _kind()
    out: list[str] = []
    for name in names:
        entry = index.get(name)
        if entry is None or entry.kind == kind.TASK or entry.yaml_path is None:
            children = []
        elif entry.kind == kind.TAG:
            children = sorted(entry.tags)
        else:
            children = [c for c in entry.cfg.get("task") or [] if isinstance(c, str)]
        for leaf in leaf_tasks(children) if children else [name]:
            if leaf not in out:
                out.append(leaf)
    return out


def generation_caps(names: list[str], cap: int) -> dict[str, tuple[int, dict]]:
    """{task: (its max_gen_toks, capped generation_kwargs)} for the generation tasks asking for more than `cap`."""
    out = {}
    for leaf in leaf_tasks(names):
        entry = task_index().get(leaf)
        if entry is None or entry.kind != _kind().TASK or entry.yaml_path is None:
            continue
        cfg = stock_config(leaf)
        if cfg.get("output_type") != "generate_until":
            continue
        kwargs = dict(cfg.get("generation_kwargs") or {})
        asked = int(kwargs.get("max_gen_toks", LM_EVAL_MAX_GEN_TOKS))
        if asked > cap:
            out[leaf] = (asked, {**kwargs, "max_gen_toks": cap})
    return out


def write_task_dir(
    out_dir: Path,
    names: list[str],
    data_dir: Path | None = None,
    fewshot: dict[str, int] | None = None,
    replace: bool = False,
    generation: dict[str, dict] | None = None,
) -> Path:
    """Write the derived configs of `names` (tasks, groups or tags) into `out_dir`; returns it.

    `fewshot` maps a requested name to its few-shot count (applied to all its subtasks);
    `generation` a task to the `generation_kwargs` it runs with instead of its own (`generation_caps`).
    `replace` first deletes the configs an earlier call wrote there (files of others are kept).
    Raises UserError for an unknown name or, with `data_dir`, a missing local split file,
    before anything is written or deleted.
    """
    out_dir = Path(out_dir)
    index = task_index()
    local = _local_dirs(Path(data_dir), index) if data_dir is not None else None
    configs: dict[str, dict] = {}
    for name in names:
        _derive(name, index, configs, data_dir, local, (fewshot or {}).get(name))
    for task, kwargs in (generation or {}).items():
        configs[task]["generation_kwargs"] = kwargs
    out_dir.mkdir(parents=True, exist_ok=True)
    if replace:  # stale configs of an earlier export would be indexed by lm_eval too
        for f in out_dir.glob("*.yaml"):
            if written_by_us(f):
                f.unlink()
    for fname, cfg in configs.items():
        text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
        (out_dir / f"{fname}.yaml").write_text(HEADER + text)
    return out_dir


def written_by_us(path: Path) -> bool:
    """Whether a YAML file is one of our derived configs (safe to replace on --export-tasks --overwrite)."""
    with open(path, encoding="utf-8") as f:
        return f.readline() == HEADER


def _derive(name, index, configs, data_dir, local, num_fewshot) -> None:
    kind = _kind()
    entry = index.get(name)
    if entry is None:
        raise UserError(
            f"--tasks: unknown lm-eval task or group {name!r}; list them with `lm_eval ls tasks` "
            "(nitp ships c3, c3_dialogue, c3_test and commonsense_qa_cloze)"
        )
    if entry.kind == kind.TAG:
        for child in sorted(entry.tags):
            _derive(child, index, configs, data_dir, local, num_fewshot)
        return
    if entry.yaml_path is None:
        raise UserError(
            f"{name}: defined inline in another config; nitp-eval lm cannot derive it, run it with lm_eval directly"
        )
    if entry.kind == kind.GROUP:
        children = entry.cfg.get("task") or []
        if not all(isinstance(c, str) for c in children):
            raise UserError(
                f"{name}: group with inline task definitions; nitp-eval lm cannot derive it, run it with lm_eval directly"
            )
        configs[f"group-{name}"] = {"include": str(entry.yaml_path), "group": name}
        for child in children:
            _derive(child, index, configs, data_dir, local, num_fewshot)
        return
    cfg = {"include": str(entry.yaml_path), "task": name}
    if num_fewshot is not None:
        cfg["num_fewshot"] = num_fewshot
    if data_dir is None:
        reason = (entry.cfg.get("metadata") or {}).get("local_data_only")
        if reason:
            raise UserError(f"{name}: needs local data ({reason}); pass --data-dir (or {DATA_DIR_ENV})")
    else:
        if entry.kind != kind.TASK:
            raise UserError(f"{name}: a Python-defined lm-eval task; --data-dir supports YAML tasks only")
        sub = name if (Path(data_dir) / name).is_dir() else local.get(_dataset(entry.cfg), name)
        cfg.update(
            dataset_path="json",
            dataset_name=None,
            dataset_kwargs={"data_files": local_files(name, entry.cfg, Path(data_dir) / sub)},
        )
    configs[name] = cfg


def _dataset(cfg: dict) -> tuple:
    """The hub dataset a task config reads: (dataset_path, dataset_name)."""
    return cfg.get("dataset_path"), cfg.get("dataset_name")


def _local_dirs(data_dir: Path, index: dict) -> dict[tuple, str]:
    """{hub dataset: sub-directory of data_dir} for every sub-directory named after a task or group."""
    if not data_dir.is_dir():
        return {}
    kind = _kind()
    out = {}
    for d in sorted(p.name for p in data_dir.iterdir() if p.is_dir()):
        entry = index.get(d)
        while entry is not None and entry.kind == kind.GROUP:  # a group reads its (first) subtask's dataset
            first = (entry.cfg.get("task") or [None])[0]
            entry = index.get(first) if isinstance(first, str) else None
        if entry is not None and entry.kind == kind.TASK:
            out.setdefault(_dataset(entry.cfg), d)
    return out


def local_files(task: str, cfg: dict, task_data: Path) -> dict[str, str]:
    """{split: <task_data>/<split>.jsonl} for every split the task config names; all must exist."""
    files = {}
    for key in SPLIT_KEYS:
        split = cfg.get(key)
        if not split or split in files:
            continue
        path = task_data / f"{split}.jsonl"
        if not path.is_file():
            raise UserError(
                f"{task}: local data for split '{split}' not found at {path}; put that split there as jsonl "
                f"in the dataset's own column schema, or drop --data-dir/{DATA_DIR_ENV} to load it from the hub"
            )
        read_jsonl(path)  # a cut-short copy fails here in one line, not inside lm-eval minutes later
        files[split] = str(path.resolve())
    return files
