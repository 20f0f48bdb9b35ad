"""User-facing errors.

Every mistake a user can make (a wrong path, an unknown model or block name, a
malformed grid spec, a corrupt file) raises a subclass of :class:`GeomkitError`
with a one-line message that says what is wrong and, where possible, the fix.
The command line turns these into ``geomkit: error: <message>`` and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GeomkitError(Exception):
    """Base class of every error caused by user input rather than by a bug.

    Not a ``ValueError``: code that catches a library's or Python's own ``ValueError``
    (to re-word it) must never swallow and re-wrap geomkit's typed errors.  Messages name
    the keyword argument; the CLI adds its flag: an error raised with
    ``param="device"`` is a mistake in that keyword, and the command line writes the flag
    whose destination it is (``--device``) where the message names the keyword.
    """

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class CheckpointError(GeomkitError):
    """A checkpoint is missing, unreadable, truncated or not a geomkit checkpoint."""


class DataError(GeomkitError):
    """A data source is unknown, missing, corrupt or mis-specified."""


class ModelError(GeomkitError):
    """An unknown model name or invalid model arguments."""


class BlockError(GeomkitError):
    """A parameter block that is unknown or matches no parameter."""


class SpecError(GeomkitError):
    """A malformed specification string (grid, shard, block, preset...)."""


class ResultFileError(GeomkitError):
    """A results file that is unreadable or does not match the requested computation."""


class SpecMismatch(ResultFileError):
    """A result file holds the same kind of computation with other settings.

    ``keys`` names the settings that differ, so a caller can tell a stale input (a
    retrained checkpoint: only ``checkpoint_sha256``) from changed settings.
    """

    def __init__(self, message: str = "", *, keys: tuple[str, ...] = (),
                 param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.keys = tuple(keys)


class TrainingDiverged(GeomkitError):
    """Training produced a non-finite loss; the last finite checkpoint is kept."""
