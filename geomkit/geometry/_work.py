"""What every measurement shares (private): the work copy, analysis mode, the memory
probe and the progress bar, one each.

A measurement runs on the model in place when it already lives on the requested device and
dtype; otherwise on a converted copy that never duplicates the model on its own device first.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def run_device_for(device: torch.device | str | None, model_device: torch.device) -> torch.device:
    """Where to measure: ``device``, or the model's device when None.

    An index-less device of the model's type means the model's own device (``"cuda"`` for
    a model on ``cuda:1`` is ``cuda:1``, not the current CUDA device), so no copy is made.
    """
    run_device = torch.device(device) if device is not None else model_device
    if run_device.type == model_device.type and run_device.index is None:
        run_device = model_device
    return run_device


def converted_copy(
    model: nn.Module, device: torch.device, dtype: torch.dtype | None = None
) -> nn.Module:
    """A deep copy of ``model`` on ``device``, floating-point tensors cast to ``dtype``.

    Parameters and buffers are converted straight from the original's, so the model is
    never duplicated on its own device first: ``copy.deepcopy(model).to(device)`` clones a
    CUDA model on its GPU before moving it, which can run a nearly full GPU out of memory
    when the copy is meant for the CPU (and doubles the GPU memory for a cast copy).
    Values are those of ``copy.deepcopy(model).to(device=device, dtype=dtype)``; shared
    (tied) tensors stay shared.
    """

    def convert(t: torch.Tensor) -> torch.Tensor:
        cast = dtype if dtype is not None and t.is_floating_point() else None
        return t.detach().to(device=device, dtype=cast, copy=True)

    memo: dict[int, Any] = {}
    for p in model.parameters():
        if type(p) is nn.Parameter:  # subclasses (lazy, ...) go through deepcopy
            memo[id(p)] = nn.Parameter(convert(p), requires_grad=p.requires_grad)
    for b in model.buffers():
        if type(b) is torch.Tensor:
            memo[id(b)] = convert(b)
    # .to() afterwards for whatever the memo did not cover (modules overriding _apply)
    return copy.deepcopy(model, memo).to(device=device, dtype=dtype)


def work_model(
    model: nn.Module, device: torch.device | str | None, dtype: torch.dtype | None = None
) -> tuple[nn.Module, torch.device, torch.dtype]:
    """``(work, run_device, run_dtype)``: the model itself when it already lives on
    :func:`run_device_for` ``(device)`` in ``dtype`` (None: its own), else a
    :func:`converted_copy` there."""
    first = next(model.parameters(), None)
    model_device = first.device if first is not None else torch.device("cpu")
    model_dtype = first.dtype if first is not None else torch.get_default_dtype()
    run_device = run_device_for(device, model_device)
    run_dtype = dtype or model_dtype
    if run_device == model_device and run_dtype == model_dtype:
        return model, run_device, run_dtype
    return converted_copy(model, run_device, dtype), run_device, run_dtype


@contextlib.contextmanager
def analysis_mode(model: nn.Module, bn: str = "eval", *, untracked: bool = False) -> Iterator[None]:
    """``model`` in eval mode (dropout off), BatchNorm in train mode if ``bn="train"`` (batch
    statistics); every module's flag restored after, also on error.

    Buffers are not touched here: a measurement in ``bn="train"`` must use private copies
    of them, or pass ``untracked=True``, which also switches ``track_running_stats`` off on
    those layers (same batch-statistics normalization, running buffers neither read nor
    updated) and restores it after.
    """
    saved = [(m, m.training) for m in model.modules()]
    tracking = [(m, m.track_running_stats) for m in model.modules() if isinstance(m, _BatchNorm)]
    try:
        model.eval()
        if bn == "train":
            for m, _ in tracking:
                m.train()
                if untracked:
                    m.track_running_stats = False
        yield
    finally:
        for m, t in saved:
            m.training = t
        for m, t in tracking:
            m.track_running_stats = t


def free_memory(device: torch.device) -> int:
    """Bytes free for a computation on ``device``: free CUDA memory, or available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


def progress_bar(total: int, enabled: bool, desc: str, unit: str) -> Any:
    """A tqdm bar on stderr, or tqdm's own disabled bar (same calls, nothing shown; the
    plain class, so a notebook without ipywidgets gets no warning for a bar it never
    shows)."""
    if enabled:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr,
                disable=not enabled)
