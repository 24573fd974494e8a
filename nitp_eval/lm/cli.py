"""nitp-eval lm: the paper's downstream benchmarks through lm-evaluation-harness (docs/lm-eval.md)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from nitp_eval.lm.taskdir import DATA_DIR_ENV
from nitp_eval.runs import SKIP_EXISTING_HELP
from nitp_train.errors import UserError


def command(
    paths: list[Path] = typer.Argument(
        None, show_default=False, help="Run dir(s) (all arms), arm dir(s), checkpoint(s) or any HF causal-LM dir(s)."
    ),
    suite: str = typer.Option(
        "paper",
        help="Benchmark suite (nitp_eval/lm/suite.py): paper = MMLU-Pro, C3, CommonsenseQA, ARC-Challenge, GSM8k; "
        "paper-cloze = the same with CommonsenseQA scored on the answer texts (for small models).",
    ),
    tasks: str = typer.Option(
        None,
        help="Comma-separated lm-eval task/group/tag names instead of the suite, e.g. arc_challenge,c3. Default: the suite's tasks.",
    ),
    data_dir: Path = typer.Option(
        None,
        envvar=DATA_DIR_ENV,
        show_envvar=True,
        help="Offline: read every task from <DATA_DIR>/<task>/<split>.jsonl (datasets' own schema; subtasks and "
        "variants use the dir of the task reading the same dataset); nothing touches the hub. Default: unset (the hub).",
    ),
    limit: float = typer.Option(
        None,
        help="Docs per task (per subtask for groups); < 1 is a fraction. For tests and smoke runs. Default: all docs.",
    ),
    num_fewshot: int = typer.Option(None, help="Few-shot count for all tasks (default: the suite's / task's own)."),
    batch_size: str = typer.Option("8", help="Batch size, or auto / auto:N as in lm_eval."),
    device: str = typer.Option(None, help="Torch device (default: cuda if available, else cpu)."),
    dtype: str = typer.Option(
        "auto", help="Weights dtype: auto (bfloat16 on a CUDA GPU, float32 on CPU), float32, bfloat16, float16."
    ),
    gen_kwargs: str = typer.Option(
        None, help="Generation overrides as in lm_eval, e.g. max_gen_toks=256 (default: each task's own)."
    ),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Refuse generation tasks whose max_gen_toks exceeds half the model's positions, instead of capping "
        "them there (with a recorded note). Default: off (cap).",
    ),
    bootstrap_iters: int = typer.Option(
        100_000,
        min=0,
        help="lm-eval bootstrap iterations for the stderr of non-mean metrics "
        "(mean metrics, i.e. the whole suite, use a closed form); 0: no stderr for any metric.",
    ),
    all_steps: bool = typer.Option(
        False, "--all-steps", help="Every checkpoint of each arm, not only the latest. Default: off."
    ),
    series: Path = typer.Option(
        None,
        help="Treat the checkpoint dirs as the steps of one run, this dir (step = the number each dir name ends "
        "with; results in SERIES/eval/lm/). Default: off.",
        show_default=False,
    ),
    out: Path = typer.Option(None, help="Results dir (default: <run>/eval/lm/, or ./eval/lm/ for a plain model dir)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing results files. Default: off."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help=SKIP_EXISTING_HELP),
    export_tasks: Path = typer.Option(
        None,
        help="Only write the task configs (C3 + suite/offline overrides) to this dir and print the equivalent lm_eval commands; "
        "--overwrite replaces only configs written here before. Default: off (evaluate).",
    ),
) -> None:
    """Evaluate checkpoints with lm-evaluation-harness; one results JSON per checkpoint, with per-sample records.

    One device per process. Several GPUs: write the task configs with --export-tasks DIR and run lm-eval's
    data-parallel path (accelerate launch -m lm_eval --model hf ...) or its vLLM backend (--model vllm) on them.
    """
    from tqdm import tqdm

    from nitp_eval.lm import evaluate as ev
    from nitp_eval.lm.suite import known_task, suite_tasks
    from nitp_eval.lm.taskdir import expand_tags
    from nitp_eval.models import pick_device
    from nitp_eval.runs import check_destinations, pending_targets, resolve_series

    if data_dir is not None and not Path(data_dir).is_dir():
        raise UserError(
            f"--data-dir {data_dir}: no such directory; give the dir holding <task>/<split>.jsonl (e.g. ../shared/data/lm)"
        )
    if limit is not None and limit <= 0:
        raise UserError(f"--limit {limit}: must be > 0 (a count, or a fraction below 1)")
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num-fewshot {num_fewshot}: must be >= 0")
    if not re.fullmatch(r"[1-9]\d*|auto(:[1-9]\d*)?", batch_size):
        raise UserError(f"--batch-size {batch_size}: give a positive integer, auto or auto:N (as lm_eval takes)")
    from nitp_eval.models import resolve_dtype

    dtype = resolve_dtype(dtype, pick_device(device))  # a concrete dtype, recorded and passed to lm_eval alike
    user_gen = ev.parse_gen_kwargs(gen_kwargs)
    limit = int(limit) if limit is not None and limit >= 1 and float(limit).is_integer() else limit
    if tasks:
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        suite = None
    else:
        names = [t.name for t in suite_tasks(suite)]
    names = expand_tags(names)
    # Few-shot counts go into the task configs: lm-eval ignores --num_fewshot for a config that says 0.
    if num_fewshot is not None:
        fewshot = dict.fromkeys(names, num_fewshot)
    else:
        fewshot = {n: known_task(n).num_fewshot for n in names if known_task(n)}
    primary = {n: known_task(n).primary for n in names if known_task(n)}
    run_kw = dict(
        limit=limit, batch_size=batch_size, device=device, dtype=dtype, num_fewshot=num_fewshot, gen_kwargs=gen_kwargs
    )

    if export_tasks is not None:
        _export(export_tasks, names, data_dir, fewshot, overwrite, paths, run_kw)
        return
    if not paths:
        raise UserError("give a run dir, arm dir, checkpoint or HF model dir (or --export-tasks DIR)")
    targets = resolve_series(paths, series, None, all_steps)
    targets = pending_targets(targets, "lm", out, skip_existing, overwrite)
    if not targets:
        return
    dests = check_destinations(targets, "lm", out, overwrite)  # fail before hours of evaluation, not after
    run_kw["device"] = pick_device(device)  # recorded as used, so lm_eval_command reproduces the run
    # generation lengths against the models' positions, before any weights load (lm-eval would fail mid-run)
    positions = min(ev.model_positions(t.checkpoint) for t in targets)
    generation, notes = ev.fit_generation(names, positions, user_gen, strict)
    for note in notes:
        typer.echo(f"note: {note}", err=True)

    settings = {
        "suite": suite,
        "tasks": names,
        "task_num_fewshot": fewshot,
        **run_kw,
        "bootstrap_iters": bootstrap_iters,
        "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
        "task_dir_command": _export_command(names, data_dir, suite, num_fewshot),
        "model_positions": positions,
        "generation_overrides": generation,
        "notes": notes,
    }
    evaluated = ev.evaluate_targets(targets, dests, names, settings, primary=primary, overwrite=overwrite)
    for _target, path, task_records in tqdm(evaluated, total=len(targets), desc="lm-eval checkpoints", unit="ckpt",
                                            disable=len(targets) < 2):  # fmt: skip
        summary = ", ".join(f"{n} {_num(r['metrics'].get(r['primary']))}" for n, r in task_records.items())
        typer.echo(f"{path}: {summary}")
        for name, rec in task_records.items():
            ans = rec.get("answers") or {}
            if ans.get("degenerate"):
                typer.echo(
                    f"note: {name}: answer {ans['top_answer']!r} given to {ans['top_share']:.0%} of {ans['n']} "
                    f"questions (majority-answer baseline {100 * ans['majority_baseline']:.2f} %): the score "
                    "measures that answer's share, not the model",
                    err=True,
                )


def _num(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "n/a"


def _export_command(names, data_dir, suite, num_fewshot) -> str:
    import shlex

    args = ["nitp-eval", "lm", "--export-tasks", "TASK_DIR"]
    args += ["--suite", suite] if suite else ["--tasks", ",".join(names)]
    if data_dir:
        args += ["--data-dir", str(Path(data_dir).resolve())]
    if num_fewshot is not None:  # written into the task configs
        args += ["--num-fewshot", str(num_fewshot)]
    return shlex.join(args)


def _export(out_dir: Path, names, data_dir, fewshot, overwrite, paths, run_kw) -> None:
    from nitp_eval.lm.evaluate import lm_eval_command
    from nitp_eval.lm.taskdir import write_task_dir, written_by_us

    out_dir = Path(out_dir)
    old = sorted(out_dir.glob("*.yaml")) if out_dir.is_dir() else []
    foreign = [f.name for f in old if not written_by_us(f)]
    if foreign:  # never delete a user's own task configs; lm_eval would index them alongside ours
        raise UserError(
            f"--export-tasks {out_dir}: holds YAML files not written by nitp-eval lm ({', '.join(foreign[:3])}); choose another dir"
        )
    if old and not overwrite:
        raise UserError(
            f"--export-tasks {out_dir}: already holds task configs; pass --overwrite to replace them or choose an empty dir"
        )
    write_task_dir(out_dir, names, data_dir, fewshot, replace=True)
    ckpt = paths[0] if paths else "CKPT"
    cmd = lm_eval_command(ckpt, names, out_dir.resolve(), **run_kw)
    typer.echo(
        f"wrote {len(list(out_dir.glob('*.yaml')))} task configs to {out_dir}\n"
        f"single process:   {cmd}\n"
        f"data parallel:    accelerate launch -m {cmd}\n"
        f"vLLM:             {cmd.replace('--model hf', '--model vllm', 1)}"
    )
