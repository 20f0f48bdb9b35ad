"""Provenance recorded in every checkpoint and results file."""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import socket
from pathlib import Path
from typing import Any


def provenance() -> dict[str, Any]:
    """Versions, time and host: plain values only (JSON- and HDF5-attribute-safe)."""
    import numpy
    import torch

    from geomkit import __version__

    return {
        "geomkit_version": __version__,
        "torch_version": str(torch.__version__),
        "numpy_version": str(numpy.__version__),
        "python_version": platform.python_version(),
        "host": socket.gethostname(),
        "time_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cuda": str(torch.version.cuda or ""),
    }


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
