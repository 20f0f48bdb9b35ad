"""Dense float64 Hessian oracles for the Hessian tests.

``torch.func.hessian`` (``jacfwd`` of ``jacrev``, and ``jacrev`` of ``jacrev``) is
*wrong* through LayerNorm with this torch (the functorch bug that also breaks
curvlinops 3.0.1's HVP).  The oracle is ``jacfwd`` of ``grad`` (forward-over-reverse,
no ``jacrev``), checked in ``test_hvp.py`` against central finite differences of the
gradient and against ``torch.autograd.functional.hessian`` (a plain double backward
per column).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.func import functional_call


def _unflatten(model, names):
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def to_dict(v):
        out, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            out[n] = v[i : i + s.numel()].view(s)
            i += s.numel()
        return out

    return flat, to_dict


def block_loss_fn(model, names, inputs, targets, batch_size=None, train_bn=False):
    """θ_B ↦ mean CE (other parameters fixed), size-weighted over mini-batches."""
    flat, to_dict = _unflatten(model, names)
    n = len(inputs)
    bs = batch_size or n

    def f(v):
        total = 0.0
        for s in range(0, n, bs):
            out = functional_call(model, to_dict(v), (inputs[s : s + bs],), strict=False)
            total = total + F.cross_entropy(out, targets[s : s + bs], reduction="sum")
        return total / n

    return flat, f


def dense_hessian(model, names, inputs, targets, **kw):
    flat, f = block_loss_fn(model, names, inputs, targets, **kw)
    H = torch.func.jacfwd(torch.func.grad(f))(flat)
    return (0.5 * (H + H.T)).detach()


def loop_hessian(model, names, inputs, targets, **kw):
    """One plain double backward per column (slow; no torch.func)."""
    flat, f = block_loss_fn(model, names, inputs, targets, **kw)
    return torch.autograd.functional.hessian(f, flat).detach()


def fd_hessian(model, names, inputs, targets, eps=1e-5):
    """Central finite differences of the autograd gradient (an independent check)."""
    flat, f = block_loss_fn(model, names, inputs, targets)

    def grad(v):
        v = v.clone().requires_grad_(True)
        return torch.autograd.grad(f(v), v)[0]

    cols = []
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = eps
        cols.append((grad(flat + e) - grad(flat - e)) / (2 * eps))
    H = torch.stack(cols)
    return (0.5 * (H + H.T)).detach()


@functools.lru_cache(maxsize=64)
def cached_block_hessians(case_name: str, n: int = 10) -> dict:
    """Dense Hessians of every paper block of a case (shared by the test modules)."""
    from geomkit.geometry.blocks import resolve_blocks
    from tests.cases import make_case

    case = make_case(case_name, n=n)
    blocks = resolve_blocks(case.model, ("paper",))
    return {b: dense_hessian(case.model, p, case.inputs, case.targets) for b, p in blocks.items()}
