r"""The paper's Table 1 and Table 3 assembled from a results file, as md / csv / tex / json.

The rows of Table 1 and the columns of Table 3 are the registered measurements' table
entries (:func:`geomkit.measurements.table_entries`; each carries a stable ``key``); this
module names no measurement.  Table 1 (geometry and accuracy) has one **column per
checkpoint**, labelled ``model/optimizer``; rows: #Params, NTK κ at initialization,
Hessian λ_max, top-1 and "-C" accuracy (%).  Table 3 (λ_max of the diagonal Hessian
blocks, ‖w‖₂, ‖a_k‖₂) has, as in the paper, one **row per checkpoint**; columns:
Embedding, MSA / Token MLP, MLP / Channel MLP, Block1, Block mid, Block last, Whole,
‖w‖₂, ‖a_1‖₂, ‖a_mid‖₂, ‖a_last‖₂ (and optional columns such as the Hessian trace when
measured), where *mid* and *last* are blocks 6 and 12 of a 12-block model
(:func:`geomkit.geometry.blocks.paper_block_indices`).  :meth:`Table.transposed`
flips either.

``with_paper=True`` adds the paper's own numbers side by side, read from the copy of
``reference/paper_tables.md`` shipped in the package (:func:`paper_tables`; never typed
twice).  Missing values render as ``–``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from geomkit import measurements as registry
from geomkit.errors import ResultFileError, SpecError
from geomkit.results import CheckpointRecord, Results, load_results

__all__ = ["FORMATS", "PaperNumber", "PaperTable", "Table", "make_table", "paper_tables",
           "render", "table1", "table3"]

FORMATS = ("md", "csv", "tex", "json")
_DASH = "–"

# -- the paper's numbers -------------------------------------------------------------------


@dataclass(frozen=True)
class PaperTable:
    """A markdown table of ``paper_tables.md``: header and rows of parsed cells."""

    header: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


class PaperNumber(float):
    """A number of the paper's tables that renders as printed there (``20.9``, not ``20.90``)."""

    text: str

    def __new__(cls, text: str) -> PaperNumber:
        obj = super().__new__(cls, float(text))
        obj.text = text
        return obj


def _cell(text: str) -> Any:
    t = text.strip()
    if t in ("", "–", "-", "—"):
        return None
    try:
        return PaperNumber(t)
    except ValueError:
        return t


def _parse_md_table(lines: list[str]) -> PaperTable:
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    header, body = rows[0], [r for r in rows[2:] if r]
    return PaperTable(tuple(header), tuple((r[0], *(_cell(c) for c in r[1:])) for r in body))


def paper_tables(path: str | Path | None = None) -> dict[int, PaperTable]:
    """The numbered tables of the paper's reference file (default: the packaged copy).

    Returns:
        Table number → :class:`PaperTable` (the first pipe table after ``## Table <n>``).
    """
    if path is None:
        text = resources.files("geomkit").joinpath("reference/paper_tables.md").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    out: dict[int, PaperTable] = {}
    current: int | None = None
    block: list[str] = []
    for line in text.splitlines() + [""]:
        m = re.match(r"^##\s+Table\s+(\d+)", line)
        if m:
            current, block = int(m.group(1)), []
            continue
        if current is not None and current not in out:
            if line.lstrip().startswith("|"):
                block.append(line)
            elif block:
                out[current] = _parse_md_table(block)
                block = []
    return out


# -- the table object ----------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A rendered-ready table: labels, raw cell values, per-cell display kinds, notes.

    ``cells[i][j]`` is a number, a string or None; ``kinds[i][j]`` is ``params``
    (counts, shown as 136.1K / 87M), ``num``, ``pct`` (already in percent) or ``text``.
    """

    number: int
    title: str
    corner: str
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]
    cells: tuple[tuple[Any, ...], ...]
    kinds: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()
    row_keys: tuple[str, ...] = ()
    col_keys: tuple[str, ...] = ()

    def transposed(self) -> Table:
        """Rows and columns swapped."""
        return replace(
            self,
            row_labels=self.col_labels,
            col_labels=self.row_labels,
            row_keys=self.col_keys,
            col_keys=self.row_keys,
            cells=tuple(zip(*self.cells, strict=True)) if self.cells else (),
            kinds=tuple(zip(*self.kinds, strict=True)) if self.kinds else (),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: title, columns (labels and stable keys), rows (each with its stable
        ``key`` beside the display ``label``: a measurement's key such as ``kappa`` or
        ``lambda_max``, or a checkpoint id), notes."""
        return {
            "table": self.number,
            "title": self.title,
            "columns": list(self.col_labels),
            "column_keys": list(self.col_keys),
            "rows": [
                {"key": k, "label": r,
                 "values": {c: _json_value(v)
                            for c, v in zip(self.col_labels, row, strict=True)}}
                for k, r, row in zip(self.row_keys, self.row_labels, self.cells, strict=True)
            ],
            "notes": list(self.notes),
        }


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return float(v) if isinstance(v, PaperNumber) else v


def _fmt(v: Any, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return _DASH
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, PaperNumber):
        return v.text
    if kind == "params":
        n = float(v)
        if n >= 1e6:
            return f"{n / 1e6:.1f}M"
        if n >= 1e3:
            return f"{n / 1e3:.1f}K"
        return f"{int(n)}"
    if kind == "pct":
        return f"{float(v):.1f}"
    a = abs(float(v))
    if a >= 1e6:
        return f"{float(v):.3g}"
    if a >= 100:
        return f"{float(v):.1f}"
    if a >= 1:
        return f"{float(v):.2f}"
    return f"{float(v):.3g}"


# -- assembly ------------------------------------------------------------------------------


def _column_labels(records: tuple[CheckpointRecord, ...]) -> list[str]:
    def base(r: CheckpointRecord) -> str:
        run = str(r.config.get("label") or "")
        opt = r.optimizer or "?"
        tag = opt if run in ("", "vanilla", opt) else run
        return f"{r.model}/{tag}"

    def tags(r: CheckpointRecord) -> tuple[str, str]:
        sub, seed = r.data_spec.get("subset"), r.config.get("seed")
        return (f"subset {1.0 if sub is None else float(sub):g}",
                f"s{'?' if seed is None else seed}")

    labels = [base(r) for r in records]
    out = list(labels)
    for lab in set(labels):
        idx = [i for i, x in enumerate(labels) if x == lab]
        if len(idx) == 1:
            continue
        # same label: tell the columns apart by what differs among them (subset, seed),
        # adding the checkpoint hash where that is not enough (two runs of one config)
        t = [tags(records[i]) for i in idx]
        differ = [k for k in (0, 1) if len({x[k] for x in t}) > 1]
        keys = [" ".join(x[k] for k in differ) for x in t]
        for i, key in zip(idx, keys, strict=True):
            if not key or keys.count(key) > 1:
                key = f"{key} {records[i].checkpoint_sha256[:6]}".strip()
            out[i] = f"{lab} ({key})"
    return out


def _load(results: Results | str | Path, need_records: bool = False) -> Results:
    res = results if isinstance(results, Results) else load_results(results)
    if need_records and not len(res):
        raise ResultFileError(f"{res.path} holds no analysed checkpoint; run `geomkit analyze`")
    return res


def _entries(table: int, records: tuple[CheckpointRecord, ...]) -> list[Any]:
    """The table's entries, an optional one only when some checkpoint has its value."""
    return [e for _, e in registry.table_entries(table)
            if not e.optional or any(e.value(r) is not None for r in records)]


def _notes(table: int, records: tuple[CheckpointRecord, ...]) -> list[str]:
    out: list[str] = []
    for m in registry.registry().values():
        if m.notes is not None:
            out += m.notes(table, records)
    return out


def _paper_row(entry: Any, rows: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...] | None:
    if not isinstance(entry.paper, str):
        return None
    for row in rows:
        if re.search(entry.paper, str(row[0]), flags=re.IGNORECASE):
            return row
    return None


def _start(table: int, results: Results | str | Path, with_paper: bool) -> tuple[Any, ...]:
    """``(results, entries, checkpoint labels, checkpoint keys, notes)`` of a table."""
    res = _load(results, need_records=not with_paper)
    return (res, _entries(table, res.records), _column_labels(res.records),
            [r.id for r in res.records], _notes(table, res.records))


def table1(results: Results | str | Path, *, with_paper: bool = False) -> Table:
    """Table 1: one row per registered Table-1 entry (#params, κ at init, λ_max, top-1,
    -C); one column per checkpoint.

    Raises:
        ResultFileError: the file holds no checkpoint and ``with_paper`` is False.
    """
    res, entries, cols, col_keys, notes = _start(1, results, with_paper)
    cells = [[e.value(r) for r in res.records] for e in entries]
    kinds = [[e.kind] * len(res.records) for e in entries]
    if with_paper:
        p = paper_tables()[1]
        for j, head in enumerate(p.header[1:], start=1):
            cols.append(f"paper: {head}")
            col_keys.append(f"paper:{head}")
            for i, e in enumerate(entries):
                row = _paper_row(e, p.rows)
                v = None if row is None else row[j]
                cells[i].append(v)
                kinds[i].append("text" if isinstance(v, str) else e.kind)
        notes.append("paper: Chen, Hsieh & Gong (ICLR 2022), ImageNet top-1 and ImageNet-C.")
    return Table(
        number=1,
        title="Table 1: geometry and accuracy",
        corner="",
        row_labels=tuple(e.label for e in entries),
        col_labels=tuple(cols),
        cells=tuple(tuple(c) for c in cells),
        kinds=tuple(tuple(k) for k in kinds),
        notes=tuple(notes),
        row_keys=tuple(e.key for e in entries),
        col_keys=tuple(col_keys),
    )


def table3(results: Results | str | Path, *, with_paper: bool = False) -> Table:
    """Table 3: one column per registered Table-3 entry (block λ_max, ‖w‖₂, block output
    norms, and optional ones such as the Hessian trace when measured); one row per
    checkpoint.

    Raises:
        ResultFileError: the file holds no checkpoint and ``with_paper`` is False.
    """
    res, entries, rows, row_keys, notes = _start(3, results, with_paper)
    cells: list[list[Any]] = [[e.value(r) for e in entries] for r in res.records]
    if with_paper:
        p = paper_tables()[3]
        for row in p.rows:
            rows.append(f"paper: {row[0]}")
            row_keys.append(f"paper:{row[0]}")
            cells.append([row[e.paper] if isinstance(e.paper, int) and e.paper < len(row)
                          else None for e in entries])
        notes.append("paper: Chen, Hsieh & Gong (ICLR 2022), ImageNet; mid/last = Block6/Block12.")
    return Table(
        number=3,
        title="Table 3: λ_max of the diagonal Hessian blocks, weight and activation norms",
        corner="Model",
        row_labels=tuple(rows),
        col_labels=tuple(e.label for e in entries),
        cells=tuple(tuple(c) for c in cells),
        kinds=tuple(tuple("text" if isinstance(x, str) else e.kind
                          for x, e in zip(c, entries, strict=True)) for c in cells),
        notes=tuple(notes),
        row_keys=tuple(row_keys),
        col_keys=tuple(e.key for e in entries),
    )


def make_table(results: Results | str | Path, which: int, *, with_paper: bool = False,
               transpose: bool = False) -> Table:
    """Table ``which`` (1 or 3) of ``results``, optionally transposed.

    Raises:
        SpecError: ``which`` is not 1 or 3.
    """
    if which not in (1, 3):
        raise SpecError(f"which must be 1 or 3, got {which!r}", param="which")
    t = (table1 if which == 1 else table3)(results, with_paper=with_paper)
    return t.transposed() if transpose else t


# -- rendering -----------------------------------------------------------------------------

_TEX = {
    "κ": r"$\kappa$", "λ_max": r"$\lambda_{\max}$", "‖w‖₂": r"$\|w\|_2$",
    "‖a_1‖₂": r"$\|a_1\|_2$", "‖a_mid‖₂": r"$\|a_{\mathrm{mid}}\|_2$",
    "‖a_last‖₂": r"$\|a_{\mathrm{last}}\|_2$", "–": "--", "×": r"$\times$",
}


def _tex(text: str) -> str:
    out = re.sub(r"([%&#_{}$])", r"\\\1", text)
    for k, v in _TEX.items():
        out = out.replace(re.sub(r"([%&#_{}$])", r"\\\1", k), v)
    return out


def render(table: Table, fmt: str = "md") -> str:
    """The table as ``md`` (pipe table + notes), ``csv`` (raw values), ``tex`` (booktabs
    tabular) or ``json`` (one object).

    Raises:
        SpecError: unknown format.
    """
    if fmt not in FORMATS:
        raise SpecError(f"unknown table format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(table.to_dict(), ensure_ascii=False, allow_nan=False)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([table.corner, *table.col_labels])
        for lab, row in zip(table.row_labels, table.cells, strict=True):
            w.writerow([lab, *("" if v is None else _json_value(v) for v in row)])
        return buf.getvalue()
    text = [[_fmt(v, k) for v, k in zip(row, kinds, strict=True)]
            for row, kinds in zip(table.cells, table.kinds, strict=True)]
    if fmt == "md":
        def cell(t: str) -> str:  # a "|" in a label (a run named "a|b") would split the row
            return " ".join(str(t).replace("|", "\\|").split())

        lines = [f"**{table.title}**", ""]
        lines.append("| " + " | ".join(map(cell, [table.corner, *table.col_labels])) + " |")
        lines.append("|" + "---|" * (1 + len(table.col_labels)))
        for lab, row in zip(table.row_labels, text, strict=True):
            lines.append("| " + " | ".join(map(cell, [lab, *row])) + " |")
        if table.notes:
            lines.append("")
            lines.extend(table.notes)
        return "\n".join(lines) + "\n"
    # tex
    lines = [f"% {table.title}"]
    lines += [f"% {n}" for n in table.notes]
    lines.append(r"\begin{tabular}{l" + "r" * len(table.col_labels) + "}")
    lines.append(r"\toprule")
    lines.append(" & ".join(_tex(c) for c in [table.corner, *table.col_labels]) + r" \\")
    lines.append(r"\midrule")
    for lab, row in zip(table.row_labels, text, strict=True):
        lines.append(" & ".join(_tex(c) for c in [lab, *row]) + r" \\")
    lines.append(r"\bottomrule")
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"
