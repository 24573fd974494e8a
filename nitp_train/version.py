"""Which code made a result: the nitp source tree's git commit (recorded in provenance and results files)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit() -> str | None:
    """The commit of the nitp checkout, with "-dirty" when tracked files differ from it; None outside git."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


# The oldest torch with everything the trainer calls (pyproject.toml's floor says the same; a test checks):
# public torch.distributed.fsdp.fully_shard (2.6), distribute_tensor(src_data_rank=), dcp.async_save(no_dist=),
# and torch.distributed.checkpoint.HuggingFaceStorageWriter(save_distributed=, enable_consolidation=) (2.9).
TORCH_FLOOR = "2.9"


def check_torch(version: str | None = None) -> None:
    """One line, before any work, when the installed torch is older than TORCH_FLOOR."""
    from nitp_train.errors import UserError

    if version is None:
        import torch

        version = torch.__version__
    major_minor = tuple(int(part) for part in version.split("+")[0].split(".")[:2])
    if major_minor < tuple(int(part) for part in TORCH_FLOOR.split(".")):
        raise UserError(
            f"torch {version} is older than {TORCH_FLOOR}, the oldest release with the FSDP2, DTensor and "
            f"distributed-checkpoint calls nitp-train makes: pip install 'torch>={TORCH_FLOOR}'"
        )
