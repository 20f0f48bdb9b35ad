"""The GPU check script (benchmarks/gpu_check.py) cannot rot between GPU loans: its dry run
executes every stage at toy sizes on the CPU, through the same stage processes."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_dry_run_runs_every_stage_and_writes_valid_records(tmp_path):
    proc = _run("--dry-run", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    mod = _module()
    recs = {}
    for name in mod.STAGES:
        # strict JSON: a NaN would make json.loads fail with parse_constant raising
        text = (tmp_path / f"{name}.json").read_text()
        recs[name] = json.loads(text, parse_constant=lambda c, n=name: pytest.fail(f"{n}: {c}"))
        assert recs[name]["status"] == "done", (name, recs[name]["notes"])
        assert not recs[name]["notes"], (name, recs[name]["notes"])  # no time box was reached
    summary = (tmp_path / "summary.md").read_text()
    assert all(f"## {name} (done" in summary for name in mod.STAGES)
    assert summary == proc.stdout

    (t,) = recs["tests"]["rows"]
    assert t["rc"] == 0 and "collected" in t["summary"]
    assert int(t["summary"].split("/")[0]) >= 10  # the device tests' CUDA halves exist

    train = recs["train"]["rows"]
    ratios = {(r["model"], r["precision"]): r["ratio"] for r in train
              if r["optimizer"] == "sam/vanilla"}
    assert set(ratios) == {(m, p) for m in mod.DRY["train_models"]
                           for p in ("float32", "tf32", "bf16")}
    # a ratio is recorded for each pair; its size is a measurement, not asserted here: at
    # toy sizes on a shared, loaded CPU a SAM step timed below a vanilla one (the dry run
    # measures the machinery; speed is the benchmarks' and the GPU run's to report)
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in ratios.values())

    hvp = {r["strategy"]: r for r in recs["hvp"]["rows"]}
    assert {"reuse", "stream", "func"} <= set(hvp) and all(
        r["seconds"] > 0 for r in hvp.values())

    row = [r for r in recs["table3"]["rows"] if r["block"] != "row total"]
    assert len(row) == 2 * 7 and all(r["lambda_max"] > 0 and r["hvps"] >= 1 for r in row)

    g, loop = recs["ntk"]["rows"]
    assert loop["kappa_rel_diff"] < 1e-4  # float32 compute vs the float64-Gram loop
    assert abs(g["kappa"] - loop["kappa"]) <= 1e-4 * loop["kappa"]

    land = [r for r in recs["landscape"]["rows"] if "error" not in r]
    assert len(land) == 3 * 3  # three models: reference + K=1 + K=4
    assert all(r["max_rel_diff"] < 1e-5 for r in land)  # every method, the same surface


def test_a_killed_stage_keeps_its_rows_and_says_so(tmp_path):
    mod = _module()
    rec = {"stage": "train", "status": "running", "notes": [], "seconds": 3.0,
           "rows": [{"model": "vit-s16", "precision": "float32", "optimizer": "vanilla",
                     "ms_per_step": 12.5}]}
    (tmp_path / "train.json").write_text(json.dumps(rec))
    mod._mark(tmp_path / "train.json", "killed at its time box")
    (tmp_path / "table3.json").write_text("{ not json")  # a record cut mid-write elsewhere
    text = mod.summary_markdown(tmp_path, {"mode": "full"})
    assert "## train (killed at its time box" in text and "| vit-s16 | float32 |" in text
    assert "## table3" in text and "unreadable record" in text
    assert json.loads((tmp_path / "train.json").read_text())["rows"] == rec["rows"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_without_cuda_one_line_and_exit_2(tmp_path):
    proc = _run("--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "CUDA is not available" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_unknown_stage_is_one_line_exit_2(tmp_path):
    proc = _run("--dry-run", "--stages", "train,warp", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2 and "unknown stage 'warp'" in proc.stderr
    assert proc.stderr.count("\n") == 1
