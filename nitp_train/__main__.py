"""`python -m nitp_train ...` (and `torchrun -m nitp_train run ...`): the nitp-train CLI."""

from nitp_train.cli import main

main()
