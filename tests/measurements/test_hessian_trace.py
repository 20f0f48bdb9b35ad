"""The Hessian-trace measurement, added through the registry alone: analyze runs it, the
stored traces equal the dense oracle's (within the probes' error) and the direct call's, and
Table 3 shows its optional column only when measured."""

import pytest
import torch

from geomkit import analyze as A
from geomkit import measurements as M
from geomkit.checkpoint import load_checkpoint
from geomkit.geometry.blocks import resolve_blocks
from geomkit.geometry.spectrum import hutchinson_trace
from geomkit.tables import table3
from tests.cases import tiny_checkpoint
from tests.geometry._hessian_oracle import dense_hessian


def test_registered_not_default_with_its_own_option():
    assert "hessian_trace" in M.registry() and "hessian_trace" not in M.default_measurements()
    assert M.option_fields(["hessian_trace"])["trace_probes"].default == 32


def test_analyze_stores_the_trace_and_table3_gains_the_column(tmp_path):
    ck_path = tiny_checkpoint(tmp_path / "a.pt")
    out = tmp_path / "r.h5"
    A.analyze([ck_path], out, measurements=["params"], progress=False)
    assert "tr(H) whole" not in table3(out).col_labels  # optional: absent until measured
    r = A.analyze([ck_path], out, measurements=["hessian_trace"], samples=12, trace_probes=64,
                  progress=False)
    rec = r.results[0]
    ck = load_checkpoint(ck_path)
    x, y = ck.analysis_data("train", 12)
    direct = hutchinson_trace(ck.model, x, y, blocks=("paper",), n_probes=64, seed=0)
    assert rec.get("hessian_trace.trace") == {b: t.trace for b, t in direct.items()}
    # the estimate against the exact trace of the dense float64 Hessian (same rounding-free
    # model in float64): within 4 standard errors
    m64 = ck.model.double()
    names = resolve_blocks(m64, ("whole",))["whole"]
    exact = float(torch.trace(dense_hessian(m64, names, x.double(), y)))
    est, se = rec.get("hessian_trace.trace.whole"), rec.get("hessian_trace.stderr.whole")
    assert abs(est - exact) <= 4 * se + 1e-3 * abs(exact)
    t3 = table3(out)
    j = t3.col_labels.index("tr(H) whole")
    assert t3.col_keys[j] == "trace_whole" and t3.cells[0][j] == pytest.approx(est)


def test_the_study_runs_it_when_its_analysis_names_it(tmp_path):
    from types import SimpleNamespace

    from geomkit.results import load_results
    from geomkit.study.config import study_config_from_dict
    from geomkit.study.stages import analyze_stage

    cfg = study_config_from_dict({
        "models": ["vit-tiny"],
        "analysis": {"measure": ["params", "hessian_trace"], "trace_probes": 4,
                     "samples": 12, "density_samples": 0},
    })
    assert cfg.analysis.trace_probes == 4 and cfg.analysis.measure == ("params", "hessian_trace")
    assert study_config_from_dict(cfg.to_dict()) == cfg
    ck = tiny_checkpoint(tmp_path / "a.pt")
    out = analyze_stage(cfg, tmp_path, [SimpleNamespace(checkpoint=ck, name="a")],
                        progress=False)
    rec = load_results(out["results"])[0]
    assert set(rec.measurements) == {"params", "hessian_trace"}
    assert rec.get("hessian_trace.probes") == 4
