"""timm models work with the block presets and the measurements (where timm imports).

timm needs torchvision, which has no working CPU build on the development machine, so
this module skips there; it runs wherever ``import timm`` succeeds.
"""

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm (and torchvision) not importable here")

from geomkit.geometry.activations import activation_stats  # noqa: E402
from geomkit.geometry.blocks import family, resolve_blocks  # noqa: E402
from geomkit.geometry.hessian import hessian_eigs  # noqa: E402


@pytest.mark.parametrize(
    "name,kw,fam",
    [
        ("vit_tiny_patch16_224", dict(img_size=32, patch_size=16, depth=2), "vit"),
        ("mixer_s16_224", dict(img_size=32, depth=2), "mixer"),
        ("resnet18", {}, "resnet"),
    ],
)
def test_timm_model_blocks_and_lambda_max(name, kw, fam):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3, **kw).eval()
    assert family(model) == fam
    blocks = resolve_blocks(model, ("paper",))
    assert "whole" in blocks and "block1" in blocks
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    res = hessian_eigs(model, x, y, blocks=("block1", "whole"), max_iter=30)
    assert res.blocks["whole"].lambda_max >= res.blocks["block1"].lambda_max - 1e-3
    stats = activation_stats(model, x)
    assert stats.layers and stats.weight_norm > 0
