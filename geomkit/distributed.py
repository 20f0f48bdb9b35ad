"""Thin helpers over ``torch.distributed`` for runs launched with ``torchrun``.

Everything here is a no-op in a single process, so library code calls these
unconditionally.  Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment)
:func:`init` starts the default process group: ``nccl`` when the device is CUDA,
``gloo`` otherwise.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched() -> bool:
    """True when this process was started by torchrun with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device | str | None = None) -> bool:
    """Initialise the default process group if launched by torchrun; idempotent.

    Returns True when a process group with more than one rank is active.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if not launched():
        return False
    dev = torch.device(device) if device is not None else None
    backend = "nccl" if dev is not None and dev.type == "cuda" else "gloo"
    if dev is not None and dev.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op in one process) and return it."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if active():
        dist.barrier()


def shard_range(n: int, r: int | None = None, w: int | None = None) -> range:
    """Contiguous slice of ``range(n)`` owned by rank ``r`` of ``w`` (balanced to ±1)."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return range(start, start + base + (1 if r < extra else 0))
