"""The ``geomkit`` command: thin subcommands over the library.

Each module ``cli/<name>.py`` (no leading underscore) that defines
``register(subparsers)`` contributes one subcommand; ``register`` adds a parser
and sets ``func`` (a callable taking the parsed args and returning an exit
code).  User mistakes raise :class:`geomkit.errors.GeomkitError` and become a
one-line message on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys

import cli
from geomkit import __version__
from geomkit.errors import GeomkitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def _with_flag(msg: str, param: str | None, parser: argparse.ArgumentParser,
               args: argparse.Namespace) -> str:
    """The library names a keyword argument (``device must be ...``); on the command line
    that is the subcommand's flag with that destination (``--device must be ...``)."""
    if not param:
        return msg
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    subparser = sub.choices.get(getattr(args, "command", None)) if sub else None
    flags = [a.option_strings[0] for a in (subparser._actions if subparser else [])
             if a.dest == param and a.option_strings]
    if not flags:
        return msg
    out, n = re.subn(rf"(?<![\w-]){re.escape(param)}(?![\w-])", flags[0], msg, count=1)
    return out if n else f"{flags[0]}: {msg}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GeomkitError as e:
        msg = " ".join(str(e).split())  # exactly one line
        print(f"geomkit: error: {_with_flag(msg, e.param, parser, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geomkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
