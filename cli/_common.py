"""Helpers shared by subcommands: argument types, output rendering."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

from geomkit.errors import SpecError


def _parsed(text: str, conv: Any, ok: Any, what: str) -> Any:
    """``conv(text)`` if it parses and ``ok`` accepts it, else argparse's one-line error."""
    try:
        v = conv(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return v


def positive_int(text: str) -> int:
    return _parsed(text, int, lambda v: v > 0, "a positive integer")


def nonneg_int(text: str) -> int:
    return _parsed(text, int, lambda v: v >= 0, "a non-negative integer")


def unit_float(text: str) -> float:
    """A number strictly between 0 and 1 (a relative tolerance)."""
    return _parsed(text, float, lambda v: 0 < v < 1, "a number between 0 and 1")


def nonneg_float(text: str) -> float:
    return _parsed(text, float, lambda v: math.isfinite(v) and v >= 0,
                   "a non-negative number")


def positive_float(text: str) -> float:
    return _parsed(text, float, lambda v: math.isfinite(v) and v > 0,
                   "a positive finite number")


def int_at_most(maximum: int):
    """An argparse type: a positive integer no larger than ``maximum``."""

    def parse(text: str) -> int:
        return _parsed(text, int, lambda v: 0 < v <= maximum,
                       f"a positive integer at most {maximum:,}")

    return parse


def seed_int(text: str) -> int:
    """A seed torch accepts: an integer in [-2**63, 2**63 - 1]."""
    from geomkit.data.spec import SEED_RANGE

    lo, hi = SEED_RANGE
    return _parsed(text, int, lambda v: lo <= v <= hi, f"an integer seed in [{lo}, {hi}]")


LOSS_HELP = ("loss: ce (default), ce:EPS (label smoothing EPS), bce (sigmoid cross-entropy "
             "on one-hot targets) or mse (on one-hot targets)")


def add_loss_flags(p: argparse.ArgumentParser, *, loss: bool = True) -> None:
    """``--loss`` (unless the command has it already) and ``--label-smoothing``."""
    if loss:
        p.add_argument("--loss", default="ce", metavar="LOSS", help=LOSS_HELP)
    p.add_argument("--label-smoothing", type=nonneg_float, default=0.0, metavar="EPS",
                   help="label smoothing of the ce loss (the same as --loss ce:EPS)")


def loss_of(args: argparse.Namespace) -> str:
    """``--loss`` with ``--label-smoothing`` folded in (``ce`` + 0.1 -> ``ce:0.1``)."""
    from geomkit.errors import SpecError

    eps = getattr(args, "label_smoothing", 0.0)
    if not eps:
        return args.loss
    base, _, given = str(args.loss).partition(":")
    if base != "ce":
        raise SpecError(f"--label-smoothing applies to the ce loss, not {args.loss!r}")
    if given:
        raise SpecError("give the label smoothing once: --loss ce:EPS or --label-smoothing EPS")
    return f"ce:{eps:g}"


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or auto (CUDA when present; default: auto)",
    )


def print_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout, under the one NaN policy of
    :mod:`geomkit.io` (:func:`geomkit.io.dumps_json`: valid JSON, NaN as ``null``, ±inf as
    ``"inf"``/``"-inf"``)."""
    from geomkit.io import dumps_json

    print(dumps_json(obj))


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}" if abs(v) >= 1000 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], file=None) -> None:
    """Print a plain fixed-width table; numbers right-aligned."""
    file = file or sys.stdout
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
        for i in range(len(headers))
    ]

    def line(vals: Sequence[str]) -> str:
        cols = zip(vals, widths, numeric, strict=True)
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in cols).rstrip()

    print(line(headers), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for r in cells:
        print(line(r), file=file)


def parse_range(text: str, name: str = "range") -> tuple[float, float, int]:
    """Parse ``MIN:MAX:NUM`` into ``(min, max, num)``; a SpecError names the flag ``name``
    and the part that is wrong (in one line).

    MIN and MAX are finite numbers with MIN < MAX (MIN = MAX only for NUM = 1, one point);
    NUM is a whole number of points >= 1.
    """
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) != 3:
        raise SpecError(f"{name} must be MIN:MAX:NUM (e.g. -1:1:51), got {text!r}")
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise SpecError(f"{name} MIN and MAX must be numbers (MIN:MAX:NUM, e.g. -1:1:51), "
                        f"got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = parts[0] if not math.isfinite(lo) else parts[1]
        raise SpecError(f"{name} MIN and MAX must be finite numbers, got {bad!r} in {text!r}")
    try:
        num = int(parts[2])
    except ValueError:
        num = None
    if num is None or num < 1:
        raise SpecError(f"{name} NUM must be a whole number of points >= 1, got "
                        f"{parts[2]!r} in {text!r}")
    if num > 1 and not hi > lo:
        raise SpecError(f"{name} needs MIN < MAX for {num} points, got {text!r}")
    if not math.isfinite(hi - lo):
        raise SpecError(f"{name} spans more than a float holds (MAX - MIN overflows), "
                        f"got {text!r}")
    return lo, hi, num


def option_flag(f: Any) -> str:
    """The CLI flag of a measurement option (``--`` + name, unless it declares its own)."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_option_flags(p: argparse.ArgumentParser, fields: dict[str, Any]) -> None:
    """One flag per measurement option (:func:`geomkit.measurements.option_fields`): the
    type, default, bound and help come from the option's declaration, so a new measurement's
    options appear here without this module naming them."""
    for name, f in fields.items():
        kind = str(f.type)
        typ: Any = str
        if "int" in kind:
            typ = positive_int if (f.metadata.get("minimum") or 0) >= 1 else int
        elif "float" in kind:
            typ = nonneg_float if f.metadata.get("minimum") == 0 else float
        default = f.default
        shown = "none" if default is None else default
        p.add_argument(option_flag(f), dest=name, type=typ, default=default,
                       metavar=f.metadata.get("metavar"),
                       help=f"{f.metadata.get('help', '')} (default {shown})")


def user_blocks(texts: list[str]) -> dict[str, str]:
    """``--block NAME=REGEX`` flags as ``{name: regex}`` (a name given twice refused)."""
    from geomkit.errors import SpecError
    from geomkit.geometry.blocks import parse_block_arg

    regex: dict[str, str] = {}
    for text in texts:
        name, pattern = parse_block_arg(text)
        if name in regex:
            raise SpecError(f"user block {name!r} given twice")
        regex[name] = pattern
    return regex


def check_h5_out(out: str | None, check: Any) -> None:
    """Before any work: ``--out`` names an .h5 file that ``check`` (the writer's own
    ``check_*_out``: never replace another kind of geomkit file) accepts, in a directory
    that can be written."""
    if not out:
        return
    from geomkit.errors import SpecError
    from geomkit.io import probe_writable

    if not out.endswith((".h5", ".hdf5")):
        raise SpecError(f"--out must name an .h5 file, got {out!r}")
    check(out)
    probe_writable(out)
