"""torchrun's environment (RANK, WORLD_SIZE), readable before torch is imported or any process group exists."""

from __future__ import annotations

import os


def launch_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or the only process: the one that writes and prints."""
    return launch_rank() == 0


def launch_world() -> int:
    """Processes torchrun started (WORLD_SIZE), known before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))
