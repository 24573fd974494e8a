"""Run an encoder on a suite of MTEB tasks and summarise as the paper's Table 6 does.

Per task: mteb's main score (0-1). Group and overall means are plain means over the tasks
that have a score (overall = mean over tasks, not over groups: the paper's 39.24 over 25
tasks is the task mean), and always say how many tasks they cover (`n` of `of`).
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from nitp_eval.mteb_eval import import_mteb
from nitp_eval.mteb_eval.local import attach_local, limit_eval_splits
from nitp_eval.mteb_eval.suite import GROUPS, SuiteTask, load_task


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(suite: tuple[SuiteTask, ...], tasks: dict[str, dict]) -> dict:
    """groups and overall of a results dict: {"groups": {g: {mean, n, of}}, "overall": {mean, n, of}}."""
    groups = {}
    for g in list(GROUPS) + sorted({t.group for t in suite} - set(GROUPS)):
        members = [t.name for t in suite if t.group == g]
        if not members:
            continue
        scores = [tasks[n]["main_score"] for n in members if n in tasks]
        groups[g] = {"mean": _mean(scores), "n": len(scores), "of": len(members)}
    scores = [tasks[t.name]["main_score"] for t in suite if t.name in tasks]
    return {"groups": groups, "overall": {"mean": _mean(scores), "n": len(scores), "of": len(suite)}}


def _prepare(st: SuiteTask, data_dir: Path | None, limit: int | None, seed: int):
    """(task with data loaded, source, eval row counts) or (None, reason, None) when there is no data."""
    task = load_task(st)
    if data_dir is not None:
        reason = attach_local(task, data_dir)
        if reason:
            return None, reason, None
        source = "local"
    else:
        try:
            task.load_data()
        except Exception as e:  # offline, gated, renamed on the hub...: report, never drop silently
            return None, f"loading from the hub failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", None
        source = "hub"
    counts = limit_eval_splits(task, limit, seed)
    return task, source, counts


def evaluate_suite(encoder, suite: tuple[SuiteTask, ...], *, data_dir: str | Path | None = None,
                   limit: int | None = None, seed: int = 0, batch_size: int = 32,
                   show_progress_bar: bool = True) -> dict:
    """Evaluate `encoder` on every task of `suite`.

    Returns {"tasks": {...}, "missing": [...], "missing_reasons": {...}, "groups": ..., "overall": ...}
    (see docs/mteb.md). With `data_dir`, data comes only from local copies (no hub access);
    tasks without data are listed in "missing". `limit` subsamples evaluation splits
    (scores are then not comparable to published ones).
    """
    mteb = import_mteb()
    data_dir = Path(data_dir) if data_dir is not None else None
    tasks: dict[str, dict] = {}
    missing: dict[str, str] = {}
    bar = tqdm(suite, desc="mteb tasks", disable=not show_progress_bar)
    for st in bar:
        bar.set_postfix_str(st.name)
        task, source, counts = _prepare(st, data_dir, limit, seed)
        if task is None:
            missing[st.name] = source
            tqdm.write(f"mteb: {st.name}: missing ({source})")
            continue
        # cache=None: mteb writes no results folder; co2_tracker=False: no codecarbon side effects.
        result = mteb.evaluate(encoder, task, cache=None, co2_tracker=False, overwrite_strategy="always",
                               encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress_bar},
                               show_progress_bar=False, raise_error=True)
        (tr,) = result.task_results
        scores = {split: {s["hf_subset"]: {k: v for k, v in s.items() if k not in ("hf_subset", "languages")}
                          for s in per_subset} for split, per_subset in tr.scores.items()}
        tasks[st.name] = {
            "group": st.group,
            "main_score_name": task.metadata.main_score,
            "main_score": float(tr.get_score()),
            "scores": scores,
            "version": task.metadata.revision,  # dataset revision mteb pins for this task version
            "hf_subsets": list(task.hf_subsets),
            "n_eval": counts,
            "limited": limit is not None,
            "source": source,
            "evaluation_time": tr.evaluation_time,
        }
        tqdm.write(f"mteb: {st.name}: {task.metadata.main_score} = {tasks[st.name]['main_score']:.4f}")
        task.unload_data()
    return {"tasks": tasks, "missing": list(missing), "missing_reasons": missing, **summarize(suite, tasks)}
