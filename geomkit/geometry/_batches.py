"""Mini-batch iteration over analysis data shared by every measurement.

Analysis data are a pair of tensors ``(inputs, targets)`` (see
:meth:`geomkit.Checkpoint.analysis_data`).  Measurements average over them in
mini-batches, weighting each batch by its size, and, under ``torchrun``, each rank
takes a contiguous shard of the examples and sums are all-reduced.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from geomkit import distributed


def iter_batches(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    shard: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` mini-batches on ``device`` (this rank's shard when ``shard``).

    ``batch_size=None`` yields the whole (sharded) set as one batch.  ``dtype``
    casts floating-point inputs only (targets keep their integer dtype).
    """
    if len(inputs) != len(targets):
        raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length")
    idx = distributed.shard_range(len(inputs)) if shard else range(len(inputs))
    lo, hi = idx.start, idx.stop
    step = (hi - lo) if not batch_size else batch_size
    step = max(step, 1)
    for s in range(lo, hi, step):
        x = inputs[s : min(s + step, hi)]
        y = targets[s : min(s + step, hi)]
        if device is not None:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
        if dtype is not None and x.is_floating_point():
            x = x.to(dtype)
        yield x, y


def total_examples(inputs: torch.Tensor) -> int:
    """Number of examples over all ranks (the denominator of a mean loss)."""
    return len(inputs)
