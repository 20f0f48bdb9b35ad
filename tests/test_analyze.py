"""analyze(): registry, resume/skip/force, settings guard, per-architecture reuse."""

from dataclasses import dataclass

import pytest
import torch

from geomkit import analyze as A
from geomkit import measurements as M
from geomkit.data import DataSpec
from geomkit.errors import CheckpointError, ResultFileError, SpecError
from geomkit.measurements._common import Options, samples
from geomkit.models import build
from geomkit.results import load_results
from tests.cases import tiny_checkpoint

SPEC = DataSpec(source="digits")


def tiny_vit(path, seed=0, optimizer="adamw", label="vanilla"):
    return tiny_checkpoint(path, seed, optimizer=optimizer, label=label)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    return tiny_vit(d / "a.pt", 0), tiny_vit(d / "b.pt", 1, "sam", "sam")


@dataclass(frozen=True)
class CountOptions(Options):
    samples: int = samples()


@dataclass(frozen=True)
class NoOptions(Options):
    pass


def temporary(monkeypatch, m):
    """Register ``m`` for one test (the registry is loaded first, then patched)."""
    M.registry()
    monkeypatch.setitem(M._REGISTRY, m.name, m)


@pytest.fixture
def counting(monkeypatch):
    """A cheap registered measurement that counts its calls, run alone."""
    calls = []

    def fn(ck, o):
        calls.append(ck.label)
        return {"n": o.samples, "label": ck.label}

    temporary(monkeypatch, M.Measurement(
        "count", "counts", CountOptions, fn, lambda ck, o: {"samples": o.samples},
        schema=("n", "label"), default=False))
    return calls


def test_resume_skip_force_and_settings_guard(ckpts, tmp_path, counting):
    out = tmp_path / "r.h5"
    r = A.analyze(ckpts, out, measurements=["params", "count"], samples=8, progress=False)
    assert len(r.computed) == 4 and not r.skipped and counting == ["vit/vanilla", "vit/sam"]
    recs = load_results(out)
    assert [x.label for x in recs] == ["vit/vanilla", "vit/sam"]
    assert recs[0].get("params.num_params") == sum(
        p.numel() for p in build("vit", image_size=8, patch_size=4, in_chans=1, num_classes=10,
                                 embed_dim=8, depth=1, num_heads=2).parameters())
    assert recs[1].checkpoint_sha256 and recs[1].optimizer == "sam"

    r2 = A.analyze(ckpts, out, measurements=["params", "count"], samples=8, progress=False)
    assert len(r2.skipped) == 4 and not r2.computed and len(counting) == 2
    with pytest.raises(ResultFileError, match="samples=8 \\(now 16\\)"):
        A.analyze(ckpts, out, measurements=["count"], samples=16, progress=False)
    r3 = A.analyze(ckpts[:1], out, measurements=["count"], samples=16, force=True,
                   progress=False)
    assert len(r3.computed) == 1 and load_results(out)[0].get("count.n") == 16


def test_per_architecture_results_are_reused(ckpts, tmp_path, monkeypatch):
    calls = []

    def fn(ck, o):
        calls.append(ck.label)
        return {"v": 1.0}

    temporary(monkeypatch, M.Measurement(
        "arch", "", NoOptions, fn, lambda ck, o: {"model": ck.model_name, "kw": ck.model_kwargs},
        schema=("v",), per_architecture=True, default=False))
    r = A.analyze(ckpts, tmp_path / "r.h5", measurements=["arch"], progress=False)
    assert calls == ["vit/vanilla"] and len(r.reused) == 1
    rec = r.results[1]
    assert rec.get("arch.v") == 1.0
    assert rec.measurements["arch"].provenance["reused_from"] == r.results[0].id


def test_cheap_measurements_values(ckpts, tmp_path):
    """Stored values equal a direct call of the library function on the same data."""
    from geomkit.checkpoint import load_checkpoint
    from geomkit.geometry.activations import activation_stats
    from geomkit.geometry.robustness import robustness

    r = A.analyze(ckpts[:1], tmp_path / "r.h5", measurements=["activations", "robustness"],
                  samples=16, test_samples=20, progress=False)
    rec = r.results[0]
    ck = load_checkpoint(ckpts[0])
    s = activation_stats(ck.model, ck.analysis_data("train", 16)[0])
    assert rec.get("activations.depth") == 1 == len(s.blocks)
    assert rec.get("activations.a_index") == {"first": 1, "mid": 1, "last": 1}
    (blk,) = s.blocks.values()
    assert rec.get("activations.block_output_norm") == [blk.output_norm]
    assert rec.get("activations.a.first") == blk.output_norm
    assert rec.get("activations.weight_norm") == s.weight_norm
    assert rec.get("activations.active_fraction") == s.active_fraction
    x, y = ck.analysis_data("test", 20)
    rob = robustness(ck.model, x, y, normalization=ck.data_spec, seed=0).summary()
    assert rec.get("robustness.n_samples") == 20
    assert rec.get("robustness.clean") == rob["clean"]
    assert rec.get("robustness.mean_corrupted") == rob["mean_corrupted"]
    assert rec.get("robustness.accuracy.jpeg") == list(rob["accuracy"]["jpeg"])


def test_unknown_option_and_schema_are_refused(ckpts, tmp_path, monkeypatch):
    with pytest.raises(SpecError, match="unknown option.*samplez.*valid: .*samples"):
        A.analyze(ckpts, tmp_path / "r.h5", samplez=3, progress=False)
    temporary(monkeypatch, M.Measurement("leaky", "", NoOptions, lambda ck, o: {"x": 1, "y": 2},
                                         lambda ck, o: {}, schema=("x",), default=False))
    with pytest.raises(RuntimeError, match="outside its schema"):
        A.analyze(ckpts[:1], tmp_path / "r.h5", measurements=["leaky"], progress=False)


def test_bad_input(ckpts, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        A.analyze([tmp_path / "nope.pt"], tmp_path / "r.h5", progress=False)
    assert not (tmp_path / "r.h5").exists()
    with pytest.raises(SpecError, match="unknown measurement"):
        A.analyze(ckpts, tmp_path / "r.h5", measurements=["fog"], progress=False)
    with pytest.raises(SpecError):
        A.analyze(ckpts, tmp_path / "r.h5", samples=0, progress=False)
    not_results = tmp_path / "x.h5"
    not_results.write_bytes(b"junk")
    with pytest.raises(ResultFileError):
        A.analyze(ckpts, not_results, measurements=["params"], progress=False)


@pytest.mark.slow
def test_end_to_end_all_measurements(ckpts, tmp_path):
    """Every measurement on two tiny checkpoints, then both tables."""
    from geomkit.tables import render, table1, table3

    out = tmp_path / "r.h5"
    r = A.analyze(ckpts, out, samples=32, ntk_samples=16, ntk_repeats=2, test_samples=40,
                  hessian_max_iter=30, progress=False)
    assert {n for _, n in r.computed} == set(M.default_measurements())
    assert [n for _, n in r.reused] == ["ntk_init"]  # same architecture: κ at init computed once
    a, b = r.results
    assert a.get("ntk_init.kappa") == b.get("ntk_init.kappa") > 1
    lam = a.get("hessian.lambda_max")
    assert list(lam) == ["embedding", "attn", "mlp", "block1", "whole"]
    # stored values are what the library computes directly with the same settings
    from geomkit.checkpoint import load_checkpoint
    from geomkit.geometry.hessian import hessian_eigs
    from geomkit.geometry.ntk import ntk_at_init

    ck = load_checkpoint(ckpts[0])
    x, y = ck.analysis_data("train", 32)
    direct = hessian_eigs(ck.model, x, y, blocks=("paper",), tol=1e-3, max_iter=30, seed=0)
    assert lam == {k: v.lambda_max for k, v in direct.blocks.items()}
    k = ntk_at_init(ck.fresh_model, ck.analysis_data("train", 16)[0], repeats=2, seed=0,
                    mode="sum", bn="train", dtype=torch.float64)
    assert a.get("ntk_init.kappa") == k.kappa
    t1, t3 = table1(out), table3(out)
    assert t1.col_labels == ("vit/adamw", "vit/sam")
    assert all(v is not None for row in t1.cells for v in row)
    assert t3.cells[0][:4] == (lam["embedding"], lam["attn"], lam["mlp"], lam["block1"])
    assert "| Hessian λ_max |" in render(t1, "md")
