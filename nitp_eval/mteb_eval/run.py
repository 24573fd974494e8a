"""Run an encoder on a suite of MTEB tasks and summarise as the paper's Table 6 does.

Per task: mteb's main score (0-1). Group and overall means are plain means over the tasks
that have a score (overall = mean over tasks, not over groups: the paper's 39.24 over 25
tasks is the task mean), and always say how many tasks they cover (`n` of `of`).
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from nitp_eval.mteb_eval import import_mteb
from nitp_eval.mteb_eval.local import MissingData, attach_local, limit_eval_splits
from nitp_eval.mteb_eval.suite import GROUPS, SuiteTask, load_task, mteb_revision


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
    """(task with data loaded, {"source", "local_files"}, eval row counts); MissingData when there is no data."""
    task = load_task(st)
    if data_dir is not None:
        provenance = {"source": "local", "local_files": attach_local(task, data_dir)}
    else:
        try:
            task.load_data()
        except Exception as e:  # offline, gated, renamed on the hub...: report, never drop silently
            raise MissingData(f"loading from the hub failed: {_one_line(e)}") from e
        provenance = {"source": "hub", "local_files": None}
    counts = limit_eval_splits(task, limit, seed)
    return task, provenance, counts


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _evaluate_task(mteb, encoder, st: SuiteTask, task, batch_size: int, show_progress_bar: bool) -> dict:
    # cache=None: mteb writes no results folder; co2_tracker=False: no codecarbon side effects.
    # raise_error=True: a failure reaches evaluate_suite, which records it and goes on with the other tasks.
    result = mteb.evaluate(
        encoder,
        task,
        cache=None,
        co2_tracker=False,
        overwrite_strategy="always",
        encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress_bar},
        show_progress_bar=False,
        raise_error=True,
    )
    (tr,) = result.task_results
    scores = {
        split: {s["hf_subset"]: {k: v for k, v in s.items() if k not in ("hf_subset", "languages")} for s in per_subset}
        for split, per_subset in tr.scores.items()
    }
    return {
        "group": st.group,
        "main_score_name": task.metadata.main_score,
        "main_score": float(tr.get_score()),
        "scores": scores,
        "version": task.metadata.revision,  # the dataset revision evaluated: the suite's pin (suite.py)
        "mteb_revision": mteb_revision(task),  # the one the installed mteb names: the same unless mteb moved it
        "hf_subsets": list(task.hf_subsets),
        "evaluation_time": tr.evaluation_time,
    }


def evaluate_suite(
    encoder,
    suite: tuple[SuiteTask, ...],
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    show_progress_bar: bool = True,
) -> dict:
    """Evaluate `encoder` on every task of `suite`.

    Returns {"tasks": {...}, "missing": [...], "missing_reasons": {...}, "failed": [...],
    "failed_reasons": {...}, "groups": ..., "overall": ...} (see docs/mteb.md). With `data_dir`,
    data comes only from local copies (no hub access); tasks without data are "missing", tasks
    whose evaluation raised are "failed" (with the error) and the other tasks still run.
    `limit` subsamples evaluation splits (scores are then not comparable to published ones).
    """
    mteb = import_mteb()
    data_dir = Path(data_dir) if data_dir is not None else None
    tasks: dict[str, dict] = {}
    missing: dict[str, str] = {}
    failed: dict[str, str] = {}
    bar = tqdm(suite, desc="mteb tasks", disable=not show_progress_bar)
    for st in bar:
        bar.set_postfix_str(st.name)
        try:
            task, provenance, counts = _prepare(st, data_dir, limit, seed)
            record = _evaluate_task(mteb, encoder, st, task, batch_size, show_progress_bar)
        except MissingData as e:
            missing[st.name] = str(e)
            tqdm.write(f"mteb: {st.name}: missing ({e})")
            continue
        except Exception as e:  # one broken task (bad row, model error) must not cost the others
            failed[st.name] = _one_line(e)
            tqdm.write(f"mteb: {st.name}: FAILED ({failed[st.name]})")
            continue
        tasks[st.name] = {**record, "n_eval": counts, "limited": limit is not None, **provenance}
        tqdm.write(f"mteb: {st.name}: {task.metadata.main_score} = {record['main_score']:.4f}")
        if record["version"] != record["mteb_revision"]:
            tqdm.write(
                f"mteb: {st.name}: dataset revision {record['version']} (pinned; mteb names {record['mteb_revision']})"
            )
        task.unload_data()
    return {
        "tasks": tasks,
        "missing": list(missing),
        "missing_reasons": missing,
        "failed": list(failed),
        "failed_reasons": failed,
        **summarize(suite, tasks),
    }


def fit_lengths(targets, *, layer: int, max_length: int, padding_side: str) -> dict:
    """--layer against every model's config before any weights load; --max-length capped at each model's
    position limit (a longer text would otherwise fail mid-run with an IndexError)."""
    from nitp_eval.mteb_eval.encoder import check_settings

    return {
        t: check_settings(_config(t.checkpoint), layer=layer, max_length=max_length, padding_side=padding_side)
        for t in targets
    }


def evaluate_targets(targets, dests, suite, settings: dict, lengths: dict, *, device, overwrite: bool, starting=None):
    """Load -> compute -> write, per target; yields (target, results path, results) as each one lands."""
    from nitp_eval.mteb_eval.encoder import MeanPoolEncoder
    from nitp_eval.runs import results_header, write_json
    from nitp_train.errors import UserError

    for t, dest in zip(targets, dests):
        if starting is not None:
            starting(t)
        encoder = MeanPoolEncoder.from_pretrained(
            t.checkpoint, device=device, dtype=settings["dtype"], layer=settings["layer"], max_length=lengths[t],
            batch_size=settings["batch_size"], padding_side=settings["padding_side"], name=f"nitp/{t.label}",
        )  # fmt: skip
        results = evaluate_suite(encoder, suite, data_dir=settings["data_dir"] and Path(settings["data_dir"]),
                                 limit=settings["limit"], seed=settings["seed"], batch_size=settings["batch_size"])  # fmt: skip
        if results["overall"]["n"] == 0:  # an empty file would only block the real run (--overwrite)
            raise UserError(
                f"{t.checkpoint}: no task was scored ({len(results['missing'])} missing, "
                f"{len(results['failed'])} failed: see above); no results written"
            )
        payload = {**results_header("mteb", t, {**settings, "max_length": lengths[t]}, ("mteb",)), **results}
        yield t, write_json(dest, payload, overwrite), results


def _config(checkpoint: Path):
    """The model's config, or None when it cannot be read (load_model then says why, in one line)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(checkpoint)
    except (OSError, ValueError, KeyError):
        return None
