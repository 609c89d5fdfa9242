"""Process rank and world size under ``accelerate launch`` / ``torchrun``; one process otherwise."""

from __future__ import annotations

import os
from typing import Callable

__all__ = ["process_info"]


def process_info() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier). Initialises the process group through accelerate when launched with several
    processes (gloo on CPU, nccl on GPUs)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (dist.is_available() and dist.is_initialized()):
        from accelerate import PartialState

        PartialState()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size(), dist.barrier
    return 0, 1, lambda: None
