"""The study report: Tables 1 and 3 beside the paper's, figures, and computed findings.

:func:`write_report` reads everything back with :func:`geomkit.study.open_study`, draws
the figures into ``DIR/figures/`` and writes ``DIR/report.md`` and ``DIR/report.html``
(the HTML by :func:`markdown_to_html`, a small converter for the subset of Markdown the
report uses: headings, paragraphs, lists, pipe tables, images, ``code`` and **bold**).
:func:`findings` states which of the paper's orderings hold, from the numbers. A study
with several subsets and the Table 4 methods (vanilla, sam, aug, sam-aug) also gets
:func:`table4_markdown`: the paper's Table 4 layout beside its numbers, λ_max, sharpness
and the final training loss in the same layout, and :func:`table4_findings`.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geomkit.io import atomic_write_text
from geomkit.study.config import StudyConfig
from geomkit.study.view import COLUMN_TITLES, COLUMNS, StudyView, lambda_columns, open_study

FAMILY_ORDER = ("resnet", "vit", "mixer")


@dataclass(frozen=True)
class Finding:
    """One of the paper's claims checked on the study's numbers.

    Attributes:
        claim: the paper's statement.
        verdict: ``holds``, ``partly``, ``does not hold`` or ``not measured``.
        detail: the numbers behind the verdict.
    """

    claim: str
    verdict: str
    detail: str


def _verdict(ok: int, total: int) -> str:
    if total == 0:
        return "not measured"
    return "holds" if ok == total else ("does not hold" if ok == 0 else "partly")


def _g(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-2):
        return f"{v:.2e}"
    return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"


def _pair_name(van: dict[str, Any]) -> str:
    sub = "" if van["subset"] == 1 else f", subset {van['subset']:g}"
    return f"{van['model']} (seed {van['seed']}{sub})"


def findings(view: StudyView, sam: str = "sam") -> list[Finding]:
    """Check the paper's orderings on the measured numbers (every seed and subset)."""
    rows = view.rows
    pairs = view.pairs(sam)
    out: list[Finding] = []

    # 1. NTK condition number at initialization: ResNet < ViT < Mixer
    kappa: dict[str, list[float]] = {}
    for r in rows:
        k = r.get("kappa_init")
        if k is not None and math.isfinite(k) and r["family"] in FAMILY_ORDER:
            kappa.setdefault(r["family"], []).append(r["kappa_init"])
    fams = [f for f in FAMILY_ORDER if f in kappa]
    means = {f: float(np.mean(kappa[f])) for f in fams}
    steps = list(zip(fams, fams[1:], strict=False))
    ok = sum(means[a] < means[b] for a, b in steps)
    detail = ", ".join(f"{f} {_g(means[f])}" for f in fams)
    measured = any(r.get("kappa_init") is not None for r in rows)
    out.append(Finding("NTK κ at initialization: ResNet < ViT < Mixer",
                       _verdict(ok, len(steps)) if len(fams) > 1 else "not measured",
                       f"κ at init (mean over the runs' architectures): {detail}" if fams
                       else "no ResNet, ViT or Mixer run measured" if measured
                       else "no NTK measurement"))

    # 2. SAM lowers λ_max in every block
    total = lower = 0
    worse: list[str] = []
    for van, s in pairs:
        lv, ls = lambda_columns(van), lambda_columns(s)
        for c in COLUMNS:
            if c in lv and c in ls:
                total += 1
                if ls[c] < lv[c]:
                    lower += 1
                else:
                    worse.append(f"{_pair_name(van)} {COLUMN_TITLES[c]} "
                                 f"{_g(lv[c])} → {_g(ls[c])}")
    whole = [(lambda_columns(v).get("whole"), lambda_columns(s).get("whole")) for v, s in pairs]
    ratios = [a / b for a, b in whole if a and b]
    detail = f"SAM lower in {lower} of {total} (run pair, block) cases"
    if ratios:
        detail += f"; whole-model λ_max vanilla/SAM ratio median {_g(float(np.median(ratios)))}"
    if worse:
        detail += "; not lower: " + "; ".join(worse[:6]) + (" …" if len(worse) > 6 else "")
    out.append(Finding("SAM lowers λ_max in every Hessian block", _verdict(lower, total), detail))

    # 3-5. ‖w‖₂, accuracy, corruption accuracy
    for claim, key, scale, unit in (
        ("SAM raises the weight norm ‖w‖₂", "weight_norm", 1.0, ""),
        ("SAM improves test accuracy", "test_acc", 100.0, " points"),
        ("SAM improves accuracy under corruption (-C)", "mean_corrupted", 100.0, " points"),
    ):
        diffs = [(van, scale * (s[key] - van[key])) for van, s in pairs
                 if van.get(key) is not None and s.get(key) is not None
                 and math.isfinite(van[key]) and math.isfinite(s[key])]
        ok = sum(d > 0 for _, d in diffs)
        detail = "; ".join(f"{_pair_name(v)} {d:+.3g}{unit}" for v, d in diffs[:12])
        out.append(Finding(claim, _verdict(ok, len(diffs)),
                           f"SAM − vanilla: {detail}" if diffs else "not measured"))

    # 6. Table 4: does SAM's gain grow as the training set shrinks?
    subsets = sorted({r["subset"] for r in rows})
    if len(subsets) > 1:
        gains: dict[str, dict[float, list[float]]] = {}
        for van, s in pairs:
            gains.setdefault(van["model"], {}).setdefault(van["subset"], []).append(
                100 * (s["test_acc"] - van["test_acc"]))
        ok = total = 0
        parts = []
        for m, g in gains.items():
            if subsets[0] in g and subsets[-1] in g:
                small, full = float(np.mean(g[subsets[0]])), float(np.mean(g[subsets[-1]]))
                total += 1
                ok += small > full
                parts.append(f"{m}: gain {full:+.2f} at {subsets[-1]:g} vs {small:+.2f} at "
                             f"{subsets[0]:g}")
        out.append(Finding("SAM's accuracy gain grows as the training set shrinks (Table 4)",
                           _verdict(ok, total), "; ".join(parts) or "not measured"))
    return out


# -- sharpness measures --------------------------------------------------------------------

#: The sharpness measures a study row may carry: (label, row -> value).
SHARPNESS_MEASURES: tuple[tuple[str, Any], ...] = (
    ("λ_max (whole)", lambda r: (r.get("lambda_max") or {}).get("whole")),
    ("L^N_train − L_train", lambda r: (r["l_noise"] - r["l_train"])
     if r.get("l_noise") is not None and r.get("l_train") is not None else None),
    ("S_max (adaptive, whole)", lambda r: (r.get("sharpness") or {}).get("whole")),
    ("L_train", lambda r: r.get("l_train")),
)


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def rank_correlations(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Spearman's ρ and Kendall's τ of each sharpness measure against λ_max and against the
    test accuracy, over the runs that have both (scipy.stats; NaN with fewer than 3)."""
    from scipy import stats

    out = []
    for label, get in SHARPNESS_MEASURES:
        row: dict[str, Any] = {"measure": label}
        for ref, rget in (("lambda_max", SHARPNESS_MEASURES[0][1]),
                          ("test_acc", lambda r: r.get("test_acc"))):
            pairs = [(get(r), rget(r)) for r in rows if _finite(get(r)) and _finite(rget(r))]
            row[f"n_{ref}"] = len(pairs)
            if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
                row[f"spearman_{ref}"] = row[f"kendall_{ref}"] = math.nan
                continue
            a, b = zip(*pairs, strict=True)
            row[f"spearman_{ref}"] = float(stats.spearmanr(a, b).statistic)
            row[f"kendall_{ref}"] = float(stats.kendalltau(a, b).statistic)
        out.append(row)
    return out


def sharpness_markdown(view: StudyView, sam: str = "sam") -> list[str]:
    """The report's sharpness section (empty when no run has the ``sharpness`` measurement):
    each measure per run group, whether SAM lowers it per pair, and the rank correlations."""
    rows = view.rows
    if not any(r.get("sharpness") for r in rows):
        return []
    lines = ["## Sharpness beside λ_max", "",
             "L^N_train: the training loss under Gaussian weight noise; S_max: adaptive "
             "worst-case m-sharpness (Andriushchenko et al. 2023), on the Hessian's examples.",
             "", md_table(["run"] + [m for m, _ in SHARPNESS_MEASURES],
                          [[_label(g)] + [_cell([get(r) for r in g]) for _, get in
                                          SHARPNESS_MEASURES] for g in _groups(rows)]), ""]
    pairs = view.pairs(sam)
    if pairs:
        lines += ["Does SAM lower each measure (vanilla → SAM, per model and seed)?", ""]
        body = []
        for label, get in SHARPNESS_MEASURES[:3]:
            done = [(v, s) for v, s in pairs if _finite(get(v)) and _finite(get(s))]
            lower = sum(get(s) < get(v) for v, s in done)
            body.append([label, f"{lower} of {len(done)}",
                         "; ".join(f"{_pair_name(v)} {_g(get(v))} → {_g(get(s))}"
                                   for v, s in done[:6])])
        lines += [md_table(["measure", "SAM lower", "pairs"], body), ""]
    corr = rank_correlations(rows)
    lines += ["Rank correlation of each measure with λ_max and with the test accuracy over "
              "the runs (Spearman ρ / Kendall τ; a good sharpness measure of generalization "
              "correlates negatively with accuracy):", "",
              md_table(["measure", "vs λ_max", "vs test accuracy", "runs"],
                       [[c["measure"],
                         f"{_g(c['spearman_lambda_max'], 2)} / {_g(c['kendall_lambda_max'], 2)}",
                         f"{_g(c['spearman_test_acc'], 2)} / {_g(c['kendall_test_acc'], 2)}",
                         c["n_test_acc"]] for c in corr[1:]]), ""]
    return lines


# -- tables --------------------------------------------------------------------------------

def training_markdown(view: StudyView) -> list[str]:
    """"Geometry during training": per run with a track, λ_max (or λ_max(P⁻¹H) for
    Adam/AdamW) at the first and last tracked step, its largest value and how it stood
    against the edge-of-stability line; per trajectory surface, how well the PCA plane
    holds the path (explained variance, distance from the plane, true loss vs surface)."""
    import numpy as np

    from geomkit.io.track import read_track
    from geomkit.plot import DISAGREE, read_trajectory, track_series

    rows = [r for r in view.rows if r.get("track")]
    out: list[str] = []
    if rows:
        table = []
        for r in rows:
            t = read_track(r["track"])
            what, step, lam, thr = track_series(t)
            ok = np.isfinite(lam)
            if not ok.any():
                continue
            lam_ok, step_ok, thr_ok = lam[ok], step[ok], thr[ok]
            ratio = lam_ok / thr_ok
            near = np.isfinite(ratio) & (ratio >= 0.5)
            table.append([r["run"], what, str(len(t)), _g(float(lam_ok[0])),
                          _g(float(lam_ok.max())) + f" (step {int(step_ok[lam_ok.argmax()])})",
                          _g(float(lam_ok[-1])),
                          _g(float(np.nanmax(ratio))) if np.isfinite(ratio).any() else "-",
                          str(int(near.sum()))])
        if table:
            out += ["## Geometry during training", "",
                    "λ_max on the probe set every "
                    f"{read_track(rows[0]['track']).settings.get('every')} steps "
                    "(Adam/AdamW runs: the preconditioned λ_max(P⁻¹H), the quantity whose edge "
                    "of stability is (2+2β₁)/((1−β₁)η)); \"max / threshold\": the largest "
                    "ratio to the optimizer's edge-of-stability line at that step's learning "
                    "rate, \"≥ ½ line\": tracked steps at or above half of it.", "",
                    md_table(["run", "quantity", "steps tracked", "first", "max", "last",
                              "max / threshold", "≥ ½ line"], table), ""]
    traj = [r for r in view.rows if r.get("trajectory")]
    table = []
    for r in traj:
        tr = read_trajectory(r["trajectory"])
        if tr is None:
            continue
        evr = tr.explained_variance_ratio
        res, dist = np.asarray(tr.residual, float), np.asarray(tr.distance, float)
        off = float(np.nanmax(res) / max(float(np.nanmax(dist)), 1e-12))
        table.append([r["run"], str(len(tr.a)), _g(100 * float(np.nansum(evr[:2])), 3),
                      _g(off),
                      f"{int(tr.disagrees().sum())} / {int((~tr.outside()).sum())}",
                      _g(float(np.nanmax(tr.disagreement()))
                         if np.isfinite(tr.disagreement()).any() else float("nan"))])
    if table:
        out += ["Trajectory surfaces (Li et al. 2018, §7): how much of the path the PCA "
                "plane holds. \"off-plane\": the largest distance of a snapshot from the "
                "plane over the largest distance of one from the final weights; \"off the "
                "surface\": "
                f"snapshots whose true loss differs from the surface under them by more than "
                f"{100 * DISAGREE:g} % (the known fault of trajectory plots, measured).", "",
                md_table(["run", "snapshots", "PC1+PC2 (%)", "max off-plane",
                          "off the surface", "largest relative gap"], table), ""]
    return out


def _groups(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows grouped by (model, optimizer, subset), over seeds, in study order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["optimizer"], r["subset"]), []).append(r)
    return list(groups.values())


def _cell(values: Sequence[float | None], scale: float = 1.0, digits: int = 3) -> str:
    vals = [scale * v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "–"
    if len(vals) == 1:
        return _g(vals[0], digits)
    return f"{_g(float(np.mean(vals)), digits)} ± {_g(float(np.std(vals)), 2)}"


def _label(g: list[dict[str, Any]]) -> str:
    r = g[0]
    sub = "" if r["subset"] == 1 else f" @{r['subset']:g}"
    seeds = "" if len(g) == 1 else f" ({len(g)} seeds)"
    return f"{r['model']}-{r['optimizer']}{sub}{seeds}"


def _pct(v: float | None) -> float:
    """A fraction in percent; a missing one (NaN written as null in study.json) is NaN."""
    return math.nan if v is None else 100 * v


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown pipe table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _entry_table(rows: Sequence[dict[str, Any]], table: int) -> str:
    """Table 1 or 3 for the study's runs (mean ± std over seeds), one row per run group;
    the columns are the measurement registry's entries for that table."""
    from geomkit import measurements as registry

    entries = [e for _, e in registry.table_entries(table)
               if not e.optional or any(e.key in (r.get(f"t{table}") or {}) for r in rows)]
    digits = {"params": 6, "pct": 4}
    body = [[_label(g)] + [_cell([(r.get(f"t{table}") or {}).get(e.key) for r in g],
                                 digits=digits.get(e.kind, 3)) for e in entries]
            for g in _groups(rows)]
    return md_table(["run"] + [e.label for e in entries], body)


def table1_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Table 1 for the study's runs (mean ± std over seeds)."""
    return _entry_table(rows, 1)


def table3_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Table 3 for the study's runs: λ_max per block, ‖w‖₂, ‖a_k‖₂ (first/mid/last block)."""
    return _entry_table(rows, 3)


def paper_side_by_side(view: StudyView) -> dict[int, str]:
    """Tables 1 and 3 of the study's current checkpoints beside the paper's numbers, as
    Markdown, from :mod:`geomkit.tables` (empty when stage 2 has not run)."""
    if view.results_path is None:
        return {}
    from geomkit import tables
    from geomkit.provenance import file_sha256
    from geomkit.results import Results, load_results

    res = load_results(view.results_path)
    current = {file_sha256(r["checkpoint"]) for r in view.rows if Path(r["checkpoint"]).is_file()}
    mine = Results(res.path, res.attrs, tuple(r for r in res if r.checkpoint_sha256 in current))
    if not len(mine):
        return {}
    return {1: tables.render(tables.table1(mine, with_paper=True), "md"),
            3: tables.render(tables.table3(mine, with_paper=True), "md")}


# -- Table 4: subsets x vanilla / SAM / AUG / SAM+AUG -------------------------------------

#: The paper's Table 4 methods, in its column order, with the study's optimizer labels.
TABLE4_METHODS: tuple[tuple[str, str], ...] = (
    ("vanilla", "Vanilla"), ("sam", "SAM"), ("aug", "AUG"), ("sam-aug", "SAM+AUG"))
_PAPER_FRACTIONS = {"imagenet": 1.0, "1/2": 0.5, "1/4": 0.25, "1/10": 0.1}
_PAPER_FAMILIES = (("resnet", "resnet"), ("vit", "vit"), ("mixer", "mixer"))


def paper_table4() -> tuple[dict[str, str], dict[tuple[str, str], dict[float, float]]]:
    """The paper's Table 4 from ``reference/paper_tables.md``: family → the paper's model
    (``vit`` → ``ViT-B/16``), and (family, method label) → {training-set fraction → top-1 %}."""
    from geomkit.tables import paper_tables

    t = paper_tables().get(4)
    models: dict[str, str] = {}
    out: dict[tuple[str, str], dict[float, float]] = {}
    if t is None:
        return models, out
    methods = {title.lower(): label for label, title in TABLE4_METHODS}
    cols: list[tuple[str, str] | None] = []
    fam = None
    for h in t.header:
        words = h.split()
        if len(words) == 2 and words[1].lower() == "vanilla":
            fam = next((f for key, f in _PAPER_FAMILIES if words[0].lower().startswith(key)),
                       None)
            if fam is not None:
                models[fam] = words[0]
        label = methods.get(words[-1].lower()) if words else None
        cols.append((fam, label) if fam is not None and label is not None else None)
    for row in t.rows:
        frac = _PAPER_FRACTIONS.get(str(row[0]).strip().lower())
        if frac is None:
            continue
        for col, v in zip(cols, row, strict=False):
            if col is not None and isinstance(v, float):
                out.setdefault(col, {})[frac] = v
    return models, out


def _frac(f: float) -> str:
    """A training-set fraction as the paper writes it: 1, 1/2, 1/4, 1/10 (else 0.3)."""
    if f == 1:
        return "1"
    inv = 1 / f
    return f"1/{round(inv)}" if abs(inv - round(inv)) < 1e-9 else f"{f:g}"


def _t4_rows(view: StudyView) -> dict[tuple[str, str], dict[float, list[dict[str, Any]]]]:
    """(model, method) → subset → the rows (one per seed) of the Table 4 methods."""
    labels = {m for m, _ in TABLE4_METHODS}
    out: dict[tuple[str, str], dict[float, list[dict[str, Any]]]] = {}
    for r in view.rows:
        if r["optimizer"] in labels:
            out.setdefault((r["model"], r["optimizer"]), {}).setdefault(
                float(r["subset"]), []).append(r)
    order = {m: i for i, (m, _) in enumerate(TABLE4_METHODS)}
    models = list(dict.fromkeys(r["model"] for r in view.rows))
    return dict(sorted(out.items(), key=lambda kv: (models.index(kv[0][0]), order[kv[0][1]])))


def _t4_mean(rs: Sequence[dict[str, Any]], get: Any) -> tuple[float, int]:
    vals = [float(get(r)) for r in rs if _finite(get(r))]
    return (float(np.mean(vals)) if vals else math.nan), len(vals)


#: The quantities laid out as Table 4: (title, row -> value, scale, digits, with the paper).
TABLE4_QUANTITIES: tuple[tuple[str, Any, float, int, bool], ...] = (
    ("Test accuracy (%)", lambda r: r.get("test_acc"), 100.0, 4, True),
    ("λ_max of the whole model (Hessian of the training loss)",
     lambda r: (r.get("lambda_max") or {}).get("whole"), 1.0, 3, False),
    ("S_max (adaptive worst-case m-sharpness, whole model)",
     lambda r: (r.get("sharpness") or {}).get("whole"), 1.0, 3, False),
    ("L^N_train − L_train (training loss under Gaussian weight noise, minus the loss)",
     SHARPNESS_MEASURES[1][1], 1.0, 3, False),
    ("Final training loss (the objective: on the augmented, Mixup-ed batches for AUG and "
     "SAM+AUG, so not comparable with vanilla's and SAM's)",
     lambda r: r.get("train_loss"), 1.0, 3, False),
)


def table4_markdown(view: StudyView, config: StudyConfig) -> list[str]:
    """The paper's Table 4 for the study (empty unless it has more than one subset and a
    Table 4 method): rows model × method, columns the subsets (largest first), cells mean
    ± std over seeds; the test accuracy beside the paper's numbers (ImageNet, the model of
    the run's family), then λ_max, the sharpness measures (when measured) and the final
    training loss in the same layout, and :func:`table4_findings`."""
    groups = _t4_rows(view)
    subsets = sorted({f for g in groups.values() for f in g}, reverse=True)
    if len(subsets) < 2 or not groups:
        return []
    pmodels, paper = paper_table4()
    seeds = sorted({r["seed"] for g in groups.values() for rs in g.values() for r in rs})
    titles = dict(TABLE4_METHODS)
    aug = (f"AUG = RandAugment + Mixup at AugReg level `{config.aug}`"
           if {"aug", "sam-aug"} & {m for _, m in groups} else "")
    lines = ["## Table 4: training-set subsets, SAM and strong augmentation", "",
             f"The paper's Table 4 at this scale: {config.data.source}, fractions "
             + ", ".join(_frac(f) for f in subsets) + " of the training set"
             + (f", a fixed budget of {config.train['steps']} optimizer steps per run"
                if config.train.get("steps") else "")
             + f"; mean ± std over {len(seeds)} seed(s) ({', '.join(map(str, seeds))})"
             + (f"; {aug}" if aug else "") + ".", ""]
    head = ["model", "method"] + [_frac(f) for f in subsets]
    for title, get, scale, digits, with_paper in TABLE4_QUANTITIES:
        body = []
        for (model, method), g in groups.items():
            cells = [_cell([get(r) for r in g.get(f, [])], scale, digits) for f in subsets]
            if not any(c != "–" for c in cells):
                continue
            row = [model, titles[method], *cells]
            if with_paper:
                fam = _family_of(view, model)
                pv = paper.get((fam, method), {})
                row.append(" / ".join(f"{pv[f]:g}" if f in pv else "–" for f in subsets)
                           if pv else "–")
            body.append(row)
        if not body:
            continue
        extra = []
        if with_paper:
            names = ", ".join(f"{f} → {m}" for f, m in pmodels.items())
            extra = [f"paper ({' / '.join(_frac(f) for f in subsets)} of ImageNet)"]
            title += f"; paper: ImageNet top-1 of the family's model ({names})"
        lines += [f"{title}:", "", md_table(head + extra, body), ""]
    lines += ["Table 4's findings at this scale, from the numbers above:", ""]
    for f in table4_findings(view):
        lines.append(f"- **{f.claim}: {f.verdict}.** {f.detail}")
    return lines + [""]


def _family_of(view: StudyView, model: str) -> str:
    """The family of a model label as the study's rows record it."""
    return next((r["family"] for r in view.rows if r["model"] == model), "other")


def table4_findings(view: StudyView) -> list[Finding]:
    """Table 4's three findings on the study's numbers (each cell's mean over seeds):
    SAM's gain over vanilla grows as the training set shrinks; AUG lowers λ_max (flattens
    the minimum) as SAM does; SAM+AUG is more accurate than both SAM and AUG."""
    groups = _t4_rows(view)
    subsets = sorted({f for g in groups.values() for f in g}, reverse=True)
    models = list(dict.fromkeys(m for m, _ in groups))
    acc = TABLE4_QUANTITIES[0][1]
    lam = TABLE4_QUANTITIES[1][1]

    def mean(model: str, method: str, f: float, get: Any) -> tuple[float, int]:
        return _t4_mean(groups.get((model, method), {}).get(f, []), get)

    out: list[Finding] = []
    # 1. SAM's gain grows as the data shrink: largest vs smallest subset, per model
    ok = total = 0
    parts = []
    for m in models:
        gains = []
        for f in subsets:
            (v, nv), (s, ns) = mean(m, "vanilla", f, acc), mean(m, "sam", f, acc)
            if math.isfinite(v) and math.isfinite(s):
                gains.append((f, 100 * (s - v), min(nv, ns)))
        if len(gains) >= 2 and gains[0][0] != gains[-1][0]:
            total += 1
            ok += gains[-1][1] > gains[0][1]
            parts.append(f"{m}: SAM − vanilla " + ", ".join(
                f"{g:+.2f} at {_frac(f)}" for f, g, _ in gains)
                + f" points ({min(n for *_, n in gains)} seeds)")
    out.append(Finding("SAM's accuracy gain over vanilla grows as the training set shrinks",
                       _verdict(ok, total), "; ".join(parts) or "not measured"))
    # 2. AUG flattens the minimum (lower λ_max than vanilla), as SAM does
    ok = total = sam_ok = sam_total = 0
    parts = []
    for m in models:
        for f in subsets:
            (v, nv), (a, na) = mean(m, "vanilla", f, lam), mean(m, "aug", f, lam)
            s, ns = mean(m, "sam", f, lam)
            if not (math.isfinite(v) and math.isfinite(a)):
                continue
            total += 1
            ok += a < v
            sam_part = ""
            if math.isfinite(s):
                sam_total += 1
                sam_ok += s < v
                sam_part = f", SAM {_g(s)}"
            parts.append(f"{m} @{_frac(f)}: vanilla {_g(v)}, AUG {_g(a)}{sam_part} "
                         f"({min(nv, na)} seeds)")
    detail = (f"AUG below vanilla in {ok} of {total} (model, subset) cells"
              + (f", SAM below vanilla in {sam_ok} of {sam_total}" if sam_total else "")
              + ("; whole-model λ_max " + "; ".join(parts[:8])
                 + (" …" if len(parts) > 8 else "") if parts else ""))
    out.append(Finding("AUG flattens the minimum (lower whole-model λ_max than vanilla) "
                       "like SAM", _verdict(ok, total), detail if total else "not measured"))
    # 3. SAM+AUG beats both
    ok = total = 0
    parts = []
    for m in models:
        for f in subsets:
            (b, nb), (s, ns), (a, na) = (mean(m, k, f, acc) for k in ("sam-aug", "sam", "aug"))
            if not all(math.isfinite(x) for x in (b, s, a)):
                continue
            total += 1
            ok += b > max(s, a)
            parts.append(f"{m} @{_frac(f)}: SAM+AUG {100 * b:.2f} vs SAM {100 * s:.2f}, "
                         f"AUG {100 * a:.2f} ({min(nb, ns, na)} seeds)")
    out.append(Finding("SAM+AUG is more accurate than both SAM and AUG",
                       _verdict(ok, total),
                       (f"in {ok} of {total} (model, subset) cells; test accuracy (%) "
                        + "; ".join(parts[:8]) + (" …" if len(parts) > 8 else ""))
                       if total else "not measured"))
    return out


# -- figures and the report ----------------------------------------------------------------

def draw_figures(view: StudyView, config: StudyConfig) -> dict[str, Path]:
    """Every figure of the report into ``DIR/figures`` (PNG + PDF); name → PNG path."""
    from geomkit import plot
    from geomkit.study import plots

    shown = [r for r in view.rows
             if config.in_figures(r["subset"], r["seed"], r.get("status") == "external")]
    figdir = view.out_dir / "figures"
    out: dict[str, Path] = {}
    draw = [("lambda_max", plots.plot_lambda_bars, lambda r: r.get("lambda_max")),
            ("sparsity", plots.plot_sparsity, lambda r: r.get("block_active_fraction")),
            ("density", plots.plot_densities, lambda r: r.get("density")),
            ("corruptions", plots.plot_corruptions, lambda r: r.get("per_corruption"))]
    for name, fn, has in draw:
        if any(has(r) for r in shown):
            out[name] = plot.save_figure(fn(shown), figdir / name)[0]
    if any(r.get("track") for r in shown):
        out["sharpness_training"] = plot.save_figure(plots.plot_tracks(shown),
                                                     figdir / "sharpness_training")[0]
    traj = [r for r in shown if r.get("trajectory")]
    if traj:
        try:
            fig = plot.plot_panel([r["trajectory"] for r in traj], kind="contourf",
                                  ncols=min(len(traj), len(config.model_labels) or 3),
                                  titles=[r["run"] for r in traj], log=config.landscape.log)
            out["trajectories"] = plot.save_figure(fig, figdir / "trajectories")[0]
        except Exception as e:  # an unfinished surface must not sink the report
            from geomkit.errors import GeomkitError

            if not isinstance(e, GeomkitError):
                raise
    if len(config.subsets) > 1:
        out["subsets"] = plot.save_figure(plots.plot_subsets(view.rows), figdir / "subsets")[0]
    # Figure 1: optimizers (rows) x models (columns) on one colour scale
    models, optimizers = config.model_labels, config.optimizer_labels
    cells, titles = [], []
    unique = True
    for o in optimizers:
        for m in models:
            hit = [r for r in shown if r["model"] == m and r["optimizer"] == o and r["landscape"]]
            if hit:
                cells.append(hit[0]["landscape"])
                titles.append(f"{m} / {o}")
                unique = unique and len(hit) == 1
    complete = unique and len(cells) == len(optimizers) * len(models)
    if not complete and config.checkpoints:
        # [[checkpoints]] need not fill the grid, or may share a cell with a trained run
        # (another seed): then every surface there is, each titled by its run
        hits = [r for r in shown if r["landscape"]]
        cells, titles = [r["landscape"] for r in hits], [r["run"] for r in hits]
    if cells and (complete or config.checkpoints):
        name = "landscapes" if complete else "landscapes_runs"
        try:
            fig = plot.plot_panel(cells, kind="contourf", ncols=len(models) if complete else None,
                                  titles=titles, log=config.landscape.log)
            out[name] = plot.save_figure(fig, figdir / name)[0]
        except Exception as e:  # an unfinished surface must not sink the report
            from geomkit.errors import GeomkitError

            if not isinstance(e, GeomkitError):
                raise
    return out


FIGURE_CAPTIONS = {
    "landscapes": "Loss landscapes (filter-normalized random directions, one colour scale): "
                  "optimizers in rows, models in columns (the paper's Figure 1).",
    "landscapes_runs": "Loss landscapes (filter-normalized random directions, one colour "
                       "scale) of every run that has one, titled by run.",
    "lambda_max": "Hessian λ_max of each Table-3 block (log scale).",
    "sparsity": "Fraction of active post-activation values per block.",
    "density": "Hessian eigenvalue density of the whole model (stochastic Lanczos quadrature).",
    "corruptions": "Test accuracy, clean and under each corruption (mean over severities 1-5).",
    "subsets": "Test accuracy against the fraction of the training set (the paper's Table 4).",
    "sharpness_training": "Sharpness during training (`[track]`): λ_max of the whole model "
                          "on a fixed probe set against the optimizer step -- for Adam/AdamW "
                          "runs the preconditioned λ_max(P⁻¹H) -- with the optimizer's "
                          "edge-of-stability threshold dashed ((2+2β)/η for SGD with "
                          "momentum β, (2+2β₁)/((1−β₁)η) for Adam; the learning rate η "
                          "follows the schedule).",
    "trajectories": "Trajectory landscapes (Li et al. 2018, §7): the loss in the plane of "
                    "the top two principal components of the path θ_i − θ_final, the "
                    "snapshots drawn on it (star: the final weights; red rings: a "
                    "snapshot's true loss more than 10 % off the surface under it).",
}


def report_markdown(view: StudyView, config: StudyConfig, figures: dict[str, Path],
                    timings: dict[str, float] | None = None) -> str:
    """The report as Markdown (figure paths relative to the study directory)."""
    rows = view.rows
    d = config.data
    lines = [f"# geomkit study `{config.name}`", ""]
    if config.description:
        lines += [config.description, ""]
    if config.models:
        lines += [
            f"- data: `{d.source}`" + (f" at {d.image_size}px" if d.image_size else "")
            + f", augmentation {'on' if d.augment else 'off'}, subsets "
            + ", ".join(f"{s:g}" for s in config.subsets),
            f"- models: {', '.join(config.models)}; optimizers: {', '.join(config.optimizers)}; "
            f"seeds: {', '.join(map(str, config.seeds))}",
            "- training: "
            + (f"{config.train['steps']} optimizer steps per run" if config.train.get("steps")
               else f"{config.train.get('epochs')} epochs")
            + f", batch "
            f"{config.train.get('batch_size')}; SAM ρ: "
            + ", ".join(f"{m} {config.rho_for(m):g}" for m in config.models)]
    if config.checkpoints:
        lines.append("- measured, not trained here (`[[checkpoints]]`, each on its own data): "
                     + "; ".join(f"{e.model} / {e.optimizer} `{e.path}`"
                                 for e in config.checkpoints))
    lines += [
        f"- analysis: {config.analysis.samples} training examples for the Hessian and "
        f"activations, {config.analysis.ntk_samples} for the NTK "
        f"({config.analysis.ntk_repeats} initializations), "
        + (f"{config.analysis.test_samples}" if config.analysis.test_samples else "all")
        + " test examples for the accuracies",
        "",
        "## Accuracy",
        "",
        "Test accuracy here, in the findings and in the mean ± std tables is on the whole "
        "test split at the end of training; the per-checkpoint Table 1's Top-1, and every "
        "-C number, come from the analysis on "
        + (f"the first {config.analysis.test_samples}" if config.analysis.test_samples
           else "all") + " test examples"
        + (", as does the test accuracy of a checkpoint trained elsewhere (marked "
           "\"analysis\")." if config.checkpoints else "."),
        "",
        md_table(["run", "epochs", "test acc (%)", "train loss", "train s"],
                 [[r["run"], r["epochs"], _g(_pct(r.get("test_acc")), 4)
                   + (" (analysis)" if r.get("test_acc_from") == "analysis" else ""),
                   _g(r["train_loss"]), _g(r["train_seconds"])] for r in rows]),
        "",
        "## Findings",
        "",
        "Which of the paper's findings hold at this scale, computed from the numbers below:",
        "",
    ]
    for f in findings(view):
        lines.append(f"- **{f.claim}: {f.verdict}.** {f.detail}")
    paper = paper_side_by_side(view)
    several = len(config.seeds) > 1
    lines += ["", "## Table 1: geometry and accuracy", ""]
    if 1 in paper:
        lines += ["This study (one column per checkpoint) beside the paper (ImageNet):", "",
                  paper[1], ""]
    if several or 1 not in paper:
        lines += ["This study" + (", mean ± std over seeds:" if several else ":"), "",
                  table1_markdown(rows), ""]
    lines += ["## Table 3: λ_max per Hessian block, weight and activation norms", ""]
    if 3 in paper:
        lines += ["This study beside the paper:", "", paper[3], ""]
    if several or 3 not in paper:
        lines += ["This study" + (", mean ± std over seeds" if several else "")
                  + " (‖a_k‖₂: output norm of the first, middle and last block):", "",
                  table3_markdown(rows), ""]
    lines += table4_markdown(view, config)
    lines += sharpness_markdown(view)
    lines += training_markdown(view)
    if figures:
        lines += ["## Figures", ""]
        for name, path in figures.items():
            rel = os.path.relpath(path, view.out_dir)
            lines += [f"![{name}]({rel})", "", FIGURE_CAPTIONS.get(name, name), ""]
    out = view.out_dir
    lines += ["## Files", "",
              "- `runs/<run>/last.pt`: checkpoints (`geomkit info`, `geomkit.load_checkpoint`)"
              + ("; the `[[checkpoints]]` are read where they lie" if config.checkpoints
                 else ""),
              "- `results.h5`: every measurement (`geomkit.results.load_results`)"]
    if any((out / "landscapes").glob("*.h5")):
        lines.append("- `landscapes/<run>.h5`: loss surfaces of the runs in Figure 1 "
                     "(`geomkit plot`)")
    if any(r.get("track") for r in rows):
        lines.append("- `runs/<run>/track.h5`: λ_max and losses every "
                     f"{config.track.every} steps during training (`geomkit plot`)")
    if any((out / "runs").glob("*/snapshots.h5")):
        lines.append("- `runs/<run>/snapshots.h5`: the weights every "
                     f"{config.track.snapshot_every} epoch(s); `landscapes/<run>_pca.h5`: "
                     "the trajectory surfaces")
    if any((out / "density").glob("*.h5")):
        lines.append("- `density/<run>.h5`: Hessian spectral densities")
    lines += ["- `study.json`: the resolved study config and the accuracy table", ""]
    if timings:
        lines += ["Wall time of this call: "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), ""]
    return "\n".join(lines)


_INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
           (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>")]


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    for pat, rep in _INLINE:
        text = pat.sub(rep, text)
    return text


def markdown_to_html(md: str, title: str = "geomkit report") -> str:
    """Convert the report's Markdown subset to a standalone HTML page."""
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
           "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
           "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>",
           "</head><body>"]
    lines = md.splitlines()
    i = 0
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        m_head = re.match(r"^(#{1,6}) (.*)$", line)
        m_img = re.match(r"^!\[([^\]]*)\]\(([^)]+)\)$", line.strip())
        if not line.strip():
            flush()
        elif m_head:
            flush()
            n = len(m_head.group(1))
            out.append(f"<h{n}>{_inline(m_head.group(2))}</h{n}>")
        elif m_img:
            flush()
            out.append(f"<p><img alt='{html.escape(m_img.group(1))}' "
                       f"src='{html.escape(m_img.group(2))}'></p>")
        elif line.startswith("|"):
            flush()
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in block]
            body = [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
            head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
            out.append(f"<table><tr>{head}</tr>")
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body]
            out.append("</table>")
            continue
        elif line.startswith("- "):
            flush()
            out.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                out.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("</ul>")
            continue
        else:
            para.append(line)
        i += 1
    flush()
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(config: StudyConfig, out_dir: str | Path, runs: Sequence[Any] = (),
                 timings: dict[str, float] | None = None) -> tuple[dict[str, Path], Path]:
    """Draw the figures and write ``report.md`` and ``report.html`` (atomically)."""
    out_dir = Path(out_dir)
    view = open_study(out_dir)
    figures = draw_figures(view, config)
    md = report_markdown(view, config, figures, timings)
    for name, text in (("report.md", md),
                       ("report.html", markdown_to_html(md, f"geomkit study {config.name}"))):
        atomic_write_text(out_dir / name, text)
    return figures, out_dir / "report.md"
