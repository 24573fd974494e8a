"""nitp-train: presets, FLOPs accounting, and paired NTP/NITP training runs."""

from __future__ import annotations

import typer

from nitp_train.errors import run_cli

app = typer.Typer(
    help="Train paired NTP/NITP models; inspect presets and FLOPs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def main() -> None:
    run_cli(app)


if __name__ == "__main__":
    main()
