"""One error type for bad user input, and the CLI wrapper that prints it as one line."""

from __future__ import annotations

import sys


class UserError(Exception):
    """Bad input from the user: the message names the thing and the fix; no traceback is shown."""

    exit_code = 2


class Interrupted(UserError):
    """Ctrl-C during training: the message says which checkpoint is intact and how to resume."""

    exit_code = 130


def run_cli(app) -> None:
    """Run a typer app; a UserError becomes one line on stderr and its exit code (2; 130 for Ctrl-C).

    Under torchrun every process raises the same UserError (it comes from the same input), so only
    rank 0 prints it. Usage errors (unknown option, bad type) are typer's own: one short block, exit code 2.
    """
    try:
        app()
    except UserError as e:
        from nitp_train.launch import is_main_process

        if is_main_process():
            print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    finally:  # destroy the process group at exit (a clean NCCL shutdown); torch only if it was imported
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
