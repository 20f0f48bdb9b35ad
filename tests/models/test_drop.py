"""Dropout (``drop_rate``) and stochastic depth (``drop_path_rate``) in the ViT and Mixer
models: off by default with exactly today's modules and parameters, active in training
mode, and invisible to every analysis, which runs the model in eval mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geomkit.errors import ModelError
from geomkit.geometry.hessian import hessian_eigs
from geomkit.geometry.landscape import Grid, loss_landscape, random_direction
from geomkit.geometry.landscape import evaluate as landscape_evaluate
from geomkit.geometry.ntk import ntk
from geomkit.models import build
from geomkit.models.layers import DropMlp, DropPath, Mlp

KW = {
    "vit-tiny": {"depth": 3, "embed_dim": 16, "num_heads": 2},
    "mixer-tiny": {"depth": 3, "embed_dim": 16, "tokens_dim": 8, "channels_dim": 16},
}
MODELS = sorted(KW)
DROP = {"drop_rate": 0.3, "drop_path_rate": 0.3}


def _pair(name: str) -> tuple[nn.Module, nn.Module]:
    """(plain model, model with drop rates 0.3) holding the same weights."""
    torch.manual_seed(0)
    plain = build(name, **KW[name])
    torch.manual_seed(1)
    drop = build(name, **KW[name], **DROP)
    drop.load_state_dict(plain.state_dict())
    return plain, drop


def _data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("name", MODELS)
def test_rate_zero_is_todays_model(name):
    torch.manual_seed(0)
    default = build(name, **KW[name])
    torch.manual_seed(0)
    zero = build(name, **KW[name], drop_rate=0.0, drop_path_rate=0.0)
    torch.manual_seed(0)
    drop = build(name, **KW[name], **DROP)
    # no regularization module at rate 0: module for module the plain model
    kinds = (nn.Dropout, DropPath, DropMlp)
    assert not any(isinstance(m, kinds) for m in default.modules())
    assert [n for n, _ in zero.named_modules()] == [n for n, _ in default.named_modules()]
    # same parameter names and initial values at any rate (dropout draws nothing at init),
    # so a checkpoint of either loads strictly into the other
    a, b, c = default.state_dict(), zero.state_dict(), drop.state_dict()
    assert list(a) == list(b) == list(c)
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    drop.load_state_dict(a)
    default.load_state_dict(c)
    x, _ = _data()
    default.train()
    zero.train()
    assert torch.equal(default(x), zero(x))  # and in train mode the plain model is fixed


@pytest.mark.parametrize("name", MODELS)
def test_drop_rates_act_in_training_and_vanish_in_eval(name):
    plain, drop = _pair(name)
    x, _ = _data()
    assert any(isinstance(m, nn.Dropout) for m in drop.modules())
    assert any(isinstance(m, DropPath) for m in drop.modules())
    assert all(isinstance(m, Mlp) for n, m in drop.named_modules() if n.endswith(("mlp",
               "mlp_tokens", "mlp_channels")))
    plain.eval()
    drop.eval()
    assert torch.equal(plain(x), drop(x))
    drop.train()
    torch.manual_seed(5)
    first = drop(x)
    second = drop(x)
    assert not torch.allclose(first, plain(x), atol=1e-4)
    assert not torch.allclose(first, second, atol=1e-4)  # fresh masks every call
    torch.manual_seed(5)
    assert torch.equal(drop(x), first)  # masks come from torch's global generator


def test_drop_path_rates_rise_linearly_over_the_blocks():
    m = build("vit-tiny", depth=5, embed_dim=16, num_heads=2, drop_path_rate=0.2)
    rates = [0.0 if b.drop_path1 is None else b.drop_path1.p for b in m.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    mx = build("mixer-tiny", **{**KW["mixer-tiny"], "depth": 2}, drop_path_rate=0.1)
    assert mx.blocks[0].drop_path1 is None and mx.blocks[1].drop_path2.p == pytest.approx(0.1)


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    dp = DropPath(0.25).train()
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 5)
    y = dp(x)
    per_sample = y.flatten(1)
    # each sample is either dropped entirely or kept and scaled by 1/(1 - p)
    assert torch.all((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1))
    assert float((per_sample[:, 0] == 0).float().mean()) == pytest.approx(0.25, abs=0.03)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.05)
    assert torch.equal(dp.eval()(x), x)


@pytest.mark.parametrize("kw", [{"drop_rate": 1.0}, {"drop_path_rate": -0.1},
                                {"drop_rate": "0.1"}, {"drop_path_rate": True}])
def test_bad_rates_are_refused(kw):
    with pytest.raises(ModelError, match="must be a number in \\[0, 1\\)"):
        build("vit-tiny", **KW["vit-tiny"], **kw)
    with pytest.raises(ModelError, match="must be a number in \\[0, 1\\)"):
        build("mixer-tiny", **KW["mixer-tiny"], **kw)


@pytest.mark.parametrize("name", MODELS)
def test_analyses_run_in_eval_mode_so_drop_rates_never_perturb_them(name):
    """λ_max, NTK κ and landscape points of a model with drop rates 0.3, left in training
    mode, equal those of the same weights in a model without: each analysis switches
    dropout and drop path off (and restores the mode after)."""
    plain, drop = _pair(name)
    plain.double()
    drop.double()
    x, y = _data()
    x = x.double()
    plain.train()
    drop.train()
    torch.manual_seed(0)
    h_plain = hessian_eigs(plain, (x, y), tol=1e-6, max_iter=40).blocks["whole"].lambda_max
    torch.manual_seed(0)
    h_drop = hessian_eigs(drop, (x, y), tol=1e-6, max_iter=40).blocks["whole"].lambda_max
    assert h_drop == pytest.approx(h_plain, rel=1e-10)
    k_plain, k_drop = (ntk(m, x).kappa for m in (plain, drop))  # bn="train" default
    assert k_drop == pytest.approx(k_plain, rel=1e-10)
    assert landscape_evaluate(drop, x, y) == pytest.approx(landscape_evaluate(plain, x, y),
                                                           rel=1e-12)
    d = random_direction(plain, seed=0)
    grid = Grid(x=(-0.5, 0.5, 3))
    s_plain = loss_landscape(plain, x, y, [d], grid)
    s_drop = loss_landscape(drop, x, y, [d], grid)
    assert s_drop.loss == pytest.approx(s_plain.loss, rel=1e-12)
    assert drop.training and all(m.training for m in drop.modules())  # mode restored
    # and the perturbation is real: the training-mode loss of the dropped model differs
    with torch.no_grad():
        ce = nn.functional.cross_entropy
        assert abs(float(ce(drop(x), y)) - float(ce(plain(x), y))) > 1e-6
