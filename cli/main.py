"""The ``geomkit`` command: thin subcommands over the library.

Each module ``cli/<name>.py`` (no leading underscore) that defines
``register(subparsers)`` contributes one subcommand; ``register`` adds a parser
and sets ``func`` (a callable taking the parsed args and returning an exit
code).  User mistakes raise :class:`geomkit.errors.GeomkitError` and become a
one-line message on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import pkgutil
import re
import sys
from typing import Any

import cli
from geomkit import __version__
from geomkit.errors import GeomkitError


class _Parser(argparse.ArgumentParser):
    """argparse with geomkit's error contract: one line on stderr, exit code 2 (argparse
    itself prints the usage block first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="geomkit",
        description="Loss-geometry analysis for PyTorch: train with SAM or vanilla optimizers, "
        "then measure Hessian spectra per block, the NTK condition number, activation "
        "statistics, robustness and filter-normalized loss landscapes.",
    )
    parser.add_argument("--version", action="version", version=f"geomkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = []
    for info in pkgutil.iter_modules(cli.__path__):
        if info.name.startswith("_") or info.name == "main":
            continue
        mod = importlib.import_module(f"cli.{info.name}")
        if hasattr(mod, "register"):
            modules.append(mod)
    modules.sort(key=lambda m: (getattr(m, "ORDER", 50), m.__name__))
    for mod in modules:
        mod.register(sub)
    return parser


#: library keywords whose flag has another destination (DataSpec(root=) is --data-root, a
#: landscape's direction= is --dir, blocks' regex= is hessian's repeatable --block NAME=REGEX)
_DESTS = {"root": "data_root", "direction": "dir", "regex": "block"}


def _with_flag(msg: str, param: str | None, parser: argparse.ArgumentParser,
               args: argparse.Namespace) -> str:
    """The library names a keyword argument (``device must be ...``); on the command line
    that is the subcommand's flag with that destination (``--device must be ...``)."""
    if not param:
        return msg
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    subparser = sub.choices.get(getattr(args, "command", None)) if sub else None
    flags = [a.option_strings[0] for a in (subparser._actions if subparser else [])
             if a.dest in (param, _DESTS.get(param)) and a.option_strings]
    if not flags:
        return msg
    # the last mention: paths come first in a message, the remedy naming the keyword last;
    # never a path component ("/runs/out/x.h5")
    hits = list(re.finditer(rf"(?<![\w/-]){re.escape(param)}(?![\w/-])", msg))
    if not hits:
        return f"{flags[0]}: {msg}"
    m = hits[-1]
    return msg[:m.start()] + flags[0] + msg[m.end():]


# errors of writing to stdout itself (a full disk, a closed pipe): files that geomkit writes
# report theirs as ResultFileError/CheckpointError with the path, through geomkit.io
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EPIPE, errno.EDQUOT, errno.EIO, errno.EBADF}


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit-time flush cannot raise again."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        quiet: Any = contextlib.nullcontext()
        if getattr(args, "no_progress", False) or getattr(args, "json", False):
            # the image-folder decoding bar too, wherever a measurement decodes (imported
            # here: `geomkit --help` does not load torch)
            from geomkit.data.imagefolder import decode_progress

            quiet = decode_progress(False)
        with quiet:
            rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a full or closed stdout fails here, not at interpreter exit
        return rc
    except BrokenPipeError:
        # the reader went away (`geomkit info ck.pt | head -c 10`): no traceback, no message
        _silence_stdout()
        return 2
    except OSError as e:
        if e.filename is not None or e.errno not in _OUTPUT_ERRNOS:
            raise
        _silence_stdout()
        print(f"geomkit: error: cannot write the output: {e.strerror or e}", file=sys.stderr)
        return 2
    except GeomkitError as e:
        msg = " ".join(str(e).split())  # exactly one line
        print(f"geomkit: error: {_with_flag(msg, e.param, parser, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geomkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
