"""The study report's sharpness section: SAM-vs-vanilla per measure and rank correlations,
checked on rows whose orderings are known."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from geomkit.study.report import rank_correlations, sharpness_markdown
from geomkit.study.view import StudyView


def _row(model: str, opt: str, seed: int, acc: float, lam: float, s_max: float,
         l_train: float, l_noise: float) -> dict:
    return {"run": f"{model}-{opt}-s{seed}", "model": model, "optimizer": opt, "subset": 1.0,
            "seed": seed, "test_acc": acc, "lambda_max": {"whole": lam},
            "sharpness": {"whole": s_max}, "l_train": l_train, "l_noise": l_noise}


ROWS = (
    # S_max ranks exactly as λ_max and exactly opposite to accuracy; the noise gap does not
    _row("vit", "vanilla", 0, 0.75, 50.0, 0.50, 0.10, 0.30),
    _row("vit", "sam", 0, 0.85, 10.0, 0.20, 0.20, 0.25),
    _row("mixer", "vanilla", 0, 0.70, 80.0, 0.90, 0.05, 0.15),
    _row("mixer", "sam", 0, 0.80, 30.0, 0.40, 0.15, 0.40),
)


def test_rank_correlations_of_known_orderings():
    corr = {c["measure"]: c for c in rank_correlations(ROWS)}
    s = corr["S_max (adaptive, whole)"]
    assert s["spearman_lambda_max"] == pytest.approx(1.0)
    assert s["kendall_lambda_max"] == pytest.approx(1.0)
    assert s["spearman_test_acc"] == pytest.approx(-1.0)
    assert s["n_test_acc"] == 4
    # the noise gap 0.20, 0.05, 0.10, 0.25 against λ_max 50, 10, 80, 30: ranks 3,1,2,4 vs
    # 3,1,4,2 -> Spearman 1 - 6*(0+0+4+4)/(4*15) = 0.2
    assert corr["L^N_train − L_train"]["spearman_lambda_max"] == pytest.approx(0.2)
    # too few runs: NaN, not a number from two points
    few = rank_correlations(ROWS[:2])
    assert all(math.isnan(c["spearman_test_acc"]) for c in few)


def test_the_section_counts_where_sam_lowers_each_measure(tmp_path: Path):
    md = "\n".join(sharpness_markdown(StudyView(tmp_path, {}, ROWS, None)))
    assert "## Sharpness beside λ_max" in md
    assert "| S_max (adaptive, whole) | 2 of 2 |" in md
    assert "| L^N_train − L_train | 1 of 2 |" in md  # vit 0.20 → 0.05 lower, mixer 0.10 → 0.25
    assert "| S_max (adaptive, whole) | 1 / 1 | -1 / -1 | 4 |" in md
    # no run measured: no section
    bare = [{k: v for k, v in r.items() if k not in ("sharpness", "l_train", "l_noise")}
            for r in ROWS]
    assert sharpness_markdown(StudyView(tmp_path, {}, tuple(bare), None)) == []
