"""The measurement registry: what `analyze`, the study, the CLI and the tables enumerate.

A checkpoint-level measurement is one module in this package that calls
:func:`register` once, next to its function, with

- its **name** (the HDF5 group and the ``--measure`` value),
- an **options dataclass** (frozen; each field made with :func:`option`, which carries the
  default, the help text, the CLI flag and the lower bound: validation, ``geomkit analyze``'s
  flags and the study's ``[analysis]`` keys are all derived from it),
- its **settings** (the options its stored result depends on; a stored result with other
  settings is refused, one with equal settings is kept),
- its **schema** (the stable machine keys of the values it stores, checked on every write),
- the **table entries** it feeds (Table 1 rows, Table 3 columns, each with a stable ``key``),
- and a **view** (its part of a study's flat per-run row).

Nothing outside the measurement's module names it: adding ``geomkit/measurements/<name>.py``
is enough for ``geomkit analyze --measure <name>``, the study's ``[analysis] measure`` list
and the tables (see ``docs/DEVELOPING.md``, "Adding a measurement").

Options with the same name in several measurements (``samples``, ``seed``) are one option:
their definitions must agree, and one value serves all of them.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from geomkit.errors import SpecError

__all__ = [
    "Measurement",
    "TableEntry",
    "all_options",
    "build_options",
    "default_measurements",
    "get",
    "option",
    "option_fields",
    "register",
    "registry",
    "table_entries",
]


def option(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None,
           minimum: float | None = None, none_ok: bool = False,
           check: Callable[[Any], None] | None = None) -> Any:
    """A field of a measurement's options dataclass.

    Args:
        default: the default value (also the CLI's and the study's).
        help: one line for ``--help`` and the docs.
        flag: the CLI flag (default ``--`` + the name with ``-`` for ``_``).
        metavar: the CLI metavar.
        minimum: values below are refused (numbers only).
        none_ok: ``None`` is a valid value (e.g. "the whole split").
        check: ``check(value)`` raises :class:`SpecError` for a bad value.
    """
    return field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar,
                                            "minimum": minimum, "none_ok": none_ok,
                                            "check": check})


def check_options(opts: Any) -> None:
    """Validate an options dataclass against its fields' declarations (one-line SpecError
    naming the keyword argument)."""
    for f in dataclasses.fields(opts):
        v, meta = getattr(opts, f.name), f.metadata
        if v is None:
            if meta.get("none_ok") or f.default is None:
                continue
            raise SpecError(f"{f.name} may not be None")
        kind = type(f.default) if f.default is not None else None
        if kind in (int, float) and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise SpecError(f"{f.name} must be a number, got {v!r}")
        if kind is int and not isinstance(v, int):
            raise SpecError(f"{f.name} must be an integer, got {v!r}")
        if kind is str and not isinstance(v, str):
            raise SpecError(f"{f.name} must be a string, got {v!r}")
        lo = meta.get("minimum")
        if lo is not None and not v >= lo:
            raise SpecError(f"{f.name} must be >= {lo:g}, got {v!r}", param=f.name)
        if meta.get("check") is not None:
            meta["check"](v)


@dataclass(frozen=True)
class TableEntry:
    """One row of Table 1 or one column of Table 3, fed by one measurement.

    Attributes:
        table: 1 or 3.
        key: stable machine key (``kappa``, ``lambda_max``, ``embedding``, ...), what
            ``geomkit table --format json`` carries beside the label.
        label: the display label.
        value: ``record -> value`` (a :class:`geomkit.results.CheckpointRecord`; None if
            absent).
        order: position in the table (entries sort by it).
        kind: ``num``, ``pct`` (already in percent) or ``params`` (counts).
        optional: shown only when some checkpoint has a value.
        paper: a regex that finds this row in the paper's Table 1 (by its row label), or
            the paper Table 3 column index; None when the paper has no such number.
        group: entries that plot together (``lambda_max``: the Hessian block columns the
            study's bar charts and findings compare).
    """

    table: int
    key: str
    label: str
    value: Callable[[Any], Any]
    order: float
    kind: str = "num"
    optional: bool = False
    paper: str | int | None = None
    group: str = ""


@dataclass(frozen=True)
class Measurement:
    """A registered checkpoint-level measurement (see the module docstring).

    ``run(checkpoint, options) -> values`` (a nested dict of numbers, strings and lists,
    top-level keys among ``schema``); ``settings(checkpoint, options) -> dict``;
    ``view(record) -> dict`` (its part of a study's flat row); ``notes(table, records)``:
    lines under Table 1 or 3 that explain its entries. ``per_architecture``: the
    result depends only on the architecture and data, so one stored for another checkpoint
    with equal settings is reused. ``default``: run when no measurement is named.
    """

    name: str
    description: str
    options: type
    run: Callable[[Any, Any], dict[str, Any]]
    settings: Callable[[Any, Any], dict[str, Any]]
    schema: tuple[str, ...]
    entries: tuple[TableEntry, ...] = ()
    view: Callable[[Any], dict[str, Any]] | None = None
    notes: Callable[[int, Sequence[Any]], list[str]] | None = None
    per_architecture: bool = False
    default: bool = True
    order: float = 100.0

    def check_values(self, values: Mapping[str, Any]) -> None:
        """Values may carry only the declared keys (the stored schema is stable)."""
        extra = sorted(set(values) - set(self.schema))
        if extra:
            raise RuntimeError(f"measurement {self.name!r} returned keys {extra} outside its "
                               f"schema {list(self.schema)}")


_REGISTRY: dict[str, Measurement] = {}
_LOADED = False


def register(m: Measurement) -> Measurement:
    """Add ``m`` to the registry (called once, at import of its module)."""
    if m.name in _REGISTRY and _REGISTRY[m.name] is not m:
        raise RuntimeError(f"measurement {m.name!r} registered twice")
    if not dataclasses.is_dataclass(m.options):
        raise TypeError(f"{m.name}: options must be a dataclass")
    mine = {f.name: f for f in dataclasses.fields(m.options)}
    for other in _REGISTRY.values():
        for f in dataclasses.fields(other.options):
            g = mine.get(f.name)
            if g is not None and (g.default, g.metadata.get("flag")) != (
                    f.default, f.metadata.get("flag")):
                raise RuntimeError(f"option {f.name!r} of {m.name!r} disagrees with {other.name!r}")
    _REGISTRY[m.name] = m
    return m


def registry() -> dict[str, Measurement]:
    """Every measurement (name → :class:`Measurement`), in run order; imports this package's
    modules on first use, so a new module is found without being named anywhere."""
    global _LOADED
    if not _LOADED:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")
        _LOADED = True
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


def get(name: str) -> Measurement:
    """The measurement ``name`` (SpecError listing the valid names)."""
    reg = registry()
    if name not in reg:
        raise SpecError(f"unknown measurement {name!r}; valid: {', '.join(reg)}")
    return reg[name]


def default_measurements() -> list[str]:
    """The names run when none is given, in run order."""
    return [n for n, m in registry().items() if m.default]


def option_fields(names: Sequence[str] | None = None) -> dict[str, dataclasses.Field]:
    """The options of ``names`` (default: all), one per option name, in declaration order."""
    out: dict[str, dataclasses.Field] = {}
    for n, m in registry().items():
        if names is None or n in names:
            for f in dataclasses.fields(m.options):
                out.setdefault(f.name, f)
    return out


def all_options() -> dict[str, Any]:
    """Every option name → its default."""
    return {k: f.default for k, f in option_fields().items()}


def build_options(name: str, values: Mapping[str, Any]) -> Any:
    """Measurement ``name``'s options dataclass from a merged option dict (extra keys, the
    other measurements' options, are ignored)."""
    m = get(name)
    own = {f.name for f in dataclasses.fields(m.options)}
    return m.options(**{k: v for k, v in values.items() if k in own})


def check_option_names(values: Mapping[str, Any], where: str = "") -> None:
    """Refuse option names no measurement declares (one line listing the valid ones)."""
    valid = option_fields()
    bad = sorted(set(values) - set(valid))
    if bad:
        raise SpecError(f"unknown {where}option(s) {', '.join(bad)}; valid: "
                        f"{', '.join(valid)}")


def table_entries(table: int) -> list[tuple[Measurement, TableEntry]]:
    """The entries of Table ``table`` (1 or 3) over every measurement, in table order."""
    out = [(m, e) for m in registry().values() for e in m.entries if e.table == table]
    return sorted(out, key=lambda me: me[1].order)
