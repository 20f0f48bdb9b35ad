"""The study's one progress line (shared by the runner and its stages)."""

from __future__ import annotations

import sys


def log(progress: bool, msg: str) -> None:
    """``[study] msg`` on stderr, through tqdm so it does not break a bar."""
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(f"[study] {msg}", file=sys.stderr)
