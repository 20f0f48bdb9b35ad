import pytest
import torch
from torch.func import functional_call, grad, jvp

from geomkit.errors import ModelError
from geomkit.models import build, family, list_models

SMALL = {  # every registered name, at a size a CPU test can afford
    "vit": dict(
        image_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=2, num_heads=2
    ),
    "vit-tiny": dict(image_size=8, in_chans=1, num_classes=3),
    "vit-s16": dict(image_size=32, in_chans=3, num_classes=3, depth=1),
    "vit-b16": dict(image_size=16, in_chans=3, num_classes=3, depth=1, embed_dim=96, num_heads=4),
    "mixer": dict(image_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=2,
                  tokens_dim=4, channels_dim=8),
    "mixer-tiny": dict(image_size=8, in_chans=1, num_classes=3),
    "mixer-s16": dict(image_size=32, in_chans=3, num_classes=3, depth=1),
    "mixer-b16": dict(
        image_size=16, in_chans=3, num_classes=3, depth=1, embed_dim=64, channels_dim=128
    ),
    "resnet": dict(in_chans=1, num_classes=3, layers=(1, 1), widths=(4, 8)),
    "resnet-tiny": dict(image_size=8, in_chans=1, num_classes=3),
    "resnet20": dict(image_size=8, in_chans=1, num_classes=3),
    "resnet56": dict(image_size=8, in_chans=1, num_classes=3, widths=(4, 8, 8)),
    "resnet50": dict(image_size=32, in_chans=3, num_classes=3, widths=(8, 8, 8, 8)),
}


def test_every_registered_model_is_covered():
    assert sorted(SMALL) == list_models()


@pytest.mark.parametrize(
    "name,expected",
    [
        ("vit-b16", (86e6, 87e6)),
        ("vit-s16", (21.9e6, 22.3e6)),
        ("mixer-b16", (59e6, 60e6)),
        ("resnet50", (25.4e6, 25.7e6)),
    ],
)
def test_paper_parameter_counts(name, expected):
    with torch.device("meta"):
        model = build(name)
    n = sum(p.numel() for p in model.parameters())
    assert expected[0] <= n <= expected[1], n


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError, match="valid names: .*vit-tiny"):
        build("vit-huge")
    with pytest.raises(ModelError, match="bogus"):
        build("vit-tiny", bogus=1)
    with pytest.raises(ModelError, match="patch_size"):
        build("vit-tiny", image_size=9)


def test_timm_parameter_names():
    def names(model: str, **kw) -> set[str]:
        return {n for n, _ in build(model, **kw).named_parameters()}

    assert {"patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.attn.qkv.weight",
            "blocks.0.attn.proj.weight", "blocks.3.mlp.fc1.weight", "blocks.3.mlp.fc2.bias",
            "norm.weight", "head.weight"} <= names("vit-tiny")
    assert isinstance(dict(build("vit-tiny").named_modules())["blocks.0.mlp.act"], torch.nn.GELU)
    assert {"stem.proj.weight", "blocks.0.mlp_tokens.fc1.weight",
            "blocks.0.mlp_channels.fc2.weight", "norm.bias", "head.weight"} <= names("mixer-tiny")
    assert {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight",
            "layer2.0.downsample.0.weight", "layer3.2.bn2.bias", "fc.weight"} <= names("resnet20")
    assert "layer1.0.conv3.weight" in names("resnet50", widths=(8, 8, 8, 8))


def test_spec_and_family():
    m = build("mixer-tiny", num_classes=7)
    assert m.geomkit_spec == {"name": "mixer-tiny", "kwargs": {"num_classes": 7}}
    assert family(m) == "mixer" and family(build("vit-tiny")) == "vit"
    assert family(build("resnet-tiny")) == "resnet"


def test_avg_pool_vit_has_no_class_token():
    m = build("vit", **{**SMALL["vit"], "depth": 1}, global_pool="avg")
    assert m.cls_token is None and m.pos_embed.shape[1] == 4
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_twice_differentiable(name):
    """Double backward and forward-over-reverse both go through every model (float64)."""
    torch.manual_seed(0)
    kw = SMALL[name]
    model = build(name, **kw).double().eval()
    size = kw.get("image_size") or 8
    x = torch.randn(3, kw["in_chans"], size, size, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    params = {k: p.detach() for k, p in model.named_parameters()}

    def loss(p):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

    v = {k: torch.randn_like(p) for k, p in params.items()}
    # forward-over-reverse HVP
    _, hv_fwd = jvp(grad(loss), (params,), (v,))
    # double backward HVP
    ps = {k: p.clone().requires_grad_() for k, p in params.items()}
    g = torch.autograd.grad(loss(ps), list(ps.values()), create_graph=True)
    dot = sum((gi * v[k]).sum() for gi, k in zip(g, ps, strict=True))
    hv_rev = torch.autograd.grad(dot, list(ps.values()))
    num = sum((a - hv_fwd[k]).pow(2).sum() for a, k in zip(hv_rev, ps, strict=True))
    den = sum(a.pow(2).sum() for a in hv_rev)
    assert den > 0
    assert num.sqrt() <= 1e-8 * den.sqrt()
