"""One error type for bad user input, and the CLI wrapper that prints it as one line."""

from __future__ import annotations

import sys


class UserError(Exception):
    """Bad input from the user: the message names the thing and the fix; no traceback is shown."""


def run_cli(app) -> None:
    """Run a typer app; a UserError becomes one line on stderr and exit code 2.

    Usage errors (unknown option, bad type) are typer's own: one short block, exit code 2.
    """
    try:
        app()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
