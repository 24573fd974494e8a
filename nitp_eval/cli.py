"""nitp-eval: one sub-command per area; each lives in its own package (nitp_eval/<area>/cli.py)."""

from __future__ import annotations

import typer

from nitp_eval.design import command as design
from nitp_eval.geometry.cli import command as geometry
from nitp_eval.lm.cli import command as lm
from nitp_eval.mteb_eval.cli import command as mteb
from nitp_eval.pilot import command as pilot
from nitp_eval.replicate import command as replicate
from nitp_eval.report.cli import command as report
from nitp_train.errors import run_cli

app = typer.Typer(
    help="Analyse NTP/NITP checkpoints: hidden-state geometry, lm-eval benchmarks, MTEB, reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("geometry")(geometry)
app.command("lm")(lm)
app.command("mteb")(mteb)
app.command("report")(report)
app.command("replicate")(replicate)
app.command("design")(design)
app.command("pilot")(pilot)


def main() -> None:
    run_cli(app)


if __name__ == "__main__":
    main()
