"""The Hessian measurements on any data iterable and any loss, against dense float64 oracles:
a DataLoader with uneven batches gives the tensors' λ_max and trace; bce / mse / label
smoothing / a callable loss give the dense Hessian of that loss; tuple/dict outputs work."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from geomkit.geometry.blocks import resolve_blocks
from geomkit.geometry.hessian import hessian_eigs
from geomkit.geometry.hvp import HessianOperator
from geomkit.geometry.spectrum import hutchinson_trace
from tests.cases import CASE_NAMES, OutputWrapper, make_case
from tests.geometry._hessian_oracle import _unflatten

LOSSES = {
    "ce": lambda z, y: F.cross_entropy(z, y, reduction="none"),
    "ce:0.2": lambda z, y: F.cross_entropy(z, y, reduction="none", label_smoothing=0.2),
    "bce": lambda z, y: F.binary_cross_entropy_with_logits(
        z, F.one_hot(y, z.shape[1]).double(), reduction="none").sum(1),
    "mse": lambda z, y: ((z - F.one_hot(y, z.shape[1]).double()) ** 2).sum(1),
}


def _dense(model, names, x, y, per_example):
    """Dense H of mean(per_example) over the block (forward-over-reverse, float64)."""
    flat, to_dict = _unflatten(model, names)

    def f(v):
        return per_example(functional_call(model, to_dict(v), (x,), strict=False), y).mean()

    H = torch.func.jacfwd(torch.func.grad(f))(flat)
    return 0.5 * (H + H.T)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_uneven_loader_equals_tensors(name, device):
    case = make_case(name, n=10)
    dc = case.to(device)
    loader = DataLoader(TensorDataset(dc.inputs, dc.targets), batch_size=3)  # 3/3/3/1
    kw = dict(blocks=("paper",), tol=1e-10, max_iter=40, batch_size=4)
    a = hessian_eigs(dc.model, dc.inputs, dc.targets, **kw)
    b = hessian_eigs(dc.model, loader, **kw)
    for blk in a.blocks:
        # float64, different batch boundaries (4/4/2 vs 3/3/3/1): equal to 1e-10
        assert abs(a.blocks[blk].lambda_max - b.blocks[blk].lambda_max) <= 1e-10 * max(
            1.0, abs(a.blocks[blk].lambda_max))
    assert b.n_samples == 10
    ta = hutchinson_trace(dc.model, dc.inputs, dc.targets, n_probes=6)
    tb = hutchinson_trace(dc.model, loader, n_probes=6)
    assert abs(ta["whole"].trace - tb["whole"].trace) <= 1e-10 * abs(ta["whole"].trace)
    # the first N of the loader: the same as the first N tensors
    c = hessian_eigs(dc.model, dc.inputs[:7], dc.targets[:7], **kw)
    short = DataLoader(TensorDataset(dc.inputs[:7], dc.targets[:7]), batch_size=3)
    d = hessian_eigs(dc.model, short, **kw)
    assert abs(c.blocks["whole"].lambda_max - d.blocks["whole"].lambda_max) <= 1e-10 * abs(
        c.blocks["whole"].lambda_max)


@pytest.mark.parametrize("loss", [*LOSSES, "callable"])
@pytest.mark.parametrize("name", ["mlp", "vit1"])
def test_losses_match_the_dense_oracle(name, loss, device):
    case = make_case(name, n=10)
    per = LOSSES["mse"] if loss == "callable" else LOSSES[loss]
    arg = (lambda z, y: ((z - F.one_hot(y, z.shape[1]).double()) ** 2).sum(1)) if (
        loss == "callable") else loss
    names = resolve_blocks(case.model, ("whole",))["whole"]
    H = _dense(case.model, names, case.inputs, case.targets, per)
    dc = case.to(device)
    op = HessianOperator(dc.model, dc.inputs, dc.targets, {"whole": names}, loss=arg,
                         batch_size=4)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    hv = op.matvec("whole", v.to(device)).cpu()
    assert float((hv - H @ v).abs().max()) <= 1e-10 * float((H @ v).abs().max())
    top = float(torch.linalg.eigvalsh(H)[-1])
    r = hessian_eigs(dc.model, dc.inputs, dc.targets, loss=arg, tol=1e-10, max_iter=60)
    assert abs(r.blocks["whole"].lambda_max - top) <= 1e-8 * abs(top)


_Wrapped = OutputWrapper  # the shared tuple/dict/.logits output wrapper


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_tuple_and_dict_outputs(kind):
    case = make_case("mlp", n=10)
    plain = hessian_eigs(case.model, case.inputs, case.targets, tol=1e-10)
    wrapped = _Wrapped(case.model, kind)
    got = hessian_eigs(wrapped, case.inputs, case.targets, tol=1e-10)
    assert got.blocks["whole"].lambda_max == plain.blocks["whole"].lambda_max
