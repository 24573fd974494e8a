"""nitp-eval mteb: frozen mean-pooled hidden states on the paper's 25 English MTEB tasks (docs/mteb.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from nitp_eval.runs import SKIP_EXISTING_HELP
from nitp_train.errors import UserError


def command(
    paths: list[Path] = typer.Argument(
        ...,
        help="Run dir(s) (all arms), study dir(s), arm dir(s), checkpoint dir(s) or any HF model dir(s). "
        "With --series: checkpoint dirs or quoted globs ('ckpts/step-*'); with --revisions: one hub model id.",
        show_default=False,
    ),
    series: Path = typer.Option(
        None,
        help="Treat the checkpoint dirs as the steps of one run, this dir: the step is the number each dir name "
        "ends with; results go to SERIES/eval/mteb/<name>-step-N.json and `nitp-eval report SERIES` reads them. "
        "Default: off (with --revisions: the model's name).",
        show_default=False,
    ),
    revisions: str = typer.Option(
        None,
        help="Comma-separated hub revisions of the model id given as PATH (e.g. step1000,step8000), "
        "evaluated as a series (from the local HF cache when the hub is unreachable). Default: off.",
        show_default=False,
    ),
    tasks: str = typer.Option(
        "paper", help="Suite name (paper = the 25 tasks of the paper's Table 6) or comma-separated mteb task names."
    ),
    data_dir: Path = typer.Option(
        None,
        help="Offline: read task data only from <data-dir>/<Task>/[<subset>/]<split>.jsonl; "
        "tasks without a local copy are reported missing. Default: the hub.",
    ),
    layer: int = typer.Option(-1, help="hidden_states index to pool: -1 = last layer (the paper), 0 = embeddings."),
    batch_size: int = typer.Option(32, help="Texts per forward pass."),
    max_length: int = typer.Option(
        512, help="Truncate texts to this many tokens (capped at the model's position limit)."
    ),
    padding_side: str = typer.Option("right", help="right | left (pooling and positions are correct under both)."),
    limit: int = typer.Option(
        None,
        help="Evaluate at most this many rows per evaluation split (seeded subsample): "
        "for quick checks only, scores are then NOT comparable to published ones. Default: whole splits.",
    ),
    seed: int = typer.Option(0, help="Seed of the --limit subsample."),
    all_steps: bool = typer.Option(
        False, "--all-steps", help="Every checkpoint of each arm, not only the latest. Default: off."
    ),
    out: Path = typer.Option(None, help="Results dir (default: <run>/eval/mteb/, or ./eval/mteb/ for a bare model)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing results files. Default: off."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help=SKIP_EXISTING_HELP),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1, ... (default: cuda if available)."),
    dtype: str = typer.Option(
        "auto", help="Weights dtype: auto (bfloat16 on a CUDA GPU, float32 on CPU), float32, bfloat16, float16."
    ),
) -> None:
    """Evaluate checkpoints on MTEB: mean-pooled (valid tokens), L2-normalised hidden states, no fine-tuning.

    One device per process (bfloat16 weights on a CUDA GPU by default); run one process per GPU over different
    checkpoints (--out keeps their results apart) for several GPUs.
    """
    from nitp_eval.runs import check_destinations, pending_targets, resolve_series

    if data_dir is not None and not data_dir.is_dir():
        raise UserError(
            f"--data-dir {data_dir}: no such directory; give the folder holding one sub-folder per task "
            "(e.g. ../shared/data/mteb)"
        )
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1 (or leave it out to evaluate whole splits)")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    from nitp_eval.models import pick_device, resolve_dtype

    dtype = resolve_dtype(dtype, pick_device(device))
    from nitp_eval.mteb_eval.encoder import check_settings

    check_settings(None, layer=layer, max_length=max_length, padding_side=padding_side)
    from nitp_eval.mteb_eval.run import evaluate_targets, fit_lengths
    from nitp_eval.mteb_eval.suite import resolve_suite

    suite = resolve_suite(tasks)
    targets = resolve_series(paths, series, revisions, all_steps)
    targets = pending_targets(targets, "mteb", out, skip_existing, overwrite)
    if not targets:
        return
    dests = check_destinations(targets, "mteb", out, overwrite)  # fail before hours of work, not after
    lengths = fit_lengths(targets, layer=layer, max_length=max_length, padding_side=padding_side)
    for t in targets:
        if lengths[t] < max_length:
            typer.echo(
                f"note: --max-length {max_length} exceeds the {lengths[t]} positions of {t.checkpoint}; "
                f"texts are truncated to {lengths[t]} tokens"
            )
    settings = {
        "suite": tasks,
        "tasks": [t.name for t in suite],
        "data_dir": str(data_dir) if data_dir else None,
        "pooling": "mean",
        "normalize": True,
        "layer": layer,
        "max_length": max_length,
        "batch_size": batch_size,
        "padding_side": padding_side,
        "limit": limit,
        "seed": seed,
        "dtype": dtype,
        "prompts": None,
    }
    failed = []
    evaluated = evaluate_targets(targets, dests, suite, settings, lengths, device=device, overwrite=overwrite,
                                 starting=lambda t: typer.echo(f"mteb: {t.checkpoint}"))  # fmt: skip
    for t, dest, results in evaluated:
        typer.echo(_summary(results) + f"\nwrote {dest}")
        failed += [f"{t.label}/{name}" for name in results["failed"]]
    if failed:  # the other tasks' results are written, but the run did not fully succeed
        typer.echo(
            f"error: {len(failed)} task(s) failed: {', '.join(failed)} (reasons above and in failed_reasons)", err=True
        )
        raise typer.Exit(1)


def _summary(results: dict) -> str:
    def pct(x):
        return "  n/a" if x is None else f"{100 * x:5.2f}"

    lines = [f"  {g:<15} {pct(v['mean'])}  ({v['n']} of {v['of']} tasks)" for g, v in results["groups"].items()]
    o = results["overall"]
    lines.append(f"  {'overall':<15} {pct(o['mean'])}  ({o['n']} of {o['of']} tasks)")
    if results["missing"]:
        lines.append(f"  missing ({len(results['missing'])}): {', '.join(results['missing'])}")
    if results["failed"]:
        lines.append(f"  FAILED ({len(results['failed'])}): {', '.join(results['failed'])}")
    if any(r["limited"] for r in results["tasks"].values()):
        lines.append("  --limit was set: subsampled scores, not comparable to published ones")
    return "\n".join(lines)
