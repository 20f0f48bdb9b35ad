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
        raise SpecError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}",
                        param="device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError(f"device {spec} was asked for but CUDA is not available here",
                            param="device")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if dev.index >= torch.cuda.device_count():
            raise SpecError(f"device {spec}: only {torch.cuda.device_count()} CUDA device(s)",
                            param="device")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise SpecError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}",
                        param="device")
    return dev


def set_tf32(enabled: bool) -> None:
    """Let CUDA float32 matmuls and convolutions use TF32 (``enabled``) or full IEEE float32.

    Where torch has the per-backend ``fp32_precision`` flags (2.9 and later) only those are
    set: the legacy ``allow_tf32`` flags warn there, and mixing the two APIs makes torch raise
    when it is later asked for "the" precision.  Older torch gets the legacy flags.
    """
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    conv, rnn = getattr(cudnn, "conv", None), getattr(cudnn, "rnn", None)
    if all(hasattr(b, "fp32_precision") for b in (matmul, conv, rnn)):
        mode = "tf32" if enabled else "ieee"
        matmul.fp32_precision = mode
        conv.fp32_precision = mode
        rnn.fp32_precision = mode
    else:  # pragma: no cover - torch < 2.9
        matmul.allow_tf32 = enabled
        cudnn.allow_tf32 = enabled
