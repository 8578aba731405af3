"""torchrun detection: one code path for 1 or N processes (nanoGPT / torchvision style)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int
    world: int
    barrier: Callable[[], None] | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(dev: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment, or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, None)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)  # NCCL barriers/collectives use the current device
        # Ranks wait at barriers for the slowest rank (at most about one recover group, or one
        # class's pool cache); RETA_DIST_TIMEOUT_MIN raises the limit for very slow groups.
        timeout = timedelta(minutes=float(os.environ.get("RETA_DIST_TIMEOUT_MIN", "60")))
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=timeout)
    return DistContext(dist.get_rank(), dist.get_world_size(), dist.barrier)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
