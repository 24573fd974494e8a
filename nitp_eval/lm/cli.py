"""nitp-eval lm: placeholder until its issue lands."""

from nitp_train.errors import UserError


def command() -> None:
    """Not implemented yet."""
    raise UserError("nitp-eval lm is not implemented yet")
