"""One error type for bad user input, and the CLI wrapper that prints it as one line."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile


class UserError(Exception):
    """Bad input from the user: the message names the thing and the fix; no traceback is shown."""

    exit_code = 2


class Interrupted(UserError):
    """Ctrl-C during training: the message says which checkpoint is intact and how to resume."""

    exit_code = 130


def run_cli(app) -> None:
    """Run a typer app; a UserError becomes one line on stderr and its exit code (2; 130 for Ctrl-C).

    Under torchrun the error may come from every process (the same input) or from one alone (its GPU,
    its wait for rank 0's files): whichever rank raises it prints it, once per node (`first_to_report`).
    Usage errors (unknown option, bad type) are typer's own: one short block, exit code 2.
    """
    from nitp_train.quiet import filter_known_warnings

    filter_known_warnings()
    try:
        app()
    except UserError as e:
        if first_to_report(str(e)):
            print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    finally:  # destroy the process group at exit (a clean NCCL shutdown); torch only if it was imported
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def first_to_report(message: str) -> bool:
    """True for one process per message and node: the only process, or the first of torchrun's workers
    to claim the message. The claim is a file created exclusively (O_EXCL) in the temp dir, named by the
    launching agent (the workers' common parent process) and the message: no collective is needed, so a
    rank whose peers hang in one still reports."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    launch = f"{os.getppid()}-{os.environ.get('TORCHELASTIC_RUN_ID', '')}-{os.environ.get('MASTER_PORT', '')}"
    key = hashlib.sha256(f"{launch}:{message}".encode()).hexdigest()[:24]
    try:
        os.close(os.open(os.path.join(tempfile.gettempdir(), f"nitp-error-{key}"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    except OSError:  # no writable temp dir: rank 0 speaks for all, as before
        return int(os.environ.get("RANK", "0")) == 0
    return True
