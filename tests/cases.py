"""The tiny float64 case table every matrix-free measurement is checked against.

Models are small enough (a few hundred parameters) for dense Hessians and explicit
Jacobians.  Each case is seeded and deterministic; models are in eval mode.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from geomkit.models import build

CASE_NAMES = ("mlp", "cnn_bn", "vit1", "mixer1")
NUM_CLASSES = 3


@dataclass(frozen=True)
class Case:
    name: str
    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor

    def to(self, device: torch.device | str) -> Case:
        """A copy of the case on ``device`` (same values; the CPU case stays the oracle's)."""
        return Case(self.name, copy.deepcopy(self.model).to(device), self.inputs.to(device),
                    self.targets.to(device))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.GELU(), nn.Linear(8, NUM_CLASSES))


def _cnn_bn() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(12, NUM_CLASSES),
    )
    bn = model[1]
    # non-trivial running statistics so eval mode differs from batch statistics
    bn.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
    bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.3]))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.2, 0.7, 0.9]))
        bn.bias.copy_(torch.tensor([0.1, -0.3, 0.2]))
    return model


#: the one-block 4x4 patch-2 shape both tiny transformers share
_TINY = dict(image_size=4, patch_size=2, in_chans=1, num_classes=NUM_CLASSES, embed_dim=6,
             depth=1)


def _vit1() -> nn.Module:
    return build("vit", **_TINY, num_heads=2, mlp_ratio=1.0)


def _mixer1() -> nn.Module:
    return build("mixer", **_TINY, tokens_dim=4, channels_dim=8)


_FACTORIES = {"mlp": _mlp, "cnn_bn": _cnn_bn, "vit1": _vit1, "mixer1": _mixer1}


def make_case(name: str, n: int = 10, dtype: torch.dtype = torch.float64, seed: int = 0) -> Case:
    """Build case ``name`` with ``n`` examples of shape 1×4×4 in ``dtype``."""
    torch.manual_seed(seed)
    model = _FACTORIES[name]().to(dtype).eval()
    g = torch.Generator().manual_seed(seed + 1)
    inputs = torch.randn(n, 1, 4, 4, generator=g, dtype=dtype)
    targets = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return Case(name, model, inputs, targets)


TINY_VIT = dict(image_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=8, depth=1,
                num_heads=2)


#: `geomkit train` flags for a one-block ViT on the synthetic source (seconds to train)
TINY_VIT_ARGS = ["--model", "vit-tiny", "--model-arg", "depth=1", "--model-arg", "embed_dim=16",
                 "--model-arg", "num_heads=2", "--data", "synthetic"]


def tiny_checkpoint(path, seed: int = 0, model: str = "vit", optimizer: str = "sgd",
                    label: str | None = None, **model_kwargs):
    """Save an untrained tiny model on digits as a checkpoint (for CLI and analysis tests).

    Defaults to a 1-block ViT on 8×8 digits (:data:`TINY_VIT`); ``model_kwargs`` replace it.
    """
    from geomkit.checkpoint import save_checkpoint
    from geomkit.data import DataSpec

    torch.manual_seed(seed)
    m = build(model, **(model_kwargs or TINY_VIT))
    config = {"optimizer": optimizer, "seed": seed}
    if label is not None:
        config["label"] = label
    return save_checkpoint(path, m, config=config, data_spec=DataSpec(source="digits"))


class OutputWrapper(nn.Module):
    """``inner``'s logits returned as a dict (``{"logits": z, "aux": ...}``), a tuple
    ``(z, ...)`` or an object with ``.logits`` (HuggingFace style): every measurement must
    give the plain model's numbers through :func:`geomkit.geometry._inputs.logits_of`."""

    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x: torch.Tensor):
        z = self.inner(x)
        if self.kind == "dict":
            return {"logits": z, "aux": z.sum()}
        if self.kind == "tuple":
            return z, z.detach()

        class Out:
            logits = z

        return Out()


def plane_basis(shapes, seed: int = 0):
    """Two orthonormal vectors over a flat parameter row of these ``shapes``, zero on the
    1-D parameters (biases, norm layers), for paths that lie exactly in a plane."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = [int(np.prod(s)) for s in shapes]
    m = np.zeros((2, sum(sizes)))
    i = 0
    for shape, k in zip(shapes, sizes, strict=True):
        if len(shape) > 1:
            m[:, i:i + k] = rng.normal(size=(2, k))
        i += k
    q, _ = np.linalg.qr(m.T)
    return q[:, 0], q[:, 1]
