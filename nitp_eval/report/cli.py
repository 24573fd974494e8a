"""nitp-eval report: paper-style tables and figures from results files alone (docs/report.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from nitp_train.errors import UserError


def command(
    runs: list[Path] = typer.Argument(
        None,
        help="Pair dir(s) such as runs/x, series dirs, or HF model dirs (reported in place from ./eval/); with --spec "
        "they replace the spec's runs, in order.",
        show_default=False,
    ),
    spec: Path = typer.Option(
        None,
        "--spec",
        help="An analysis spec (analyses/*.yaml): which runs, sections and settings. Default: none (the paths given).",
        show_default=False,
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Report dir to write. Default: reports/<run dir name>, or reports/<spec name>.",
        show_default=False,
    ),
    sections: str = typer.Option(
        None,
        "--sections",
        help="Comma-separated sections to build, overriding the spec: downstream,mteb,geometry,dynamics,cost,ablation. "
        "Default: the spec's, else downstream,mteb,geometry,dynamics,cost.",
        show_default=False,
    ),
    step: int = typer.Option(
        None,
        "--step",
        help="Checkpoint step the tables compare. Default: each arm's latest evaluated step.",
        show_default=False,
    ),
    n_boot: int = typer.Option(
        None,
        "--n-boot",
        help="Bootstrap resamples for the confidence intervals (default: 10000, or the spec's).",
        show_default=False,
    ),
    seed: int = typer.Option(None, "--seed", help="Bootstrap seed (default: 0, or the spec's).", show_default=False),
    label: list[str] = typer.Option(
        None,
        "--label",
        help="A name for each run, in order (repeat: --label A --label B). Default: the dir's name, or the spec's label.",
        show_default=False,
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report dir. Default: off."),
    allow_mismatch: bool = typer.Option(
        False,
        "--allow-mismatch",
        help="Compare geometry results measured on different tokens, seq_len, text or token rules, each flagged "
        "NOT COMPARABLE under the caveats. Default: off (the report refuses them).",
    ),
) -> None:
    """Build report.md with tables (also LaTeX and CSV) and figures (PNG and PDF) for NTP vs NITP runs."""
    from nitp_eval.report.build import build_report
    from nitp_eval.report.spec import SECTIONS, load_spec, spec_from_paths

    runs, labels = list(runs or []), list(label or [])
    if spec is not None:
        s = load_spec(spec, runs)
        if len(labels) > len(s.runs):
            raise UserError(f"{len(labels)} --label for {len(s.runs)} run(s); give at most one --label per run")
        for r, name in zip(s.runs, labels):
            r["label"] = name
    elif runs:
        s = spec_from_paths(runs, labels)
    else:
        raise UserError(
            "report: nothing to report on; give a run dir (nitp-eval report runs/x) or --spec analyses/<name>.yaml"
        )
    if sections:
        chosen = [x.strip() for x in sections.split(",") if x.strip()]
        bad = [x for x in chosen if x not in SECTIONS]
        if bad:
            raise UserError(f"--sections: unknown {bad}; choose from {','.join(SECTIONS)}")
        s.sections = chosen
    if step is not None:
        s.step = step
    if n_boot is not None:
        if n_boot < 100:
            raise UserError(
                f"--n-boot {n_boot}: too few resamples for a 95% interval; give at least 100 (default 10000)"
            )
        s.n_boot = n_boot
    if seed is not None:
        s.seed = seed
    if allow_mismatch:
        s.allow_mismatch = True
    if out is None:
        out = Path("reports") / (spec.stem if spec is not None else Path(runs[0]).resolve().name)
    path = build_report(s, out, overwrite=overwrite)
    typer.echo(f"wrote {path}")
