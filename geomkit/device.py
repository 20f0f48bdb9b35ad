"""Device selection shared by the library and the command line."""

from __future__ import annotations

import os

import torch

from geomkit.errors import SpecError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None → CUDA when present, else CPU; ``cuda`` without an index → this rank's GPU.

    Under torchrun (``LOCAL_RANK`` set) an index-less CUDA device becomes
    ``cuda:LOCAL_RANK``.  An unparsable name or CUDA on a machine without it raises
    :class:`~geomkit.errors.SpecError` (a one-line user error, exit code 2 in the CLI).
    """
    if spec is None or str(spec) == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise SpecError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError(f"--device {spec} was asked for but CUDA is not available here")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if dev.index >= torch.cuda.device_count():
            raise SpecError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise SpecError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return dev
