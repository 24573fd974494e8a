"""nitp-eval report: placeholder until its issue lands."""

from nitp_train.errors import UserError


def command() -> None:
    """Not implemented yet."""
    raise UserError("nitp-eval report is not implemented yet")
